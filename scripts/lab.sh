#!/usr/bin/env bash
# The local lab (README's first command): a weft cluster in network namespaces on this machine.
#   ./scripts/lab.sh up [--nodes N]   install what is missing, build, start etcd + N nodes + pods
#   ./scripts/lab.sh status | exec TARGET CMD... | down
# Everything is done by lab/cli.ts; this wrapper makes sure packages, npm dependencies and the
# build are in place first (scripts/bootstrap.sh), and runs it with the pinned Node 24.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "lab: run as root (network namespaces, veth and nftables need CAP_NET_ADMIN)" >&2
  exit 1
fi

# `up` always bootstraps (cheap when nothing is missing, and it rebuilds dist/); the other
# commands only when there is no Node 24 yet. WEFT_LAB_SKIP_BOOTSTRAP=1 skips it (the test
# suite has bootstrapped already and must not rebuild binaries other tests are running).
if [ "${WEFT_LAB_SKIP_BOOTSTRAP:-}" != 1 ]; then
  if [ "${1:-}" = up ] || [ ! -x node_modules/.bin/node ]; then
    bash scripts/bootstrap.sh
  fi
fi
export PATH="$PWD/node_modules/.bin:$PATH"
exec node lab/cli.ts "$@"
