/**
 * The recorder's limits: the size cap (stated behaviour: the recording ends
 * with a truncated marker and a signed footer, onFailure ends the session),
 * write failures (fail closed, recorderHealth() not ok until a write
 * succeeds again), and retention.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { getPriority, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import t, { type Test } from 'tap';
import type { SluiceError } from '../../src/errors.js';
import type { RecordingMeta } from '../../src/recording/format.js';
import { loadRecordingPublicKeys, openRecordingKey } from '../../src/recording/keys.js';
import { readRecording } from '../../src/recording/reader.js';
import { purgeRecordings } from '../../src/recording/retention.js';
import { verifyRecording } from '../../src/recording/verify.js';
import { sealThread } from '../../src/recording/seal-thread.js';
import { writerSettings } from '../../src/recording/tap.js';
import { RecordingWriter, recorderHealth } from '../../src/recording/writer.js';
import { openSqliteStore } from '../../src/store/sqlite.js';

function tempDir(t: Test): string {
  const d = mkdtempSync(join(tmpdir(), 'sluice-reclim-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

const meta = (sessionId: string, startedAt = new Date().toISOString()): RecordingMeta => ({
  sessionId,
  target: 'cache',
  protocol: 'redis',
  subject: 'agent-7',
  groups: ['agents'],
  issuer: 'https://issuer.example',
  startedAt,
});

/** Nice value of each thread of this process, by thread id (Linux: /proc/self/task/<tid>/stat, field 19). */
function threadNices(): Map<number, number> {
  const nices = new Map<number, number>();
  for (const tid of readdirSync('/proc/self/task')) {
    const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
    // Fields after the command name, which is in parentheses and may hold spaces: state is field 3.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    nices.set(Number(tid), Number(fields[19 - 3]));
  }
  return nices;
}

t.test('the seal thread runs at nice 19; the event loop keeps the priority it had', async (t) => {
  const stateDir = tempDir(t);
  const key = await openRecordingKey(stateDir);
  const mainBefore = getPriority();
  const w = await RecordingWriter.open({ stateDir, meta: meta('niced'), key, onFailure: () => undefined });
  w.record('client', Buffer.from('PING\r\n'));
  const res = await w.close({ closeReason: 'client closed' });
  t.equal(res.complete, true, 'the recording was sealed by the thread');
  const nices = threadNices();
  t.equal(nices.get(process.pid), mainBefore, 'the main thread (tid = pid) is not reniced');
  t.equal(getPriority(), mainBefore);
  const niced = [...nices].filter(([tid, nice]) => tid !== process.pid && nice === 19);
  t.equal(niced.length, 1, `one thread at nice 19 (threads: ${JSON.stringify([...nices])})`);
});

t.test('recording.fsync reaches the writer: close (and no setting) fsyncs, off does not', async (t) => {
  const base = { enabled: true, maxBytes: 1 << 20, flushIntervalMs: 200, retentionMs: 0 };
  t.equal(writerSettings(base).fsyncAtClose, true, 'no setting: close');
  t.equal(writerSettings({ ...base, fsync: 'close' }).fsyncAtClose, true);
  t.equal(writerSettings({ ...base, fsync: 'off' }).fsyncAtClose, false);
});

t.test('fsync at close: on by default; with fsyncAtClose false the OS writes back, and the recording is as complete', async (t) => {
  const stateDir = tempDir(t);
  const key = await openRecordingKey(stateDir);
  const keys = await loadRecordingPublicKeys(stateDir);
  for (const [id, fsyncAtClose, synced] of [['synced', undefined, true], ['unsynced', false, false]] as const) {
    const w = await RecordingWriter.open({ stateDir, meta: meta(id), key, onFailure: () => undefined, ...(fsyncAtClose === undefined ? {} : { fsyncAtClose }) });
    w.record('client', Buffer.from('SET k v\r\n'));
    w.record('server', Buffer.from('+OK\r\n'));
    const res = await w.close({ closeReason: 'client closed' });
    t.equal(res.synced, synced, `${id}: fsynced after the footer: ${synced}`);
    const v = await verifyRecording(res.path, keys);
    t.same({ ok: v.ok, complete: v.complete, records: v.footer?.recordCount }, { ok: true, complete: true, records: 2 }, `${id}: verifies complete`);
  }
});

