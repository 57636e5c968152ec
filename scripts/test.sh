#!/usr/bin/env bash
# The whole test suite (README's test command; .ci/run calls it). Installs what it needs, builds,
# typechecks, runs every ava test (unit and privileged, in throwaway namespaces) and ends with
# one line: `tests: N passed, N failed`. Exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."

if ! bash scripts/bootstrap.sh; then
  echo "tests: 0 passed, 1 failed"
  exit 1
fi
export PATH="$PWD/node_modules/.bin:$PATH"

failed=0
if ! tsc -p tsconfig.json --noEmit; then
  echo "typecheck failed" >&2
  failed=1
fi
if ! biome check .; then
  echo "lint/format check failed (npm run lint; npm run format fixes formatting)" >&2
  failed=$((failed + 1))
fi

# The image the DaemonSet runs (test/priv/image.test.ts runs it as a node): built with podman on
# local base images when it is missing or was built from another commit. A few minutes.
want_rev=$(git rev-parse HEAD 2>/dev/null || echo unknown)
have_rev=$(podman image inspect --format '{{index .Labels "org.opencontainers.image.revision"}}' weft:0.1.0 2>/dev/null || true)
if [ "$have_rev" != "$want_rev" ]; then
  if ! bash scripts/image.sh; then
    echo "image build failed (scripts/image.sh)" >&2
    failed=$((failed + 1))
  fi
fi

# Tests must keep weftd's fast-path socket in their own temp dirs, never the host's /run/weft.
host_sock_before=0
[ -e /run/weft/cni.sock ] && host_sock_before=1
# Nor may they touch the root network namespace: its links and nftables tables are compared.
root_state() { ip -o link show | awk -F': ' '{print $2}' | sort; nft list tables 2>/dev/null | sort; }
root_before=$(root_state)

tap=$(mktemp)
trap 'rm -f "$tap"' EXIT
ava --tap "$@" 2>&1 | tee "$tap"
ava_rc=${PIPESTATUS[0]}

# Skipped tests ("ok ... # SKIP") are not passes; todo tests ("not ok ... # TODO") are not failures.
pass=$(grep -E '^ok ' "$tap" | grep -cvE '# SKIP' || true)
fail=$(grep -E '^not ok ' "$tap" | grep -cvE '# TODO' || true)
fail=$((fail + failed))
if [ "$ava_rc" -ne 0 ] && [ "$fail" -eq 0 ]; then
  fail=1  # ava failed without reporting a test (crash, uncaught error): still a failure
fi
leftover=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^wt-' || true)
if [ -n "$leftover" ]; then
  echo "namespaces left behind by tests: $leftover" >&2
  fail=$((fail + 1))
fi
root_new=$(comm -13 <(printf '%s\n' "$root_before") <(root_state) | grep -v '^$' || true)
if [ -n "$root_new" ]; then
  echo "tests changed the root network namespace (new links or nftables tables): $root_new" >&2
  fail=$((fail + 1))
fi
if [ "$host_sock_before" -eq 0 ] && [ -e /run/weft/cni.sock ]; then
  echo "a test left weftd's socket in the host's /run/weft (pass --cni-socket)" >&2
  fail=$((fail + 1))
fi
echo "tests: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
