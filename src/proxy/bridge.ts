/**
 * The one node setting the proxy depends on: bridged IPv4 frames must traverse the ip hooks
 * (`net.bridge.bridge-nf-call-iptables=1`), so that the reply of a same-node endpoint is
 * un-DNATed by conntrack (see the design note in ruleset.ts). On this kernel br_netfilter is
 * built in and the switch is per network namespace; it defaults to 1, but an operator or a
 * hardening profile may have turned it off, so weftd checks and sets it.
 *
 * The path is read and written synchronously: /proc/sys/net is the calling thread's namespace,
 * and libuv's pool threads may sit in another one (see src/netns/README.md).
 */
import { readFileSync, writeFileSync } from 'node:fs';

const KNOB = '/proc/sys/net/bridge/bridge-nf-call-iptables';

/** True when bridged IPv4 traffic passes the ip hooks in this namespace; undefined without br_netfilter. */
export function bridgeNetfilterEnabled(): boolean | undefined {
  try {
    return readFileSync(KNOB, 'utf8').trim() === '1';
  } catch {
    return undefined;
  }
}

/** Turns bridge-nf-call-iptables on in this namespace; returns whether it had to. */
export function ensureBridgeNetfilter(): boolean {
  const on = bridgeNetfilterEnabled();
  if (on === undefined) throw new Error(`br_netfilter is not available ("${KNOB}" is missing)`);
  if (on) return false;
  writeFileSync(KNOB, '1\n');
  return true;
}