t.test('size cap: truncated marker, signed footer, onFailure once, nothing recorded after', async (t) => {
  const stateDir = tempDir(t);
  const key = await openRecordingKey(stateDir);
  const failures: SluiceError[] = [];
  const maxBytes = 64 * 1024;
  const w = await RecordingWriter.open({ stateDir, meta: meta('capped'), key, maxBytes, onFailure: (e) => failures.push(e) });
  for (let i = 0; i < 100; i++) w.record(i % 2 ? 'server' : 'client', Buffer.alloc(1024, i));
  await new Promise((r) => setImmediate(r));
  t.equal(failures.length, 1, 'onFailure called once');
  t.equal(failures[0]?.code, 'SLUICE_RECORDING_SIZE_LIMIT');
  t.equal(w.truncated, true);
  t.equal(w.failed, false, 'a cap is not a write failure');
  t.equal(recorderHealth().ok, true, 'the recorder stays healthy');
  const res = await w.close({ closeReason: 'recording size cap' });
  t.ok(res.size <= maxBytes, `file ${res.size} <= cap ${maxBytes}`);
  t.equal(res.complete, true);
  t.equal(res.truncated, true);

  const types: string[] = [];
  let dataBytes = 0;
  for await (const e of readRecording(res.path)) {
    types.push(e.type);
    if (e.type === 'data') dataBytes += e.bytes.length;
  }
  t.same(types.slice(-2), ['truncated', 'footer'], 'the marker precedes the footer');
  t.ok(dataBytes > 50 * 1024 && dataBytes < maxBytes, `recorded ${dataBytes} bytes up to the cap`);
  const v = await verifyRecording(res.path, await loadRecordingPublicKeys(stateDir));
  t.same({ ok: v.ok, complete: v.complete, truncated: v.footer?.truncated }, { ok: true, complete: true, truncated: true });
});

t.test('size cap reached when a checkpoint is due: the marker is followed by the footer alone, and verifies', async (t) => {
  const stateDir = tempDir(t);
  const key = await openRecordingKey(stateDir);
  // A checkpoint due after every record: the batch that holds the marker would have taken one.
  const w = await RecordingWriter.open({ stateDir, meta: meta('capped-cp'), key, maxBytes: 64 * 1024, checkpointEveryRecords: 1, onFailure: () => undefined });
  for (let i = 0; i < 100; i++) w.record(i % 2 ? 'server' : 'client', Buffer.alloc(1024, i));
  const res = await w.close({ closeReason: 'recording size cap' });
  const types: string[] = [];
  for await (const e of readRecording(res.path)) types.push(e.type);
  t.same(types.slice(-2), ['truncated', 'footer'], 'nothing between the marker and the footer');
  const v = await verifyRecording(res.path, await loadRecordingPublicKeys(stateDir));
  t.same({ ok: v.ok, complete: v.complete, truncated: v.footer?.truncated, bad: v.firstBad }, { ok: true, complete: true, truncated: true, bad: undefined });
});

