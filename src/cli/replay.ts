/**
 * `sluice replay`: the forensic view of one recorded session.
 *
 *   sluice replay ID [--config F]              readable transcript (stdout)
 *   sluice replay ID --json                    the same events, one JSON object per line
 *   sluice replay ID --raw client|server       the exact bytes of one direction (stdout)
 *   sluice replay ID --serve PORT [--once]     a stand-in server on 127.0.0.1:PORT that
 *                                              replays the recorded server side to a client
 *                                              logging in with the password it prints
 *   --file PATH instead of ID reads a recording file directly (no config needed).
 *
 * The recording is found through the session index (sluice.db in the state
 * dir), or by its file name under <state_dir>/recordings. Exit codes: 0 ok,
 * 1 recording missing or unreadable, 2 usage or configuration.
 */
import { randomBytes } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { loadConfig } from '../config/load.js';
import { isSluiceError } from '../errors.js';
import { FILE_EXTENSION, SESSION_ID_PATTERN, type Direction } from '../recording/format.js';
import { readRecording } from '../recording/reader.js';
import { buildReplayScript, startReplayServer } from '../recording/replay-server.js';
import { jsonLine, printable, progressPrinter, renderEvent, renderHeader, renderSummary, streamTranscript } from '../recording/transcript.js';
import { openSqliteStore } from '../store/sqlite.js';
import { listRecordingFiles, recordingPathWithin } from '../recording/files.js';

export interface ReplayIo {
  stdout: { write(s: string | Uint8Array): unknown };
  stderr: { write(s: string): unknown; isTTY?: boolean };
  env: NodeJS.ProcessEnv;
  /** Stops a `--serve` without `--once` (the CLI uses SIGINT/SIGTERM). */
  signal?: AbortSignal;
}

const defaultIo = (): ReplayIo => ({ stdout: process.stdout, stderr: process.stderr, env: process.env });

const USAGE = `Usage: sluice replay ID|--file PATH [--config FILE] [--json | --raw client|server | --serve PORT [--once]]
  (default)        a readable transcript: queries, Parse/Bind/Execute with parameters, results, errors,
                   notices, denials and approvals, commands and replies, with ms since the session started
  --json           the transcript as one JSON object per line (a session line, events, a summary line)
  --raw DIR        the exact bytes of one direction: client (what the client sent) or server (what it received)
  --serve PORT     replay the recorded server side on 127.0.0.1:PORT for the same client to connect to
                   with the password it prints, made for this run (PostgreSQL: use sslmode=disable or
                   prefer; each connection is replayed from the start)
  --once           with --serve: stop after one connection
Exit codes: 0 ok, 1 recording missing or unreadable, 2 usage.`;

/** Progress only pays off on a terminal, for recordings worth waiting for. */
const PROGRESS_MIN_BYTES = 8 * 1024 * 1024;

function usageError(io: ReplayIo, msg: string): number {
  io.stderr.write(`sluice replay: ${msg}\n\n${USAGE}\n`);
  return 2;
}

async function findRecording(id: string, config: string | undefined, io: ReplayIo): Promise<string | number> {
  let stateDir: string;
  try {
    stateDir = (await loadConfig(config, io.env)).stateDir;
  } catch (err) {
    io.stderr.write(`sluice replay: ${isSluiceError(err) ? err.message : String(err)}\n`);
    return 2;
  }
  let indexed: string | undefined;
  try {
    const store = openSqliteStore(stateDir);
    try {
      // Only a file inside the recordings directory (the row's path is not trusted as it is).
      indexed = await recordingPathWithin(stateDir, store.getSession(id)?.recordingPath);
    } finally {
      store.close();
    }
  } catch {
    // No index (or an unreadable one): the file name is enough to find a recording.
  }
  const path = indexed ?? (await listRecordingFiles(stateDir)).find((f) => f.endsWith(`/${id}${FILE_EXTENSION}`));
  if (!path) {
    io.stderr.write(`sluice replay: no recording found for session ${printable(id)} in ${stateDir}\n`);
    return 1;
  }
  return path;
}

