/** The test API server's pure parts: the three patch types and label/field selectors. */
import test from 'ava';
import { jsonPatch, mergePatch, PatchError, strategicMergePatch, type Json, type PatchSchema } from '../../lab/apiserver/patch.ts';
import { matches, parseSelector } from '../../lab/apiserver/selectors.ts';
import { ApiError } from '../../lab/apiserver/status.ts';

const schema: PatchSchema = {
  'status.conditions': { mergeKey: 'type' },
  'spec.ports': { mergeKey: 'port' },
  'metadata.finalizers': { primitive: true },
};

test('merge patch: objects merge, null deletes, lists replace (RFC 7386)', (t) => {
  const doc = { a: 1, b: { c: 2, d: 3 }, l: [1, 2] };
  t.deepEqual(mergePatch(doc, { b: { c: null, e: 4 }, l: [3], n: null }), { a: 1, b: { d: 3, e: 4 }, l: [3] });
  t.deepEqual(doc, { a: 1, b: { c: 2, d: 3 }, l: [1, 2] }, 'input untouched');
  t.deepEqual(mergePatch(doc, 'x'), 'x');
});

test('strategic merge: lists with a merge key merge by it; others replace; primitives union', (t) => {
  const doc: Json = {
    metadata: { finalizers: ['a'] },
    spec: { ports: [{ port: 80, name: 'http' }], other: [1, 2] },
    status: {
      conditions: [
        { type: 'Ready', status: 'True', reason: 'R' },
        { type: 'Mem', status: 'False' },
      ],
    },
  };
  const out = strategicMergePatch(
    doc,
    {
      metadata: { finalizers: ['b', 'a'] },
      spec: {
        ports: [
          { port: 443, name: 'https' },
          { port: 80, targetPort: 8080 },
        ],
        other: [3],
      },
      status: {
        conditions: [
          { type: 'Ready', status: 'False' },
          { type: 'Net', status: 'False' },
        ],
      },
    },
    schema,
  );
  t.deepEqual(out, {
    metadata: { finalizers: ['a', 'b'] },
    spec: {
      ports: [
        { port: 80, name: 'http', targetPort: 8080 },
        { port: 443, name: 'https' },
      ],
      other: [3],
    },
    status: {
      conditions: [
        { type: 'Ready', status: 'False', reason: 'R' },
        { type: 'Mem', status: 'False' },
        { type: 'Net', status: 'False' },
      ],
    },
  });
});

test('strategic merge directives: $patch delete/replace, $retainKeys, $deleteFromPrimitiveList, $setElementOrder', (t) => {
  const doc = {
    status: {
      conditions: [
        { type: 'A', s: 1 },
        { type: 'B', s: 2 },
        { type: 'C', s: 3 },
      ],
    },
    metadata: { finalizers: ['x', 'y'] },
    spec: { a: 1, b: 2, m: { k: 1 } },
  };
  t.deepEqual((strategicMergePatch(doc, { status: { conditions: [{ type: 'B', $patch: 'delete' }] } }, schema) as any).status.conditions, [
    { type: 'A', s: 1 },
    { type: 'C', s: 3 },
  ]);
  t.deepEqual((strategicMergePatch(doc, { status: { conditions: [{ $patch: 'replace' }, { type: 'Z', s: 9 }] } }, schema) as any).status.conditions, [{ type: 'Z', s: 9 }]);
  t.deepEqual((strategicMergePatch(doc, { spec: { m: { $patch: 'replace', j: 2 } } }, schema) as any).spec.m, { j: 2 });
  t.deepEqual((strategicMergePatch(doc, { spec: { m: { $patch: 'delete' } } }, schema) as any).spec, { a: 1, b: 2 });
  t.deepEqual((strategicMergePatch(doc, { spec: { $retainKeys: ['a', 'c'], c: 3 } }, schema) as any).spec, { a: 1, c: 3 });
  t.deepEqual((strategicMergePatch(doc, { metadata: { '$deleteFromPrimitiveList/finalizers': ['x'] } }, schema) as any).metadata.finalizers, ['y']);
  const ordered = strategicMergePatch(doc, { status: { '$setElementOrder/conditions': [{ type: 'C' }, { type: 'A' }, { type: 'B' }] } }, schema) as any;
  t.deepEqual(
    ordered.status.conditions.map((c: any) => c.type),
    ['C', 'A', 'B'],
  );
  t.throws(() => strategicMergePatch(doc, { status: { conditions: [{ s: 1 }] } }, schema), { instanceOf: PatchError });
  t.throws(() => strategicMergePatch(doc, { $patch: 'bogus' }, schema), { instanceOf: PatchError });
  t.throws(() => strategicMergePatch(doc, [] as never, schema), { instanceOf: PatchError });
});

test('JSON patch: all six operations, pointer escapes, atomic failure (RFC 6902)', (t) => {
  const doc = { a: { 'b/c': 1, 'd~e': 2 }, l: [1, 2, 3] };
  const out = jsonPatch(doc, [
    { op: 'add', path: '/l/-', value: 4 },
    { op: 'add', path: '/l/0', value: 0 },
    { op: 'remove', path: '/l/1' },
    { op: 'replace', path: '/a/b~1c', value: 10 },
    { op: 'copy', from: '/a/d~0e', path: '/x' },
    { op: 'move', from: '/x', path: '/y' },
    { op: 'test', path: '/y', value: 2 },
  ]);
  t.deepEqual(out, { a: { 'b/c': 10, 'd~e': 2 }, l: [0, 2, 3, 4], y: 2 });
  t.deepEqual(doc, { a: { 'b/c': 1, 'd~e': 2 }, l: [1, 2, 3] });
  for (const bad of [
    [{ op: 'test', path: '/a/b~1c', value: 2 }],
    [{ op: 'remove', path: '/nope' }],
    [{ op: 'replace', path: '/l/9', value: 1 }],
    [{ op: 'add', path: 'no-slash', value: 1 }],
    [{ op: 'move', from: '/a', path: '/a/b' }],
    [{ op: 'frobnicate', path: '/a' }],
    [{ op: 'add', path: '/l/01', value: 1 }],
    { op: 'add' },
  ]) {
    t.throws(() => jsonPatch(doc, bad as never), { instanceOf: PatchError }, JSON.stringify(bad));
  }
});

test('selectors: =, ==, !=, in, notin, exists, !exists; field selectors; parse errors', (t) => {
  const l = { app: 'web', tier: 'front', 'kubernetes.io/service-name': 'web' };
  const m = (s: string) => matches(parseSelector(s), l);
  t.true(m('app=web'));
  t.true(m('app==web,tier'));
  t.false(m('app!=web'));
  t.true(m('app!=db'));
  t.true(m('tier in (back, front)'));
  t.false(m('tier notin (front)'));
  t.true(m('missing notin (x)'));
  t.false(m('missing in (x)'));
  t.true(m('!missing'));
  t.false(m('!app'));
  t.true(m('kubernetes.io/service-name=web'));
  t.true(m(''));
  t.true(matches(parseSelector('metadata.name=n1,metadata.namespace!=x', { field: true }), { 'metadata.name': 'n1', 'metadata.namespace': '' }));
  for (const bad of ['app in (a', 'a,,b', '=x', 'bad key=1', 'app=has space', 'x'.repeat(5000)]) {
    t.throws(() => parseSelector(bad), { instanceOf: ApiError }, bad);
  }
  t.throws(() => parseSelector('a in (b)', { field: true }), { instanceOf: ApiError });
});
