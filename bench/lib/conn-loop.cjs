// TCP connection loop for the proxy figure, run inside a pod's namespace:
//   node bench/lib/conn-loop.cjs COUNT OFFSET HOST:PORT [HOST:PORT ...]
// Makes COUNT connections to each target, one at a time, to an echo server
// (lab/echo/server.cjs), each read to the server's end. The targets take turns connection by
// connection (A B, B A, A B, ...), so every target sees the same moments of the machine's load:
// on a shared 2-core machine the load moves by +-15% from one second to the next, which
// back-to-back runs of each target turned into noise in their ratio. Prints
// {"targets":[{"ok","errors","ns","us"}]}: ns is the sum of that target's connection times
// (connect to the reply's end, process.hrtime), so Node's start-up is not counted; us is their
// spread in microseconds (p50, p90, p99, max, and how many took over 10 ms), to tell a few slow
// connections from a slower path.
//
// Source ports: target i connects from ports 10000 + 12000 i + OFFSET upwards (wrapping after
// 12000), never from another target's; the figure gives each round a fresh OFFSET, so no port
// comes back within a run either. The targets are one server reached two ways (through the
// ClusterIP and straight), so on the server's side they share one space of 4-tuples: with the
// kernel picking ports, a connection to one target sometimes got a port whose 4-tuple the server
// still held in TIME_WAIT from the other target, with unrelated sequence numbers and timestamps,
// and PAWS rejected its SYN (TcpExtPAWSTimewait, seen by hand). A direct connection is spared
// more often (conntrack moves its source port off the old entry's tuple); a DNATed one is not.
// Reusing one target's ports round after round (an earlier version) was worse still for the
// DNATed side: its 4-tuple, in conntrack's TIME_WAIT (120 s) from the round before, stalled
// connections for a second (proxy-bc7); the kernel's own choice walks on through the range.
'use strict';
const net = require('node:net');
const count = Number(process.argv[2]);
const offset = Number(process.argv[3]);
const targets = process.argv.slice(4).map((t) => {
  const i = t.lastIndexOf(':');
  return { host: t.slice(0, i), port: Number(t.slice(i + 1)), ok: 0, errors: 0, ns: 0n, times: [], n: 0 };
});
for (const [i, t] of targets.entries()) t.base = 10000 + 12000 * i;
function one(t) {
  const localPort = t.base + ((offset + t.n++) % 12000);
  return new Promise((resolve) => {
    const c = net.connect({ host: t.host, port: t.port, localPort });
    let got = '';
    const timer = setTimeout(() => {
      c.destroy();
      resolve(false);
    }, 3000);
    c.on('data', (d) => (got += d));
    c.on('end', () => {
      clearTimeout(timer);
      resolve(got.length > 0);
    });
    c.on('error', () => {
      clearTimeout(timer);
      resolve(false);
    });
  });
}
(async () => {
  for (const t of targets) await one(t); // warm-up (JIT, first ARP), not counted
  for (let i = 0; i < count; i++) {
    const order = i % 2 ? [...targets].reverse() : targets;
    for (const t of order) {
      const t0 = process.hrtime.bigint();
      (await one(t)) ? t.ok++ : t.errors++;
      const dt = process.hrtime.bigint() - t0;
      t.ns += dt;
      t.times.push(Number(dt) / 1000);
    }
  }
  const spread = (xs) => {
    const s = [...xs].sort((a, b) => a - b);
    const at = (q) => Math.round(s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? 0);
    return { p50: at(0.5), p90: at(0.9), p99: at(0.99), max: Math.round(s[s.length - 1] ?? 0), over10ms: s.filter((x) => x > 10_000).length };
  };
  process.stdout.write(JSON.stringify({ targets: targets.map(({ ok, errors, ns, times }) => ({ ok, errors, ns: String(ns), us: spread(times) })) }));
})();
