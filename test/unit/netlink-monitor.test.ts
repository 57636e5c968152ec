/**
 * rtnetlink notification parsing (src/netlink/monitor.ts) on hand-built datagrams laid out as
 * the kernel sends them (linux/rtnetlink.h structs, attributes 4-byte aligned), and on hostile
 * ones: nothing but a typed error may come out of bytes that are not a notification.
 */
import test from 'ava';
import { cstr, ifinfomsg, nla, NLA_F_NESTED, u16be, u32, u8 } from '../../src/netlink/attrs.ts';
import { BadNotificationError, OVERRUN, parseNotifications } from '../../src/netlink/monitor.ts';

const ip = (s: string) => Buffer.from(s.split('.').map(Number));
const mac = (s: string) => Buffer.from(s.split(':').map((x) => parseInt(x, 16)));

/** One netlink message: nlmsghdr (len, type, flags, seq, pid 0) then the body, padded. */
function msg(type: number, body: Buffer): Buffer {
  const len = 16 + body.length;
  const out = Buffer.alloc((len + 3) & ~3);
  out.writeUInt32LE(len, 0);
  out.writeUInt16LE(type, 4);
  body.copy(out, 16);
  return out;
}

function rtmsg(o: { family?: number; dstLen: number; table?: number; protocol?: number; scope?: number; type?: number; flags?: number }): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt8(o.family ?? 2, 0);
  b.writeUInt8(o.dstLen, 1);
  b.writeUInt8(o.table ?? 254, 4);
  b.writeUInt8(o.protocol ?? 4, 5);
  b.writeUInt8(o.scope ?? 0, 6);
  b.writeUInt8(o.type ?? 1, 7);
  b.writeUInt32LE(o.flags ?? 0, 8);
  return b;
}

function ndmsg(o: { family: number; index: number; state: number }): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt8(o.family, 0);
  b.writeInt32LE(o.index, 4);
  b.writeUInt16LE(o.state, 8);
  return b;
}

function ifaddrmsg(o: { prefixLen: number; index: number; family?: number }): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt8(o.family ?? 2, 0);
  b.writeUInt8(o.prefixLen, 1);
  b.writeUInt32LE(o.index, 4);
  return b;
}

const RTM_NEWLINK = 16;
const RTM_DELLINK = 17;
const RTM_NEWADDR = 20;
const RTM_DELROUTE = 25;
const RTM_NEWROUTE = 24;
const RTM_NEWNEIGH = 28;
const RTM_DELNEIGH = 29;

test('a peer route: destination, gateway, device, onlink, table and scope as the dumps read them', (t) => {
  const body = Buffer.concat([rtmsg({ dstLen: 24, flags: 4 /* RTNH_F_ONLINK */ }), nla(15, u32(254)), nla(1, ip('198.18.2.0')), nla(5, ip('198.18.2.0')), nla(4, u32(7))]);
  t.deepEqual(parseNotifications(msg(RTM_NEWROUTE, body)), [
    { kind: 'route', op: 'new', route: { dst: '198.18.2.0/24', table: 254, gateway: '198.18.2.0', index: 7, onlink: true, scope: 'universe' } },
  ]);
  const del = parseNotifications(msg(RTM_DELROUTE, Buffer.concat([rtmsg({ dstLen: 0, scope: 253 }), nla(4, u32(3))])));
  t.deepEqual(del, [{ kind: 'route', op: 'del', route: { dst: '0.0.0.0/0', table: 254, index: 3, scope: 'link' } }]);
});

test('local, broadcast and IPv6 routes are skipped', (t) => {
  const local = msg(RTM_NEWROUTE, Buffer.concat([rtmsg({ dstLen: 32, table: 255, type: 2 }), nla(1, ip('198.18.1.0'))]));
  const v6 = msg(RTM_NEWROUTE, Buffer.concat([rtmsg({ family: 10, dstLen: 64 }), nla(1, Buffer.alloc(16))]));
  t.deepEqual(parseNotifications(Buffer.concat([local, v6])), []);
});

