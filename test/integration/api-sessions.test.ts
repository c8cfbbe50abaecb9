/**
 * The session routes of the API (auditor role): list with filters, one
 * session, its transcript (text or JSON), the recording download and its
 * verification. A real API over a real SQLite store, recordings written
 * with the real RecordingWriter.
 */
import { readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import t, { type Test } from 'tap';
import { Metrics } from '../../src/api/metrics.js';
import { startApi } from '../../src/api/server.js';
import type { IdentityConfig } from '../../src/config/types.js';
import { DevIssuer } from '../../src/identity/dev-issuer.js';
import { createTokenVerifier } from '../../src/identity/verifier.js';
import { createLogger } from '../../src/log.js';
import { ApprovalManager } from '../../src/policy/approvals.js';
import { loadRecordingPublicKeys, openRecordingKey } from '../../src/recording/keys.js';
import { readRecording } from '../../src/recording/reader.js';
import { RecordingWriter } from '../../src/recording/writer.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import type { SessionRecord } from '../../src/store/types.js';

const identity: IdentityConfig = { devIssuer: true, issuers: [], maxTokenBytes: 16384, clockToleranceSeconds: 30, maxTokenLifetimeSeconds: 86400 };

function pgMessage(type: string, body: Buffer): Buffer {
  const h = Buffer.alloc(5);
  h.write(type, 0, 'latin1');
  h.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([h, body]);
}
const cstr = (s: string) => Buffer.from(`${s}\0`, 'utf8');

async function setup(t: Test, recordingReads?: { concurrent?: number; transcriptMaxBytes?: number; transcriptMaxEvents?: number }, recordingFsync?: 'close' | 'off') {
  const dir = t.testdir();
  const stateDir = join(dir, 'state');
  const logs: string[] = [];
  const logger = createLogger('debug', { write: (s: string) => void logs.push(s) });
  const store = openSqliteStore(stateDir, { logger });
  const approvals = new ApprovalManager({ store, logger, timeoutMs: 60_000 });
  const issuer = await DevIssuer.open(stateDir);
  const verifier = createTokenVerifier(identity, { devIssuer: issuer, logger });
  const key = await openRecordingKey(stateDir);

  const sessions: Record<string, { path: string }> = {};
  const now = Date.now();
  for (const [id, subject, target, ago] of [['s-ci', 'ci-job', 'app-db', 60_000], ['s-agent', 'agent-7', 'other-db', 7_200_000]] as const) {
    const startedAt = new Date(now - ago).toISOString();
    const w = await RecordingWriter.open({ stateDir, key, onFailure: () => undefined, meta: { sessionId: id, subject, target, protocol: 'postgres', groups: ['ci'], issuer: 'dev', startedAt } });
    w.record('client', pgMessage('Q', cstr('SELECT 1 AS one')));
    // RowDescription (one int4 column), DataRow, CommandComplete, ReadyForQuery.
    const field = Buffer.concat([cstr('one'), Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0, 4, 0xff, 0xff, 0xff, 0xff, 0, 0])]);
    w.record('server', pgMessage('T', Buffer.concat([Buffer.from([0, 1]), field])));
    w.record('server', pgMessage('D', Buffer.concat([Buffer.from([0, 1, 0, 0, 0, 1]), Buffer.from('1')])));
    w.record('server', Buffer.concat([pgMessage('C', cstr('SELECT 1')), pgMessage('Z', Buffer.from('I'))]));
    const r = await w.close({ closeReason: 'client closed' });
    sessions[id] = { path: r.path };
    const row: SessionRecord = {
      id, subject, groups: ['ci'], issuer: 'dev', target, protocol: 'postgres', startedAt, endedAt: new Date().toISOString(),
      closeReason: 'client closed', bytesIn: r.bytesClientToGateway, bytesOut: r.bytesGatewayToClient, statementsAllowed: 1,
      statementsDenied: 0, approvals: 0, maskingCounts: {}, recordingPath: r.path, recordingSize: r.size, finalHash: r.finalHash, complete: r.complete,
    };
    store.upsertSession(row);
  }
  store.upsertSession({
    id: 's-norec', subject: 'ci-job', groups: [], issuer: 'dev', target: 'app-db', protocol: 'redis', startedAt: new Date(now - 1000).toISOString(),
    bytesIn: 0, bytesOut: 0, statementsAllowed: 0, statementsDenied: 0, approvals: 0, maskingCounts: {}, complete: false,
  });

  const api = await startApi({
    config: { listen: { host: '127.0.0.1', port: 0 }, roles: { approver: ['security'], auditor: ['audit'] } },
    verifier,
    store,
    approvals,
    metrics: new Metrics(),
    logger,
    health: () => ({ ok: true, checks: {} }),
    sessions: store,
    stateDir,
    ...(recordingFsync ? { recordingFsync } : {}),
    recordingKeys: () => loadRecordingPublicKeys(stateDir),
    ...(recordingReads ? { recordingReads } : {}),
  });
  t.teardown(async () => {
    await api.close();
    approvals.close();
    store.close();
  });
  const tokens = {
    auditor: await issuer.mint({ sub: 'carol', groups: ['audit'] }),
    approver: await issuer.mint({ sub: 'alice', groups: ['security'] }),
  };
  const base = `http://127.0.0.1:${api.address.port}`;
  const call = async (path: string, token?: string, headers: Record<string, string> = {}) => {
    const res = await fetch(base + path, { headers: { ...headers, ...(token ? { authorization: `Bearer ${token}` } : {}) } });
    const body = Buffer.from(await res.arrayBuffer());
    return { status: res.status, body, text: body.toString('utf8'), type: res.headers.get('content-type') ?? '', headers: res.headers };
  };
  return { call, tokens, sessions, logs, store, stateDir, base };
}