export async function replayCommand(args: string[], io: ReplayIo = defaultIo()): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      strict: true,
      options: {
        config: { type: 'string', short: 'c' },
        file: { type: 'string' },
        json: { type: 'boolean' },
        raw: { type: 'string' },
        serve: { type: 'string' },
        once: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    if (err instanceof TypeError && (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) return usageError(io, err.message);
    throw err;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    io.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (values.file !== undefined ? positionals.length !== 0 : positionals.length !== 1) return usageError(io, 'give one session ID or --file PATH');
  const modes = [values.json, values.raw !== undefined, values.serve !== undefined].filter(Boolean).length;
  if (modes > 1) return usageError(io, '--json, --raw and --serve are exclusive');
  if (values.raw !== undefined && values.raw !== 'client' && values.raw !== 'server') return usageError(io, '--raw takes client or server');
  let port: number | undefined;
  if (values.serve !== undefined) {
    port = Number(values.serve);
    if (!/^\d{1,5}$/.test(values.serve) || port > 65535) return usageError(io, '--serve takes a port number (0 picks a free one)');
  }
  if (values.once && port === undefined) return usageError(io, '--once goes with --serve');

  let path: string;
  if (values.file !== undefined) path = values.file;
  else {
    const id = positionals[0]!;
    if (!SESSION_ID_PATTERN.test(id)) return usageError(io, 'not a session id');
    const found = await findRecording(id, values.config, io);
    if (typeof found === 'number') return found;
    path = found;
  }

  let size: number;
  try {
    size = (await stat(path)).size;
  } catch (err) {
    io.stderr.write(`sluice replay: cannot read ${printable(path)}: ${(err as NodeJS.ErrnoException).code ?? String(err)}\n`);
    return 1;
  }
  const progress = io.stderr.isTTY === true && size >= PROGRESS_MIN_BYTES ? progressPrinter(io.stderr, 'reading recording') : undefined;

  try {
    if (values.raw !== undefined) return await raw(path, values.raw as Direction, io);
    if (port !== undefined) return await serve(path, port, values.once === true, size, io, progress);
    if (values.json) {
      const summary = await streamTranscript(
        path,
        (h) => io.stdout.write(jsonLine({ session: h })),
        (e) => io.stdout.write(jsonLine(e)),
        progress ? { onProgress: progress.update } : {},
      );
      progress?.clear();
      const { header: _header, ...rest } = summary;
      io.stdout.write(jsonLine({ summary: rest }));
      return 0;
    }
    const summary = await streamTranscript(
      path,
      (h) => io.stdout.write(renderHeader(h)),
      (e) => {
        progress?.clear();
        io.stdout.write(`${renderEvent(e)}\n`);
      },
      progress ? { onProgress: progress.update } : {},
    );
    progress?.clear();
    io.stdout.write(renderSummary(summary));
    return 0;
  } catch (err) {
    progress?.clear();
    io.stderr.write(`sluice replay: ${isSluiceError(err) ? err.message : err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
}

/** One direction's bytes, record by record (never the whole stream in memory). */
async function raw(path: string, direction: Direction, io: ReplayIo): Promise<number> {
  const reader = readRecording(path);
  for await (const rec of reader) {
    if (rec.type === 'data' && rec.direction === direction) io.stdout.write(rec.bytes);
  }
  if (!reader.complete) io.stderr.write(`sluice replay: warning: ${incompleteNote(reader.stopped)}; these are the bytes up to there\n`);
  return 0;
}

/** Why a recording's bytes end early, for a warning: no replay or transcript checks signatures (sluice verify does). */
function incompleteNote(stopped: { offset: number; reason: string } | undefined): string {
  const where = stopped ? `reading stopped at offset ${stopped.offset}: ${printable(stopped.reason)}` : 'it ends without a footer';
  return `the recording is incomplete or damaged (${where}; run sluice verify for what is proven)`;
}

async function serve(
  path: string,
  port: number,
  once: boolean,
  size: number,
  io: ReplayIo,
  progress: ReturnType<typeof progressPrinter> | undefined,
): Promise<number> {
  const script = await buildReplayScript(path, progress ? { onProgress: progress.update, size } : {});
  progress?.clear();
  // The client would be served a prefix of the session as if it were all of it: say so first.
  if (!script.complete) io.stderr.write(`sluice replay: warning: ${incompleteNote(script.stopped)}; the replay serves the server's bytes up to there\n`);
  // The stand-in's own password, new each run: any local user could otherwise connect and be served
  // what the recording holds. Printed here, for the one who started the replay.
  const password = randomBytes(18).toString('base64url');
  const replay = await startReplayServer({ script, port, once, password, onEvent: (line) => io.stderr.write(`sluice replay: ${line}\n`) });
  const hint =
    script.protocol === 'postgres'
      ? `PGPASSWORD=${password} psql "host=${replay.host} port=${replay.port} sslmode=disable user=... dbname=..."`
      : `redis-cli -h ${replay.host} -p ${replay.port} -a ${password}`;
  io.stdout.write(
    `replaying session ${printable(script.sessionId)} (${script.protocol}, ${script.steps.length} steps, ${script.serverBytes} bytes) on ${replay.host}:${replay.port}\n` +
      `  password: ${password}\n` +
      `  connect the same client: ${hint}\n`,
  );
  const stop = (): void => void replay.close();
  io.signal?.addEventListener('abort', stop, { once: true });
  const useSignals = !once && !io.signal;
  if (useSignals) {
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  }
  await replay.done;
  if (useSignals) {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
  io.signal?.removeEventListener('abort', stop);
  return 0;
}
