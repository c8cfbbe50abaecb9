/**
 * The audited relay path without sockets or a server: a PgRelay between two
 * fake sockets with the statement gate attached, fed the messages pgbench
 * sends, checking what each side receives and what the audit trail gets.
 */
import { EventEmitter } from 'node:events';
import t from 'tap';
import { initClassifier } from '../../protocols/postgres/classify.js';
import { PgFramer } from '../../protocols/postgres/framer.js';
import { PgRelay } from '../../protocols/postgres/relay.js';
import { PgStatementGate, paramsJson, rowsFromTag } from '../../protocols/postgres/statement-gate.js';
import { createLogger } from '../../src/log.js';
import { SessionPolicy } from '../../src/policy/engine.js';
import { statementHash } from '../../src/policy/approvals.js';
import { isoTime } from '../../src/store/iso-time.js';
import type { AuditEvent } from '../../src/store/types.js';
import { PgBytes } from '../helpers/pg-bytes.js';

class FakeSocket extends EventEmitter {
  writable = true;
  writableNeedDrain = false;
  readonly writes: Buffer[] = [];
  write(b: Buffer): boolean {
    this.writes.push(b);
    return true;
  }
  cork(): void {}
  uncork(): void {}
  pause(): void {}
  resume(): void {}
  end(b?: unknown): void {
    if (Buffer.isBuffer(b)) this.writes.push(b);
  }
  destroy(): void {}
}

const logger = createLogger('error', { write: () => undefined });

function audited(): { client: FakeSocket; upstream: FakeSocket; events: AuditEvent[] } {
  const client = new FakeSocket();
  const upstream = new FakeSocket();
  const events: AuditEvent[] = [];
  const policy = new SessionPolicy({ name: 'p', subjects: { groups: ['g'] }, targets: ['db'], default: 'allow', rules: [] });
  const gate = new PgStatementGate({ sessionId: 's1', subject: 'alice', target: 'db', policy, logger, audit: { write: (e) => events.push(e) } });
  const relay = new PgRelay(client as never, upstream as never, new PgFramer({ maxMessageBytes: 1 << 20 }), new PgFramer({ maxMessageBytes: 1 << 20 }), {
    logger,
    idleTimeoutMs: 0,
    onClose: () => undefined,
    gate,
  });
  relay.start([], []);
  return { client, upstream, events };
}

const bind = (statement: string, value: string): Buffer =>
  new PgBytes().cstring('').cstring(statement).int16(0).int16(1).int32(Buffer.byteLength(value)).string(value).int16(0).typed('B');
const execute = (): Buffer => new PgBytes().cstring('').int32(0).typed('E');
const sync = (): Buffer => new PgBytes().typed('S');
const commandComplete = (tag: string): Buffer => new PgBytes().cstring(tag).typed('C');
const readyForQuery = (): Buffer => new PgBytes().char('I').typed('Z');
/** Sluice's stand-in for a refused Query (statement-gate.ts REFUSAL_QUERY): text the server cannot parse. */
const refusalProbe = (b: Buffer): boolean => b[0] === 0x51 && b.toString('utf8', 5) === 'sluice: statement refused by policy\0';
/** The messages of a stream of typed messages. */
const messages = (b: Buffer): Buffer[] => {
  const out: Buffer[] = [];
  for (let i = 0; i < b.length; i += 1 + b.readInt32BE(i + 1)) out.push(b.subarray(i, i + 1 + b.readInt32BE(i + 1)));
  return out;
};
/** The server's answer to it. */
const probeFailed = (status = 'I'): Buffer =>
  Buffer.concat([
    new PgBytes().char('S').cstring('ERROR').char('V').cstring('ERROR').char('C').cstring('42601').char('M').cstring('syntax error at or near "sluice"').byte(0).typed('E'),
    new PgBytes().char(status).typed('Z'),
  ]);
const dataRow = (): Buffer => new PgBytes().int16(1).int32(1).string('0').typed('D');

t.before(() => initClassifier());

