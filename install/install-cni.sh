#!/bin/sh
# The DaemonSet's install-cni init container: puts the packaged CNI plugin (scripts/package.ts),
# its native addons and the conflist onto the host:
#   bin/weft             the fast-path launcher kubelet execs: forwards to weftd's socket
#   bin/weft-standalone  the Node single executable it falls back to when weftd is not serving
#   lib/weft/*.node      the standalone's addons (it loads them from <itself>/../lib/weft)
# Every file is copied to a temporary name in the target directory and renamed into place, so
# kubelet never executes or reads a half-written file; the addons and the standalone go first,
# so the launcher never exists on the host without a working fallback.
# The reference portmap plugin is installed only when the host has none.
set -eu

src=${WEFT_CNI_SRC_DIR:-/opt/weft/cni}
bin_dir=${WEFT_HOST_CNI_BIN_DIR:-/host/opt/cni/bin}
lib_dir=${WEFT_HOST_CNI_LIB_DIR:-/host/opt/cni/lib/weft}
conf_dir=${WEFT_HOST_CNI_CONF_DIR:-/host/etc/cni/net.d}
conf_file=${WEFT_CNI_CONF_FILE:-/etc/weft/cni-conf.json}

# Temporary files this run made and has not renamed yet: removed on any exit, so a failed or
# killed install leaves nothing behind (a fixed temp name would also let two concurrent runs,
# e.g. an init container restarted while the old one is still exiting, write the same file).
pending=""
cleanup() {
  for f in $pending; do rm -f "$f"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

install_atomic() { # install_atomic SRC DEST MODE
  # Same directory as DEST: rename(2) is atomic only within one filesystem. The dot prefix and
  # the suffix keep the temp file out of what kubelet and the runtime look at (libcni loads
  # only *.conf, *.conflist, *.json from the conf dir; nobody execs a dot file from bin).
  tmp=$(mktemp "$(dirname "$2")/.$(basename "$2").XXXXXX.weft-tmp")
  pending="$pending $tmp"
  cp "$1" "$tmp"
  chmod "$3" "$tmp"
  # Unchanged content: keep the installed file (its inode, which a running plugin or an
  # open conflist may hold); re-running the install is then a no-op on the host.
  if [ -f "$2" ] && cmp -s "$tmp" "$2" && [ "$(stat -c %a "$2")" = "${3#0}" ]; then
    rm -f "$tmp"
  else
    mv -f "$tmp" "$2"
  fi
  pending=$(printf '%s' "$pending" | sed "s| $tmp||")
}

mkdir -p "$bin_dir" "$lib_dir" "$conf_dir"
for f in "$src"/lib/weft/*.node; do
  install_atomic "$f" "$lib_dir/$(basename "$f")" 0644
done
install_atomic "$src/bin/weft-standalone" "$bin_dir/weft-standalone" 0755
install_atomic "$src/bin/weft" "$bin_dir/weft" 0755
if [ ! -x "$bin_dir/portmap" ] && [ -x "$src/bin/portmap" ]; then
  install_atomic "$src/bin/portmap" "$bin_dir/portmap" 0755
fi
# Validate before installing the conflist (which makes the node Ready): the installed plugin
# must answer VERSION and the conflist must configure it. The standalone is asked directly; the
# launcher is asked through a socket nobody serves, so it must reach the standalone beside it.
if ! echo '{"cniVersion":"1.1.0"}' | CNI_COMMAND=VERSION "$bin_dir/weft-standalone" >/dev/null; then
  echo "install-cni: $bin_dir/weft-standalone does not run" >&2
  exit 1
fi
if ! echo '{"cniVersion":"1.1.0","fastpathSocket":"/nonexistent/weft-install-check.sock"}' | CNI_COMMAND=VERSION "$bin_dir/weft" >/dev/null; then
  echo "install-cni: $bin_dir/weft does not run or cannot reach $bin_dir/weft-standalone" >&2
  exit 1
fi
if ! grep -q '"type": *"weft"' "$conf_file"; then
  echo "install-cni: $conf_file does not configure the weft plugin" >&2
  exit 1
fi
install_atomic "$conf_file" "$conf_dir/10-weft.conflist" 0644
echo "install-cni: installed $bin_dir/weft (launcher), $bin_dir/weft-standalone, $lib_dir and $conf_dir/10-weft.conflist"
