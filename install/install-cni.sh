#!/bin/sh
# The DaemonSet's install-cni init container: puts the packaged CNI plugin, its native addons
# and the conflist onto the host. Every file is copied to a temporary name in the target
# directory and renamed into place, so kubelet never executes or reads a half-written file.
# The reference portmap plugin is installed only when the host has none.
set -eu

src=${WEFT_CNI_SRC_DIR:-/opt/weft/cni}
bin_dir=${WEFT_HOST_CNI_BIN_DIR:-/host/opt/cni/bin}
lib_dir=${WEFT_HOST_CNI_LIB_DIR:-/host/opt/cni/lib/weft}
conf_dir=${WEFT_HOST_CNI_CONF_DIR:-/host/etc/cni/net.d}
conf_file=${WEFT_CNI_CONF_FILE:-/etc/weft/cni-conf.json}

install_atomic() { # install_atomic SRC DEST MODE
  tmp="$(dirname "$2")/.$(basename "$2").weft-tmp"
  cp "$1" "$tmp"
  chmod "$3" "$tmp"
  mv -f "$tmp" "$2"
}

mkdir -p "$bin_dir" "$lib_dir" "$conf_dir"
for f in "$src"/lib/weft/*.node; do
  install_atomic "$f" "$lib_dir/$(basename "$f")" 0644
done
install_atomic "$src/bin/weft" "$bin_dir/weft" 0755
if [ ! -x "$bin_dir/portmap" ] && [ -x "$src/bin/portmap" ]; then
  install_atomic "$src/bin/portmap" "$bin_dir/portmap" 0755
fi
# Validate before installing the conflist (which makes the node Ready): the installed plugin
# must answer VERSION and the conflist must configure it.
if ! echo '{"cniVersion":"1.1.0"}' | CNI_COMMAND=VERSION "$bin_dir/weft" >/dev/null; then
  echo "install-cni: $bin_dir/weft does not run" >&2
  exit 1
fi
if ! grep -q '"type": *"weft"' "$conf_file"; then
  echo "install-cni: $conf_file does not configure the weft plugin" >&2
  exit 1
fi
install_atomic "$conf_file" "$conf_dir/10-weft.conflist" 0644
echo "install-cni: installed $bin_dir/weft, $lib_dir and $conf_dir/10-weft.conflist"