t.test('chunks the gate only looked at leave as the same objects, one write each way', async (t) => {
  const { client, upstream, events } = audited();
  upstream.emit('data', Buffer.concat([new PgBytes().typed('1'), readyForQuery()])); // ParseComplete: nothing owed yet, passes through
  client.emit('data', Buffer.concat([new PgBytes().cstring('s1').cstring('SELECT abalance FROM pgbench_accounts WHERE aid = $1').int16(0).typed('P'), sync()]));
  upstream.emit('data', Buffer.concat([new PgBytes().typed('1'), readyForQuery()]));
  client.writes.length = 0;
  upstream.writes.length = 0;

  const request = Buffer.concat([bind('s1', '42'), execute(), sync()]);
  client.emit('data', request);
  t.equal(upstream.writes.length, 1, 'one write upstream');
  t.equal(upstream.writes[0], request, 'the client chunk itself, not a copy');
  const answer = Buffer.concat([new PgBytes().typed('2'), dataRow(), commandComplete('SELECT 1'), readyForQuery()]);
  upstream.emit('data', answer);
  t.equal(client.writes.length, 1, 'one write to the client');
  t.equal(client.writes[0], answer, 'the server chunk itself, not a copy');

  const last = events[events.length - 1]!;
  t.match(last, { kind: 'select', verdict: 'allowed', rows: 1, text: 'SELECT abalance FROM pgbench_accounts WHERE aid = $1', params: '["42"]' });
  t.type(last.durationMs, 'number');
});

t.test('messages split across chunks are forwarded whole and in order', async (t) => {
  const { client, upstream, events } = audited();
  const request = Buffer.concat([new PgBytes().cstring('SELECT 1').typed('Q'), new PgBytes().cstring('SELECT 2').typed('Q')]);
  for (const piece of [request.subarray(0, 7), request.subarray(7, 20), request.subarray(20)]) client.emit('data', piece);
  t.same(Buffer.concat(upstream.writes), request);
  const answer = Buffer.concat([commandComplete('SELECT 1'), readyForQuery(), commandComplete('SELECT 1'), readyForQuery()]);
  upstream.emit('data', answer.subarray(0, 3));
  upstream.emit('data', answer.subarray(3));
  t.same(Buffer.concat(client.writes), answer);
  t.same(events.map((e) => e.text), ['SELECT 1', 'SELECT 2']);
});

t.test('audit events are built once the answer is written to the client, and an Execute is audited with the Bind it ran', async (t) => {
  const client = new FakeSocket();
  const upstream = new FakeSocket();
  const seen: Array<{ text: string; params: string | undefined; clientWrites: number }> = [];
  const policy = new SessionPolicy({ name: 'p', subjects: { groups: ['g'] }, targets: ['db'], default: 'allow', rules: [] });
  const gate = new PgStatementGate({
    sessionId: 's1', subject: 'alice', target: 'db', policy, logger,
    audit: { write: (e) => void seen.push({ text: e.text, params: e.params, clientWrites: client.writes.length }) },
  });
  new PgRelay(client as never, upstream as never, new PgFramer({ maxMessageBytes: 1 << 20 }), new PgFramer({ maxMessageBytes: 1 << 20 }), {
    logger, idleTimeoutMs: 0, onClose: () => undefined, gate,
  }).start([], []);
  // Two unnamed statements in one batch: each Execute keeps the statement of its own Bind.
  const parse = (sql: string): Buffer => new PgBytes().cstring('').cstring(sql).int16(0).typed('P');
  client.emit('data', Buffer.concat([parse('SELECT $1::int'), bind('', '1'), execute(), parse('SELECT $1::text'), bind('', 'two'), execute(), sync()]));
  t.equal(seen.length, 0, 'nothing audited before the server answered');
  upstream.emit('data', Buffer.concat([new PgBytes().typed('1'), new PgBytes().typed('2'), dataRow(), commandComplete('SELECT 1'),
    new PgBytes().typed('1'), new PgBytes().typed('2'), dataRow(), commandComplete('SELECT 1'), readyForQuery()]));
  t.same(seen, [
    { text: 'SELECT $1::int', params: '["1"]', clientWrites: 1 },
    { text: 'SELECT $1::text', params: '["two"]', clientWrites: 1 },
  ], 'built after the one write of the answer, in order');
});

t.test('a portal is known across Syncs inside a transaction block, and forgotten once the session is idle', async (t) => {
  const { client, upstream, events } = audited();
  const parse = new PgBytes().cstring('').cstring('SELECT $1::int').int16(0).typed('P');
  const inBlock = new PgBytes().char('T').typed('Z');
  // Bind in one batch, Execute in the next: the portal outlives the first Sync because a transaction is open.
  client.emit('data', Buffer.concat([parse, bind('', '5'), sync()]));
  upstream.emit('data', Buffer.concat([new PgBytes().typed('1'), new PgBytes().typed('2'), inBlock]));
  client.emit('data', Buffer.concat([execute(), sync()]));
  upstream.emit('data', Buffer.concat([dataRow(), commandComplete('SELECT 1'), readyForQuery()]));
  t.match(events[events.length - 1], { text: 'SELECT $1::int', params: '["5"]' });
  // Idle now: PostgreSQL has dropped the portal, and so has the gate (with the Bind it kept).
  client.emit('data', Buffer.concat([execute(), sync()]));
  upstream.emit('data', Buffer.concat([new PgBytes().cstring('SERROR').cstring('C34000').cstring('Mportal "" does not exist').bytes([0]).typed('E'), readyForQuery()]));
  t.match(events[events.length - 1], { text: '(portal "")', kind: 'execute', sqlstate: '34000' });
});

