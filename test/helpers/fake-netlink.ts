/**
 * An in-memory {@link Netlink} for unit tests of the vxlan backend: it keeps links, addresses,
 * routes, neighbors and FDB entries in arrays, records each write in `ops`, and answers the
 * way the kernel does where the backend depends on it (EEXIST, ESRCH/ENOENT on deleting what
 * is not there, everything on a device goes with it).
 */
import { LinkNotFoundError, NetlinkError, type Addr, type Fdb, type Link, type LinkSpec, type Neigh, type Netlink, type Route } from '../../src/netlink/index.ts';

export class FakeNetlink implements Netlink {
  links_: Link[] = [{ index: 2, name: 'eth0', kind: 'veth', mtu: 1500, mac: '02:00:00:00:00:02', up: true }];
  addrs_: Addr[] = [{ index: 2, ip: '198.51.100.11', prefixLen: 24 }];
  routes_: Route[] = [];
  neighs_: Neigh[] = [];
  fdbs_: Fdb[] = [];
  ops: string[] = [];
  #next = 10;

  async links() {
    return this.links_;
  }
  async linkByName(name: string) {
    const l = this.links_.find((x) => x.name === name);
    if (!l) throw new LinkNotFoundError(name);
    return { ...l };
  }
  async linkByIndex(index: number) {
    const l = this.links_.find((x) => x.index === index);
    if (!l) throw new LinkNotFoundError(index);
    return { ...l };
  }
  async linkAdd(spec: LinkSpec) {
    if (this.links_.some((l) => l.name === spec.name)) throw new NetlinkError('add', 'EEXIST');
    if (spec.kind !== 'vxlan') throw new Error('fake: vxlan only');
    const mac = spec.mac ?? `aa:00:00:00:00:${this.#next.toString(16).padStart(2, '0')}`;
    this.links_.push({
      index: this.#next++,
      name: spec.name,
      kind: 'vxlan',
      mtu: spec.mtu ?? 1500,
      mac,
      up: false,
      vxlan: { vni: spec.vni, port: spec.port, local: spec.local, parentIndex: spec.parentIndex, learning: spec.learning ?? false },
    });
    this.ops.push(`link add ${spec.name}`);
    return undefined;
  }
  /** What the kernel does when a device goes: everything on it goes too. */
  async linksDel(indices: readonly number[]) {
    for (const index of indices) if (this.links_.some((l) => l.index === index)) await this.linkDel(index);
  }

  async linkDel(index: number) {
    this.links_ = this.links_.filter((l) => l.index !== index);
    this.addrs_ = this.addrs_.filter((a) => a.index !== index);
    this.routes_ = this.routes_.filter((r) => r.index !== index);
    this.neighs_ = this.neighs_.filter((n) => n.index !== index);
    this.fdbs_ = this.fdbs_.filter((f) => f.index !== index);
  }
  async linkSetUp(index: number) {
    this.links_.find((l) => l.index === index)!.up = true;
  }
  async linkSetDown(index: number) {
    this.links_.find((l) => l.index === index)!.up = false;
  }
  async linkSetMtu(index: number, mtu: number) {
    this.links_.find((l) => l.index === index)!.mtu = mtu;
  }
  async linkSetPort() {}
  async addrs(index?: number) {
    return this.addrs_.filter((a) => index === undefined || a.index === index);
  }
  async addrAdd(a: Addr) {
    this.addrs_.push(a);
    this.ops.push(`addr add ${a.ip}/${a.prefixLen}`);
  }
  async addrDel(a: Addr) {
    this.addrs_ = this.addrs_.filter((x) => !(x.index === a.index && x.ip === a.ip));
  }
  async routes() {
    return this.routes_.map((r) => ({ ...r }));
  }
  async routeReplace(r: Route) {
    this.routes_ = this.routes_.filter((x) => x.dst !== r.dst);
    this.routes_.push({ ...r });
    this.ops.push(`route ${r.dst} via ${r.gateway}${r.onlink ? ' onlink' : ''}`);
  }
  async routeDel(r: Route) {
    if (!this.routes_.some((x) => x.dst === r.dst)) throw new NetlinkError('del', 'ESRCH');
    this.routes_ = this.routes_.filter((x) => x.dst !== r.dst);
    this.ops.push(`route del ${r.dst}`);
  }
  async neighs(index?: number) {
    return this.neighs_.filter((n) => index === undefined || n.index === index).map((n) => ({ ...n }));
  }
  async neighReplace(n: Neigh) {
    this.neighs_ = this.neighs_.filter((x) => !(x.index === n.index && x.ip === n.ip));
    this.neighs_.push({ ...n });
    this.ops.push(`neigh ${n.ip} ${n.mac}${n.permanent ? ' permanent' : ''}`);
  }
  async neighDel(n: Neigh) {
    this.neighs_ = this.neighs_.filter((x) => !(x.index === n.index && x.ip === n.ip));
    this.ops.push(`neigh del ${n.ip}`);
  }
  async fdbs(index?: number) {
    return this.fdbs_.filter((f) => index === undefined || f.index === index).map((f) => ({ ...f }));
  }
  async fdbReplace(f: Fdb) {
    this.fdbs_ = this.fdbs_.filter((x) => !(x.index === f.index && x.mac === f.mac));
    this.fdbs_.push({ ...f });
    this.ops.push(`fdb ${f.mac} ${f.dst}`);
  }
  async fdbDel(f: Fdb) {
    const before = this.fdbs_.length;
    this.fdbs_ = this.fdbs_.filter((x) => !(x.index === f.index && x.mac === f.mac && x.dst === f.dst));
    if (before === this.fdbs_.length) throw new NetlinkError('del', 'ENOENT');
    this.ops.push(`fdb del ${f.mac} ${f.dst}`);
  }
  close() {}
}
