/**
 * Serves the CNI fast path on its own, for the bench and the fast-path tests, without weftd:
 * `nsenter --net=/run/netns/NODE node bench/lib/cni-server.ts SOCKET`. Prints "ready" once
 * listening; exits on SIGTERM/SIGINT. With WEFT_FASTPATH_TIMING=1 each request's in-process
 * duration is logged to stderr as "handled <COMMAND> <ms>".
 * Run it from the repository root (the setns addon is found under dist/native).
 */
import { handleCni, serveCni } from '../../src/fastpath/index.ts';

async function main(): Promise<void> {
  const path = process.argv[2];
  if (!path) throw new Error('usage: cni-server.ts SOCKET');
  const timing = process.env.WEFT_FASTPATH_TIMING === '1';
  const ac = new AbortController();
  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => ac.abort());
  await serveCni({
    path,
    signal: ac.signal,
    handler: async (req) => {
      const t0 = process.hrtime.bigint();
      const reply = await handleCni(req);
      if (timing) process.stderr.write(`handled ${req.env.CNI_COMMAND} ${Number(process.hrtime.bigint() - t0) / 1e6}\n`);
      return reply;
    },
  });
  process.stdout.write('ready\n');
}

main().catch((err) => {
  process.stderr.write(`cni-server: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