test('an ARP entry: permanent with its MAC; one that lost its MAC (ip neigh del turns it FAILED first) reads as a deletion', (t) => {
  const perm = msg(RTM_NEWNEIGH, Buffer.concat([ndmsg({ family: 2, index: 7, state: 0x80 }), nla(1, ip('198.18.2.0')), nla(2, mac('aa:bb:cc:00:00:02'))]));
  t.deepEqual(parseNotifications(perm), [{ kind: 'neigh', op: 'new', neigh: { index: 7, ip: '198.18.2.0', mac: 'aa:bb:cc:00:00:02', permanent: true } }]);
  const failed = msg(RTM_NEWNEIGH, Buffer.concat([ndmsg({ family: 2, index: 7, state: 0x20 }), nla(1, ip('198.18.2.0'))]));
  t.deepEqual(parseNotifications(failed), [{ kind: 'neigh', op: 'del', neigh: { index: 7, ip: '198.18.2.0', mac: '', permanent: false } }]);
  const reachable = msg(RTM_NEWNEIGH, Buffer.concat([ndmsg({ family: 2, index: 2, state: 0x02 }), nla(1, ip('198.51.100.1')), nla(2, mac('02:00:00:00:00:01'))]));
  t.is((parseNotifications(reachable)[0] as { neigh: { permanent: boolean } }).neigh.permanent, false);
});

test('a VXLAN FDB entry (AF_BRIDGE with an IPv4 destination); a bridge-learned pod MAC without one is skipped', (t) => {
  const fdb = msg(RTM_DELNEIGH, Buffer.concat([ndmsg({ family: 7, index: 7, state: 0x80 }), nla(2, mac('aa:bb:cc:00:00:03')), nla(1, ip('198.51.100.13'))]));
  t.deepEqual(parseNotifications(fdb), [{ kind: 'fdb', op: 'del', fdb: { index: 7, mac: 'aa:bb:cc:00:00:03', dst: '198.51.100.13' } }]);
  const learned = msg(RTM_NEWNEIGH, Buffer.concat([ndmsg({ family: 7, index: 9, state: 0x02 }), nla(2, mac('0a:58:c6:12:01:05'))]));
  t.deepEqual(parseNotifications(learned), []);
  const v6dst = msg(RTM_NEWNEIGH, Buffer.concat([ndmsg({ family: 7, index: 7, state: 0x80 }), nla(2, mac('aa:bb:cc:00:00:03')), nla(1, Buffer.alloc(16))]));
  t.deepEqual(parseNotifications(v6dst), []);
});

test('a vxlan link with its name, MTU, MAC, up flag and VXLAN attributes; a deleted link', (t) => {
  const data = Buffer.concat([nla(1, u32(1)), nla(3, u32(2)), nla(4, ip('198.51.100.11')), nla(7, u8(0)), nla(15, u16be(8472))]);
  const linkinfo = Buffer.concat([nla(1, cstr('vxlan')), nla(2 | NLA_F_NESTED, data)]);
  const body = Buffer.concat([ifinfomsg({ index: 7, flags: 0x1 | 0x40 }), nla(3, cstr('flannel.1')), nla(4, u32(1450)), nla(1, mac('0e:00:00:00:00:07')), nla(18 | NLA_F_NESTED, linkinfo)]);
  t.deepEqual(parseNotifications(msg(RTM_NEWLINK, body)), [
    {
      kind: 'link',
      op: 'new',
      link: { index: 7, name: 'flannel.1', mtu: 1450, mac: '0e:00:00:00:00:07', up: true, kind: 'vxlan', vxlan: { vni: 1, port: 8472, local: '198.51.100.11', parentIndex: 2, learning: false } },
    },
  ]);
  const down = parseNotifications(msg(RTM_DELLINK, Buffer.concat([ifinfomsg({ index: 7 }), nla(3, cstr('flannel.1'))])));
  t.deepEqual(down, [{ kind: 'link', op: 'del', link: { index: 7, name: 'flannel.1', mtu: 0, mac: '', up: false } }]);
});