t.test('backlog: past maxBacklogBytes the session is told to stop reading, and to read again once the thread caught up', async (t) => {
  const stateDir = tempDir(t);
  const key = await openRecordingKey(stateDir);
  const events: boolean[] = [];
  const maxBacklogBytes = 1024 * 1024;
  const w = await RecordingWriter.open({ stateDir, meta: meta('backlog'), key, maxBacklogBytes, onBacklog: (behind) => events.push(behind), onFailure: () => undefined });
  const chunk = Buffer.alloc(32 * 1024, 7);
  const until = async (ready: () => boolean): Promise<void> => {
    for (let i = 0; i < 500 && !ready(); i++) await new Promise((r) => setTimeout(r, 10));
  };

  // Half the bound, written while the thread keeps up: no signal.
  for (let i = 0; i < 16; i++) w.record('server', chunk);
  await until(() => w.backlogBytes === 0);
  t.equal(w.backlogBytes, 0, 'written');
  t.same(events, [], 'below the bound nothing is signalled');

  const release = sealThread().stall();
  for (let i = 0; i < 48; i++) w.record('server', chunk);
  t.ok(w.backlogBytes >= maxBacklogBytes, `${w.backlogBytes} bytes unwritten`);
  t.same(events, [], 'not from inside record()');
  await new Promise((r) => process.nextTick(r));
  t.same(events, [true], 'behind: the session stops reading');
  // Two flush intervals with the thread stalled: still behind.
  await new Promise((r) => setTimeout(r, 400));
  t.same(events, [true], 'no release while nothing is written');
  t.ok(w.backlogBytes >= maxBacklogBytes, 'the backlog is all still there');

  release();
  await until(() => events.length === 2);
  t.same(events, [true, false], 'caught up once the thread wrote the backlog');
  t.ok(w.backlogBytes < maxBacklogBytes / 4, `${w.backlogBytes} bytes left`);
  const res = await w.close({ closeReason: 'client closed' });
  t.equal(res.complete, true);
  t.equal(res.bytesGatewayToClient, 64 * chunk.length);
  t.equal((await readRecording(res.path).bytesOf('server')).length, 64 * chunk.length, 'every byte recorded');
});

t.test('cannot create the recording: open fails typed, health not ok, recovers on the next good write', async (t) => {
  const good = tempDir(t);
  const bad = tempDir(t);
  writeFileSync(join(bad, 'recordings'), 'a file where the directory should be');
  const key = await openRecordingKey(good);
  await t.rejects(RecordingWriter.open({ stateDir: bad, meta: meta('nodir'), key, onFailure: () => undefined }), {
    code: 'SLUICE_RECORDING_WRITE_FAILED',
  });
  t.equal(recorderHealth().ok, false);
  t.match(recorderHealth().lastError, /ENOTDIR/);
  t.equal(RecordingWriter.healthy(), false);
  t.equal(await RecordingWriter.probe(bad), false, 'a probe of the broken dir fails');
  t.equal(recorderHealth().ok, false);

  t.equal(await RecordingWriter.probe(good), true, 'a probe where writes work');
  t.same(recorderHealth(), { ok: true }, 'healthy again');
  t.same(
    (await import('node:fs')).readdirSync(join(good, 'recordings')).filter((n) => n.startsWith('.probe')),
    [],
    'the probe leaves no file behind',
  );

  await t.rejects(RecordingWriter.open({ stateDir: bad, meta: meta('nodir2'), key, onFailure: () => undefined }));
  t.equal(recorderHealth().ok, false);
  const w = await RecordingWriter.open({ stateDir: good, meta: meta('ok1'), key, onFailure: () => undefined });
  t.equal(recorderHealth().ok, true, 'any successful write clears it');
  await w.close({ closeReason: 'done' });
});

const writerUrl = new URL('../../src/recording/writer.js', import.meta.url).href;
const keysUrl = new URL('../../src/recording/keys.js', import.meta.url).href;

/**
 * The writer creates each file and closes it (after the seal thread has
 * answered its footer, or when a failed writer drops it), both on the
 * event loop's side; the seal thread only appends. Sessions one after
 * another reuse descriptor numbers; when the seal thread opened the files
 * and another thread closed one, it stayed on the opener's list, and Node
 * warned on stderr ("opened in unmanaged mode twice") for every later file
 * given that number.
 */
const SEQUENTIAL = `
import { RecordingWriter } from ${JSON.stringify(writerUrl)};
import { openRecordingKey } from ${JSON.stringify(keysUrl)};
import { readdirSync, readlinkSync } from 'node:fs';
const stateDir = process.argv[1];
const key = await openRecordingKey(stateDir);
const meta = (id) => ({ sessionId: id, target: 't', protocol: 'postgres', subject: 's', groups: [], issuer: 'i', startedAt: new Date().toISOString() });
const fds = () => readdirSync('/proc/self/fd');
const recordingFds = () => fds().filter((fd) => { try { return readlinkSync('/proc/self/fd/' + fd).endsWith('.sluicerec'); } catch { return false; } }).length;
// A writer's close of its file runs on libuv's pool, after close() resolved: give it a moment (a leak stays whatever the wait).
const closesDone = async () => { for (let i = 0; i < 100 && recordingFds() > 0; i++) await new Promise((r) => setTimeout(r, 10)); };
const first = await RecordingWriter.open({ stateDir, meta: meta('warm'), key, onFailure: () => {} });
await first.close({ closeReason: 'done' });
await closesDone();
const before = fds().length;
const complete = [];
for (let i = 0; i < 12; i++) {
  const w = await RecordingWriter.open({ stateDir, meta: meta('s' + i), key, onFailure: () => {} });
  w.record('client', Buffer.from('SELECT ' + i));
  complete.push((await w.close({ closeReason: 'done' })).complete);
}
await closesDone();
process.stdout.write(JSON.stringify({ before, after: fds().length, open: recordingFds(), complete }));
`;

