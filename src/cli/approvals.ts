/**
 * `sluice approvals list|approve|deny`: the approver's side of just-in-time
 * approval, through the HTTP API with the approver's own token.
 *
 *   sluice approvals list [--status pending|approved|...|any] [--subject S] [--target T]
 *   sluice approvals approve ID [--for 15m]
 *   sluice approvals deny ID [--reason TEXT]
 *
 * Options: --api URL (default: http://<api.listen> from --config), --token
 * TOKEN or env SLUICE_TOKEN (prefer the env: arguments show in `ps`).
 * Exit 0 ok, 1 the API refused or could not be reached, 2 usage.
 *
 * Statement text comes from clients; control characters are shown escaped so
 * a held statement cannot drive the approver's terminal.
 */
import { parseArgs } from 'node:util';
import { loadConfig } from '../config/load.js';
import { isSluiceError } from '../errors.js';
import { parseDuration } from '../identity/dev-issuer.js';
import type { ApprovalRecord } from '../store/types.js';

export interface CliIo {
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown };
  env: NodeJS.ProcessEnv;
}

const USAGE = `Usage:
  sluice approvals list [--status pending] [--subject S] [--target T] [--limit N]
                                   (--status any lists every status; default pending)
  sluice approvals approve ID [--for 15m]
                                   (--for grants a window: the same subject may run the same
                                    statement fingerprint on the same target until it closes)
  sluice approvals deny ID [--reason TEXT]

Options:
  --api URL        the Sluice API (default: http://<api.listen> from the config)
  --config FILE    the config to read api.listen from (default ./sluice.yaml)
  --token TOKEN    your own token (default: env SLUICE_TOKEN; prefer the env, arguments show in ps)

Exit codes: 0 ok, 1 the API refused or could not be reached, 2 usage.`;

const EXIT_OK = 0;
const EXIT_API = 1;
const EXIT_USAGE = 2;

const REQUEST_TIMEOUT_MS = 15_000;
const TEXT_COLUMN = 60;

/** Control characters (C0, DEL, C1) and bidi overrides as visible escapes. */
export function printable(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g, (c) => {
    if (c === '\n') return '\\n';
    if (c === '\t') return '\\t';
    if (c === '\r') return '\\r';
    return `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`;
  });
}

function cut(s: string, max: number): string {
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

export function formatTable(rows: readonly ApprovalRecord[]): string {
  if (!rows.length) return 'no approvals\n';
  const header = ['ID', 'STATUS', 'SUBJECT', 'TARGET', 'RULE', 'CREATED', 'EXPIRES', 'STATEMENT'];
  const body = rows.map((r) => [
    r.id,
    r.status,
    r.subject,
    r.target,
    r.rule,
    r.createdAt,
    r.expiresAt,
    cut(r.text.replace(/\s+/g, ' ').trim(), TEXT_COLUMN),
  ].map(printable));
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((row) => row[i]!.length)));
  const line = (cells: string[]): string =>
    cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(header), ...body.map(line)].join('\n') + '\n';
}

/** http://host:port for a listen address; wildcard hosts are reached on loopback. */
export function apiUrlFor(listen: { host: string; port: number }): string {
  let host = listen.host;
  if (host === '0.0.0.0' || host === '') host = '127.0.0.1';
  else if (host === '::') host = '::1';
  if (host.includes(':')) host = `[${host}]`;
  return `http://${host}:${listen.port}`;
}

class UsageError extends Error {}

interface ApiAnswer {
  status: number;
  body: unknown;
}

async function call(
  base: string,
  token: string,
  method: 'GET' | 'POST',
  path: string,
  body?: Record<string, unknown>,
): Promise<ApiAnswer> {
  const headers: Record<string, string> = { authorization: `Bearer ${token}`, accept: 'application/json' };
  const init: RequestInit = { method, headers, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) };
  if (body !== undefined) {
    headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(new URL(path, base), init);
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    parsed = undefined;
  }
  return { status: res.status, body: parsed };
}

function apiMessage(a: ApiAnswer): string {
  const b = a.body as { message?: unknown; code?: unknown } | undefined;
  if (b && typeof b.message === 'string') {
    return `${printable(b.message)}${typeof b.code === 'string' ? ` (${b.code})` : ''}`;
  }
  return `the API answered HTTP ${a.status}`;
}

function decisionLine(r: ApprovalRecord): string {
  const parts = [`${r.status} ${r.id}`, `subject ${r.subject}`, `target ${r.target}`, `rule ${r.rule}`];
  let out = `${printable(parts.join(', '))}\n  statement: ${printable(cut(r.text, 200))}\n`;
  if (r.windowUntil) out += `  window: the same statement by ${printable(r.subject)} on ${printable(r.target)} runs without approval until ${r.windowUntil}\n`;
  if (r.reason) out += `  reason: ${printable(r.reason)}\n`;
  return out;
}

