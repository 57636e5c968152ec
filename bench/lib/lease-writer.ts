/**
 * Writes synthetic flannel leases to etcd on command, for the peer-convergence figure. Runs in
 * the node namespace (etcd listens on its 127.0.0.1): `node lease-writer.ts ENDPOINT PREFIX`.
 * Reads one JSON command per stdin line and answers one JSON line on stdout; times are
 * `process.hrtime.bigint()` (CLOCK_MONOTONIC, comparable across processes) as strings.
 *
 *   {"op":"bulk","indexes":[...]}  -> {"t0":..,"t1":..}   transactions of 100 puts, all in flight at
 *                                                          once; t0 before the first
 *   {"op":"one","index":N}         -> {"t0":..,"t1":..}   t0 just before the put, t1 once acked
 *   {"op":"del","indexes":[...]}   -> {"t0":..,"t1":..}
 */
import { createInterface } from 'node:readline';
import { Etcd3 } from 'etcd3';
import { leaseFor } from './leases.ts';

async function main(): Promise<void> {
  const [endpoint, prefix] = process.argv.slice(2);
  if (!endpoint || !prefix) throw new Error('usage: lease-writer.ts ENDPOINT PREFIX');
  const client = new Etcd3({ hosts: endpoint });
  const lease = client.lease(24 * 3600, { autoKeepAlive: false });
  const leaseId = await lease.grant();
  const put = (i: number) => {
    const l = leaseFor(i, prefix);
    return client.put(l.key).value(l.value).lease(leaseId).exec();
  };
  const putMany = async (idx: number[]) => {
    const batches: Array<Promise<unknown>> = [];
    for (let k = 0; k < idx.length; k += 100) {
      const success = idx.slice(k, k + 100).map((i) => {
        const l = leaseFor(i, prefix);
        return { request_put: { key: Buffer.from(l.key), value: Buffer.from(l.value), lease: leaseId } };
      });
      batches.push(client.kv.txn({ compare: [], success, failure: [] }));
    }
    await Promise.all(batches);
  };
  const now = () => process.hrtime.bigint().toString();
  const reply = (o: object) => process.stdout.write(`${JSON.stringify(o)}\n`);
  process.stdout.write('ready\n');
  for await (const line of createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    const cmd = JSON.parse(line) as { op: string; index?: number; indexes?: number[] };
    try {
      const t0 = now();
      if (cmd.op === 'bulk') await putMany(cmd.indexes!);
      else if (cmd.op === 'one') await put(cmd.index!);
      else if (cmd.op === 'del') await Promise.all(cmd.indexes!.map((i) => client.delete().key(leaseFor(i, prefix).key).exec()));
      else throw new Error(`unknown op "${cmd.op}"`);
      reply({ t0, t1: now() });
    } catch (err) {
      reply({ error: (err as Error).message });
    }
  }
  client.close();
}

main().catch((err) => {
  process.stderr.write(`lease-writer: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