/**
 * Runs a child to its end: what it printed and how it exited. The child is plain Node: tap's
 * per-process hooks (NODE_OPTIONS) would write files of their own, and print to stderr.
 */
async function runChild(cmd: string, args: string[]): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_OPTIONS: '' } });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const [code, signal] = await new Promise<[number | null, string | null]>((resolve) => child.on('exit', (c, sig) => resolve([c, sig])));
  return { code, signal, stdout, stderr };
}

t.test('sessions one after another: each file is closed, and no process warning is written', async (t) => {
  const stateDir = tempDir(t);
  const { code, stdout, stderr } = await runChild(process.execPath, ['--input-type=module', '-e', SEQUENTIAL, stateDir]);
  t.equal(code, 0, 'the child ran to the end', { stderr });
  t.equal(stderr, '', 'nothing on stderr');
  const out = JSON.parse(stdout) as { before: number; after: number; open: number; complete: boolean[] };
  t.equal(out.open, 0, 'no recording file is left open');
  t.equal(out.after, out.before, 'as many descriptors open after twelve sessions as before');
  t.same(out.complete, Array(12).fill(true), 'every recording complete');
});

/**
 * A write failing mid-session, for real: the child runs under `ulimit -f`
 * (RLIMIT_FSIZE), so its appends past 256 KiB fail with EFBIG, as they
 * would on a full disk. The child handles SIGXFSZ, so the limit surfaces as
 * the write error instead of killing it.
 */
const CHILD = `
import { RecordingWriter, recorderHealth } from ${JSON.stringify(writerUrl)};
import { openRecordingKey } from ${JSON.stringify(keysUrl)};
process.on('SIGXFSZ', () => {});
const stateDir = process.argv[1];
const key = await openRecordingKey(stateDir);
const meta = (id) => ({ sessionId: id, target: 't', protocol: 'postgres', subject: 's', groups: [], issuer: 'i', startedAt: new Date().toISOString() });
const out = {};
let onFailure;
const failed = new Promise((resolve) => (onFailure = resolve));
const w = await RecordingWriter.open({ stateDir, meta: meta('big'), key, flushIntervalMs: 5, onFailure });
out.healthBefore = recorderHealth();
for (let i = 0; i < 64; i++) { w.record('server', Buffer.alloc(16384, i)); await new Promise((r) => setTimeout(r, 2)); }
out.failedFlag = w.failed;
// Both settle whatever the machine's speed: the failure may come from a flush or from close's own write.
out.closed = await w.close({ closeReason: 'done' });
const err = await failed;
out.code = err.code;
out.message = err.message;
out.healthAfterFailure = recorderHealth();
const w2 = await RecordingWriter.open({ stateDir, meta: meta('small'), key, onFailure: () => {} });
w2.record('client', Buffer.from('PING'));
await w2.close({ closeReason: 'done' });
out.healthAfterRecovery = recorderHealth();
process.stdout.write(JSON.stringify(out));
`;

/**
 * A process's first recording is opened while its seal thread still boots
 * (about 50 ms), and its file is created meanwhile. A create failing in
 * that time (here at once, ENOTDIR: `recordings` is a file) refuses that
 * recording, typed; it must not end the process as an unhandled rejection.
 */