export async function approvalsCommand(
  args: string[],
  io: CliIo = { stdout: process.stdout, stderr: process.stderr, env: process.env },
): Promise<number> {
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(args);
  } catch (err) {
    const msg = err instanceof UsageError || (err instanceof TypeError && (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS'))
      ? (err as Error).message
      : undefined;
    if (msg === undefined) throw err;
    io.stderr.write(`sluice approvals: ${msg}\n\n${USAGE}\n`);
    return EXIT_USAGE;
  }
  const { sub, id, values } = parsed;
  if (sub === 'help') {
    io.stdout.write(`${USAGE}\n`);
    return EXIT_OK;
  }

  const token = values.token ?? io.env.SLUICE_TOKEN;
  if (!token) {
    io.stderr.write('sluice approvals: no token; set SLUICE_TOKEN to your own token (or pass --token)\n');
    return EXIT_USAGE;
  }

  let base = values.api;
  if (base === undefined) {
    let listen;
    try {
      listen = (await loadConfig(values.config, io.env)).api?.listen;
    } catch (err) {
      io.stderr.write(`sluice approvals: cannot read the config for api.listen: ${isSluiceError(err) ? err.message : String(err)}; pass --api URL\n`);
      return EXIT_USAGE;
    }
    if (!listen) {
      io.stderr.write('sluice approvals: the config has no api section; pass --api URL\n');
      return EXIT_USAGE;
    }
    base = apiUrlFor(listen);
  }
  try {
    const u = new URL(base);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('scheme');
  } catch {
    io.stderr.write(`sluice approvals: --api must be an http:// or https:// URL\n`);
    return EXIT_USAGE;
  }

  let answer: ApiAnswer;
  try {
    if (sub === 'list') {
      const qs = new URLSearchParams();
      const status = values.status ?? 'pending';
      if (status !== 'any' && status !== 'all') qs.set('status', status);
      if (values.subject) qs.set('subject', values.subject);
      if (values.target) qs.set('target', values.target);
      if (values.limit) qs.set('limit', values.limit);
      const q = qs.toString();
      answer = await call(base, token, 'GET', `/api/approvals${q ? `?${q}` : ''}`);
    } else if (sub === 'approve') {
      answer = await call(base, token, 'POST', `/api/approvals/${encodeURIComponent(id!)}/approve`, values.for ? { for: values.for } : {});
    } else {
      answer = await call(base, token, 'POST', `/api/approvals/${encodeURIComponent(id!)}/deny`, values.reason ? { reason: values.reason } : {});
    }
  } catch (err) {
    const why = err instanceof Error ? ((err.cause as Error | undefined)?.message ?? err.message) : String(err);
    io.stderr.write(`sluice approvals: cannot reach the API at ${base}: ${why}\n`);
    return EXIT_API;
  }

  if (answer.status < 200 || answer.status > 299) {
    io.stderr.write(`sluice approvals: ${apiMessage(answer)}\n`);
    return EXIT_API;
  }
  if (sub === 'list') {
    const rows = (answer.body as { approvals?: unknown } | undefined)?.approvals;
    if (!Array.isArray(rows)) {
      io.stderr.write('sluice approvals: the API answered without a list of approvals\n');
      return EXIT_API;
    }
    io.stdout.write(formatTable(rows as ApprovalRecord[]));
    return EXIT_OK;
  }
  const record = answer.body as ApprovalRecord | undefined;
  if (!record || typeof record.id !== 'string') {
    io.stderr.write('sluice approvals: the API answered without the approval\n');
    return EXIT_API;
  }
  io.stdout.write(decisionLine(record));
  return EXIT_OK;
}

function parse(args: string[]) {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    strict: true,
    options: {
      api: { type: 'string' },
      config: { type: 'string', short: 'c' },
      token: { type: 'string' },
      status: { type: 'string' },
      subject: { type: 'string' },
      target: { type: 'string' },
      limit: { type: 'string' },
      for: { type: 'string' },
      reason: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const [sub, id, ...extra] = positionals;
  if (values.help || sub === 'help') return { sub: 'help' as const, id: undefined, values };
  if (sub !== 'list' && sub !== 'approve' && sub !== 'deny') {
    throw new UsageError(sub === undefined ? 'missing subcommand' : `unknown subcommand "${sub}"`);
  }
  if (sub === 'list') {
    if (id !== undefined) throw new UsageError(`list takes no argument (got "${id}")`);
    if (values.for || values.reason) throw new UsageError('--for and --reason go with approve and deny');
  } else {
    if (!id) throw new UsageError(`${sub} needs an approval ID`);
    if (extra.length) throw new UsageError(`${sub} takes one approval ID`);
    if (sub === 'approve' && values.reason) throw new UsageError('--reason goes with deny');
    if (sub === 'deny' && values.for) throw new UsageError('--for goes with approve');
    if (values.for !== undefined) {
      try {
        parseDuration(values.for);
      } catch (err) {
        throw new UsageError(`--for: ${isSluiceError(err) ? err.message : 'expected a duration such as 15m'}`);
      }
    }
  }
  if (values.limit !== undefined && !/^\d{1,4}$/.test(values.limit)) throw new UsageError('--limit must be a number from 1 to 1000');
  return { sub, id, values };
}
