/**
 * `weft`: the CNI plugin binary kubelet (or any CNI runtime) execs per pod. Wiring only: real
 * netlink, namespaces, /proc/sys and the host-local-format store into the CNI skel.
 * Keep this import graph small: every pod start pays for each module loaded.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { systemDeps } from '../src/cni/deps.ts';
import { runSkel } from '../src/cni/skel.ts';

function readStdin(): string {
  try {
    return readFileSync(0, 'utf8');
  } catch {
    return '';
  }
}

const deps = systemDeps({ log: (msg) => process.stderr.write(`${msg}\n`) });

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
