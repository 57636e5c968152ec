/**
 * Partial syncs without nft: the script's lines as one nf_tables netlink batch
 * (NFNL_MSG_BATCH_BEGIN ... BATCH_END), written on a NETLINK_NETFILTER socket.
 *
 * Why: before it sends anything, nft (1.0.6) dumps every chain and set of the table into its
 * cache; at 1000 Services x 10 endpoints (11k chains, 1000 anonymous sets) that is nearly all
 * of a partial sync's 30-50 ms. The kernel resolves chains and sets by name (sets added in the
 * same batch by the ID we give them), so nothing needs reading first.
 *
 * ruleset.ts stays the one source of truth: this module only translates the line shapes it
 * emits for a partial sync, each into the messages `nft --debug=netlink,mnl -f` sends for it
 * (same expressions, attribute order, flags and set userdata, so `nft -j list` cannot tell
 * the two apart; test/unit/proxy-nfnl.test.ts holds nft's own bytes). A script with any other
 * line is not translated at all ({@link translateScript} says which line) and the caller gives
 * it to nft whole: never half one way and half the other.
 *
 * The batch is all or nothing, as with `nft -f`: the kernel aborts the whole transaction when
 * any message fails, and acknowledges each message (NLM_F_ACK) or reports its errno.
 */
import { endianness } from 'node:os';
import { getSystemErrorMap } from 'node:util';
import { RawNetlinkSocket } from 'netlink/dist/raw.js';
import { formatIPv4, maskOf, parseIPv4 } from '../ip/ipv4.ts';
import { cstr, nla, NLA_F_NESTED, u32be, u64be } from '../netlink/attrs.ts';
import { AF_INET, NLM_F, NLMSG_DONE, NLMSG_ERROR, NLMSG_OVERRUN } from '../netlink/uapi.ts';
import { openNetns, withNetns } from '../netns/index.ts';
import { ExecError } from './nft.ts';
import { PROXY_TABLE, type TableNames } from './ruleset.ts';

const NETLINK_NETFILTER = 12;
const NFNL_SUBSYS_NFTABLES = 10;
const NFNL_MSG_BATCH_BEGIN = 0x10;
const NFNL_MSG_BATCH_END = 0x11;
// (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN / NFT_MSG_NEWGEN
const NFT_MSG_GETGEN = (10 << 8) | 16;
const NFT_MSG_NEWGEN = (10 << 8) | 15;
const NFTA_GEN_ID = 1;
// (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GET{CHAIN,SET} and the NEW* its dump answers with
const NFT_MSG_GETCHAIN = (10 << 8) | 4;
const NFT_MSG_GETSET = (10 << 8) | 10;
const NFT_MSG_NEWCHAIN = (10 << 8) | 3;
const NFT_MSG_NEWSET = (10 << 8) | 9;

// linux/netfilter/nf_tables.h
const MSG = { NEWCHAIN: 3, DELCHAIN: 5, NEWRULE: 6, DELRULE: 8, NEWSET: 9, DELSET: 11, NEWSETELEM: 12, DELSETELEM: 14 } as const;
const N = NLA_F_NESTED;
const TABLE = 1; // NFTA_{CHAIN,RULE,SET,SET_ELEM_LIST}_TABLE
const NFTA_CHAIN_NAME = 3;
const NFTA_RULE_CHAIN = 2;
const NFTA_RULE_EXPRESSIONS = 4;
const NFTA_LIST_ELEM = 1;
const NFTA_EXPR_NAME = 1;
const NFTA_EXPR_DATA = 2;
const NFTA_DATA_VALUE = 1;
const NFTA_DATA_VERDICT = 2;
const NFTA_VERDICT_CODE = 1;
const NFTA_VERDICT_CHAIN = 2;
const NFTA_SET_NAME = 2;
const NFTA_SET_FLAGS = 3;
const NFTA_SET_KEY_TYPE = 4;
const NFTA_SET_KEY_LEN = 5;
const NFTA_SET_DATA_TYPE = 6;
const NFTA_SET_DATA_LEN = 7;
const NFTA_SET_DESC = 9;
const NFTA_SET_DESC_SIZE = 1;
const NFTA_SET_ID = 10;
const NFTA_SET_TIMEOUT = 11;
const NFTA_SET_USERDATA = 13;
const NFTA_SET_ELEM_LIST_SET = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS = 3;
const NFTA_SET_ELEM_LIST_SET_ID = 4;
const NFTA_SET_ELEM_KEY = 1;
const NFTA_SET_ELEM_DATA = 2;
const NFT_SET_ANONYMOUS = 0x1;
const NFT_SET_CONSTANT = 0x2;
const NFT_SET_MAP = 0x8;
const NFT_SET_TIMEOUT = 0x10;
const NFT_SET_OBJECT = 0x40;
const NFT_SET_EVAL = 0x20;
const NFT_DATA_VERDICT = 0xffffff00;
const NFT_JUMP = 0xfffffffd;
const NFT_GOTO = 0xfffffffc;
const NF_DROP = 0;
const NFT_REG_VERDICT = 0;
const NFT_REG_1 = 1;
const NFT_REG_2 = 2;
const NFT_PAYLOAD_NETWORK_HEADER = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER = 2;
const NFT_CMP_EQ = 0;
const NFT_CMP_NEQ = 1;
const NFT_META_L4PROTO = 16;
const NFT_NG_RANDOM = 1;
const NFT_FIB_RESULT_ADDRTYPE = 3;
const NFTA_FIB_F_SADDR = 1;
const RTN_LOCAL = 2;
const NFT_NAT_DNAT = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED = 2;
const NFT_DYNSET_OP_UPDATE = 1;
// nft's datatype numbers (nftables src/datatype.h), stored as the set's key type
const TYPE_INTEGER = 4;
const TYPE_IPADDR = 7;
// nft's set userdata (libnftnl udata TLVs: 1-byte type, 1-byte length), as nft 1.0.6 writes it:
// key byte order big endian (an address set)...
const UDATA_ADDR_SET = Buffer.from('000402000000', 'hex');
// ...and for `numgen ... vmap {}`: key byte order host, data byte order invalid, the data's
// typeof (verdict) and "not an interval"
const UDATA_NUMGEN_VMAP = Buffer.from('00040100000001040000000004080004010000000100060400000000', 'hex');