const FIRST_OPEN_FAILS = `
import { RecordingWriter } from ${JSON.stringify(writerUrl)};
import { openRecordingKey } from ${JSON.stringify(keysUrl)};
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
const stateDir = process.argv[1];
const key = await openRecordingKey(stateDir);
writeFileSync(join(stateDir, 'recordings'), 'a file where the directory should be');
const meta = { sessionId: 'first', target: 't', protocol: 'postgres', subject: 's', groups: [], issuer: 'i', startedAt: new Date().toISOString() };
const out = {};
try {
  await RecordingWriter.open({ stateDir, meta, key, onFailure: () => {} });
  out.opened = true;
} catch (err) {
  out.code = err.code;
  out.message = err.message;
}
process.stdout.write(JSON.stringify(out));
`;

t.test('the first create of a process fails while its seal thread boots: refused, typed, and the process goes on', async (t) => {
  const stateDir = tempDir(t);
  const { code, stdout, stderr } = await runChild(process.execPath, ['--input-type=module', '-e', FIRST_OPEN_FAILS, stateDir]);
  t.equal(code, 0, 'the child ran to the end', { stderr });
  const out = JSON.parse(stdout) as { opened?: boolean; code?: string; message?: string };
  t.notOk(out.opened, 'no recording opened');
  t.equal(out.code, 'SLUICE_RECORDING_WRITE_FAILED');
  t.match(out.message, /ENOTDIR|EEXIST/);
});

t.test('a write fails mid-session (EFBIG): onFailure, failed, health not ok; a later write recovers it', async (t) => {
  const stateDir = tempDir(t);
  const { code, signal, stdout, stderr } = await runChild('/bin/sh', ['-c', 'ulimit -f 256 && exec "$0" --input-type=module -e "$1" "$2"', process.execPath, CHILD, stateDir]);
  t.same({ code, signal }, { code: 0, signal: null }, 'the child ran to the end', { stderr });
  const out = JSON.parse(stdout) as Record<string, { ok?: boolean; lastError?: string; complete?: boolean } & Record<string, unknown>> & {
    code: string;
    message: string;
    failedFlag: boolean;
  };
  t.same(out.healthBefore, { ok: true });
  t.equal(out.code, 'SLUICE_RECORDING_WRITE_FAILED');
  t.match(out.message, /EFBIG/);
  t.equal(out.failedFlag, true, 'writer.failed is set');
  t.equal(out.closed?.complete, false, 'the recording stays incomplete');
  t.notOk('finalHash' in out.closed! && out.closed.finalHash !== undefined, 'no final hash: the file has no footer to sign one');
  t.equal(out.healthAfterFailure?.ok, false);
  t.match(out.healthAfterFailure?.lastError, /EFBIG/);
  t.same(out.healthAfterRecovery, { ok: true }, 'recovered after a successful write');

  const v = await verifyRecording(out.closed!.path as string, await loadRecordingPublicKeys(stateDir));
  t.equal(v.ok, true, 'what was written before the failure is intact');
  t.equal(v.complete, false);
});

const DAY = 86_400_000;

/** A state dir with its recording key and its index, for the retention tests. */
async function retentionFixture(t: Test) {
  const stateDir = tempDir(t);
  const key = await openRecordingKey(stateDir);
  const store = openSqliteStore(stateDir);
  t.teardown(() => store.close());
  return { stateDir, key, store, day: DAY, now: Date.now() };
}

