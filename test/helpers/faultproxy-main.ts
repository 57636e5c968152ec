/**
 * The fault proxy's process (faultproxy.ts): `node faultproxy-main.ts <listen ip:port> <upstream ip:port>`,
 * started inside the control-plane namespace. Prints `listening`, then answers each stdin
 * command (`pass [ip]`, `blackhole [ip]`, `reset [ip]`, `halfopen [ip]`, `stats`) with one `ok ...` or `error ...`
 * line. Exits when stdin closes or on SIGTERM.
 */
import { createInterface } from 'node:readline';
import { FaultProxy } from './faultproxy.ts';

function hostPort(text: string): { host: string; port: number } {
  const m = /^(\d+\.\d+\.\d+\.\d+):(\d+)$/.exec(text ?? '');
  if (!m) throw new Error(`"${text}" is not ip:port`);
  return { host: m[1], port: Number(m[2]) };
}

const [listenArg, upstreamArg] = process.argv.slice(2);
const listen = hostPort(listenArg);
const proxy = new FaultProxy(hostPort(upstreamArg));
await proxy.listen(listen.host, listen.port);
process.stdout.write('listening\n');
const stop = () => {
  proxy.close();
  process.exit(0);
};
process.on('SIGTERM', stop);
createInterface({ input: process.stdin })
  .on('line', (line) => {
    const [cmd, addr] = line.trim().split(/\s+/);
    try {
      if (addr !== undefined && !/^\d+\.\d+\.\d+\.\d+$/.test(addr)) throw new Error(`bad address "${addr}"`);
      if (cmd === 'pass' || cmd === 'blackhole') {
        proxy.setMode(cmd, addr);
        process.stdout.write(`ok ${cmd}\n`);
      } else if (cmd === 'reset') {
        process.stdout.write(`ok ${proxy.reset(addr)}\n`);
      } else if (cmd === 'halfopen') {
        process.stdout.write(`ok ${proxy.halfOpen(addr)}\n`);
      } else if (cmd === 'stats') {
        process.stdout.write(`ok ${JSON.stringify({ accepted: proxy.accepted, resets: proxy.resets, connections: proxy.connections })}\n`);
      } else {
        throw new Error(`unknown command "${cmd}"`);
      }
    } catch (err) {
      process.stdout.write(`error ${(err as Error).message}\n`);
    }
  })
  .on('close', stop);