const PROTO: Record<string, number> = { tcp: 6, udp: 17, sctp: 132 };
const LE = endianness() === 'LE';

/** One message of a batch, without its nlmsghdr and nfgenmsg. */
export interface NfMessage {
  type: number;
  flags: number;
  attrs: Buffer;
  /** Index of the script line (among its non-empty lines) the message comes from. */
  line: number;
}

export type Translation = { ok: true; messages: NfMessage[]; lines: string[] } | { ok: false; line: string; reason: string };

class Unsupported extends Error {}

const cat = (...b: Buffer[]) => Buffer.concat(b);
const a32 = (type: number, v: number) => nla(type, u32be(v));
const str = (type: number, s: string) => nla(type, cstr(s));

function hostU32(v: number): Buffer {
  const b = Buffer.alloc(4);
  if (LE) b.writeUInt32LE(v >>> 0);
  else b.writeUInt32BE(v >>> 0);
  return b;
}

function expr(name: string, ...data: Buffer[]): Buffer {
  return nla(NFTA_LIST_ELEM | N, cat(str(NFTA_EXPR_NAME, name), nla(NFTA_EXPR_DATA | N, cat(...data))));
}

const payload = (base: number, offset: number, len: number) => expr('payload', a32(1, NFT_REG_1), a32(2, base), a32(3, offset), a32(4, len));
const cmp = (op: number, value: Buffer) => expr('cmp', a32(1, NFT_REG_1), a32(2, op), nla(3 | N, nla(NFTA_DATA_VALUE, value)));
const meta = (key: number) => expr('meta', a32(2, key), a32(1, NFT_REG_1));
const immediate = (reg: number, value: Buffer) => expr('immediate', a32(1, reg), nla(2 | N, nla(NFTA_DATA_VALUE, value)));

function verdictData(code: number, chain?: string): Buffer {
  return nla(NFTA_DATA_VERDICT | N, cat(a32(NFTA_VERDICT_CODE, code), ...(chain === undefined ? [] : [str(NFTA_VERDICT_CHAIN, chain)])));
}

const verdict = (code: number, chain?: string) => expr('immediate', a32(1, NFT_REG_VERDICT), nla(2 | N, verdictData(code, chain)));

// ---------------------------------------------------------------------------------------------
// Parsing: only what ruleset.ts writes, character for character.

// The chain and set names ruleset.ts makes (nftName, plus the frame's fixed names): nothing
// that nft could read as a keyword.
const GENERATED = /^(?:svc|local|ext|ep|aff)-[A-Z2-7]{8}-[a-zA-Z0-9/_.-]+$/;
const FRAME_CHAINS = new Set(['mark-for-masquerade', 'masquerading', 'services', 'service-endpoints-check', 'nodeport-endpoints-check', 'cluster-ips-check', 'reject-chain']);
const NAME = '([a-zA-Z][a-zA-Z0-9/_.-]*)';

function name(s: string, frameOk: boolean): string {
  if (s.length > 255 || !(GENERATED.test(s) || (frameOk && FRAME_CHAINS.has(s)))) throw new Unsupported(`name "${s.slice(0, 80)}"`);
  return s;
}

function ipBuf(s: string): Buffer {
  let v: number;
  try {
    v = parseIPv4(s);
  } catch {
    throw new Unsupported(`address "${s}"`);
  }
  if (formatIPv4(v) !== s) throw new Unsupported(`address "${s}"`);
  return u32be(v);
}

function port(s: string): number {
  const p = Number(s);
  if (!/^\d{1,5}$/.test(s) || p < 1 || p > 65535) throw new Unsupported(`port "${s}"`);
  return p;
}

