// The echo servers' client: node lab/echo/client.cjs '{"host","port","proto":"tcp|udp","count","timeoutMs","srcPort"?}'
// Makes `count` requests one after another and prints a JSON array of {reply} or {err} with ms.
'use strict';
const net = require('node:net'),
  dgram = require('node:dgram');
const o = JSON.parse(process.argv[2]);
function tcp() {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const c = net.connect({ host: o.host, port: o.port });
    let buf = '';
    const timer = setTimeout(() => {
      c.destroy();
      resolve({ err: 'TIMEOUT', ms: Date.now() - t0 });
    }, o.timeoutMs);
    c.on('data', (d) => (buf += d));
    c.on('end', () => {
      clearTimeout(timer);
      resolve({ reply: buf.trim(), ms: Date.now() - t0 });
    });
    c.on('error', (e) => {
      clearTimeout(timer);
      resolve({ err: e.code, ms: Date.now() - t0 });
    });
  });
}
function udp() {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const s = dgram.createSocket({ type: 'udp4', reuseAddr: true });
    const fin = (r) => {
      clearTimeout(timer);
      try {
        s.close();
      } catch {}
      resolve({ ...r, ms: Date.now() - t0 });
    };
    const timer = setTimeout(() => fin({ err: 'TIMEOUT' }), o.timeoutMs);
    s.on('message', (m) => fin({ reply: m.toString().trim() }));
    s.on('error', (e) => fin({ err: e.code }));
    s.bind(o.srcPort || 0, () => s.connect(o.port, o.host, () => s.send('hi')));
  });
}
(async () => {
  const out = [];
  for (let i = 0; i < o.count; i++) out.push(await (o.proto === 'udp' ? udp() : tcp()));
  process.stdout.write(JSON.stringify(out));
})();
