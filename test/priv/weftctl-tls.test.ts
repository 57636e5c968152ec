/**
 * weftctl's TLS flags and environment (shared with weftd) against an etcd that requires client
 * certificates: a throwaway CA, server and client certificate made with openssl, etcd in a
 * namespace on the test underlay.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { eventually, runInNs, Scope, sh, type Finished } from '../helpers/netns.ts';

const WEFTCTL = resolve('dist/bin/weftctl');
const IP = '198.51.100.11';
const ENDPOINT = `https://${IP}:2379`;

const scope = new Scope();
let ns = '';
let dir = '';

function openssl(args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
}

/** Key + certificate signed by the test CA, with the given extensions. */
function issue(name: string, ext: string): void {
  writeFileSync(join(dir, `${name}.ext`), ext);
  openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`]);
  openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.crt`, '-days', '1', '-extfile', `${name}.ext`]);
}

test.before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'wt-etcd-tls-'));
  scope.defer(() => rmSync(dir, { recursive: true, force: true }));
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-subj', '/CN=weft-test-ca', '-days', '1']);
  issue('server', `subjectAltName=IP:${IP}\nextendedKeyUsage=serverAuth\n`);
  issue('client', 'extendedKeyUsage=clientAuth\n');

  ns = scope.netns('tls');
  sh('ip', ['-n', ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'uplink']);
  sh('ip', ['-n', ns, 'addr', 'add', `${IP}/24`, 'dev', 'eth0']);
  sh('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
  sh('ip', ['-n', ns, 'link', 'set', 'uplink', 'up']);
  const etcd = scope.spawn('nsenter', [
    `--net=/run/netns/${ns}`,
    '--',
    'etcd',
    '--name',
    'tls',
    '--data-dir',
    join(dir, 'data'),
    '--listen-client-urls',
    ENDPOINT,
    '--advertise-client-urls',
    ENDPOINT,
    '--listen-peer-urls',
    `http://${IP}:2380`,
    '--initial-advertise-peer-urls',
    `http://${IP}:2380`,
    '--initial-cluster',
    `tls=http://${IP}:2380`,
    '--cert-file',
    join(dir, 'server.crt'),
    '--key-file',
    join(dir, 'server.key'),
    '--client-cert-auth',
    '--trusted-ca-file',
    join(dir, 'ca.crt'),
    '--log-level',
    'warn',
    '--logger',
    'zap',
  ]);
  etcd.stdout?.resume();
  etcd.stderr?.resume();
  const healthy = await eventually(
    () => {
      try {
        sh(
          'nsenter',
          [
            `--net=/run/netns/${ns}`,
            '--',
            'etcdctl',
            `--endpoints=${ENDPOINT}`,
            `--cacert=${join(dir, 'ca.crt')}`,
            `--cert=${join(dir, 'client.crt')}`,
            `--key=${join(dir, 'client.key')}`,
            '--dial-timeout=2s',
            'endpoint',
            'health',
          ],
          {
            env: { ...process.env, ETCDCTL_API: '3' },
          },
        );
        return true;
      } catch {
        return false;
      }
    },
    30_000,
    300,
  );
  if (!healthy) throw new Error('etcd with TLS did not become healthy');
});
test.after.always(() => scope.cleanup());

function weftctl(args: string[], env: Record<string, string> = {}): Promise<Finished> {
  return runInNs(ns, WEFTCTL, args, { PATH: process.env.PATH!, ...env });
}

test('TLS files from flags: network init and get network over mutual TLS', async (t) => {
  const tls = ['--etcd-endpoints', ENDPOINT, '--etcd-cafile', join(dir, 'ca.crt'), '--etcd-certfile', join(dir, 'client.crt'), '--etcd-keyfile', join(dir, 'client.key')];
  const init = await weftctl(['network', 'init', '--network', '198.18.0.0/16', ...tls]);
  t.is(init.code, 0, init.stderr);
  const get = await weftctl(['get', 'network', '-o', 'json', ...tls]);
  t.is(get.code, 0, get.stderr);
  t.is(JSON.parse(get.stdout).network, '198.18.0.0/16');
});

test("TLS files from weftd's environment variables", async (t) => {
  const r = await weftctl(['get', 'nodes'], {
    WEFTD_ETCD_ENDPOINTS: ENDPOINT,
    WEFTD_ETCD_CAFILE: join(dir, 'ca.crt'),
    WEFTD_ETCD_CERTFILE: join(dir, 'client.crt'),
    WEFTD_ETCD_KEYFILE: join(dir, 'client.key'),
  });
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /No node leases found/);
});

test('without a client certificate etcd refuses: one clear line naming the endpoint', async (t) => {
  const r = await weftctl(['get', 'nodes', '--timeout', '3', '--etcd-endpoints', ENDPOINT, '--etcd-cafile', join(dir, 'ca.crt')]);
  t.is(r.code, 2);
  t.regex(r.stderr, new RegExp(`^weftctl: cannot reach etcd at ${ENDPOINT.replaceAll('.', '\\.')}: list leases failed: `));
  t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  t.regex(r.stderr, /last error: TLS: .*bad certificate/);
  t.notRegex(r.stderr, /\(\d{4}-\d\d-\d\dT/, 'no timestamp');
  const missing = await weftctl(['get', 'nodes', '--etcd-endpoints', ENDPOINT, '--etcd-cafile', join(dir, 'absent.crt')]);
  t.is(missing.code, 2);
  t.regex(missing.stderr, /absent\.crt/);
  t.notRegex(missing.stderr, /\n\s+at /);
});