function portBuf(s: string): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(port(s));
  return b;
}

function proto(s: string): number {
  const p = PROTO[s];
  if (p === undefined) throw new Unsupported(`protocol "${s}"`);
  return p;
}

/** Keys of the maps a partial sync edits: how each key is written and laid out. */
const MAPS: Record<string, { parts: Array<'ip' | 'proto' | 'port'>; verdicts: boolean }> = {
  'cluster-ips': { parts: ['ip'], verdicts: false },
  'service-ips': { parts: ['ip', 'proto', 'port'], verdicts: true },
  'no-endpoint-services': { parts: ['ip', 'proto', 'port'], verdicts: true },
  'service-nodeports': { parts: ['proto', 'port'], verdicts: true },
  'no-endpoint-nodeports': { parts: ['proto', 'port'], verdicts: true },
};

/** A concatenated key: each part in its own 4-byte-aligned register slot, as nft lays it out. */
function key(text: string, parts: Array<'ip' | 'proto' | 'port'>): Buffer {
  const fields = text.split(' . ');
  if (fields.length !== parts.length) throw new Unsupported(`key "${text}"`);
  return cat(
    ...parts.map((p, i) => {
      const f = fields[i]!;
      const b = Buffer.alloc(4);
      if (p === 'ip') ipBuf(f).copy(b);
      else if (p === 'proto') b[0] = proto(f);
      else portBuf(f).copy(b);
      return b;
    }),
  );
}

function jumpCode(v: string): number {
  return v === 'jump' ? NFT_JUMP : NFT_GOTO;
}

function list(body: string): string[] {
  const m = /^\{ (.+) \}$/.exec(body);
  if (!m) throw new Unsupported('element list');
  return m[1]!.split(', ');
}

interface Ctx {
  /** Sets declared earlier in this batch: name -> NFTA_SET_ID. */
  setIds: Map<string, number>;
  nextId: number;
  out: NfMessage[];
  line: number;
}

function push(ctx: Ctx, type: number, flags: number, ...attrs: Buffer[]): void {
  ctx.out.push({ type: (NFNL_SUBSYS_NFTABLES << 8) | type, flags: NLM_F.REQUEST | flags, attrs: cat(...attrs), line: ctx.line });
}

const tableAttr = str(TABLE, PROXY_TABLE);

/** A reference to a set by name, with its batch ID when the batch declares it. */
function setRef(ctx: Ctx, nameType: number, idType: number, set: string): Buffer[] {
  const id = ctx.setIds.get(set);
  return id === undefined ? [str(nameType, set)] : [str(nameType, set), a32(idType, id)];
}

/** The CIDR match `ip saddr != NET/LEN`, loaded and masked the way nft does it. */
function saddrNotIn(cidr: string): Buffer[] {
  const m = /^([\d.]+)\/(\d{1,2})$/.exec(cidr);
  if (!m) throw new Unsupported(`prefix "${cidr}"`);
  const len = Number(m[2]);
  const net = ipBuf(m[1]!);
  if (len < 1 || len > 32 || (net.readUInt32BE(0) & ~maskOf(len)) !== 0) throw new Unsupported(`prefix "${cidr}"`);
  // a whole-byte prefix loads just those bytes; any other one all four, masked
  if (len % 8 === 0) return [payload(NFT_PAYLOAD_NETWORK_HEADER, 12, len / 8), cmp(NFT_CMP_NEQ, net.subarray(0, len / 8))];
  return [
    payload(NFT_PAYLOAD_NETWORK_HEADER, 12, 4),
    expr('bitwise', a32(1, NFT_REG_1), a32(2, NFT_REG_1), a32(3, 4), nla(4 | N, nla(NFTA_DATA_VALUE, u32be(maskOf(len)))), nla(5 | N, nla(NFTA_DATA_VALUE, u32be(0)))),
    cmp(NFT_CMP_NEQ, net),
  ];
}

const saddr = () => payload(NFT_PAYLOAD_NETWORK_HEADER, 12, 4);

/**
 * Set elements (each an element's attributes) in as many messages as their list needs: an
 * attribute's length is 16 bits, so like libnftnl end a message before its element list would
 * outgrow it and go on in the next. The elements' numbers go on across messages, skipping the
 * one nft spent on its attempt to fit the element into the full message.
 */
function pushElements(ctx: Ctx, type: number, flags: number, head: Buffer[], bodies: Buffer[]): void {
  let elems: Buffer[] = [];
  let size = 4;
  let n = 0;
  const flush = () => push(ctx, type, flags, ...head, nla(NFTA_SET_ELEM_LIST_ELEMENTS | N, cat(...elems)));
  for (const body of bodies) {
    const len = (4 + body.length + 3) & ~3;
    if (elems.length && size + len > 0xffff) {
      flush();
      elems = [];
      size = 4;
      n++;
    }
    elems.push(nla(++n | N, body));
    size += len;
  }
  flush();
}

type Shape = [RegExp, (ctx: Ctx, m: string[]) => Buffer[]];

