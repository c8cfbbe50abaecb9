/**
 * `sluice sessions` and `sluice verify`: offline tools over the state dir
 * (the session index in sluice.db and the recordings), no API needed.
 *
 *   sluice sessions [--subject S] [--target T] [--since 1h|ISO] [--limit N] [--json] [--config F]
 *   sluice verify ID|--all [--json] [--config F]
 *
 * verify exits 0 when every recording checked is intact and complete, 1
 * when any is tampered, incomplete or missing, 2 on usage or config errors.
 * Values that came from clients (subject, target, close reason) are shown
 * with control characters escaped.
 */
import { parseArgs } from 'node:util';
import { loadConfig } from '../config/load.js';
import { isSluiceError } from '../errors.js';
import { parseDuration } from '../identity/dev-issuer.js';
import { FILE_EXTENSION, SESSION_ID_PATTERN } from '../recording/format.js';
import { listRecordingFiles, recordingPathWithin } from '../recording/files.js';
import { loadRecordingPublicKeys } from '../recording/keys.js';
import { againstIndex, describeVerify, verifyRecording, type VerifyResult } from '../recording/verify.js';
import { openSqliteStore } from '../store/sqlite.js';
import type { SessionRecord, SessionStore, Store } from '../store/types.js';

export interface SessionsIo {
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown; isTTY?: boolean };
  env: NodeJS.ProcessEnv;
}

const defaultIo = (): SessionsIo => ({ stdout: process.stdout, stderr: process.stderr, env: process.env });

const SESSIONS_USAGE = `Usage: sluice sessions [--subject S] [--target T] [--since 1h|ISO-TIME] [--limit N] [--json] [--config FILE]
  --json   one JSON object per line (id, subject, target, started_at, ended_at, recording_path, complete, ...)`;
const VERIFY_USAGE = `Usage: sluice verify ID|--all [--json] [--config FILE]
  Checks each recording's CRCs, hash chain, signatures and record count and names the first bad record.
  Exit codes: 0 all intact and complete, 1 any tampered, incomplete or missing, 2 usage.`;

