/** The etcd watch stream's liveness (src/subnet/etcdwatch.ts) against a scripted stream. */
import test from 'ava';
import { EventEmitter } from 'node:events';
import type { Etcd3, IWatchRequest, IWatchResponse } from 'etcd3';
import { watchStream, type WatchEnd } from '../../src/subnet/etcdwatch.ts';
import { FakeClock } from '../helpers/clock.ts';

/** A watch stream that records what the client writes and lets the test answer. */
class FakeStream extends EventEmitter {
  readonly written: IWatchRequest[] = [];
  cancelled = false;
  write(req: IWatchRequest) {
    this.written.push(req);
  }
  end() {}
  cancel() {
    this.cancelled = true;
  }
  reply(res: Partial<IWatchResponse>) {
    this.emit('data', { header: { revision: '10' }, watch_id: '0', created: false, canceled: false, compact_revision: '0', cancel_reason: '', fragment: false, events: [], ...res });
  }
}

function setup(from = 5n, latestRevision?: () => Promise<bigint | undefined>) {
  const clock = new FakeClock();
  const stream = new FakeStream();
  const client = { watchClient: { watch: async () => stream } } as unknown as Etcd3;
  const seen: string[] = [];
  const ac = new AbortController();
  const ended = watchStream({
    client,
    prefix: '/coreos.com/network/subnets/',
    from,
    clock,
    progressIntervalMs: 1000,
    stallMs: 3000,
    signal: ac.signal,
    latestRevision,
    onEvents: (evs) => seen.push(...evs.map((e) => `${e.type} ${e.kv.key} @${e.kv.mod_revision}`)),
  });
  return { clock, stream, ended, seen, ac };
}

const ev = (type: 'Put' | 'Delete', key: string, rev: string) => ({ type, kv: { key: Buffer.from(key), value: Buffer.from('{}'), mod_revision: rev } });

test('progress is asked for every interval; a stream that answers stays up; silence past the limit is a stall resuming after the last event', async (t) => {
  const { clock, stream, ended, seen } = setup();
  await clock.advance(0);
  t.deepEqual(stream.written[0].create_request?.start_revision, '5');
  t.true(stream.written[0].create_request?.progress_notify);
  stream.reply({ created: true, header: { revision: '9' } as IWatchResponse['header'] });
  for (let i = 0; i < 5; i++) {
    await clock.advance(1000);
    stream.reply({ watch_id: '-1' }); // the answer to the progress request
  }
  t.is(stream.written.filter((w) => w.progress_request).length, 5);
  stream.reply({ events: [ev('Put', '/coreos.com/network/subnets/198.18.1.0-24', '11'), ev('Delete', '/coreos.com/network/subnets/198.18.2.0-24', '12')] as IWatchResponse['events'] });
  t.deepEqual(seen, ['Put /coreos.com/network/subnets/198.18.1.0-24 @11', 'Delete /coreos.com/network/subnets/198.18.2.0-24 @12']);
  // Silence from here on.
  await clock.advance(1000);
  await clock.advance(1000);
  await clock.advance(1000);
  const end = (await ended) as WatchEnd;
  t.is(end.reason, 'stalled');
  t.is(end.resumeAt, 13n);
  t.regex(end.why, /no event and no progress answer for 3s/);
  t.true(end.heard, 'it worked before it went silent');
  t.true(stream.cancelled);
});

