/**
 * Finding a session's recording in a test gateway's state directory, and
 * reading its two streams.
 */
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { RecordingMeta } from '../../src/recording/format.js';
import { openRecordingKey } from '../../src/recording/keys.js';
import { readRecording } from '../../src/recording/reader.js';
import { RecordingWriter } from '../../src/recording/writer.js';

/** Every recording file under the state directory. */
export function recordingFiles(stateDir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    let names: string[] = [];
    try {
      names = readdirSync(d);
    } catch {
      return;
    }
    for (const n of names) {
      const p = join(d, n);
      if (statSync(p).isDirectory()) walk(p);
      else if (n.endsWith('.sluicerec')) out.push(p);
    }
  };
  walk(join(stateDir, 'recordings'));
  return out;
}

/** The recording whose header names this client port (polled: the footer is written just after the close). */
export async function recordingFor(
  stateDir: string,
  clientPort: number,
): Promise<{ client: Buffer; server: Buffer; complete: boolean; path: string; closeReason?: string }> {
  for (let i = 0; i < 200; i++) {
    for (const path of recordingFiles(stateDir)) {
      const r = readRecording(path);
      const client: Buffer[] = [];
      const server: Buffer[] = [];
      let closeReason: string | undefined;
      for await (const e of r) {
        if (e.type === 'data') (e.direction === 'client' ? client : server).push(e.bytes);
        else if (e.type === 'footer') closeReason = (e.body as { closeReason?: string } | undefined)?.closeReason;
      }
      if (r.header?.clientAddress !== `127.0.0.1:${clientPort}`) continue;
      if (r.complete) return { client: Buffer.concat(client), server: Buffer.concat(server), complete: true, path, ...(closeReason ? { closeReason } : {}) };
    }
    await new Promise((res) => setTimeout(res, 50));
  }
  throw new Error(`no complete recording for client port ${clientPort}`);
}

let written = 0;

/** A closed recording, written by the real writer under `stateDir`, holding `chunks` in order; its path. */
export async function writeRecording(stateDir: string, protocol: 'redis' | 'postgres', chunks: ['client' | 'server', Buffer][]): Promise<string> {
  const meta: RecordingMeta = {
    sessionId: `written-${protocol}-${written++}`,
    target: 'app',
    protocol,
    subject: 'agent-7',
    groups: [],
    issuer: 'https://issuer.example',
    startedAt: new Date().toISOString(),
  };
  const w = await RecordingWriter.open({ stateDir, meta, key: await openRecordingKey(stateDir), onFailure: () => undefined });
  for (const [dir, bytes] of chunks) w.record(dir, bytes);
  return (await w.close({ closeReason: 'client closed' })).path;
}