const V = `(jump|goto) ${NAME}`;

/** The rule shapes ruleset.ts writes (pickRules, addEndpoint, addServicePort), each as nft encodes it. */
const RULES: Shape[] = [
  [new RegExp(`^ip saddr ([\\d.]+) ${V}$`), (_, m) => [saddr(), cmp(NFT_CMP_EQ, ipBuf(m[1]!)), verdict(jumpCode(m[2]!), name(m[3]!, true))]],
  [
    new RegExp(`^update @${NAME} \\{ ip saddr \\}$`),
    (ctx, m) => {
      const set = name(m[1]!, false);
      const id = ctx.setIds.get(set);
      return [saddr(), expr('dynset', a32(4, NFT_DYNSET_OP_UPDATE), a32(3, NFT_REG_1), str(1, set), ...(id === undefined ? [] : [a32(2, id)]))];
    },
  ],
  [
    /^meta l4proto (tcp|udp|sctp) dnat to ([\d.]+):(\d+)$/,
    (_, m) => [
      meta(NFT_META_L4PROTO),
      cmp(NFT_CMP_EQ, Buffer.from([proto(m[1]!)])),
      immediate(NFT_REG_1, ipBuf(m[2]!)),
      immediate(NFT_REG_2, portBuf(m[3]!)),
      expr('nat', a32(1, NFT_NAT_DNAT), a32(2, AF_INET), a32(3, NFT_REG_1), a32(5, NFT_REG_2), a32(7, NF_NAT_RANGE_PROTO_SPECIFIED)),
    ],
  ],
  [new RegExp(`^ip saddr @${NAME} ${V}$`), (ctx, m) => [saddr(), expr('lookup', a32(2, NFT_REG_1), ...setRef(ctx, 1, 4, name(m[1]!, false))), verdict(jumpCode(m[2]!), name(m[3]!, true))]],
  [/^numgen random mod (\d{1,5}) vmap (\{ .+ \})$/, (ctx, m) => numgenVmap(ctx, Number(m[1]), m[2]!)],
  [
    new RegExp(`^ip daddr ([\\d.]+) (tcp|udp|sctp) dport (\\d+) ip saddr != ([\\d./]+) ${V}$`),
    (_, m) => [
      payload(NFT_PAYLOAD_NETWORK_HEADER, 16, 4),
      cmp(NFT_CMP_EQ, ipBuf(m[1]!)),
      meta(NFT_META_L4PROTO),
      cmp(NFT_CMP_EQ, Buffer.from([proto(m[2]!)])),
      payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
      cmp(NFT_CMP_EQ, portBuf(m[3]!)),
      ...saddrNotIn(m[4]!),
      verdict(jumpCode(m[5]!), name(m[6]!, true)),
    ],
  ],
  [new RegExp(`^${V}$`), (_, m) => [verdict(jumpCode(m[1]!), name(m[2]!, true))]],
  [
    new RegExp(`^fib saddr type local ${V}$`),
    (_, m) => [expr('fib', a32(3, NFTA_FIB_F_SADDR), a32(2, NFT_FIB_RESULT_ADDRTYPE), a32(1, NFT_REG_1)), cmp(NFT_CMP_EQ, hostU32(RTN_LOCAL)), verdict(jumpCode(m[1]!), name(m[2]!, true))],
  ],
  [/^drop$/, () => [verdict(NF_DROP)]],
];

const ARM = new RegExp(`^(\\d{1,5}) : ${V}$`);

/** `numgen random mod N vmap { ... }`: an anonymous constant map (declared and filled just before its rule, as nft does), looked up by its batch ID. */
function numgenVmap(ctx: Ctx, mod: number, body: string): Buffer[] {
  const arms = list(body).map((arm) => {
    const a = ARM.exec(arm);
    if (!a) throw new Unsupported(`vmap arm "${arm}"`);
    return { key: Number(a[1]), code: jumpCode(a[2]!), chain: name(a[3]!, true) };
  });
  if (mod < 1 || arms.some((a) => a.key >= mod) || new Set(arms.map((a) => a.key)).size !== arms.length) throw new Unsupported('vmap keys');
  const id = ctx.nextId++;
  const anon = '__map%d'; // the kernel numbers it
  push(
    ctx,
    MSG.NEWSET,
    NLM_F.CREATE,
    tableAttr,
    str(NFTA_SET_NAME, anon),
    a32(NFTA_SET_FLAGS, NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | NFT_SET_MAP),
    a32(NFTA_SET_KEY_TYPE, TYPE_INTEGER),
    a32(NFTA_SET_KEY_LEN, 4),
    a32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT),
    a32(NFTA_SET_DATA_LEN, 0),
    a32(NFTA_SET_ID, id),
    nla(NFTA_SET_DESC | N, a32(NFTA_SET_DESC_SIZE, arms.length)),
    nla(NFTA_SET_USERDATA, UDATA_NUMGEN_VMAP),
  );
  const elems = arms.map((a) => cat(nla(NFTA_SET_ELEM_KEY | N, nla(NFTA_DATA_VALUE, hostU32(a.key))), nla(NFTA_SET_ELEM_DATA | N, verdictData(a.code, a.chain))));
  pushElements(ctx, MSG.NEWSETELEM, NLM_F.CREATE, [tableAttr, str(NFTA_SET_ELEM_LIST_SET, anon), a32(NFTA_SET_ELEM_LIST_SET_ID, id)], elems);
  return [expr('numgen', a32(1, NFT_REG_1), a32(2, mod), a32(3, NFT_NG_RANDOM), a32(4, 0)), expr('lookup', a32(2, NFT_REG_1), a32(3, NFT_REG_VERDICT), str(1, anon), a32(4, id))];
}

