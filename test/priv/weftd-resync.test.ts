/**
 * The watch's safety net against a real etcd: an EtcdSubnetManager whose watch stream loses one
 * put (the watch stream's response loses that key's event, as if the stream had died
 * quietly for that event) still delivers it, through the periodic resync, as a watch event; the
 * repair is logged and counted, and the restarted watch keeps delivering later changes exactly
 * once. A second manager with the same fault and the resync off is the control: it sees the
 * later change but never the lost one, so the fault really made the watch miss it.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startCluster, type Cluster } from '../helpers/cluster.ts';

let cluster: Cluster;

test.before(async () => {
  cluster = await startCluster({ nodes: 1, start: false });
});

test.after.always(async () => {
  await cluster?.destroy();
});

test('a put the watch stream lost is found by the resync, applied as an event, logged and counted', async (t) => {
  const prefix = '/weft-test-resync';
  await cluster.etcd.put(`${prefix}/config`, JSON.stringify({ Network: '198.18.0.0/16' }));
  const etcdTs = join(import.meta.dirname, '..', '..', 'src', 'subnet', 'etcd.ts');
  const script = `
    import { EtcdSubnetManager } from ${JSON.stringify(etcdTs)};
    const endpoints = [${JSON.stringify(cluster.topo.state.etcdEndpoint)}];
    const prefix = ${JSON.stringify(prefix)};
    const LOST = prefix + '/subnets/198.18.9.0-24';
    const value = (ip) => JSON.stringify({ PublicIP: ip, BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: '02:00:00:00:09:' + ip.slice(-2) } });
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    const until = async (what, fn) => {
      for (let i = 0; i < 300; i++) { if (fn()) return; await sleep(100); }
      throw new Error('timed out waiting for ' + what);
    };
    // Fault: the watch streams this manager opens swallow the first put of LOST they receive.
    function loseOnePut(m) {
      const open = m.client.watchClient.watch.bind(m.client.watchClient);
      let lost = false;
      m.client.watchClient.watch = async (...a) => {
        const stream = await open(...a);
        const on = stream.on.bind(stream);
        stream.on = (ev, fn) => {
          if (ev !== 'data') return on(ev, fn);
          return on('data', (res) => {
            const events = (res.events ?? []).filter((e) => {
              if (!lost && e.type === 'Put' && e.kv.key.toString() === LOST) { lost = true; return false; }
              return true;
            });
            fn({ ...res, events });
          });
        };
        return stream;
      };
    }
    function run(resyncIntervalMs) {
      const r = { events: [], snapshots: 0, repairs: 0, logs: [] };
      r.m = new EtcdSubnetManager({ endpoints, prefix, resyncIntervalMs, log: Object.fromEntries(['error', 'warn', 'info', 'debug'].map((l) => [l, (msg) => r.logs.push(l + ' ' + msg)])), onResyncRepair: (n) => (r.repairs += n) });
      loseOnePut(r.m);
      r.ac = new AbortController();
      r.done = r.m.watchLeases(r.ac.signal, {
        snapshot: () => r.snapshots++,
        event: (e) => r.events.push(e.type + ' ' + (e.type === 'put' ? e.lease.subnet : e.subnet).ip),
      });
      return r;
    }
    const withResync = run(1000);
    const control = run(0);
    const writer = new EtcdSubnetManager({ endpoints, prefix });
    await until('both snapshots', () => withResync.snapshots === 1 && control.snapshots === 1);
    await sleep(300); // let both watch streams be created before the writes
    await writer.client.put(prefix + '/subnets/198.18.8.0-24').value(value('198.51.100.81'));
    await writer.client.put(LOST).value(value('198.51.100.91'));
    await writer.client.put(prefix + '/subnets/198.18.10.0-24').value(value('198.51.100.92'));
    await until('control sees the other two puts', () => control.events.length >= 2);
    await until('resync repair', () => withResync.repairs > 0);
    // After the repair the watch restarts from the listing: later changes still arrive, once.
    await writer.client.delete().key(LOST);
    await writer.client.put(prefix + '/subnets/198.18.11.0-24').value(value('198.51.100.93'));
    await until('events after the restart', () => withResync.events.length >= 5 && control.events.length >= 4);
    await sleep(2500); // two more resync intervals: nothing else may be reported
    for (const r of [withResync, control]) { r.ac.abort(); await r.done; r.m.close(); }
    writer.close();
    const out = (r) => ({ events: r.events, snapshots: r.snapshots, repairs: r.repairs, logs: r.logs });
    console.log(JSON.stringify({ withResync: out(withResync), control: out(control) }));
    process.exit(0);
  `;
  const { stdout } = await promisify(execFile)('nsenter', [`--net=/run/netns/${cluster.topo.state.etcdNetns}`, '--', process.execPath, '--input-type=module', '-e', script], {
    encoding: 'utf8',
    timeout: 90_000,
  });
  const out = JSON.parse(stdout) as Record<'withResync' | 'control', { events: string[]; snapshots: number; repairs: number; logs: string[] }>;
  const ip = (s: string) => String(s.split('.').reduce((a, o) => a * 256 + Number(o), 0));
  const put = (s: string) => `put ${ip(s)}`;
  const del = (s: string) => `delete ${ip(s)}`;
  // Control: the later puts and the delete arrive, the lost put never does.
  t.deepEqual(out.control.events, [put('198.18.8.0'), put('198.18.10.0'), del('198.18.9.0'), put('198.18.11.0')], stdout);
  t.is(out.control.repairs, 0);
  // With the resync: the lost put comes in as an event exactly once (a resync may run between
  // the writes, so its place among the first three varies); the restarted watch delivers the
  // delete and the next put once each, and does not repeat what it replays.
  const w = out.withResync.events;
  t.deepEqual(w.slice(0, 3).sort(), [put('198.18.8.0'), put('198.18.10.0'), put('198.18.9.0')].sort(), stdout);
  t.deepEqual(w.slice(3), [del('198.18.9.0'), put('198.18.11.0')], stdout);
  t.is(out.withResync.repairs, 1);
  t.is(out.withResync.snapshots, 1, 'repaired without a new snapshot');
  t.true(
    out.withResync.logs.some((l) => /^info lease resync: the watch missed 1 put\(s\) \(198\.18\.9\.0\/24\); applying them$/.test(l)),
    out.withResync.logs.join('\n'),
  );
  t.true(out.withResync.logs.some((l) => /lease watch: resync found missed changes; restarting the watch/.test(l)));
});
