#!/usr/bin/env bash
# Makes a fresh Debian 12 machine (as root) ready to build and run weft: system packages,
# a Node.js for npm itself, the npm dependencies (which pin Node 24), and the build.
# Safe to run again: it installs only what is missing and skips `npm ci` when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "weft: run as root (network namespaces, veth and nftables need CAP_NET_ADMIN)" >&2
  exit 1
fi

# command -> Debian package that provides it
declare -A want=(
  [ip]=iproute2 [bridge]=iproute2 [nsenter]=util-linux [nft]=nftables [iptables]=iptables
  [etcd]=etcd-server [etcdctl]=etcd-client [tcpdump]=tcpdump [iperf3]=iperf3
  [ping]=iputils-ping [cc]=gcc [pkill]=procps [npm]=npm [node]=nodejs [curl]=curl [openssl]=openssl
  [conntrack]=conntrack [socat]=socat
  # test/priv/cri.test.ts: containerd's CRI plugin as a node's runtime, runc under it
  [containerd]=containerd [ctr]=containerd [runc]=runc [unshare]=util-linux
  # scripts/image.sh and test/priv/image.test.ts: the image built with podman on local base images
  [podman]=podman [mmdebstrap]=mmdebstrap
)
missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done
[ -x /usr/lib/cni/host-local ] || missing+=(containernetworking-plugins)
[ -e /usr/include/stdio.h ] || missing+=(libc6-dev)
if [ ${#missing[@]} -gt 0 ]; then
  # shellcheck disable=SC2207
  pkgs=($(printf '%s\n' "${missing[@]}" | sort -u))
  echo "weft: installing system packages: ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" </dev/null
fi

# The Debian etcd-server package starts a system etcd on 127.0.0.1:2379; weft's tests and lab
# run their own etcd inside namespaces and do not need it.

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "weft: installing npm dependencies (npm ci)"
  npm ci --no-audit --no-fund </dev/null
fi
export PATH="$PWD/node_modules/.bin:$PATH"
node scripts/build.ts