t.test('auditor role required', async (t) => {
  const s = await setup(t);
  t.equal((await s.call('/api/sessions')).status, 401);
  const forbidden = await s.call('/api/sessions', s.tokens.approver);
  t.equal(forbidden.status, 403);
  t.match(JSON.parse(forbidden.text), { code: 'SLUICE_NOT_AUTHORIZED' });
  for (const p of ['/api/sessions/s-ci', '/api/sessions/s-ci/transcript', '/api/sessions/s-ci/recording', '/api/sessions/s-ci/verify']) {
    t.equal((await s.call(p, s.tokens.approver)).status, 403, p);
  }
});

t.test('list with filters, one session, 404 and 400', async (t) => {
  const s = await setup(t);
  const all = JSON.parse((await s.call('/api/sessions', s.tokens.auditor)).text) as { sessions: { id: string; complete: boolean; recording_path: string | null }[] };
  t.same(all.sessions.map((x) => x.id), ['s-norec', 's-ci', 's-agent'], 'newest first');
  t.equal(all.sessions[1]!.complete, true);
  const bySubject = JSON.parse((await s.call('/api/sessions?subject=agent-7', s.tokens.auditor)).text) as { sessions: { id: string }[] };
  t.same(bySubject.sessions.map((x) => x.id), ['s-agent']);
  const byTarget = JSON.parse((await s.call('/api/sessions?target=app-db&limit=1', s.tokens.auditor)).text) as { sessions: { id: string }[] };
  t.same(byTarget.sessions.map((x) => x.id), ['s-norec']);
  const since = new Date(Date.now() - 3_600_000).toISOString();
  const recent = JSON.parse((await s.call(`/api/sessions?since=${encodeURIComponent(since)}`, s.tokens.auditor)).text) as { sessions: { id: string }[] };
  t.same(recent.sessions.map((x) => x.id), ['s-norec', 's-ci']);
  t.equal((await s.call('/api/sessions?since=yesterday', s.tokens.auditor)).status, 400);
  t.equal((await s.call('/api/sessions?limit=0', s.tokens.auditor)).status, 400);

  const one = await s.call('/api/sessions/s-ci', s.tokens.auditor);
  t.equal(one.status, 200);
  t.match(JSON.parse(one.text), { id: 's-ci', subject: 'ci-job', target: 'app-db', complete: true, recording_path: s.sessions['s-ci']!.path });
  t.equal((await s.call('/api/sessions/nope', s.tokens.auditor)).status, 404);
  t.equal((await s.call('/api/sessions/bad!id', s.tokens.auditor)).status, 400);
  t.equal((await s.call('/api/sessions/s-norec/transcript', s.tokens.auditor)).status, 404, 'a session without a recording');
  // Rows whose recording path leads out of the recordings directory (an edited or restored index):
  // the dev issuer's signing key under a recording's name, and a link to it from inside.
  const outside = join(s.stateDir, 'dev-issuer', 'private.jwk');
  const renamed = join(s.stateDir, 'key-copy.sluicerec');
  writeFileSync(renamed, readFileSync(outside));
  const link = join(dirname(s.sessions['s-ci']!.path), 'link.sluicerec');
  symlinkSync(outside, link);
  for (const [id, recordingPath] of [['s-outside', renamed], ['s-link', link]] as const) {
    s.store.upsertSession({
      id, subject: 'ci-job', groups: [], issuer: 'dev', target: 'app-db', protocol: 'redis', startedAt: new Date().toISOString(),
      bytesIn: 0, bytesOut: 0, statementsAllowed: 0, statementsDenied: 0, approvals: 0, maskingCounts: {}, complete: true, recordingPath,
    });
  }
  for (const id of ['s-outside', 's-link']) {
    for (const p of ['recording', 'transcript', 'verify']) {
      const r = await s.call(`/api/sessions/${id}/${p}`, s.tokens.auditor);
      t.equal(r.status, 404, `${id}/${p}: a path out of the recordings directory is not served`);
      t.notOk(r.text.includes('"d"'), 'no key material');
    }
  }
});