t.test('retention: old files and rows go, recent ones and active files stay', async (t) => {
  const { stateDir, key, store, day, now } = await retentionFixture(t);
  const paths: Record<string, string> = {};
  for (const [id, age] of [
    ['old', 40 * day],
    ['recent', 1 * day],
    ['orphan', 50 * day], // never indexed (crashed before the first upsert)
  ] as const) {
    const startedAt = new Date(now - age).toISOString();
    const w = await RecordingWriter.open({ stateDir, meta: meta(id, startedAt), key, onFailure: () => undefined });
    w.record('client', Buffer.from('x'));
    const r = await w.close({ closeReason: 'done', endedAt: startedAt });
    paths[id] = r.path;
    const then = new Date(now - age);
    utimesSync(r.path, then, then);
    if (id !== 'orphan') {
      store.upsertSession({
        id, subject: 'agent-7', groups: [], issuer: 'i', target: 'cache', protocol: 'redis', startedAt, endedAt: startedAt,
        bytesIn: 1, bytesOut: 0, statementsAllowed: 0, statementsDenied: 0, approvals: 0, maskingCounts: {},
        recordingPath: r.path, recordingSize: r.size, finalHash: r.finalHash, complete: true,
      });
    }
  }
  const res = await purgeRecordings(stateDir, store, 30 * day, now);
  t.equal(res.files, 2, 'old and orphan files deleted');
  t.equal(res.rows, 1, 'the old row deleted');
  t.same(res.errors, []);
  t.notOk(existsSync(paths.old!));
  t.notOk(existsSync(paths.orphan!));
  t.notOk(existsSync(dirname(paths.old!)), 'the emptied day directory is removed');
  t.ok(existsSync(paths.recent!));
  t.same(store.listSessions({}).map((s) => s.id), ['recent']);
  t.ok(statSync(join(stateDir, 'recordings')).isDirectory(), 'the recordings root stays');
  mkdirSync(join(stateDir, 'recordings', 'not-a-year'), { recursive: true });
  t.same((await purgeRecordings(stateDir, store, 30 * day, now)).files, 0, 'a second run finds nothing; foreign dirs are left alone');

  // The writer remembers day directories it made; one purged since is made again.
  const late = await RecordingWriter.open({ stateDir, meta: meta('late', new Date(now - 40 * day).toISOString()), key, onFailure: () => undefined });
  late.record('client', Buffer.from('y'));
  const lateRes = await late.close({ closeReason: 'done' });
  t.equal(dirname(lateRes.path), dirname(paths.old!), 'the session goes into the removed day directory, made again');
  t.equal(statSync(dirname(lateRes.path)).mode & 0o777, 0o700, 'made owner-only, like the first time');
  t.equal((await verifyRecording(lateRes.path, await loadRecordingPublicKeys(stateDir))).ok, true, 'and is recorded whole');
});

t.test('retention keeps what is live however old, and follows no symlink', async (t) => {
  const { stateDir, key, store, day, now } = await retentionFixture(t);
  const old = new Date(now - 40 * day);
  // A session idle for 40 days: its file was last written then, its row has no end.
  const idle = await RecordingWriter.open({ stateDir, meta: meta('idle', old.toISOString()), key, onFailure: () => undefined });
  utimesSync(idle.path, old, old);
  store.upsertSession({
    id: 'idle', subject: 'agent-7', groups: [], issuer: 'i', target: 'cache', protocol: 'redis', startedAt: old.toISOString(),
    bytesIn: 0, bytesOut: 0, statementsAllowed: 0, statementsDenied: 0, approvals: 0, maskingCounts: {}, recordingPath: idle.path, complete: false,
  });
  // Old files outside recordings/, reached through symlinks inside it: a file link, and a day directory link.
  const outside = tempDir(t);
  const victim = join(outside, 'victim.sluicerec');
  writeFileSync(victim, 'not a recording');
  mkdirSync(join(outside, '01'), { recursive: true });
  const victimInDir = join(outside, '01', 'other.sluicerec');
  writeFileSync(victimInDir, 'not a recording');
  utimesSync(victim, old, old);
  utimesSync(victimInDir, old, old);
  symlinkSync(victim, join(dirname(idle.path), 'link.sluicerec'));
  symlinkSync(join(outside, '01'), join(dirname(dirname(idle.path)), '99'));

  const res = await purgeRecordings(stateDir, store, 30 * day, now, new Set([idle.path]));
  t.same({ files: res.files, rows: res.rows, errors: res.errors }, { files: 0, rows: 0, errors: [] }, 'nothing deleted');
  t.ok(existsSync(idle.path), "the live session's file is kept");
  t.same(store.listSessions({}).map((s) => s.id), ['idle'], 'and its row');
  t.ok(existsSync(victim) && existsSync(victimInDir), 'files behind symlinks are left alone');
  idle.record('client', Buffer.from('PING\r\n'));
  const r = await idle.close({ closeReason: 'done' });
  t.equal((await verifyRecording(r.path, await loadRecordingPublicKeys(stateDir))).complete, true, 'the idle session goes on recording into its file');
});