function ruleExprs(ctx: Ctx, rule: string): Buffer[] {
  for (const [re, build] of RULES) {
    const m = re.exec(rule);
    if (m) return build(ctx, m);
  }
  throw new Unsupported('rule shape');
}

const ELEMENT = new RegExp(`^(.+) : ${V}$`);
const LINE = new RegExp(`^(add|delete|flush) (chain|rule|set|element) ip ${PROXY_TABLE} ${NAME}(?: (.+))?$`);

function translateLine(ctx: Ctx, text: string): void {
  const m = LINE.exec(text);
  if (!m) throw new Unsupported('command');
  const [, verb, what, obj, rest] = m as unknown as [string, string, string, string, string | undefined];
  const op = `${verb} ${what}`;
  if (op === 'flush chain' && rest === undefined) {
    push(ctx, MSG.DELRULE, 0, tableAttr, str(NFTA_RULE_CHAIN, name(obj, false)));
    return;
  }
  if (op === 'delete chain' && rest === undefined) {
    push(ctx, MSG.DELCHAIN, 0, tableAttr, str(NFTA_CHAIN_NAME, name(obj, false)));
    return;
  }
  if (op === 'add chain' && rest === undefined) {
    push(ctx, MSG.NEWCHAIN, NLM_F.CREATE, tableAttr, str(NFTA_CHAIN_NAME, name(obj, false)));
    return;
  }
  if (op === 'delete set' && rest === undefined) {
    push(ctx, MSG.DELSET, 0, tableAttr, str(NFTA_SET_NAME, name(obj, false)));
    return;
  }
  if (op === 'add set' && rest !== undefined) {
    const s = /^\{ type ipv4_addr; flags dynamic,timeout; timeout (\d{1,5})s; \}$/.exec(rest);
    const secs = Number(s?.[1]);
    if (!s || secs < 1 || secs > 86400) throw new Unsupported('set declaration');
    const set = name(obj, false);
    const id = ctx.nextId++;
    push(
      ctx,
      MSG.NEWSET,
      NLM_F.CREATE,
      tableAttr,
      str(NFTA_SET_NAME, set),
      a32(NFTA_SET_FLAGS, NFT_SET_TIMEOUT | NFT_SET_EVAL),
      a32(NFTA_SET_KEY_TYPE, TYPE_IPADDR),
      a32(NFTA_SET_KEY_LEN, 4),
      a32(NFTA_SET_ID, id),
      nla(NFTA_SET_TIMEOUT, u64be(BigInt(secs) * 1000n)),
      nla(NFTA_SET_USERDATA, UDATA_ADDR_SET),
    );
    ctx.setIds.set(set, id);
    return;
  }
  if (op === 'add rule' && rest !== undefined) {
    const chain = name(obj, false);
    const exprs = ruleExprs(ctx, rest);
    push(ctx, MSG.NEWRULE, NLM_F.CREATE | NLM_F.APPEND, tableAttr, str(NFTA_RULE_CHAIN, chain), nla(NFTA_RULE_EXPRESSIONS | N, cat(...exprs)));
    return;
  }
  if ((op === 'add element' || op === 'delete element') && rest !== undefined) {
    const map = MAPS[obj];
    if (!map) throw new Unsupported(`set "${obj}"`);
    const add = verb === 'add';
    const bodies = list(rest).map((item) => {
      let k = item;
      let data: Buffer | undefined;
      if (add && map.verdicts) {
        const v = ELEMENT.exec(item);
        if (!v) throw new Unsupported(`element "${item}"`);
        k = v[1]!;
        data = nla(NFTA_SET_ELEM_DATA | N, verdictData(jumpCode(v[2]!), name(v[3]!, true)));
      }
      return cat(nla(NFTA_SET_ELEM_KEY | N, nla(NFTA_DATA_VALUE, key(k, map.parts))), ...(data ? [data] : []));
    });
    const ref = add ? setRef(ctx, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_SET_ID, obj) : [str(NFTA_SET_ELEM_LIST_SET, obj)];
    pushElements(ctx, add ? MSG.NEWSETELEM : MSG.DELSETELEM, add ? NLM_F.CREATE : 0, [tableAttr, ...ref], bodies);
    return;
  }
  throw new Unsupported('command');
}

