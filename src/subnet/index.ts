/**
 * The subnet package's public surface (weftd and weftctl): flannel's network config, the lease
 * model and key schema, subnet choice, lease diffing and the etcd-backed manager.
 */
export * from './config.ts';
export * from './lease.ts';
export * from './choose.ts';
export * from './diff.ts';
export * from './renew.ts';
export * from './manager.ts';
export * from './etcd.ts';
