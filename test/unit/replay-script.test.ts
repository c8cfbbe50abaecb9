/**
 * What `sluice replay --serve` reads out of a recording before it serves:
 * the client's commands, split where they end. A recording is evidence that
 * may have been tampered with: a command spread over many records is read
 * once (not re-parsed from its start at each record), and a client stream
 * that stops parsing is named by its record.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { buildReplayScript } from '../../src/recording/replay-server.js';
import { writeRecording } from '../helpers/recordings.js';

const stateDir = mkdtempSync(join(tmpdir(), 'sluice-replay-script-'));
t.teardown(() => rmSync(stateDir, { recursive: true, force: true }));

const record = (chunks: ['client' | 'server', Buffer][]): Promise<string> => writeRecording(stateDir, 'redis', chunks);

t.test('a command of 50,000 arguments, one record each, is one step', async (t) => {
  const args = 50_000;
  const chunks: ['client' | 'server', Buffer][] = [['client', Buffer.from(`*${args + 1}\r\n$5\r\nRPUSH\r\n`)]];
  for (let i = 0; i < args; i++) chunks.push(['client', Buffer.from('$1\r\nx\r\n')]);
  chunks.push(['server', Buffer.from(`:${args}\r\n`)]);
  const script = await buildReplayScript(await record(chunks));
  const commands = script.steps.flatMap((s) => s.expect);
  t.same(commands, ['RPUSH'], 'one command, read once');
});

t.test('a client stream that stops parsing is named by its record', async (t) => {
  const path = await record([
    ['client', Buffer.from('*1\r\n$4\r\nPING\r\n')],
    ['server', Buffer.from('+PONG\r\n')],
    ['client', Buffer.from('*1\r\n$x\r\n')],
  ]);
  await t.rejects(buildReplayScript(path), /record 2 \(client, at byte \d+\) cannot be replayed: /);
});