/**
 * The batch's messages for `script` (lines as ruleset.ts's partialScript writes them), or
 * the first line of a shape this module does not translate (pure).
 */
export function translateScript(script: string): Translation {
  const lines = script.split('\n').filter((l) => l.trim() !== '');
  const ctx: Ctx = { setIds: new Map(), nextId: 1, out: [], line: 0 };
  for (let i = 0; i < lines.length; i++) {
    ctx.line = i;
    try {
      translateLine(ctx, lines[i]!);
    } catch (err) {
      if (err instanceof Unsupported) return { ok: false, line: lines[i]!, reason: err.message };
      throw err;
    }
  }
  return { ok: true, messages: ctx.out, lines };
}

function nlmsg(type: number, flags: number, seq: number, family: number, resId: number, attrs: Buffer): Buffer {
  const len = 20 + attrs.length;
  const b = Buffer.alloc(20);
  b.writeUInt32LE(len, 0);
  b.writeUInt16LE(type, 4);
  b.writeUInt16LE(flags, 6);
  b.writeUInt32LE(seq >>> 0, 8);
  b.writeUInt32LE(0, 12);
  b.writeUInt8(family, 16);
  b.writeUInt16BE(resId, 18);
  return cat(b, attrs);
}

/** The datagram: BATCH_BEGIN, the messages (seq0+1...), BATCH_END; `ack` asks for NLM_F.ACK on each message. */
export function encodeBatch(messages: NfMessage[], seq0: number, ack = true): Buffer {
  const parts = [nlmsg(NFNL_MSG_BATCH_BEGIN, NLM_F.REQUEST, seq0, 0, NFNL_SUBSYS_NFTABLES, Buffer.alloc(0))];
  for (const [i, m] of messages.entries()) parts.push(nlmsg(m.type, m.flags | (ack ? NLM_F.ACK : 0), seq0 + 1 + i, AF_INET, 0, m.attrs));
  parts.push(nlmsg(NFNL_MSG_BATCH_END, NLM_F.REQUEST, seq0 + 1 + messages.length, 0, NFNL_SUBSYS_NFTABLES, Buffer.alloc(0)));
  return cat(...parts);
}

const errnoNames = getSystemErrorMap();

/** `errno` as the kernel puts it in an NLMSG_ERROR (negative). */
function errnoText(errno: number): string {
  const e = errnoNames.get(-Math.abs(errno));
  return e ? `${e[0]} (${e[1]})` : `errno ${Math.abs(errno)}`;
}

export interface NfnlOptions {
  /** A network namespace path (`/run/netns/NAME`) to program instead of the current one. */
  netns?: string;
  timeoutMs?: number;
}

/** What {@link NfnlExecutor.apply} did. */
export type NfnlResult = { applied: true; messages: number } | { applied: false; reason: string };

// Budget per acknowledgement in the receive buffer (an ack is a small skb; an error carries a
// copy of the failed message on top): a batch whose answers might not fit goes to nft, since
// a dropped answer would fail a batch the kernel had committed.
const ACK_COST = 1024;
const BUF_WANT = 4 << 20;

/**
 * One NETLINK_NETFILTER socket (made in `netns` when given: it stays bound there) applying
 * translated scripts. Calls are serialized; the socket is opened on first use, does not keep
 * the process alive when idle, and is replaced after a timeout or socket error.
 */
export class NfnlExecutor {
  readonly #opts: NfnlOptions;
  #sock: RawNetlinkSocket | undefined;
  #sndbuf = 0;
  #rcvbuf = 0;
  #seq = Math.floor(Math.random() * 0x7fffffff);
  #pending: { onMessage(b: Buffer): void; onError(e: Error): void } | undefined;
  #chain: Promise<unknown> = Promise.resolve();

  constructor(opts: NfnlOptions = {}) {
    this.#opts = opts;
  }

  /**
   * Applies `script` as one batch when every line translates; otherwise sends nothing and
   * says why (`applied: false`), for the caller to use nft. Throws {@link ExecError} when the
   * kernel refused the batch (nothing changed) or gave no answer in time.
   */
  apply(script: string): Promise<NfnlResult> {
    const p = this.#chain.then(() => this.#apply(script));
    this.#chain = p.catch(() => {});
    return p;
  }

