/** Paths of the echo server and client scripts (plain CommonJS, run with `node` inside a namespace). */
import { join } from 'node:path';

export const ECHO_SERVER = join(import.meta.dirname, 'server.cjs');
export const ECHO_CLIENT = join(import.meta.dirname, 'client.cjs');