t.test('transcript as text and JSON, recording download, verify', async (t) => {
  const s = await setup(t);
  const text = await s.call('/api/sessions/s-ci/transcript', s.tokens.auditor);
  t.equal(text.status, 200);
  t.match(text.type, /^text\/plain/);
  t.match(text.text, /->  Query SELECT 1 AS one/);
  t.match(text.text, /<-  columns \(one int4\); 1 row: \[1\]; CommandComplete SELECT 1/);

  const json = await s.call('/api/sessions/s-ci/transcript?format=json', s.tokens.auditor);
  t.match(json.type, /^application\/json/);
  const body = JSON.parse(json.text) as { session: { sessionId: string }; events: { kind: string }[]; summary: { complete: boolean } };
  t.equal(body.session.sessionId, 's-ci');
  t.same(body.events.map((e) => e.kind), ['query', 'result', 'ready']);
  t.equal(body.summary.complete, true);
  const byAccept = await s.call('/api/sessions/s-ci/transcript', s.tokens.auditor, { accept: 'application/json' });
  t.match(byAccept.type, /^application\/json/);

  const dl = await s.call('/api/sessions/s-ci/recording', s.tokens.auditor);
  t.equal(dl.status, 200);
  t.equal(dl.type, 'application/octet-stream');
  t.match(dl.headers.get('content-disposition') ?? '', /attachment; filename="s-ci\.sluicerec"/);
  t.ok(dl.body.equals(readFileSync(s.sessions['s-ci']!.path)), 'the download is the file, byte for byte');

  const ok = JSON.parse((await s.call('/api/sessions/s-ci/verify', s.tokens.auditor)).text) as Record<string, unknown>;
  t.match(ok, { id: 's-ci', ok: true, complete: true, first_bad: null });
  t.match(ok.result, /^OK: /);

  // Flip one byte inside the first record of the other session.
  const path = s.sessions['s-agent']!.path;
  const bytes = readFileSync(path);
  const at = bytes.indexOf(Buffer.from('SELECT 1 AS one'));
  bytes[at] ^= 0x20;
  writeFileSync(path, bytes);
  const bad = JSON.parse((await s.call('/api/sessions/s-agent/verify', s.tokens.auditor)).text) as { ok: boolean; first_bad: { seq: number; reason: string } };
  t.equal(bad.ok, false);
  t.equal(bad.first_bad.seq, 0);
  t.match(bad.first_bad.reason, /CRC/);

  for (const token of Object.values(s.tokens)) t.notOk(s.logs.join('').includes(token), 'no token in the API log');

  // s-ci's whole, signed recording in s-agent's place: sound as a file, but not s-agent's.
  writeFileSync(path, readFileSync(s.sessions['s-ci']!.path));
  const swapped = JSON.parse((await s.call('/api/sessions/s-agent/verify', s.tokens.auditor)).text) as { ok: boolean; first_bad: { reason: string } };
  t.equal(swapped.ok, false);
  t.match(swapped.first_bad.reason, /the file is the recording of session s-ci, not of s-agent: swapped/);

  // s-ci's footer and trailer cut off: alone, the file reads as a crash (INCOMPLETE); its index row
  // says it was closed, so it was cut afterwards.
  const ciPath = s.sessions['s-ci']!.path;
  let footerAt = -1;
  for await (const e of readRecording(ciPath)) if (e.type === 'footer') footerAt = e.offset;
  t.ok(footerAt > 0);
  writeFileSync(ciPath, readFileSync(ciPath).subarray(0, footerAt));
  const cut = JSON.parse((await s.call('/api/sessions/s-ci/verify', s.tokens.auditor)).text) as { ok: boolean; complete: boolean; result: string };
  t.match(cut, { ok: false, complete: false });
  t.match(cut.result, /^TAMPERED: .*the sessions index records this recording closed with its footer and trailer \(\d+ bytes\), but the file ends before them: cut after it was closed/);

  // With recording.fsync: off a power cut may take a footer and leave its row: that reads as a crash.
  const unsynced = await setup(t, undefined, 'off');
  const unsyncedPath = unsynced.sessions['s-ci']!.path;
  writeFileSync(unsyncedPath, readFileSync(unsyncedPath).subarray(0, footerAt));
  const lost = JSON.parse((await unsynced.call('/api/sessions/s-ci/verify', unsynced.tokens.auditor)).text) as { ok: boolean; complete: boolean; result: string };
  t.match(lost, { ok: true, complete: false, result: /^INCOMPLETE: / });
});