  #open(): RawNetlinkSocket {
    if (this.#sock) return this.#sock;
    const make = () => new RawNetlinkSocket(NETLINK_NETFILTER);
    let sock: RawNetlinkSocket;
    if (this.#opts.netns) {
      const ns = openNetns(this.#opts.netns);
      try {
        sock = withNetns(ns, make);
      } finally {
        ns.close();
      }
    } else sock = make();
    try {
      sock.setSendBufferSize(BUF_WANT);
      sock.setRecvBufferSize(BUF_WANT);
    } catch {
      // capped by net.core.[rw]mem_max: what we got is read back below
    }
    this.#sndbuf = sock.getSendBufferSize();
    this.#rcvbuf = sock.getRecvBufferSize();
    sock.on('message', (b: Buffer) => this.#pending?.onMessage(b));
    sock.on('error', (e: Error) => {
      // ENOBUFS: answers were dropped; the socket is not to be trusted for the next batch
      this.close();
      this.#pending?.onError(e);
    });
    sock.unref();
    this.#sock = sock;
    return sock;
  }

  async #apply(script: string): Promise<NfnlResult> {
    const t = translateScript(script);
    if (!t.ok) return { applied: false, reason: `${t.reason} in "${t.line.slice(0, 160)}"` };
    if (!t.messages.length) return { applied: true, messages: 0 };
    const sock = this.#open();
    const seq0 = this.#seq;
    this.#seq = (this.#seq + t.messages.length + 2) % 0x7fffffff;
    const batch = encodeBatch(t.messages, seq0);
    const answers = t.messages.reduce((n, m) => n + ACK_COST + m.attrs.length, 0);
    if (batch.length + 1024 > this.#sndbuf || answers > this.#rcvbuf) return { applied: false, reason: `batch of ${t.messages.length} messages (${batch.length} bytes) exceeds the socket buffers` };
    const errors: Array<{ index: number; errno: number }> = [];
    let acked = 0;
    await this.#exchange<void>(
      sock,
      batch,
      () => `the batch (${acked} of ${t.messages.length} messages answered)`,
      (buf, done) => {
        for (let off = 0; off + 16 <= buf.length; ) {
          const len = buf.readUInt32LE(off);
          const type = buf.readUInt16LE(off + 4);
          const seq = buf.readUInt32LE(off + 8);
          if (len < 16) break;
          if (type === NLMSG_OVERRUN) return done(new ExecError('nfnl: answers overran the socket', { stderr: '', code: null }));
          const index = seq - seq0 - 1;
          if (type === NLMSG_ERROR && len >= 20 && index >= -1 && index < t.messages.length) {
            const errno = buf.readInt32LE(off + 16);
            if (errno !== 0) errors.push({ index, errno });
            // an error on BATCH_BEGIN is the batch's own (commit failed, out of memory): whatever
            // else follows, the transaction is gone
            if (index === -1) return done();
            if (++acked === t.messages.length) return done();
          }
          off += (len + 3) & ~3;
        }
      },
    );
    if (errors.length) {
      const first = errors[0]!;
      const where = first.index < 0 ? 'the batch' : `line ${t.messages[first.index]!.line + 1} "${t.lines[t.messages[first.index]!.line]!.slice(0, 200)}"`;
      const msg = `nfnl: ${where}: ${errnoText(first.errno)}${errors.length > 1 ? ` (and ${errors.length - 1} more error(s))` : ''}; nothing applied`;
      throw new ExecError(msg, { stderr: msg, code: Math.abs(first.errno) });
    }
    return { applied: true, messages: t.messages.length };
  }

  /**
   * The names of the chains, sets and maps `ip weft-proxy` holds (anonymous sets left out), as
   * {@link tableNames} reads them from `nft -j list chains/sets/maps ip`: what a full sync needs
   * to know of the kernel's table, from two netlink dumps. The three nft processes took about
   * 140 ms at 1000 Services x 10 endpoints (each loads its cache of the family), a tenth of the
   * full sync's transaction. No table: empty names.
   */
  names(): Promise<TableNames> {
    const p = this.#chain.then(async () => {
      const out: TableNames = { chains: new Set(), sets: new Set(), maps: new Set() };
      for (const o of await this.#dump(NFT_MSG_GETCHAIN, NFT_MSG_NEWCHAIN, NFTA_CHAIN_NAME, undefined)) out.chains.add(o.name);
      for (const o of await this.#dump(NFT_MSG_GETSET, NFT_MSG_NEWSET, NFTA_SET_NAME, NFTA_SET_FLAGS)) {
        if (o.flags & NFT_SET_ANONYMOUS) continue;
        (o.flags & (NFT_SET_MAP | NFT_SET_OBJECT) ? out.maps : out.sets).add(o.name);
      }
      return out;
    });
    this.#chain = p.catch(() => {});
    return p;
  }

