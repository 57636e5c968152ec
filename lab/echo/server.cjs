// A TCP + UDP echo server for the lab and the proxy tests, run inside a pod's namespace:
//   node lab/echo/server.cjs NAME TCP_PORTS UDP_PORTS     (ports comma-separated)
// Each TCP connection and each UDP datagram is answered with "NAME <client address>", so a
// caller sees which endpoint it reached and which source address the endpoint saw. Prints
// "ready" once every port listens.
'use strict';
const net = require('node:net'),
  dgram = require('node:dgram');
const [name, tcpPorts, udpPorts] = process.argv.slice(2);
let pending = 0;
const done = () => {
  if (--pending === 0) process.stdout.write('ready\n');
};
for (const p of tcpPorts.split(',').map(Number)) {
  pending++;
  net
    .createServer((c) => {
      c.on('error', () => {});
      c.end(`${name} ${c.remoteAddress}\n`);
    })
    .listen(p, '0.0.0.0', done);
}
for (const p of udpPorts.split(',').map(Number)) {
  pending++;
  const s = dgram.createSocket('udp4');
  s.on('message', (_m, r) => s.send(`${name} ${r.address}\n`, r.port, r.address));
  s.bind(p, '0.0.0.0', done);
}