t.test('transcripts and verifications: a size cap on transcripts, a few at a time', async (t) => {
  const small = await setup(t, { transcriptMaxBytes: 100 });
  const big = await small.call('/api/sessions/s-ci/transcript', small.tokens.auditor);
  t.equal(big.status, 413);
  t.match(JSON.parse(big.text), { code: 'SLUICE_API_TOO_LARGE', message: /more than the 100 the API makes a transcript of; download \/api\/sessions\/s-ci\/recording and run sluice replay --file/ });
  t.equal((await small.call('/api/sessions/s-ci/verify', small.tokens.auditor)).status, 200, 'verify streams: no cap');

  // The events of one transcript are capped, and the transcript says where it was cut.
  const few = await setup(t, { transcriptMaxEvents: 2, concurrent: 1 });
  const cut = JSON.parse((await few.call('/api/sessions/s-ci/transcript?format=json', few.tokens.auditor)).text) as { events: { kind: string; text: string }[]; summary: { records: number } };
  t.equal(cut.events.length, 3, 'two events, then the cut');
  t.match(cut.events[2], { kind: 'cut', text: /transcript cut after 2 events/ });
  t.equal(cut.summary.records, 4, 'the summary still covers every record');
  // The one slot is given back once each response is out.
  t.equal((await few.call('/api/sessions/s-ci/transcript', few.tokens.auditor)).status, 200, 'a second transcript after the first');
  t.equal((await few.call('/api/sessions/s-ci/verify', few.tokens.auditor)).status, 200, 'and a verification');

  // Clients that hang up before or while their transcript is made do not keep the slot.
  for (let i = 0; i < 5; i++) {
    const ac = new AbortController();
    const gone = fetch(`${few.base}/api/sessions/s-ci/transcript`, { headers: { authorization: `Bearer ${few.tokens.auditor}` }, signal: ac.signal }).catch(() => undefined);
    setTimeout(() => ac.abort(), i);
    await gone;
  }
  await new Promise((r) => setTimeout(r, 300));
  t.equal((await few.call('/api/sessions/s-ci/transcript', few.tokens.auditor)).status, 200, 'the slot is free after five clients hung up');

  const none = await setup(t, { concurrent: 0 });
  for (const p of ['/api/sessions/s-ci/transcript', '/api/sessions/s-ci/verify']) {
    const busy = await none.call(p, none.tokens.auditor);
    t.equal(busy.status, 503, p);
    t.match(JSON.parse(busy.text), { code: 'SLUICE_API_BUSY', message: /try again shortly/ });
  }
});