t.test('role statements never have their parameters audited', async (t) => {
  const { client, upstream, events } = audited();
  client.emit('data', Buffer.concat([new PgBytes().cstring('r').cstring('ALTER ROLE bob PASSWORD $1').int16(0).typed('P'), bind('r', 'hunter2'), execute(), sync()]));
  upstream.emit('data', Buffer.concat([new PgBytes().typed('1'), new PgBytes().typed('2'), commandComplete('ALTER ROLE'), readyForQuery()]));
  t.equal(events.length, 1);
  t.notMatch(events[0]!.text, /hunter2/);
  t.match(events[0]!.text, /\[redacted\]/);
  t.equal(events[0]!.rows, undefined, 'no count in an ALTER ROLE tag');
});

t.test('a name an SQL PREPARE made a credential statement, or an EXECUTE of one, never has its parameters audited', async (t) => {
  const { client, upstream, events } = audited();
  const parse = (name: string, sql: string): Buffer => new PgBytes().cstring(name).cstring(sql).int16(0).typed('P');
  const answer = (tag: string): void => void upstream.emit('data', Buffer.concat([new PgBytes().typed('1'), new PgBytes().typed('2'), commandComplete(tag), readyForQuery()]));
  // x EXECUTEs c before c exists; c is first a harmless Parse, then replaced by an SQL PREPARE of a dblink call.
  client.emit('data', Buffer.concat([parse('x', 'EXECUTE c($1)'), parse('c', 'SELECT $1::text'), sync()]));
  upstream.emit('data', Buffer.concat([new PgBytes().typed('1'), new PgBytes().typed('1'), readyForQuery()]));
  client.emit('data', new PgBytes().cstring('DEALLOCATE c; PREPARE c(text) AS SELECT dblink_connect($1)').typed('Q'));
  upstream.emit('data', Buffer.concat([commandComplete('DEALLOCATE'), commandComplete('PREPARE'), readyForQuery()]));
  client.emit('data', Buffer.concat([bind('c', 'host=h password=hunter2'), execute(), sync()]));
  answer('SELECT 1');
  client.emit('data', Buffer.concat([bind('x', 'host=h password=hunter3'), execute(), sync()]));
  answer('SELECT 1');
  const bound = events.slice(-2);
  t.equal(bound.length, 2);
  for (const e of bound) t.equal(e.params, undefined, `no parameters kept for ${e.text}`);
  t.notMatch(JSON.stringify(events), /hunter[23]/, 'the password is in no event');
});

t.test('rowsFromTag reads the trailing count of a CommandComplete tag', async (t) => {
  t.equal(rowsFromTag(commandComplete('SELECT 3')), 3);
  t.equal(rowsFromTag(commandComplete('INSERT 0 5')), 5);
  t.equal(rowsFromTag(commandComplete('COPY 10')), 10);
  t.equal(rowsFromTag(commandComplete('BEGIN')), undefined);
  t.equal(rowsFromTag(commandComplete('X1')), undefined, 'digits not after a space');
  t.equal(rowsFromTag(commandComplete('12')), undefined, 'digits alone');
  t.equal(rowsFromTag(commandComplete(' 7')), 7);
  t.equal(rowsFromTag(commandComplete('SELECT 12345678901234567890')), 12345678901234567890);
  t.equal(rowsFromTag(commandComplete('')), undefined);
});

t.test('paramsJson is JSON.stringify of the bound values', async (t) => {
  const samples: string[][] = [
    [],
    [''],
    ['123456'],
    ['a', 'b c', '2026-11-29', 'NULL', '\\x00ff'],
    ['say "hi"'],
    ['back\\slash'],
    ['tab\there', 'nl\n', '\u0000', '\u001f', '\u007f'],
    ['é', '日本', '\ud83d\ude00', '\ud800 lone'],
    [' !#$%&\'()*+,-./:;<=>?@[]^_`{|}~'],
  ];
  for (let c = 0; c < 0x3000; c += 7) samples.push([`x${String.fromCharCode(c)}y`, String.fromCharCode(c)]);
  // One assertion, not one per sample: control characters in assertion names would garble the TAP stream.
  const wrong = samples.filter((params) => paramsJson(params) !== JSON.stringify(params));
  t.same(wrong, [], `all ${samples.length} samples`);
  t.equal(paramsJson(['say "hi"', 'a\\b']), '["say \\"hi\\"","a\\\\b"]', 'escaping falls back to JSON.stringify');
});

