#!/usr/bin/env bash
# Builds the weft image from the Dockerfile with podman (its buildah), also where no container
# registry is reachable: the two base images the Dockerfile names are then made locally from
# Debian packages and stored under those very names, so the Dockerfile itself stays what a user
# builds with `docker build .` on the internet.
#
#   debian:bookworm-slim    mmdebstrap --variant=minbase bookworm (Debian's mirror, as apt uses)
#   node:24-bookworm-slim   that rootfs + Node 24 (the npm `node` package this repo pins,
#                           node_modules/node/bin/node) + npm (its registry tarball, `npm pack`)
#
#   scripts/image.sh                 # builds weft:0.1.0 (WEFT_IMAGE to change the tag)
#   WEFT_IMAGE_BASES=local ...       # never try the registry for the base images
#   WEFT_IMAGE_BASES=registry ...    # only the registry's base images (fail without them)
#   WEFT_IMAGE_OUT=weft.tar ...      # also save the image as an OCI archive
#
# Needs root (mmdebstrap's root mode, rootful podman) and apt + npm registry access for the
# build's own `apt-get install` / `npm ci` steps (they run with the host's network).
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${WEFT_IMAGE:-weft:0.1.0}
bases=${WEFT_IMAGE_BASES:-auto}
case "$bases" in auto | local | registry) ;; *) echo "image: WEFT_IMAGE_BASES must be auto, local or registry" >&2; exit 2 ;; esac
for cmd in podman mmdebstrap npm; do
  if ! command -v "$cmd" >/dev/null 2>&1; then
    echo "image: $cmd not found (apt-get install podman mmdebstrap npm)" >&2
    exit 1
  fi
done

# The base images, as the Dockerfile names them (its FROM lines; short names resolve to
# docker.io/library through containers-common's shortnames.conf).
debian_ref=docker.io/library/debian:bookworm-slim
node_ref=docker.io/library/node:24-bookworm-slim
for ref in "${debian_ref#docker.io/library/}" "${node_ref#docker.io/library/}"; do
  grep -q "^FROM $ref\b" Dockerfile || { echo "image: the Dockerfile no longer uses $ref: update $0" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/weft-image-XXXXXX")
trap 'rm -rf "$work"' EXIT

have() { podman image exists "$1"; }

# Pulls `ref` unless told not to; true when the image is then present.
try_pull() {
  [ "$bases" = local ] && return 1
  have "$1" && return 0
  timeout 60 podman pull -q "$1" >/dev/null 2>&1
}

make_debian() {
  echo "image: making $debian_ref from Debian packages (mmdebstrap)"
  # minbase: Essential + apt, as the official slim image; docs, man pages and locales left out
  # the same way (dpkg path excludes), so later apt-get installs in the image stay slim too.
  mmdebstrap --variant=minbase --mode=root --format=tar \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --aptopt='APT::Install-Recommends "false"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/*' \
    bookworm "$work/debian.tar"
  podman import --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$work/debian.tar" "$debian_ref" >/dev/null
}

make_node() {
  local node=node_modules/node/bin/node
  if [ ! -x "$node" ] || ! "$node" --version | grep -q '^v24\.'; then
    echo "image: $node is not Node 24 (run npm ci)" >&2
    exit 1
  fi
  echo "image: making $node_ref from $debian_ref + $node ($("$node" --version)) + npm"
  mkdir -p "$work/node/npm"
  cp "$node" "$work/node/node"
  # npm itself, from its registry tarball (what the official image ships in /usr/local/lib).
  (cd "$work/node" && npm pack --silent npm@10 >/dev/null)
  tar -xzf "$work"/node/npm-*.tgz -C "$work/node/npm" --strip-components=1
  rm -f "$work"/node/npm-*.tgz
  cat >"$work/node/Containerfile" <<EOF
FROM $debian_ref
COPY node /usr/local/bin/node
COPY npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \\
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \\
 && node --version && npm --version
CMD ["node"]
EOF
  podman build --pull=never -q -t "$node_ref" -f "$work/node/Containerfile" "$work/node" >/dev/null
}

pull=missing
if ! try_pull "$debian_ref"; then
  [ "$bases" = registry ] && { echo "image: cannot pull $debian_ref" >&2; exit 1; }
  have "$debian_ref" || make_debian
  pull=never
fi
if ! try_pull "$node_ref"; then
  [ "$bases" = registry ] && { echo "image: cannot pull $node_ref" >&2; exit 1; }
  have "$node_ref" || make_node
  pull=never
fi

# Behind a TLS-intercepting proxy the host trusts an extra CA (NODE_EXTRA_CA_CERTS, as npm on
# the host does); the build's `npm ci` gets it through a build-time mount and an npmrc naming
# it. Mounts given to `podman build` exist only while RUN steps run: no layer contains them.
build_mounts=()
ca=${WEFT_IMAGE_BUILD_CA:-${NODE_EXTRA_CA_CERTS:-}}
if [ -n "$ca" ] && [ -f "$ca" ]; then
  printf 'cafile=/run/weft-build-ca.crt\n' >"$work/npmrc"
  build_mounts+=(--volume "$ca:/run/weft-build-ca.crt:ro" --volume "$work/npmrc:/root/.npmrc:ro")
  echo "image: the build's npm trusts $ca (build-time mount only)"
fi

echo "image: building $tag"
# Host network for the build's apt-get and npm ci; --pull=never keeps podman on the local bases.
# The commit it was built from (test/priv/image.test.ts says when the image is older).
rev=$(git rev-parse HEAD 2>/dev/null || echo unknown)
podman build --pull="$pull" --network=host "${build_mounts[@]}" --label "org.opencontainers.image.revision=$rev" -t "$tag" -f Dockerfile .
if [ -n "${WEFT_IMAGE_OUT:-}" ]; then
  podman save --format oci-archive -o "$WEFT_IMAGE_OUT" "$tag"
  echo "image: saved $tag to $WEFT_IMAGE_OUT"
fi
echo "image: built $tag ($(podman image inspect --format '{{.Id}}' "$tag" | cut -c1-12))"