test('a compaction cancel re-lists; a created answer behind our revision is a reset; errors resume', async (t) => {
  {
    const { clock, stream, ended } = setup();
    await clock.advance(0);
    stream.reply({ created: true, canceled: true, compact_revision: '40' });
    t.deepEqual(await ended, { reason: 'cancelled', why: 'watch cancelled (compacted at revision 40)', heard: true });
  }
  {
    const { clock, stream, ended } = setup(100n);
    await clock.advance(0);
    stream.reply({ created: true, header: { revision: '3' } as IWatchResponse['header'] });
    const end = (await ended) as WatchEnd;
    t.is(end.reason, 'reset');
    t.is(end.resumeAt, undefined, 'emptied etcd: re-list');
  }
  {
    // Never a word from etcd: a stall that did not work even once.
    const { clock, ended } = setup();
    await clock.advance(0);
    for (let i = 0; i < 3; i++) await clock.advance(1000);
    const end = (await ended) as WatchEnd;
    t.is(end.reason, 'stalled');
    t.false(end.heard);
  }
  {
    const { clock, stream, ended } = setup();
    await clock.advance(0);
    stream.reply({ created: true });
    stream.reply({ header: { revision: '30' } as IWatchResponse['header'] }); // etcd's own progress notify for this watch
    stream.emit('error', new Error('14 UNAVAILABLE: Connection dropped'));
    t.deepEqual(await ended, { reason: 'error', why: 'watch stream failed (14 UNAVAILABLE: Connection dropped)', resumeAt: 31n, heard: true });
  }
});

test('a late wake-up (this process was paused) is not taken for a silent stream', async (t) => {
  const { clock, stream, ended, ac } = setup();
  await clock.advance(0);
  stream.reply({ created: true });
  await clock.advance(60_000); // frozen for a minute: one late tick
  t.is(stream.written.filter((w) => w.progress_request).length, 1, 'asked for progress instead of declaring a stall');
  stream.reply({ watch_id: '-1' });
  await clock.advance(1000);
  ac.abort();
  t.is(await ended, undefined);
});

test('a stream that does not open within the stall limit is a stall; the late stream is cancelled', async (t) => {
  const clock = new FakeClock();
  const stream = new FakeStream();
  let open!: (s: FakeStream) => void;
  const client = { watchClient: { watch: () => new Promise<FakeStream>((r) => (open = r)) } } as unknown as Etcd3;
  const ended = watchStream({ client, prefix: '/p/', from: 7n, clock, progressIntervalMs: 1000, stallMs: 3000, signal: new AbortController().signal, onEvents: () => undefined });
  await clock.advance(2999);
  let settled = false;
  void ended.then(() => (settled = true));
  await clock.advance(0);
  t.false(settled, 'still waiting below the limit');
  await clock.advance(1);
  const end = (await ended) as WatchEnd;
  t.is(end.reason, 'stalled');
  t.is(end.resumeAt, 7n);
  t.regex(end.why, /did not open within 3s/);
  open(stream);
  await new Promise((r) => setImmediate(r));
  t.true(stream.cancelled, 'the stream that opened too late is not left running');
  t.is(stream.written.length, 0, 'nothing was asked on it');
});

test('a stream that answers progress but leaves a change under the prefix undelivered for a probe interval is behind', async (t) => {
  let latest: bigint | undefined = 4n;
  const probes: string[] = [];
  const { clock, stream, ended } = setup(5n, async () => {
    probes.push(`at ${clock.now()}`);
    return latest;
  });
  await clock.advance(0);
  stream.reply({ created: true });
  const answer = async () => {
    await clock.advance(1000);
    stream.reply({ watch_id: '-1' }); // progress answers keep the stall detector quiet
  };
  for (let i = 0; i < 3; i++) await answer();
  t.is(probes.length, 1, 'one probe per stall interval');
  // A put at 12 that the stream delivers before the next probe: healthy.
  latest = 12n;
  for (let i = 0; i < 3; i++) await answer();
  stream.reply({ events: [ev('Put', '/coreos.com/network/subnets/198.18.1.0-24', '12')] as IWatchResponse['events'] });
  for (let i = 0; i < 3; i++) await answer();
  let settled = false;
  void ended.then(() => (settled = true));
  await clock.advance(0);
  t.false(settled, 'a change delivered within the interval is no trouble');
  // A put at 20 the stream never delivers: seen by one probe, still missing at the next.
  latest = 20n;
  for (let i = 0; i < 7 && !settled; i++) await answer();
  const end = (await ended) as WatchEnd;
  t.is(end.reason, 'stalled');
  t.regex(end.why, /behind: revision 20 under the prefix was not delivered within 3s/);
  t.is(end.resumeAt, 13n, 'resumes after the last delivered event');
  t.true(stream.cancelled);
});
