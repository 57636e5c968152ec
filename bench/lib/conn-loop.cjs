// TCP connection loop for the proxy figure, run inside a pod's namespace:
//   node bench/lib/conn-loop.cjs HOST PORT COUNT
// Makes COUNT connections one after another to an echo server (lab/echo/server.cjs), each
// read to the server's end, and prints {"ok","errors","ns"}: ns from before the first connect
// to after the last reply (process.hrtime), so Node's start-up is not counted.
'use strict';
const net = require('node:net');
const [host, port, count] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
function one() {
  return new Promise((resolve) => {
    const c = net.connect({ host, port });
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
  let ok = 0,
    errors = 0;
  await one(); // warm-up (JIT, first ARP), not counted
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < count; i++) (await one()) ? ok++ : errors++;
  process.stdout.write(JSON.stringify({ ok, errors, ns: String(process.hrtime.bigint() - t0) }));
})();