test('an address, and several messages in one datagram in order', (t) => {
  const addr = msg(RTM_NEWADDR, Buffer.concat([ifaddrmsg({ prefixLen: 32, index: 7 }), nla(2, ip('198.18.1.0')), nla(1, ip('198.18.1.0'))]));
  const route = msg(RTM_DELROUTE, Buffer.concat([rtmsg({ dstLen: 24 }), nla(1, ip('198.18.3.0')), nla(4, u32(7))]));
  const evs = parseNotifications(Buffer.concat([addr, route]));
  t.deepEqual(
    evs.map((e) => (e === OVERRUN ? 'overrun' : `${e.kind} ${e.op}`)),
    ['addr new', 'route del'],
  );
  t.deepEqual(evs[0], { kind: 'addr', op: 'new', addr: { index: 7, ip: '198.18.1.0', prefixLen: 32 } });
});

test('NLMSG_OVERRUN says notifications were lost; errors and unknown types are skipped', (t) => {
  t.deepEqual(parseNotifications(Buffer.concat([msg(4, Buffer.alloc(0)), msg(2, Buffer.alloc(20)), msg(99, Buffer.alloc(8))])), [OVERRUN]);
});

test('a message longer than its datagram, or shorter than a header, is refused; short bodies are skipped', (t) => {
  const m = msg(RTM_NEWROUTE, Buffer.concat([rtmsg({ dstLen: 24 }), nla(1, ip('198.18.2.0'))]));
  t.throws(() => parseNotifications(m.subarray(0, m.length - 4)), { instanceOf: BadNotificationError });
  const bad = Buffer.from(m);
  bad.writeUInt32LE(8, 0);
  t.throws(() => parseNotifications(bad), { instanceOf: BadNotificationError });
  t.deepEqual(parseNotifications(msg(RTM_NEWNEIGH, Buffer.alloc(4))), []);
  t.deepEqual(parseNotifications(msg(RTM_NEWLINK, Buffer.alloc(8))), []);
  // Attributes whose payloads have the wrong size are ignored, not misread.
  const odd = msg(RTM_NEWROUTE, Buffer.concat([rtmsg({ dstLen: 24 }), nla(1, Buffer.alloc(3)), nla(5, Buffer.alloc(2)), nla(4, Buffer.alloc(1))]));
  t.deepEqual(parseNotifications(odd), [{ kind: 'route', op: 'new', route: { dst: '0.0.0.0/24', table: 254, scope: 'universe' } }]);
});

test('seeded random and mutated datagrams: events or BadNotificationError, nothing else', (t) => {
  let seed = 0x5eed;
  const rnd = () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed;
  };
  const good = [
    msg(RTM_NEWROUTE, Buffer.concat([rtmsg({ dstLen: 24 }), nla(1, ip('198.18.2.0')), nla(5, ip('198.18.2.0')), nla(4, u32(7))])),
    msg(RTM_NEWNEIGH, Buffer.concat([ndmsg({ family: 7, index: 7, state: 0x80 }), nla(2, mac('aa:bb:cc:00:00:03')), nla(1, ip('198.51.100.13'))])),
    msg(RTM_NEWLINK, Buffer.concat([ifinfomsg({ index: 7 }), nla(3, cstr('flannel.1')), nla(18 | NLA_F_NESTED, nla(1, cstr('vxlan')))])),
  ];
  let events = 0;
  for (let i = 0; i < 3000; i++) {
    let buf: Buffer;
    if (i % 2) {
      buf = Buffer.alloc(rnd() % 200);
      for (let k = 0; k < buf.length; k++) buf[k] = rnd() & 0xff;
    } else {
      buf = Buffer.from(good[i % good.length]);
      for (let k = 0; k < 1 + (rnd() % 4); k++) buf[rnd() % buf.length] = rnd() & 0xff;
    }
    try {
      events += parseNotifications(buf).length;
    } catch (err) {
      if (!(err instanceof BadNotificationError)) t.fail(`datagram ${buf.toString('hex')}: ${(err as Error).stack}`);
    }
  }
  t.true(events > 0, 'some mutated datagrams still parse');
});