t.test('isoTime is toISOString', async (t) => {
  const samples = [0, 1, 999, 1000, -1, -999, -1001, Date.UTC(2026, 10, 29, 6, 59, 59, 999), Date.UTC(2026, 10, 29, 7, 0, 0, 5), 8.64e15, -8.64e15, 253402300800000];
  for (let ms = Date.now() - 3000; ms < Date.now() + 3000; ms += 37) samples.push(ms);
  for (const ms of samples) t.equal(isoTime(ms), new Date(ms).toISOString(), String(ms));
});

/** A relay whose gate holds DELETEs for approval, with a stand-in for the approvals (a fault it injects), on fake sockets. */
function approvalRelay(approvals: object, onClose: (reason: string) => void = () => undefined): { client: FakeSocket; upstream: FakeSocket } {
  const client = new FakeSocket();
  const upstream = new FakeSocket();
  const policy = new SessionPolicy({
    name: 'p',
    subjects: { groups: ['g'] },
    targets: ['db'],
    default: 'allow',
    rules: [{ name: 'deletes-need-approval', action: 'approve', match: { kinds: ['delete'] } }],
  });
  const gate = new PgStatementGate({ sessionId: 's1', subject: 'alice', target: 'db', policy, logger, approvals: approvals as never });
  new PgRelay(client as never, upstream as never, new PgFramer({ maxMessageBytes: 1 << 20 }), new PgFramer({ maxMessageBytes: 1 << 20 }), {
    logger,
    idleTimeoutMs: 0,
    onClose,
    gate,
  }).start([], []);
  return { client, upstream };
}

t.test('an approval that does not match the held statement releases nothing', async (t) => {
  // Approved, but for other bytes (as if one request's decision reached another hold).
  const other = { id: 'apr_other', status: 'approved', sessionId: 's1', subject: 'alice', statementHash: statementHash(Buffer.from('something else')) };
  const { client, upstream } = approvalRelay({
    windowAllows: () => undefined,
    markUsed: () => undefined,
    requestFor: () => ({ record: { id: 'apr_other', expiresAt: '2026-12-01T00:00:00.000Z' }, outcome: Promise.resolve({ status: 'approved', record: other }), cancel: () => undefined }),
  });
  client.emit('data', new PgBytes().cstring('DELETE FROM t WHERE id = 1').typed('Q'));
  await new Promise((resolve) => setImmediate(resolve));
  t.same(upstream.writes.map(refusalProbe), [true], 'nothing reached the server but the refusal\'s probe');
  upstream.emit('data', probeFailed());
  t.match(Buffer.concat(client.writes).toString('latin1'), /approval apr_other was denied/, 'refused as a denied one');
  client.emit('close');
  upstream.emit('close');
});

t.test('a failure while an approval decision is carried out ends that session, not the process', async (t) => {
  let requests = 0;
  let closed: string | undefined;
  // The second request fails as ApprovalManager.request does when the store cannot save it (a full disk).
  const { client, upstream } = approvalRelay(
    {
      windowAllows: () => undefined,
      markUsed: () => undefined,
      // As ApprovalManager.requestFor passes on a failure that is not one of its limits.
      requestFor: () => {
        if (++requests > 1) throw new Error('SQLITE_FULL: database or disk is full');
        return { record: { id: 'apr_first', expiresAt: '2026-12-01T00:00:00.000Z' }, outcome: Promise.resolve({ status: 'denied' }), cancel: () => undefined };
      },
    },
    (reason) => (closed = reason),
  );
  const query = (sql: string): Buffer => new PgBytes().cstring(sql).typed('Q');
  // The second waits behind the first; once the first is denied, the second is held in turn, and that request fails.
  client.emit('data', Buffer.concat([query('DELETE FROM t WHERE id = 1'), query('DELETE FROM t WHERE id = 2')]));
  await new Promise((resolve) => setImmediate(resolve));
  const sent = Buffer.concat(client.writes).toString('latin1');
  t.match(sent, /sluice: internal error; the session is closed/, 'the client is told the session ends');
  // The first one's refusal went upstream as its probe; the server's answer, where its denial would go, never came.
  t.same(upstream.writes.map((b) => (refusalProbe(b) ? 'probe' : String.fromCharCode(b[0]!))), ['probe', 'X'], 'no statement reached the server, only a probe and a Terminate');
  client.emit('close');
  upstream.emit('close');
  t.ok(closed !== undefined, 'the session ended');
});

