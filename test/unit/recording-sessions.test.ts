/**
 * The sessions index (migration 3 and the store's session methods) and the
 * offline CLI: `sluice sessions` (table and --json) and `sluice verify`
 * (exit 0 when intact and complete, 1 otherwise, 2 on usage).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import t, { type Test } from 'tap';
import { sessionsCommand, verifyCommand, type SessionsIo } from '../../src/cli/sessions.js';
import { loadRecordingPublicKeys, openRecordingKey } from '../../src/recording/keys.js';
import { CRASH_CLOSE_REASON, markCleanStop, recoverAfterAbruptStop, recoverSessionIndex } from '../../src/recording/recover.js';
import { RecordingWriter } from '../../src/recording/writer.js';
import { datePath, encodeHeader, type RecordingHeader } from '../../src/recording/format.js';
import { MIGRATIONS, migrate } from '../../src/store/migrations.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import type { SessionRecord } from '../../src/store/types.js';
import type { Logger } from '../../src/log.js';

function tempDir(t: Test): string {
  const d = mkdtempSync(join(tmpdir(), 'sluice-sessions-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

function session(over: Partial<SessionRecord> = {}): SessionRecord {
  return {
    id: 's1',
    subject: 'ci-job',
    groups: ['ci', 'deploy'],
    issuer: 'https://issuer.example',
    tokenIdHash: 'cd'.repeat(32),
    target: 'app-db',
    protocol: 'postgres',
    clientAddress: '10.0.0.5:41000',
    startedAt: '2025-01-01T00:00:00.000Z',
    bytesIn: 0,
    bytesOut: 0,
    statementsAllowed: 0,
    statementsDenied: 0,
    approvals: 0,
    maskingCounts: {},
    complete: false,
    ...over,
  };
}

t.test('migration 3 adds the sessions table to an existing database', async (t) => {
  const dir = tempDir(t);
  const db = new Database(join(dir, 'old.db'));
  migrate(db, { upTo: 2 });
  t.notOk(db.prepare("SELECT name FROM sqlite_master WHERE name = 'sessions'").get());
  const m = migrate(db);
  t.same(m, { from: 2, to: MIGRATIONS[MIGRATIONS.length - 1]!.version, applied: MIGRATIONS.filter((s) => s.version > 2).map((s) => s.version) });
  const cols = (db.prepare('PRAGMA table_info(sessions)').all() as { name: string }[]).map((c) => c.name);
  for (const c of ['id', 'subject', 'groups', 'issuer', 'token_id_hash', 'target', 'protocol', 'client_address', 'started_at', 'ended_at',
    'close_reason', 'bytes_in', 'bytes_out', 'statements_allowed', 'statements_denied', 'approvals', 'masking_counts',
    'recording_path', 'recording_size', 'final_hash', 'complete']) {
    t.ok(cols.includes(c), `column ${c}`);
  }
  db.close();
});

t.test('upsert, get, list with filters, delete before', async (t) => {
  const dir = tempDir(t);
  const store = openSqliteStore(dir);
  t.teardown(() => store.close());
  store.upsertSession(session({ id: 'a', startedAt: '2025-01-01T00:00:00.000Z' }));
  store.upsertSession(session({ id: 'b', subject: 'agent-7', target: 'cache', protocol: 'redis', startedAt: '2025-01-02T00:00:00.000Z' }));
  store.upsertSession(session({ id: 'c', startedAt: '2025-01-03T01:00:00+01:00' })); // an offset: compared as an instant
  t.same(store.getSession('a'), session({ id: 'a' }), 'round trip, optional fields absent stay absent');
  t.equal(store.getSession('nope'), undefined);

  const end = session({
    id: 'a', endedAt: '2025-01-01T00:10:00.000Z', closeReason: 'client closed', bytesIn: 100, bytesOut: 2000,
    statementsAllowed: 5, statementsDenied: 1, approvals: 1, maskingCounts: { email: 3 },
    recordingPath: '/x/a.sluicerec', recordingSize: 4096, finalHash: 'ff'.repeat(32), complete: true,
  });
  store.upsertSession(end);
  t.same(store.getSession('a'), end, 'the end-of-session upsert replaces the row');

  t.same(store.listSessions({}).map((s) => s.id), ['c', 'b', 'a'], 'newest first');
  t.same(store.listSessions({ subject: 'ci-job' }).map((s) => s.id), ['c', 'a']);
  t.same(store.listSessions({ target: 'cache' }).map((s) => s.id), ['b']);
  t.same(store.listSessions({ since: '2025-01-02T00:00:00Z' }).map((s) => s.id), ['c', 'b']);
  t.same(store.listSessions({ limit: 1 }).map((s) => s.id), ['c']);
  t.throws(() => store.listSessions({ since: 'yesterday' }), RangeError, 'a bad time filter is refused, not ignored');
  t.same([...store.sessionRecordings()], [{ id: 'a', recordingPath: '/x/a.sluicerec' }], 'sessionRecordings: the rows with a recording, unpaged');

  // a ended 2025-01-01T00:10; b never ended (a live session: start-up recovery closes those a
  // crash left), started 01-02; c started 01-03 (00:00Z).
  t.equal(store.deleteSessionsBefore('2025-01-02T12:00:00Z'), 1);
  t.same(store.listSessions({}).map((s) => s.id), ['c', 'b'], 'a session still open is kept, however old');
});

function capture(env: NodeJS.ProcessEnv = {}, isTTY = false) {
  const out: string[] = [];
  const err: string[] = [];
  const io: SessionsIo = {
    stdout: { write: (s: string) => out.push(s) },
    stderr: { write: (s: string) => err.push(s), isTTY },
    env: { APP_DB_PASSWORD: 'not-used', ...env },
  };
  return { io, out: () => out.join(''), err: () => err.join('') };
}

t.test('session rows are written together, a session\'s later row replacing its earlier one', async (t) => {
  const dir = tempDir(t);
  const store = openSqliteStore(dir);
  // Count the row writes the index takes, through a second connection's triggers.
  const db = new Database(join(dir, 'sluice.db'));
  t.teardown(() => db.close());
  db.exec(`CREATE TABLE row_writes (id TEXT);
    CREATE TRIGGER count_insert AFTER INSERT ON sessions BEGIN INSERT INTO row_writes VALUES (new.id); END;
    CREATE TRIGGER count_update AFTER UPDATE ON sessions BEGIN INSERT INTO row_writes VALUES (new.id); END;`);
  const ids = (): string[] => (db.prepare('SELECT id FROM row_writes ORDER BY rowid').pluck().all() as string[]);
  store.upsertSession(session({ id: 'short' }));
  store.upsertSession(session({ id: 'other' }));
  store.upsertSession(session({ id: 'short', endedAt: '2025-01-01T00:00:01.000Z', closeReason: 'client closed', complete: true }));
  t.same(ids(), [], 'nothing is written while the rows wait');
  store.close();
  t.same(ids(), ['short', 'other'], 'close writes what waited, one row write per session');
  const row = db.prepare('SELECT ended_at, close_reason, complete FROM sessions WHERE id = ?').get('short');
  t.same(row, { ended_at: '2025-01-01T00:00:01.000Z', close_reason: 'client closed', complete: 1 }, 'the later row is the one written');
});

t.test('session rows reach the database on their own, and reads through the store never miss one', async (t) => {
  const dir = tempDir(t);
  const store = openSqliteStore(dir);
  t.teardown(() => store.close());
  const db = new Database(join(dir, 'sluice.db'), { readonly: true });
  t.teardown(() => db.close());
  store.upsertSession(session({ id: 'read-through' }));
  t.equal(store.getSession('read-through')?.id, 'read-through', 'a read through the store writes the queue first');
  store.upsertSession(session({ id: 'timer' }));
  const seen = async (): Promise<boolean> => {
    for (let i = 0; i < 100; i++) {
      if (db.prepare('SELECT 1 FROM sessions WHERE id = ?').get('timer')) return true;
      await new Promise((r) => setTimeout(r, 50));
    }
    return false;
  };
  t.ok(await seen(), 'another process (the CLI) sees the row without a read or a close through this store');
});

t.test('a session row that cannot be written waits and is written once the database takes it', async (t) => {
  const dir = tempDir(t);
  const logged: Array<{ level: string; msg: string }> = [];
  const logger = {
    error: (_o: unknown, msg: string) => logged.push({ level: 'error', msg }),
    info: (_o: unknown, msg: string) => logged.push({ level: 'info', msg }),
  };
  const store = openSqliteStore(dir, { logger: logger as unknown as Logger });
  logged.length = 0; // the migration's line
  t.teardown(() => store.close());
  const db = new Database(join(dir, 'sluice.db'));
  t.teardown(() => db.close());
  db.exec(`CREATE TABLE refuse (x);
    CREATE TRIGGER refuse_rows BEFORE INSERT ON sessions WHEN (SELECT count(*) FROM refuse) > 0
      BEGIN SELECT RAISE(ABORT, 'the disk is full'); END;
    INSERT INTO refuse VALUES (1);`);
  store.upsertSession(session({ id: 'late' }));
  store.upsertSession(session({ id: 'later' }));
  t.same(store.listSessions({}), [], 'the write failed: nothing is in the index yet');
  t.same(store.listSessions({}), [], 'and fails again');
  t.same(logged, [{ level: 'error', msg: 'session index rows could not be written; retrying' }], 'the failure is logged once, not per attempt');
  db.exec('DELETE FROM refuse');
  t.same(store.listSessions({}).map((s) => s.id).sort(), ['late', 'later'], 'both rows are written once the database takes them');
  t.same(logged.map((l) => l.msg).slice(1), ['session index writable again'], 'and the recovery is logged');
  db.exec('INSERT INTO refuse VALUES (1)');
  store.upsertSession(session({ id: 'at-shutdown' }));
  logged.length = 0;
  store.close();
  t.same(
    logged.map((l) => l.msg),
    ['session index rows could not be written; retrying', 'state database closed with session index rows it could not write'],
    'a row still refused at shutdown is reported lost, not dropped silently',
  );
});

t.test('a timed write of the index waits for a locked database in the commit thread, not on the event loop', async (t) => {
  const dir = tempDir(t);
  const logged: string[] = [];
  const logger = { error: (_o: unknown, msg: string) => logged.push(msg), info: (_o: unknown, msg: string) => logged.push(msg) };
  const store = openSqliteStore(dir, { logger: logger as unknown as Logger });
  t.teardown(() => store.close());
  logged.length = 0; // the migration's line
  const db = new Database(join(dir, 'sluice.db'));
  t.teardown(() => db.close());
  const written = async (id: string): Promise<boolean> => {
    for (let i = 0; i < 200; i++) {
      if (db.prepare('SELECT 1 FROM sessions WHERE id = ?').get(id)) return true;
      await new Promise((r) => setTimeout(r, 25));
    }
    return false;
  };
  store.upsertSession(session({ id: 'first' }));
  t.ok(await written('first'), 'the first timed write starts the thread and lands');

  // This thread (the event loop) holds the write lock. A timed write made here would wait for it
  // in SQLite's busy handler, which cannot end while this thread waits: SQLITE_BUSY after 5 s.
  db.exec('BEGIN IMMEDIATE');
  store.upsertSession(session({ id: 'while-locked' }));
  await new Promise((r) => setTimeout(r, 400)); // the timed write is due after 100 ms
  t.equal(db.prepare('SELECT 1 FROM sessions WHERE id = ?').get('while-locked'), undefined, 'not written while the lock is held');
  db.exec('COMMIT');
  t.ok(await written('while-locked'), 'written once the lock is released');
  t.same(logged, [], 'nothing failed: the commit thread waited for the lock');
});

t.test('CLI: sessions and verify over a state dir', async (t) => {
  const dir = tempDir(t);
  const stateDir = join(dir, 'state');
  const config = join(dir, 'sluice.yaml');
  writeFileSync(
    config,
    `state_dir: ${JSON.stringify(stateDir)}
identity: { dev_issuer: true }
targets:
  app-db:
    protocol: postgres
    listen: 127.0.0.1:0
    allow_insecure_loopback: true
    upstream: { host: 127.0.0.1, port: 5432, database: app, user: app_ci, password_env: APP_DB_PASSWORD, tls: disable }
policies:
  - name: ci-jobs
    subjects: { groups: [ci] }
    targets: [app-db]
`,
  );
  const key = await openRecordingKey(stateDir);
  const store = openSqliteStore(stateDir);
  const paths: Record<string, string> = {};
  const now = Date.now();
  for (const [id, subject, ago] of [['good1', 'ci-job', 60_000], ['good2', 'agent-7', 7_200_000]] as const) {
    const startedAt = new Date(now - ago).toISOString();
    const w = await RecordingWriter.open({ stateDir, key, onFailure: () => undefined, meta: { sessionId: id, subject, target: 'app-db', protocol: 'postgres', groups: [], issuer: 'i', startedAt } });
    w.record('client', Buffer.from('Q\0\0\0\x0dSELECT 1\0', 'latin1'));
    w.record('server', Buffer.from('Z\0\0\0\x05I', 'latin1'));
    const r = await w.close({ closeReason: 'client closed' });
    paths[id] = r.path;
    store.upsertSession(session({ id, subject, startedAt, endedAt: new Date().toISOString(), recordingPath: r.path, recordingSize: r.size, finalHash: r.finalHash, complete: r.complete }));
  }
  store.close();

  t.test('sessions --json: one object per line, filters', async (t) => {
    const c = capture();
    t.equal(await sessionsCommand(['--json', '--config', config], c.io), 0, c.err());
    const rows = c.out().trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    t.same(rows.map((r) => r.id), ['good1', 'good2']);
    for (const k of ['id', 'subject', 'target', 'started_at', 'ended_at', 'recording_path', 'complete']) t.ok(k in rows[0]!, `has ${k}`);
    t.equal(rows[0]!.recording_path, paths.good1);
    t.equal(rows[0]!.complete, true);

    const f = capture();
    t.equal(await sessionsCommand(['--json', '--since', '1h', '--config', config], f.io), 0);
    t.same(f.out().trim().split('\n').map((l) => (JSON.parse(l) as { id: string }).id), ['good1'], '--since 1h');
    const s = capture();
    t.equal(await sessionsCommand(['--json', '--subject', 'agent-7', '--config', config], s.io), 0);
    t.same(s.out().trim().split('\n').map((l) => (JSON.parse(l) as { id: string }).id), ['good2'], '--subject');
  });

  t.test('sessions: a table', async (t) => {
    const c = capture();
    t.equal(await sessionsCommand(['--config', config], c.io), 0);
    t.match(c.out(), /^ID\s+SUBJECT\s+TARGET/);
    t.match(c.out(), /good1\s+ci-job\s+app-db/);
    const bad = capture();
    t.equal(await sessionsCommand(['--since', 'soon', '--config', config], bad.io), 2, 'a bad --since is a usage error');
    t.equal(await sessionsCommand(['--bogus'], capture().io), 2);
  });

  t.test('verify: exit 0 when intact, 1 when tampered or incomplete, names the record', async (t) => {
    let c = capture();
    t.equal(await verifyCommand(['good1', '--config', config], c.io), 0, c.out());
    t.match(c.out(), /^good1: OK: 2 records, complete/);

    c = capture({}, true);
    t.equal(await verifyCommand(['--all', '--config', config], c.io), 0);
    t.match(c.err(), /verifying 2\/2/, 'progress on a TTY');
    const quiet = capture({}, false);
    await verifyCommand(['--all', '--config', config], quiet.io);
    t.equal(quiet.err(), '', 'no progress when stderr is not a TTY');

    const bytes = readFileSync(paths.good2!);
    const flipped = Buffer.from(bytes);
    flipped[bytes.length - 200]! ^= 0x40;
    writeFileSync(paths.good2!, flipped);
    c = capture();
    t.equal(await verifyCommand(['good2', '--config', config], c.io), 1);
    t.match(c.out(), /good2: TAMPERED: record \d+ at offset \d+: /);
    c = capture();
    t.equal(await verifyCommand(['--all', '--json', '--config', config], c.io), 1, 'one bad recording fails --all');
    const lines = c.out().trim().split('\n').map((l) => JSON.parse(l) as { id: string; ok: boolean });
    t.same(lines.map((l) => [l.id, l.ok]).sort(), [['good1', true], ['good2', false]]);

    // The footer cut off: alone, the file reads as a crash (INCOMPLETE); its index row says it
    // was closed, so it was cut afterwards (a crash's own INCOMPLETE: recording-crash.test.ts).
    writeFileSync(paths.good2!, bytes.subarray(0, bytes.length - 150));
    c = capture();
    t.equal(await verifyCommand(['good2', '--config', config], c.io), 1, 'incomplete is not "all good"');
    t.match(c.out(), /good2: TAMPERED: offset \d+: the sessions index records this recording closed with its footer and trailer \(\d+ bytes\), but the file ends before them: cut after it was closed/);

    // good1's whole, signed recording copied over good2's: each file is sound, but not good2's.
    writeFileSync(paths.good2!, readFileSync(paths.good1!));
    c = capture();
    t.equal(await verifyCommand(['good2', '--config', config], c.io), 1, "another session's recording in its place fails");
    t.match(c.out(), /good2: TAMPERED: offset 0: the file is the recording of session good1, not of good2: swapped/);
    c = capture();
    t.equal(await verifyCommand(['--all', '--json', '--config', config], c.io), 1, 'and fails --all');

    // A FIFO in a recording's place does not hang verify.
    rmSync(paths.good2!);
    execFileSync('mkfifo', [paths.good2!]);
    c = capture();
    t.equal(await verifyCommand(['good2', '--config', config], c.io), 1);
    t.match(c.out(), /good2: TAMPERED: offset 0: not a regular file/);
    rmSync(paths.good2!);

    c = capture();
    t.equal(await verifyCommand(['missing', '--config', config], c.io), 1);
    t.match(c.out(), /no recording found/);
    t.equal(await verifyCommand(['--config', config], capture().io), 2, 'neither an ID nor --all');
    t.equal(await verifyCommand(['../x', '--config', config], capture().io), 2, 'not a session id');
  });
});

t.test('after an abrupt stop, the next start finishes the index from the recordings', async (t) => {
  const stateDir = tempDir(t);
  const key = await openRecordingKey(stateDir);
  const store = openSqliteStore(stateDir);
  t.teardown(() => store.close());
  const logged: unknown[] = [];
  const logger = { warn: (...args: unknown[]) => logged.push(args), error: () => undefined } as unknown as Logger;
  const startedAt = new Date().toISOString();
  const record = async (id: string, subject: string): Promise<string> => {
    const w = await RecordingWriter.open({ stateDir, key, onFailure: () => undefined, meta: { sessionId: id, subject, target: 'cache', protocol: 'redis', groups: ['ci'], issuer: 'i', startedAt } });
    w.record('client', Buffer.from('*1\r\n$4\r\nPING\r\n'));
    w.record('server', Buffer.from('+PONG\r\n'));
    return (await w.close({ closeReason: 'client closed the connection' })).path;
  };
  // Ended, but its row was still waiting when the process died: no row at all.
  const ended = await record('ended', 'ci-job');
  // Admitted (its admission row was written), then the process died mid-session: no footer.
  const cut = await record('cut', 'ci-job');
  writeFileSync(cut, readFileSync(cut).subarray(0, 200));
  store.upsertSession(session({ id: 'cut', subject: 'ci-job', target: 'cache', protocol: 'redis', startedAt, recordingPath: cut }));
  // A failed login whose token did not verify: a recording, never a row.
  await record('nobody', '');
  // A session from before, ended cleanly: left as it is.
  store.upsertSession(session({ id: 'old', startedAt: '2025-01-01T00:00:00.000Z', endedAt: '2025-01-01T00:01:00.000Z', closeReason: 'client closed the connection', complete: true }));

  const keys = await loadRecordingPublicKeys(stateDir);
  t.same(await recoverSessionIndex(stateDir, store, keys, logger), { indexed: 1, closed: 1, unreadable: 0 });
  t.equal(logged.length, 1, 'logged once');

  const e = store.getSession('ended');
  t.match(e, { subject: 'ci-job', groups: ['ci'], target: 'cache', protocol: 'redis', startedAt, closeReason: 'client closed the connection', complete: true, recordingPath: ended });
  t.equal(e?.bytesIn, 14, 'bytes from the footer');
  t.equal(e?.bytesOut, 7);
  t.match(e?.finalHash, /^[0-9a-f]{64}$/);
  t.ok(e?.endedAt, 'ended when its footer says');

  const c = store.getSession('cut');
  t.match(c, { closeReason: CRASH_CLOSE_REASON, complete: false, recordingSize: 200 });
  t.ok(c?.endedAt && Date.parse(c.endedAt) >= Date.parse(startedAt) - 1000, 'ended when its recording was last written');
  t.equal(store.getSession('nobody'), undefined, 'no row for a login that never verified');
  t.equal(store.getSession('old')?.endedAt, '2025-01-01T00:01:00.000Z');
  t.same(store.listSessions({ open: true }), [], 'no session is left open');

  t.same(await recoverSessionIndex(stateDir, store, keys, logger), { indexed: 0, closed: 0, unreadable: 0 }, 'a second pass finds nothing to do');
  t.equal(logged.length, 1, 'and logs nothing');
});

t.test('after an abrupt stop, a crafted header neither stops the index nor hides later recordings', async (t) => {
  const stateDir = tempDir(t);
  const key = await openRecordingKey(stateDir);
  const store = openSqliteStore(stateDir);
  t.teardown(() => store.close());
  const logger = { warn: () => undefined, error: () => undefined, info: () => undefined } as unknown as Logger;
  const header = (over: Record<string, unknown>): Buffer =>
    encodeHeader({ version: 3, sessionId: 'x', target: 'cache', protocol: 'redis', subject: 's', groups: [], issuer: 'i', startedAt: new Date().toISOString(), keyId: key.keyId, monotonicStart: '0', ...over } as RecordingHeader);
  const place = (path: string[], bytes: Buffer): void => {
    mkdirSync(join(stateDir, 'recordings', ...path.slice(0, -1)), { recursive: true });
    writeFileSync(join(stateDir, 'recordings', ...path), bytes);
  };
  // A valid CRC over a subject that is a list: as a row, the database refused it, and every later
  // batch of rows with it, for the rest of the process's life.
  place([...datePath(new Date().toISOString()), 'forged.sluicerec'], header({ sessionId: 'forged', subject: ['a'] }));
  // Well formed, dated in the year 9999: the newest row, from which the next recovery picks its first day.
  place(['9999', '12', '31', 'future.sluicerec'], header({ sessionId: 'future', startedAt: '9999-12-31T00:00:00.000Z' }));
  const keys = await loadRecordingPublicKeys(stateDir);
  t.same(await recoverSessionIndex(stateDir, store, keys, logger), { indexed: 1, closed: 0, unreadable: 0 }, 'the dated one indexed, the forged one not');
  t.equal(store.getSession('forged'), undefined);
  store.upsertSession(session({ id: 'after', endedAt: '2025-01-01T00:01:00.000Z', closeReason: 'client closed the connection', complete: true }));
  t.equal(store.getSession('after')?.id, 'after', 'the index still takes rows');

  // A session recorded since, whose row the next abrupt stop lost: found in today's directory.
  const w = await RecordingWriter.open({
    stateDir, key, onFailure: () => undefined,
    meta: { sessionId: 'later', subject: 'ci-job', target: 'cache', protocol: 'redis', groups: ['ci'], issuer: 'i', startedAt: new Date().toISOString() },
  });
  w.record('client', Buffer.from('*1\r\n$4\r\nPING\r\n'));
  await w.close({ closeReason: 'client closed the connection' });
  t.same(await recoverSessionIndex(stateDir, store, keys, logger), { indexed: 1, closed: 0, unreadable: 0 });
  t.equal(store.getSession('later')?.subject, 'ci-job');
});

t.test('after an abrupt stop, an index row never points recovery outside the recordings, nor does a date out of range stop it', async (t) => {
  const stateDir = tempDir(t);
  const key = await openRecordingKey(stateDir);
  const store = openSqliteStore(stateDir);
  t.teardown(() => store.close());
  const errors: unknown[] = [];
  const logger = { warn: () => undefined, error: (...args: unknown[]) => errors.push(args), info: () => undefined } as unknown as Logger;
  const keys = await loadRecordingPublicKeys(stateDir);
  // A well-formed header dated at the start of Date's range: once indexed, the newest row, from
  // whose day (less one) the next recovery starts looking.
  mkdirSync(join(stateDir, 'recordings', '1970', '01', '01'), { recursive: true });
  writeFileSync(
    join(stateDir, 'recordings', '1970', '01', '01', 'ancient.sluicerec'),
    encodeHeader({ version: 3, sessionId: 'ancient', target: 'cache', protocol: 'redis', subject: 's', groups: [], issuer: 'i', startedAt: '-271821-04-20T00:00:00.000Z', keyId: key.keyId, monotonicStart: '0' } as RecordingHeader),
  );
  t.same(await recoverSessionIndex(stateDir, store, keys, logger), { indexed: 1, closed: 0, unreadable: 0 });
  t.same(await recoverSessionIndex(stateDir, store, keys, logger), { indexed: 0, closed: 0, unreadable: 0 }, 'the next start does not throw');

  // An edited or restored index: an open row whose recording is the gateway's private key.
  store.upsertSession(session({ id: 'edited', startedAt: new Date().toISOString(), recordingPath: join(stateDir, 'recording-key', 'private.pem') }));
  t.same(await recoverSessionIndex(stateDir, store, keys, logger), { indexed: 0, closed: 1, unreadable: 1 });
  const row = store.getSession('edited');
  t.match(row, { closeReason: CRASH_CLOSE_REASON, complete: false });
  t.equal(row?.recordingSize, undefined, 'the key file was not read as its recording');
  t.match(JSON.stringify(errors), /not a recording file inside the state directory/);
});

t.test('the index is finished only after an abrupt stop, and never under a gateway still running', async (t) => {
  const stateDir = tempDir(t);
  const store = openSqliteStore(stateDir);
  t.teardown(() => store.close());
  const warned: string[] = [];
  const logger = { warn: (_o: unknown, msg: string) => warned.push(msg), error: () => undefined } as unknown as Logger;
  const marker = join(stateDir, 'gateway.running');
  const keys = new Map();
  const open = session({ id: 'live', startedAt: new Date().toISOString() });

  t.equal(await recoverAfterAbruptStop(stateDir, store, keys, logger), undefined, 'a first start has nothing to finish');
  t.equal(readFileSync(marker, 'utf8').trim(), String(process.pid), 'the state directory is marked as in use');
  await markCleanStop(stateDir);
  t.throws(() => readFileSync(marker), 'a clean stop removes the mark');

  store.upsertSession(open);
  t.equal(await recoverAfterAbruptStop(stateDir, store, keys, logger), undefined, 'after a clean stop nothing is read');
  t.equal(store.getSession('live')?.endedAt, undefined, 'an open row is left as it is');

  // A gateway still running on the directory (here: this test's parent process).
  writeFileSync(marker, `${process.ppid}\n`);
  t.equal(await recoverAfterAbruptStop(stateDir, store, keys, logger), undefined);
  t.equal(store.getSession('live')?.endedAt, undefined, "another gateway's live session is not closed");
  t.equal(readFileSync(marker, 'utf8').trim(), String(process.ppid), 'nor its mark taken');
  t.match(warned, ['another gateway runs on this state directory; its sessions are not checked']);

  // A mark left by a process that is gone: it stopped abruptly.
  writeFileSync(marker, '2147483646\n');
  t.match(await recoverAfterAbruptStop(stateDir, store, keys, logger), { closed: 1 });
  t.match(store.getSession('live'), { closeReason: CRASH_CLOSE_REASON, complete: false });
  t.equal(readFileSync(marker, 'utf8').trim(), String(process.pid), 'then marked as this process\'s');
});
