/**
 * Crash consistency: a child process records a fast stream and is killed
 * with SIGKILL mid-stream. The file reads up to its last complete record,
 * every record read is the one written, and verify reports the recording as
 * incomplete, not tampered, signed through its last checkpoint.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import t from 'tap';
import { loadRecordingPublicKeys } from '../../src/recording/keys.js';
import { readRecording } from '../../src/recording/reader.js';
import { verifyRecording } from '../../src/recording/verify.js';

const writerUrl = new URL('../../src/recording/writer.js', import.meta.url).href;
const keysUrl = new URL('../../src/recording/keys.js', import.meta.url).href;

/** Chunk j of the stream: 16 KiB, its index in the first 4 bytes, then a pattern from j. */
const CHILD = `
import { RecordingWriter } from ${JSON.stringify(writerUrl)};
import { openRecordingKey } from ${JSON.stringify(keysUrl)};
const stateDir = process.argv[1];
const key = await openRecordingKey(stateDir);
const w = await RecordingWriter.open({
  stateDir, key, flushIntervalMs: 20, checkpointEveryRecords: 64,
  meta: { sessionId: 'crash1', target: 't', protocol: 'postgres', subject: 's', groups: [], issuer: 'i', startedAt: new Date().toISOString() },
  onFailure: (e) => { console.error(e); process.exit(3); },
});
process.stdout.write(w.path + '\\n');
let j = 0;
const chunk = (j) => { const b = Buffer.alloc(16384, j & 0xff); b.writeUInt32BE(j, 0); return b; };
const pump = () => { for (let k = 0; k < 16; k++, j++) w.record(j % 2 ? 'server' : 'client', chunk(j)); setTimeout(pump, 1); };
pump();
`;

t.test('kill -9 mid-stream: the prefix verifies, the recording is incomplete', async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), 'sluice-crash-'));
  t.teardown(() => rmSync(stateDir, { recursive: true, force: true }));
  const child = spawn(process.execPath, ['--input-type=module', '-e', CHILD, stateDir], { stdio: ['ignore', 'pipe', 'inherit'] });
  let gone = false;
  child.once('exit', () => (gone = true));
  const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, sig) => resolve(sig)));
  const path = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once('line', resolve);
    child.once('exit', () => reject(new Error('the child exited early')));
  });
  // Let it write at least 24 MB, then kill it without warning.
  for (;;) {
    await new Promise((r) => setTimeout(r, 20));
    if (gone) throw new Error('the recording child exited before it was killed (its error is above)');
    let size = 0;
    try {
      size = statSync(path).size;
    } catch {
      // not there yet
    }
    if (size > 24 * 1024 * 1024) break;
  }
  child.kill('SIGKILL');
  t.equal(await exited, 'SIGKILL', 'the writer was killed');

  const v = await verifyRecording(path, await loadRecordingPublicKeys(stateDir));
  t.equal(v.ok, true, 'not tampered');
  t.equal(v.complete, false, 'incomplete: no footer');
  t.ok(v.records > 1000, `records before the kill: ${v.records}`);
  t.ok(v.verifiedThroughSeq > 0, `signed through checkpoint seq ${v.verifiedThroughSeq}`);
  t.notOk(v.firstBad);

  const reader = readRecording(path);
  let j = 0;
  let mismatches = 0;
  for await (const e of reader) {
    if (e.type !== 'data') continue;
    const want = Buffer.alloc(16384, j & 0xff);
    want.writeUInt32BE(j, 0);
    if (!e.bytes.equals(want) || e.direction !== (j % 2 ? 'server' : 'client')) mismatches++;
    j++;
  }
  t.equal(mismatches, 0, `all ${j} data records read are the chunks written, in order`);
  t.equal(reader.complete, false, 'the reader reports it incomplete');
  t.ok(j * 16384 > 20 * 1024 * 1024, 'most of the stream survived (loss bounded by the flush interval)');
});

/** Records a short session and prints its result as JSON. */
const SHORT = `
import { RecordingWriter } from ${JSON.stringify(writerUrl)};
import { openRecordingKey } from ${JSON.stringify(keysUrl)};
const stateDir = process.argv[1];
const key = await openRecordingKey(stateDir);
const w = await RecordingWriter.open({
  stateDir, key,
  meta: { sessionId: 'flags1', target: 't', protocol: 'redis', subject: 's', groups: [], issuer: 'i', startedAt: new Date().toISOString() },
  onFailure: (e) => { console.error(e); process.exit(3); },
});
w.record('client', Buffer.from('PING'));
w.record('server', Buffer.from('+PONG'));
process.stdout.write(JSON.stringify(await w.close({ closeReason: 'done' })) + '\\n');
`;

t.test('the seal thread starts under node flags a worker refuses (a V8 flag with a script given by -e)', async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), 'sluice-flags-'));
  t.teardown(() => rmSync(stateDir, { recursive: true, force: true }));
  // Passed on to a worker explicitly, --max-semi-space-size is refused ("invalid execArgv flags").
  const child = spawn(process.execPath, ['--max-semi-space-size=16', '--input-type=module', '-e', SHORT, stateDir], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  t.equal(code, 0, 'the child recorded and exited cleanly');
  const res = JSON.parse(out) as { path: string; complete: boolean };
  t.equal(res.complete, true, 'the recording is complete');
  const v = await verifyRecording(res.path, await loadRecordingPublicKeys(stateDir));
  t.equal(v.ok && v.complete, true, 'and verifies');
});