function printable(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

async function openIndex(
  config: string | undefined,
  io: SessionsIo,
  cmd: string,
): Promise<{ stateDir: string; store: Store & SessionStore; footerDurable: boolean } | number> {
  let stateDir: string;
  let footerDurable: boolean;
  try {
    const c = await loadConfig(config, io.env);
    stateDir = c.stateDir;
    // Footers fsynced before their index rows (recording.fsync: close, the default).
    footerDurable = (c.recording?.fsync ?? 'close') === 'close';
  } catch (err) {
    io.stderr.write(`sluice ${cmd}: ${isSluiceError(err) ? err.message : String(err)}\n`);
    return 2;
  }
  try {
    return { stateDir, store: openSqliteStore(stateDir), footerDurable };
  } catch (err) {
    io.stderr.write(`sluice ${cmd}: cannot open the state database in ${stateDir}: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
}

/** The row as --json prints it (snake_case, like the table's columns). */
export function sessionJson(s: SessionRecord): Record<string, unknown> {
  return {
    id: s.id,
    subject: s.subject,
    groups: s.groups,
    issuer: s.issuer,
    token_id_hash: s.tokenIdHash ?? null,
    target: s.target,
    protocol: s.protocol,
    client_address: s.clientAddress ?? null,
    started_at: s.startedAt,
    ended_at: s.endedAt ?? null,
    close_reason: s.closeReason ?? null,
    bytes_in: s.bytesIn,
    bytes_out: s.bytesOut,
    statements_allowed: s.statementsAllowed,
    statements_denied: s.statementsDenied,
    approvals: s.approvals,
    masking_counts: s.maskingCounts,
    recording_path: s.recordingPath ?? null,
    recording_size: s.recordingSize ?? null,
    final_hash: s.finalHash ?? null,
    complete: s.complete,
  };
}

export function formatSessionsTable(rows: readonly SessionRecord[]): string {
  if (!rows.length) return 'no sessions\n';
  const header = ['ID', 'SUBJECT', 'TARGET', 'PROTOCOL', 'STARTED', 'ENDED', 'IN', 'OUT', 'CLOSE', 'RECORDING'];
  const body = rows.map((r) =>
    [
      r.id,
      r.subject,
      r.target,
      r.protocol,
      r.startedAt,
      r.endedAt ?? '-',
      String(r.bytesIn),
      String(r.bytesOut),
      r.closeReason ?? (r.endedAt ? '' : 'open'),
      r.recordingPath ? (r.complete ? 'complete' : 'incomplete') : 'none',
    ].map(printable),
  );
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((row) => row[i]!.length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(header), ...body.map(line)].join('\n') + '\n';
}

function usageError(io: SessionsIo, cmd: string, usage: string, msg: string): number {
  io.stderr.write(`sluice ${cmd}: ${msg}\n\n${usage}\n`);
  return 2;
}

function parseOrUsage<T>(io: SessionsIo, cmd: string, usage: string, f: () => T): T | number {
  try {
    return f();
  } catch (err) {
    if (err instanceof TypeError && (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) return usageError(io, cmd, usage, err.message);
    throw err;
  }
}

export async function sessionsCommand(args: string[], io: SessionsIo = defaultIo()): Promise<number> {
  const parsed = parseOrUsage(io, 'sessions', SESSIONS_USAGE, () =>
    parseArgs({
      args,
      allowPositionals: false,
      strict: true,
      options: {
        subject: { type: 'string' },
        target: { type: 'string' },
        since: { type: 'string' },
        limit: { type: 'string' },
        json: { type: 'boolean' },
        config: { type: 'string', short: 'c' },
        help: { type: 'boolean', short: 'h' },
      },
    }),
  );
  if (typeof parsed === 'number') return parsed;
  const { values } = parsed;
  if (values.help) {
    io.stdout.write(`${SESSIONS_USAGE}\n`);
    return 0;
  }
  let since: string | undefined;
  if (values.since !== undefined) {
    if (/^\d{4}-\d{2}-\d{2}/.test(values.since) && !Number.isNaN(Date.parse(values.since))) since = new Date(Date.parse(values.since)).toISOString();
    else {
      try {
        since = new Date(Date.now() - parseDuration(values.since) * 1000).toISOString();
      } catch (err) {
        return usageError(io, 'sessions', SESSIONS_USAGE, `--since: ${isSluiceError(err) ? err.message : String(err)}`);
      }
    }
  }
  let limit: number | undefined;
  if (values.limit !== undefined) {
    limit = Number(values.limit);
    if (!Number.isSafeInteger(limit) || limit < 1) return usageError(io, 'sessions', SESSIONS_USAGE, '--limit must be a positive integer');
  }
  const opened = await openIndex(values.config, io, 'sessions');
  if (typeof opened === 'number') return opened;
  try {
    const rows = opened.store.listSessions({
      ...(values.subject !== undefined ? { subject: values.subject } : {}),
      ...(values.target !== undefined ? { target: values.target } : {}),
      ...(since !== undefined ? { since } : {}),
      ...(limit !== undefined ? { limit } : {}),
    });
    if (values.json) for (const r of rows) io.stdout.write(`${JSON.stringify(sessionJson(r))}\n`);
    else io.stdout.write(formatSessionsTable(rows));
    return 0;
  } finally {
    opened.store.close();
  }
}

export async function verifyCommand(args: string[], io: SessionsIo = defaultIo()): Promise<number> {
  const parsed = parseOrUsage(io, 'verify', VERIFY_USAGE, () =>
    parseArgs({
      args,
      allowPositionals: true,
      strict: true,
      options: {
        all: { type: 'boolean' },
        json: { type: 'boolean' },
        config: { type: 'string', short: 'c' },
        help: { type: 'boolean', short: 'h' },
      },
    }),
  );
  if (typeof parsed === 'number') return parsed;
  const { values, positionals } = parsed;
  if (values.help) {
    io.stdout.write(`${VERIFY_USAGE}\n`);
    return 0;
  }
  if (values.all ? positionals.length !== 0 : positionals.length !== 1) {
    return usageError(io, 'verify', VERIFY_USAGE, 'give one session ID or --all');
  }
  const id = positionals[0];
  if (id !== undefined && !SESSION_ID_PATTERN.test(id)) return usageError(io, 'verify', VERIFY_USAGE, 'not a session id');

  const opened = await openIndex(values.config, io, 'verify');
  if (typeof opened === 'number') return opened;
  const { stateDir, store, footerDurable } = opened;
  try {
    const keys = await loadRecordingPublicKeys(stateDir);
    const files = await listRecordingFiles(stateDir);
    const targets: { id: string; path?: string }[] = [];
    if (id !== undefined) {
      const path = (await recordingPathWithin(stateDir, store.getSession(id)?.recordingPath)) ?? files.find((f) => f.endsWith(`/${id}${FILE_EXTENSION}`));
      targets.push(path ? { id, path } : { id });
    } else {
      const seen = new Set<string>();
      for (const f of files) {
        const fid = f.slice(f.lastIndexOf('/') + 1, -FILE_EXTENSION.length);
        seen.add(fid);
        targets.push({ id: fid, path: f });
      }
      // Indexed sessions whose recording is gone are failures too: every row, not the newest page.
      for (const s of store.sessionRecordings()) {
        if (!seen.has(s.id)) targets.push({ id: s.id, path: await recordingPathWithin(stateDir, s.recordingPath) });
      }
    }
    const tty = values.all === true && io.stderr.isTTY === true;
    let failures = 0;
    let n = 0;
    for (const t of targets) {
      n++;
      if (tty) io.stderr.write(`\rverifying ${n}/${targets.length}`);
      let r: VerifyResult;
      if (!t.path) {
        r = { ok: false, complete: false, records: 0, verifiedThroughSeq: -1, firstBad: { offset: 0, reason: 'no recording found for this session' } };
      } else {
        // Verified as the session it is listed under: another session's file in its place fails.
        // And held against its index row, read first: a session that closes while its file is
        // read has a complete row but may not have its footer in what was read.
        const row = store.getSession(t.id);
        r = againstIndex(await verifyRecording(t.path, keys, { sessionId: t.id }), row, { footerDurable });
      }
      if (!r.ok || !r.complete) failures++;
      if (tty) io.stderr.write('\r\u001b[K');
      if (values.json) {
        io.stdout.write(`${JSON.stringify({ id: t.id, path: t.path ?? null, ok: r.ok, complete: r.complete, records: r.records, first_bad: r.firstBad ?? null, verified_through_seq: r.verifiedThroughSeq })}\n`);
      } else {
        io.stdout.write(`${printable(t.id)}: ${printable(describeVerify(r))}${t.path ? ` (${printable(t.path)})` : ''}\n`);
      }
    }
    if (!targets.length) io.stdout.write('no recordings\n');
    return failures ? 1 : 0;
  } finally {
    store.close();
  }
}
