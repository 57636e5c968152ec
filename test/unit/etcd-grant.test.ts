/**
 * Lease grants whose answer was lost (src/subnet/etcd.ts): weftd picks the lease ID, so a grant
 * that failed but may have been applied is revoked after the next good grant, and etcd3's retry
 * of an applied grant ("lease already exists") is taken as the grant it is. The etcd3 client's
 * calls are stubbed; nothing connects.
 */
import test from 'ava';
import { parseCIDR } from '../../src/ip/ipv4.ts';
import { EtcdSubnetManager } from '../../src/subnet/etcd.ts';

const attrs = { publicIP: '198.51.100.11', backendType: 'vxlan', backendData: { VNI: 1, VtepMAC: '02:00:00:00:0b:01' } };
const lease = { subnet: parseCIDR('198.18.3.0/24'), ...attrs, modRevision: '5', etcdLeaseId: '7' };

/** A manager whose key is gone (so a renewal re-creates it) and whose grants `grant` answers. */
function setup(grant: (req: { TTL: number; ID: string }) => Promise<{ ID: string; TTL: string }>) {
  const m = new EtcdSubnetManager({ endpoints: ['http://198.51.100.2:2379'] });
  const granted: string[] = [];
  const revoked: string[] = [];
  const c = m.client as unknown as Record<string, unknown> & { leaseClient: Record<string, unknown> };
  c.get = () => ({ exec: async () => ({ kvs: [], header: { revision: '9' } }) });
  c.put = () => ({ value: () => ({ lease: () => ({}) }) });
  // biome-ignore lint/suspicious/noThenProperty: etcd3's transaction builder names its step then()
  c.if = () => ({ then: () => ({ commit: async () => ({ succeeded: true, header: { revision: '10' } }) }) });
  c.leaseClient.leaseGrant = async (req: { TTL: number; ID: string }) => {
    granted.push(req.ID);
    return grant(req);
  };
  c.leaseClient.leaseRevoke = async (req: { ID: string }) => {
    revoked.push(req.ID);
    return {};
  };
  return { m, granted, revoked };
}

test('a grant that failed is revoked by its ID after the next good grant', async (t) => {
  let calls = 0;
  const { m, granted, revoked } = setup(async (req) => {
    if (calls++ === 0) throw new Error('14 UNAVAILABLE: Connection dropped');
    return { ID: req.ID, TTL: '60' };
  });
  t.teardown(() => m.close());
  await t.throwsAsync(m.renewLease(lease, attrs, { ttlSeconds: 60 }), { message: /grant lease failed: 14 UNAVAILABLE/ });
  t.deepEqual(revoked, [], 'nothing to revoke before a grant works again');
  const renewed = await m.renewLease(lease, attrs, { ttlSeconds: 60 });
  t.is(renewed.etcdLeaseId, granted[1]);
  await new Promise((r) => setImmediate(r));
  t.deepEqual(revoked, [granted[0]], 'the lost grant is revoked, the new one kept');
  t.not(granted[0], granted[1]);
  t.regex(granted[0]!, /^[1-9]\d*$/, 'a positive decimal int64 of ours');
});

test("etcd3's retry of a grant that was applied ('lease already exists') is that grant", async (t) => {
  const { m, granted, revoked } = setup(async () => {
    throw new Error('etcdserver: lease already exists');
  });
  t.teardown(() => m.close());
  const renewed = await m.renewLease(lease, attrs, { ttlSeconds: 60 });
  t.is(renewed.etcdLeaseId, granted[0]);
  t.deepEqual(revoked, []);
});
