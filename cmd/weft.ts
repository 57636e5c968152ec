/**
 * `weft`: the CNI plugin binary kubelet (or any CNI runtime) execs per pod. Wiring only: real
 * netlink, namespaces, /proc/sys and the host-local-format store into the CNI skel.
 * Keep this import graph small: every pod start pays for each module loaded.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { DiskStore } from '../src/ipam/disk.ts';
import { openNetlink } from '../src/netlink/index.ts';
import { openNetns, withNetns } from '../src/netns/index.ts';
import type { Deps } from '../src/cni/plugin.ts';
import { runSkel } from '../src/cni/skel.ts';

function readStdin(): string {
  try {
    return readFileSync(0, 'utf8');
  } catch {
    return '';
  }
}

/** Writes `/proc/sys/<path>` synchronously while inside `netns` (it resolves per opener). */
function writeSysctl(path: string, value: string, netns?: Parameters<typeof withNetns>[0]): void {
  const file = `/proc/sys/${path}`;
  const write = () => {
    if (readFileSync(file, 'utf8').trim() !== value) writeFileSync(file, value);
  };
  if (netns) withNetns(netns, write);
  else write();
}

const deps: Deps = {
  openNetlink: (netns) => openNetlink(netns ? { netns } : {}),
  openNetns,
  writeSysctl,
  store: (conf) => new DiskStore(conf.dataDir, conf.name),
  // Honoured only when a test sets it; kubelet never does.
  failAfter: process.env.WEFT_TEST_FAIL_AFTER || undefined,
  log: (msg) => process.stderr.write(`${msg}\n`),
};

async function main(): Promise<number> {
  return runSkel(
    {
      env: process.env,
      stdin: readStdin(),
      stdout: (text) => writeFileSync(1, text),
      stderr: (text) => process.stderr.write(text),
    },
    deps,
  );
}

main().then(
  (code) => process.exit(code),
  (err) => {
    // runSkel reports every error itself; reaching this is a bug in the skel.
    process.stderr.write(`weft: ${String(err)}\n`);
    process.exit(1);
  },
);
