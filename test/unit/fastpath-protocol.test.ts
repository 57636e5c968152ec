import test from 'ava';
import { decodeRequest, encodeReply, encodeRequest, MAX_REQUEST, ProtocolError } from '../../src/fastpath/protocol.ts';

const req = { env: { CNI_COMMAND: 'ADD', CNI_ARGS: 'K=V;X=é=1', EMPTY: '' }, stdin: '{"cniVersion":"1.0.0","name":"n"}' };

test('a request survives encoding, also when it arrives one byte at a time', (t) => {
  const wire = encodeRequest(req);
  t.is(wire.subarray(0, 4).toString(), 'WFT1');
  t.deepEqual(decodeRequest(wire), req);
  for (let n = 0; n < wire.length; n++) t.is(decodeRequest(wire.subarray(0, n)), undefined, `prefix of ${n} bytes`);
});

test('garbage is rejected: bad magic, trailing bytes, absurd lengths', (t) => {
  t.throws(() => decodeRequest(Buffer.from('HTTP/1.1 GET /')), { instanceOf: ProtocolError, message: 'bad magic' });
  t.throws(() => decodeRequest(Buffer.concat([encodeRequest(req), Buffer.from('x')])), { instanceOf: ProtocolError });
  const huge = Buffer.alloc(8);
  huge.write('WFT1');
  huge.writeUInt32LE(0xffffffff, 4);
  t.throws(() => decodeRequest(huge), { instanceOf: ProtocolError, message: 'environment too large' });
  const bigStdin = encodeRequest({ env: {}, stdin: '' }).subarray(0, 12);
  bigStdin.writeUInt32LE(MAX_REQUEST, 8);
  t.throws(() => decodeRequest(bigStdin), { instanceOf: ProtocolError, message: 'request too large' });
  t.throws(() => decodeRequest(Buffer.concat([Buffer.from('WFT1'), Buffer.alloc(MAX_REQUEST)])), { instanceOf: ProtocolError });
});

test('the reply is code, stdout and stderr with little-endian lengths, as launcher.c reads it', (t) => {
  const b = encodeReply({ code: 1, stdout: '{"code":11}\n', stderr: 'é' });
  t.is(b.readUInt32LE(0), 1);
  const outLen = b.readUInt32LE(4);
  t.is(b.subarray(8, 8 + outLen).toString(), '{"code":11}\n');
  const errLen = b.readUInt32LE(8 + outLen);
  t.is(errLen, 2);
  t.is(b.subarray(12 + outLen).toString(), 'é');
  t.is(b.length, 12 + outLen + errLen);
});
