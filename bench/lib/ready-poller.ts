/**
 * Polls a URL every few ms until it answers 200, then prints the monotonic time (ns, as from
 * `process.hrtime.bigint()`, comparable across processes) and exits. Started in a namespace
 * before the daemon, so its own start-up is not part of what it measures: prints "armed" first.
 * `node ready-poller.ts URL [INTERVAL_MS]`
 */
import { get } from 'node:http';

const [url, interval = '5'] = process.argv.slice(2);

function once(): Promise<boolean> {
  return new Promise((resolve) => {
    const req = get(url, { timeout: 1000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('error', () => resolve(false));
    req.on('timeout', () => (req.destroy(), resolve(false)));
  });
}

async function main(): Promise<void> {
  process.stdout.write('armed\n');
  for (;;) {
    if (await once()) {
      process.stdout.write(`${process.hrtime.bigint()}\n`);
      return;
    }
    await new Promise((r) => setTimeout(r, Number(interval)));
  }
}

void main();