  /**
   * The objects of our table in a dump (`reply` messages): each one's name attribute and, when
   * `flagsType` is given, its flags (u32, big endian). The table attribute is type 1 in both.
   */
  async #dump(type: number, reply: number, nameType: number, flagsType: number | undefined): Promise<Array<{ name: string; flags: number }>> {
    const sock = this.#open();
    const seq = this.#seq;
    this.#seq = (this.#seq + 1) % 0x7fffffff;
    const out: Array<{ name: string; flags: number }> = [];
    const want = Buffer.from(`${PROXY_TABLE}\0`);
    await this.#exchange<void>(
      sock,
      nlmsg(type, NLM_F.REQUEST | NLM_F.DUMP, seq, AF_INET, 0, str(TABLE, PROXY_TABLE)),
      () => `the dump (${out.length} objects so far)`,
      (buf, done) => {
        for (let off = 0; off + 16 <= buf.length; ) {
          const len = buf.readUInt32LE(off);
          if (len < 16 || off + len > buf.length) break;
          const t = buf.readUInt16LE(off + 4);
          if (buf.readUInt32LE(off + 8) === seq) {
            if (t === NLMSG_DONE) return done();
            if (t === NLMSG_ERROR && len >= 20) {
              const errno = buf.readInt32LE(off + 16);
              // ENOENT: no such table
              if (errno === -2) return done();
              return done(new ExecError(`nfnl: dump: ${errnoText(errno)}`, { stderr: '', code: Math.abs(errno) }));
            }
            if (t === reply) {
              let ours = false;
              let name: string | undefined;
              let flags = 0;
              for (let at = off + 20; at + 4 <= off + len; ) {
                const alen = buf.readUInt16LE(at);
                if (alen < 4 || at + alen > off + len) break;
                const at2 = buf.readUInt16LE(at + 2) & 0x3fff;
                if (at2 === TABLE) ours = alen - 4 === want.length && buf.compare(want, 0, want.length, at + 4, at + alen) === 0;
                else if (at2 === nameType && alen > 5) name = buf.toString('utf8', at + 4, at + alen - 1);
                else if (at2 === flagsType && alen >= 8) flags = buf.readUInt32BE(at + 4);
                at += (alen + 3) & ~3;
              }
              if (ours && name !== undefined) out.push({ name, flags });
            }
          }
          off += (len + 3) & ~3;
        }
      },
    );
    return out;
  }

  /**
   * The kernel's nf_tables ruleset generation (NFT_MSG_GETGEN): every committed transaction in
   * the namespace, anyone's, bumps it. Equal readings mean no change in between.
   */
  generation(): Promise<number> {
    const p = this.#chain.then(() => this.#generation());
    this.#chain = p.catch(() => {});
    return p;
  }

  async #generation(): Promise<number> {
    const sock = this.#open();
    const seq = this.#seq;
    this.#seq = (this.#seq + 1) % 0x7fffffff;
    return this.#exchange<number>(
      sock,
      nlmsg(NFT_MSG_GETGEN, NLM_F.REQUEST, seq, 0, 0, Buffer.alloc(0)),
      () => 'GETGEN',
      (buf, done) => {
        for (let off = 0; off + 16 <= buf.length; ) {
          const len = buf.readUInt32LE(off);
          if (len < 16) break;
          const type = buf.readUInt16LE(off + 4);
          if (buf.readUInt32LE(off + 8) === seq) {
            if (type === NLMSG_ERROR && len >= 20) return done(new ExecError(`nfnl: GETGEN: ${errnoText(buf.readInt32LE(off + 16))}`, { stderr: '', code: null }));
            if (type === NFT_MSG_NEWGEN) {
              // nlmsghdr (16) + nfgenmsg (4), then attributes; NFTA_GEN_ID is a big-endian u32
              for (let at = off + 20; at + 4 <= off + len; ) {
                const alen = buf.readUInt16LE(at);
                if (alen < 4) break;
                if ((buf.readUInt16LE(at + 2) & 0x3fff) === NFTA_GEN_ID && alen >= 8) return done(undefined, buf.readUInt32BE(at + 4));
                at += (alen + 3) & ~3;
              }
              return done(new ExecError('nfnl: GETGEN answer without NFTA_GEN_ID', { stderr: '', code: null }));
            }
          }
          off += (len + 3) & ~3;
        }
      },
    );
  }

  /**
   * Sends `datagram` and hands every answer to `read` until it calls `done`; a socket error, a
   * failed send or the timeout (which also closes the socket) settle it with an ExecError.
   */
  #exchange<T>(sock: RawNetlinkSocket, datagram: Buffer, what: () => string, read: (buf: Buffer, done: (err?: Error, value?: T) => void) => void): Promise<T> {
    const timeoutMs = this.#opts.timeoutMs ?? 30_000;
    return new Promise<T>((resolve, reject) => {
      const done = (err?: Error, value?: T) => {
        clearTimeout(timer);
        this.#pending = undefined;
        sock.unref();
        if (err) reject(err);
        else resolve(value as T);
      };
      const timer = setTimeout(() => {
        this.close();
        done(new ExecError(`nfnl: no answer to ${what()} within ${timeoutMs} ms`, { stderr: '', code: null }));
      }, timeoutMs);
      this.#pending = {
        onError: (e) => done(new ExecError(`nfnl: socket error: ${e.message}`, { stderr: '', code: null, cause: e })),
        onMessage: (buf) => read(buf, done),
      };
      sock.ref();
      sock.send(datagram, {}, (err) => {
        if (err) done(new ExecError(`nfnl: send: ${err.message}`, { stderr: '', code: null, cause: err }));
      });
    });
  }

  /** Closes the socket (the next apply opens another). */
  close(): void {
    const s = this.#sock;
    this.#sock = undefined;
    if (s) {
      try {
        s.close();
      } catch {
        // already closed
      }
    }
  }
}