/** A gated relay whose policy denies DROP, no audit; `closed()` says why the session ended, once it has. */
function deniesDrop(): { client: FakeSocket; upstream: FakeSocket; closed: () => string | undefined } {
  const client = new FakeSocket();
  const upstream = new FakeSocket();
  const policy = new SessionPolicy({ name: 'p', subjects: { groups: ['g'] }, targets: ['db'], default: 'allow', rules: [{ name: 'no-drop', action: 'deny', match: { kinds: ['drop'] } }] });
  const gate = new PgStatementGate({ sessionId: 's1', subject: 'alice', target: 'db', policy, logger });
  let closed: string | undefined;
  const relay = new PgRelay(client as never, upstream as never, new PgFramer({ maxMessageBytes: 1 << 20 }), new PgFramer({ maxMessageBytes: 1 << 20 }), {
    logger,
    idleTimeoutMs: 0,
    onClose: (reason: string) => (closed = reason),
    gate,
  });
  relay.start([], []);
  return { client, upstream, closed: () => closed };
}

t.test('a refusal fails on the server where the refused message stood, and a probe answered without an error ends the session', async (t) => {
  const { client, upstream, closed } = deniesDrop();
  const text = (bufs: Buffer[]): string => Buffer.concat(bufs).toString('latin1');

  // A Query: its probe goes upstream, and the server's error is replaced by the refusal.
  client.emit('data', new PgBytes().cstring('DROP TABLE t').typed('Q'));
  t.same(upstream.writes.map(refusalProbe), [true], 'the probe, not the DROP');
  upstream.emit('data', probeFailed('E'));
  t.match(text(client.writes), /42501.*denied by rule "no-drop"/, 'the refusal in the place of the server\'s error');
  t.notMatch(text(client.writes), /syntax error/, 'the probe\'s error is not shown');
  t.equal(text(client.writes).slice(-6), 'Z\0\0\0\x05E', 'the server\'s ReadyForQuery, its status as the failure left it');

  // Inside an extended batch: a Parse of the same text in the refused Parse's place, and a Flush passes.
  upstream.writes.length = 0;
  client.writes.length = 0;
  client.emit('data', Buffer.concat([new PgBytes().cstring('').cstring('DROP TABLE t').int16(0).typed('P'), bind('', 'x'), execute(), new PgBytes().typed('H')]));
  const sent = messages(Buffer.concat(upstream.writes));
  t.same(sent.map((m) => m.toString('latin1', 0, 1)), ['P', 'H'], 'a Parse, then the Flush; the rest of the batch is discarded');
  t.equal(sent[0]!.toString('utf8', 5), 'sluice: refused\0sluice: statement refused by policy\0\0\0', 'of a named statement, of text that does not parse');
  upstream.emit('data', probeFailed().subarray(0, -6)); // the error alone, as a Flush has it sent
  t.match(text(client.writes), /denied by rule "no-drop"/, 'the refusal, before any Sync');
  client.emit('data', sync());
  upstream.emit('data', readyForQuery());
  t.equal(closed(), undefined, 'the session goes on');

  // Answered without an error (a server that parses anything?): whatever it ran stands; the session ends.
  client.writes.length = 0;
  client.emit('data', new PgBytes().cstring('DROP TABLE t').typed('Q'));
  upstream.emit('data', Buffer.concat([commandComplete('SELECT 0'), readyForQuery()]));
  t.match(text(client.writes), /FATAL.*XX000.*sluice: internal error; the session is closed/, 'FATAL');
  t.notMatch(text(client.writes), /no-drop/, 'no refusal is claimed for it');
  t.same(messages(Buffer.concat(upstream.writes)).at(-1)?.toString('latin1', 0, 1), 'X', 'the upstream session is ended (Terminate)');
  client.emit('close');
  upstream.emit('close');
  t.ok(closed() !== undefined, 'the session ended');
});

t.test('a FATAL in answer to a refusal\'s probe is shown as it is', async (t) => {
  const { client, upstream } = deniesDrop();
  client.emit('data', new PgBytes().cstring('DROP TABLE t').typed('Q'));
  const fatal = new PgBytes().char('S').cstring('FATAL').char('V').cstring('FATAL').char('C').cstring('57P01').char('M').cstring('terminating connection due to administrator command').byte(0).typed('E');
  upstream.emit('data', fatal);
  const sent = Buffer.concat(client.writes).toString('latin1');
  t.match(sent, /57P01.*administrator command/, 'the reason the session ends');
  t.notMatch(sent, /no-drop/, 'not the refusal in its place');
  client.emit('close');
  upstream.emit('close');
});
