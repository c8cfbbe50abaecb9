/**
 * The HTTP API: approvals (list, get, approve, deny), the audit trail,
 * /healthz and /metrics. fastify, logging through the gateway's pino logger.
 *
 * - Every /api route needs `Authorization: Bearer <token>`, verified by the
 *   gateway's own TokenVerifier, and a role from `api.roles` (auth.ts).
 * - /healthz and /metrics need nothing: load balancers and Prometheus
 *   scrapers usually have no token. Neither says anything secret: health
 *   checks are component states, metrics carry target names and counts.
 * - Request logs are fastify's (method, url, status, time); bodies and
 *   headers are never logged, so neither a token nor a deny reason is.
 * - Every error answer is `{ error, code, message }`: `code` from the
 *   catalogue, `message` for a person. Internal error text stays in the log.
 */
import type { KeyObject } from 'node:crypto';
import { constants } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { finished } from 'node:stream';
import { fastify, type FastifyError, type FastifyReply, type FastifyRequest } from 'fastify';
import { sessionJson } from '../cli/sessions.js';
import { SESSION_ID_PATTERN } from '../recording/format.js';
import { transcriptJson, transcriptText } from '../recording/transcript.js';
import { recordingPathWithin } from '../recording/files.js';
import { againstIndex, describeVerify, verifyRecording } from '../recording/verify.js';
import type { ApiConfig } from '../config/types.js';
import { isSluiceError } from '../errors.js';
import { parseDuration } from '../identity/dev-issuer.js';
import type { TokenVerifier } from '../identity/types.js';
import type { Logger } from '../log.js';
import { ApprovalErrorCodes, type ApprovalManager } from '../policy/approvals.js';
import type { ApprovalQuery, ApprovalRecord, ApprovalStatus, AuditQuery, AuditVerdict, SessionQuery, SessionRecord, SessionStore, Store } from '../store/types.js';
import { ApiError, ApiErrorCodes, authenticate, requireRole, type ApiRole, type Principal } from './auth.js';
import type { Metrics } from './metrics.js';

export interface HealthReport {
  ok: boolean;
  /** Component -> state, e.g. { store: 'ok', 'app-db': 'listening' }. Never a secret. */
  checks: Record<string, string>;
}

export interface ApiDeps {
  config: ApiConfig;
  verifier: TokenVerifier;
  store: Store;
  approvals: ApprovalManager;
  metrics: Metrics;
  logger: Logger;
  health(): HealthReport;
  /** The session index; without it the /api/sessions routes answer 404. */
  sessions?: SessionStore;
  /** The state directory: recordings are served only from its `recordings` directory. */
  stateDir?: string;
  /** `recording.fsync`: with `off`, a footer lost to a power cut while its row survived is not tampering. */
  recordingFsync?: 'close' | 'off';
  /** Public recording keys by key id, for /api/sessions/:id/verify (e.g. () => loadRecordingPublicKeys(stateDir)). */
  recordingKeys?: () => Promise<Map<string, KeyObject>>;
  /** Transcripts and verifications at once (default 2), the largest recording the API makes a transcript of (default 256 MiB), and the events in one (default 100,000). */
  recordingReads?: { concurrent?: number; transcriptMaxBytes?: number; transcriptMaxEvents?: number };
}

export interface RunningApi {
  address: { host: string; port: number };
  close(): Promise<void>;
}

const APPROVAL_STATUSES: ReadonlySet<string> = new Set<ApprovalStatus>([
  'pending',
  'approved',
  'denied',
  'expired',
  'cancelled',
  'used',
]);
const AUDIT_VERDICTS: ReadonlySet<string> = new Set<AuditVerdict>([
  'allowed',
  'denied',
  'approved',
  'approval_denied',
  'approval_expired',
  'approval_cancelled',
]);

/** Approve/deny bodies are a few fields; nothing larger is read. */
const BODY_LIMIT = 16 * 1024;
const MAX_REASON = 1000;
const MAX_FILTER = 512;

const REASON_PHRASES: Readonly<Record<number, string>> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  409: 'Conflict',
  413: 'Payload Too Large',
  415: 'Unsupported Media Type',
  500: 'Internal Server Error',
  503: 'Service Unavailable',
};

function badRequest(message: string): ApiError {
  return new ApiError(400, ApiErrorCodes.API_BAD_REQUEST, message);
}

/** One optional string from the query string; a repeated parameter or an oversized one is refused, not guessed at. */
function queryString(q: unknown, name: string): string | undefined {
  const v = (q as Record<string, unknown> | undefined)?.[name];
  if (v === undefined || v === '') return undefined;
  if (typeof v !== 'string') throw badRequest(`query parameter ${name} must be given once`);
  if (v.length > MAX_FILTER) throw badRequest(`query parameter ${name} is longer than ${MAX_FILTER} characters`);
  return v;
}

function queryLimit(q: unknown): number | undefined {
  const v = queryString(q, 'limit');
  if (v === undefined) return undefined;
  if (!/^\d{1,4}$/.test(v) || Number(v) < 1 || Number(v) > 1000) throw badRequest('limit must be a whole number from 1 to 1000');
  return Number(v);
}

function queryTime(q: unknown, name: string): string | undefined {
  const v = queryString(q, name);
  if (v === undefined) return undefined;
  if (Number.isNaN(Date.parse(v))) throw badRequest(`${name} must be an ISO 8601 time, e.g. 2025-01-31T12:00:00Z`);
  return v;
}

/** The JSON body as an object; no body (or an empty one) is `{}`. */
function bodyObject(body: unknown): Record<string, unknown> {
  if (body === undefined || body === null || body === '') return {};
  if (typeof body !== 'object' || Array.isArray(body)) throw badRequest('the request body must be a JSON object');
  return body as Record<string, unknown>;
}

/** The manager's typed refusals as HTTP statuses. */
function approvalError(err: unknown): unknown {
  if (!isSluiceError(err)) return err;
  const code: string = err.code;
  if (code === ApprovalErrorCodes.APPROVAL_NOT_FOUND) return new ApiError(404, err.code, err.message);
  if (code === ApprovalErrorCodes.APPROVAL_NOT_PENDING) return new ApiError(409, err.code, err.message);
  if (code === ApprovalErrorCodes.APPROVAL_SELF) return new ApiError(403, err.code, err.message);
  if (code === ApprovalErrorCodes.APPROVAL_WINDOW_INVALID) return new ApiError(400, err.code, err.message);
  return err;
}

/** Transcripts and verifications at once (see readingRecording in startApi). */
const MAX_RECORDING_READS = 2;
/** The largest recording the API makes a transcript of (in memory); `sluice replay --file` streams any. */
const TRANSCRIPT_MAX_BYTES = 256 * 1024 * 1024;
/**
 * Events in a transcript the API builds: a recording well under
 * TRANSCRIPT_MAX_BYTES may hold tens of millions of tiny replies, each an
 * object in memory. Past it the transcript says where it was cut.
 */
const TRANSCRIPT_MAX_EVENTS = 100_000;

/** `api.request_timeout`'s default: a request (at most BODY_LIMIT bytes of body) arrives whole within this. */
const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
/** Headers arrive within this (or the request timeout, when shorter). */
const HEADERS_TIMEOUT_MS = 10_000;
/** A connection with no bytes either way for this long is closed (a transcript is built well within it). */
const IDLE_CONNECTION_MS = 120_000;
const KEEP_ALIVE_MS = 5_000;
/** Open API connections; past this, new ones are closed at once (the gateway's sessions and recordings share the process's descriptors). */
const MAX_CONNECTIONS = 256;

function sendError(reply: FastifyReply, status: number, code: string, message: string): FastifyReply {
  if (status === 401) reply.header('www-authenticate', 'Bearer realm="sluice", error="invalid_token"');
  return reply
    .code(status)
    .type('application/json; charset=utf-8')
    .send({ error: REASON_PHRASES[status] ?? 'Error', code, message });
}

export async function startApi(deps: ApiDeps): Promise<RunningApi> {
  const { config, verifier, approvals, metrics, store } = deps;
  const logger = deps.logger.child({ component: 'api' });
  // fastify switches Node's request timeout off by default: a client that sent its headers and
  // then nothing (or a body byte now and then) held its connection, and a file descriptor the
  // database sessions and their recordings share, for ever, before any token was read.
  const requestTimeout = config.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  const app = fastify({
    loggerInstance: logger,
    bodyLimit: BODY_LIMIT,
    // A proxy in front is not assumed: req.ip is the peer.
    trustProxy: false,
    // A scraper's or load balancer's idle connections must not hold close().
    forceCloseConnections: true,
    requestTimeout,
    // A connection with nothing moving either way (no request, no response bytes) is closed.
    connectionTimeout: IDLE_CONNECTION_MS,
    keepAliveTimeout: KEEP_ALIVE_MS,
    http: {
      headersTimeout: Math.min(requestTimeout, HEADERS_TIMEOUT_MS),
      // How often Node looks for requests past those deadlines (its default is 30 s).
      connectionsCheckingInterval: Math.max(100, Math.min(Math.floor(requestTimeout / 4), 5_000)),
    },
  });
  app.server.maxConnections = MAX_CONNECTIONS;

  const authorize = async (req: FastifyRequest, roles: readonly ApiRole[]): Promise<Principal> => {
    const principal = await authenticate(req.headers.authorization, verifier, config.roles, config.audience);
    requireRole(principal, roles);
    return principal;
  };

  app.setErrorHandler((err: FastifyError | Error, req, reply) => {
    if (err instanceof ApiError) {
      if (err.status >= 500) req.log.warn({ code: err.code, reason: err.message }, 'api request refused');
      return sendError(reply, err.status, err.code, err.message);
    }
    const status = (err as FastifyError).statusCode;
    if (typeof status === 'number' && status >= 400 && status < 500) {
      // fastify's own refusals (bad JSON, size, content type): its messages
      // can quote the body, so answer with a fixed text instead.
      const message =
        status === 413
          ? `the request body is larger than ${BODY_LIMIT} bytes`
          : status === 415
            ? 'unsupported content type; send application/json'
            : 'malformed request; the body, if any, must be a JSON object';
      return sendError(reply, status, ApiErrorCodes.API_BAD_REQUEST, message);
    }
    req.log.error({ err }, 'api request failed');
    return sendError(reply, 500, ApiErrorCodes.API_INTERNAL, 'internal error; the gateway log has the details');
  });

  app.setNotFoundHandler((req, reply) => {
    sendError(reply, 404, ApiErrorCodes.API_NOT_FOUND, `no route ${req.method} ${req.url.split('?')[0]}`);
  });

  // Probes and scrapes come every few seconds: log them only when they fail.
  app.get('/healthz', { logLevel: 'warn' }, async (_req, reply) => {
    const h = deps.health();
    return reply.code(h.ok ? 200 : 503).send({ status: h.ok ? 'ok' : 'unavailable', checks: h.checks });
  });

  app.get('/metrics', { logLevel: 'warn' }, async (_req, reply) => {
    return reply.type('text/plain; version=0.0.4; charset=utf-8').send(metrics.render());
  });

  app.get('/api/approvals', async (req) => {
    await authorize(req, ['approver', 'auditor']);
    const q: ApprovalQuery = {};
    const status = queryString(req.query, 'status');
    if (status !== undefined) {
      if (!APPROVAL_STATUSES.has(status)) throw badRequest(`status must be one of ${[...APPROVAL_STATUSES].join(', ')}`);
      q.status = status as ApprovalStatus;
    }
    const subject = queryString(req.query, 'subject');
    if (subject !== undefined) q.subject = subject;
    const target = queryString(req.query, 'target');
    if (target !== undefined) q.target = target;
    const limit = queryLimit(req.query);
    if (limit !== undefined) q.limit = limit;
    return { approvals: approvals.list(q) };
  });

  app.get<{ Params: { id: string } }>('/api/approvals/:id', async (req) => {
    await authorize(req, ['approver', 'auditor']);
    const record = approvals.get(req.params.id);
    if (!record) throw new ApiError(404, ApprovalErrorCodes.APPROVAL_NOT_FOUND, `approval ${req.params.id} not found`);
    return record;
  });

  app.post<{ Params: { id: string } }>('/api/approvals/:id/approve', async (req) => {
    const who = await authorize(req, ['approver']);
    const body = bodyObject(req.body);
    const opts: { windowSeconds?: number } = {};
    if (body.for !== undefined && body.for !== null) {
      if (typeof body.for !== 'string' && typeof body.for !== 'number') throw badRequest('"for" must be a duration such as "15m"');
      try {
        opts.windowSeconds = parseDuration(String(body.for));
      } catch (err) {
        throw badRequest(isSluiceError(err) ? `"for": ${err.message}` : '"for" must be a duration such as "15m"');
      }
    }
    let record: ApprovalRecord;
    try {
      record = approvals.approve(req.params.id, { subject: who.identity.subject, issuer: who.identity.issuer }, opts);
    } catch (err) {
      throw approvalError(err);
    }
    decided(record, 'approved');
    return record;
  });

  app.post<{ Params: { id: string } }>('/api/approvals/:id/deny', async (req) => {
    const who = await authorize(req, ['approver']);
    const body = bodyObject(req.body);
    let reason: string | undefined;
    if (body.reason !== undefined && body.reason !== null) {
      if (typeof body.reason !== 'string') throw badRequest('"reason" must be a string');
      if (body.reason.length > MAX_REASON) throw badRequest(`"reason" is longer than ${MAX_REASON} characters`);
      reason = body.reason;
    }
    let record: ApprovalRecord;
    try {
      record = approvals.deny(req.params.id, { subject: who.identity.subject }, reason);
    } catch (err) {
      throw approvalError(err);
    }
    decided(record, 'denied');
    return record;
  });

  app.get('/api/audit', async (req) => {
    await authorize(req, ['auditor']);
    const q: AuditQuery = {};
    const session = queryString(req.query, 'session');
    if (session !== undefined) q.sessionId = session;
    const subject = queryString(req.query, 'subject');
    if (subject !== undefined) q.subject = subject;
    const target = queryString(req.query, 'target');
    if (target !== undefined) q.target = target;
    const verdict = queryString(req.query, 'verdict');
    if (verdict !== undefined) {
      if (!AUDIT_VERDICTS.has(verdict)) throw badRequest(`verdict must be one of ${[...AUDIT_VERDICTS].join(', ')}`);
      q.verdict = verdict as AuditVerdict;
    }
    const since = queryTime(req.query, 'since');
    if (since !== undefined) q.since = since;
    const until = queryTime(req.query, 'until');
    if (until !== undefined) q.until = until;
    const limit = queryLimit(req.query);
    if (limit !== undefined) q.limit = limit;
    return { events: store.queryAuditEvents(q) };
  });

  // --- sessions and their recordings (auditor) ---------------------------------
  // Session rows and recordings hold who ran what and what came back: auditors only.

  const sessionFor = (id: string): SessionRecord => {
    if (!deps.sessions) throw new ApiError(404, ApiErrorCodes.API_NOT_FOUND, 'this gateway keeps no session index');
    if (!SESSION_ID_PATTERN.test(id)) throw badRequest('not a session id');
    const rec = deps.sessions.getSession(id);
    if (!rec) throw new ApiError(404, ApiErrorCodes.API_NOT_FOUND, `session ${id} not found`);
    return rec;
  };
  const recordingOf = async (rec: SessionRecord): Promise<string> => {
    // Only a file inside the recordings directory: the index row's path is not trusted as it is.
    const path = deps.stateDir === undefined ? undefined : await recordingPathWithin(deps.stateDir, rec.recordingPath);
    if (path === undefined) throw new ApiError(404, ApiErrorCodes.API_NOT_FOUND, `session ${rec.id} has no recording`);
    return path;
  };

  app.get('/api/sessions', async (req) => {
    await authorize(req, ['auditor']);
    if (!deps.sessions) throw new ApiError(404, ApiErrorCodes.API_NOT_FOUND, 'this gateway keeps no session index');
    const q: SessionQuery = {};
    const subject = queryString(req.query, 'subject');
    if (subject !== undefined) q.subject = subject;
    const target = queryString(req.query, 'target');
    if (target !== undefined) q.target = target;
    const since = queryTime(req.query, 'since');
    if (since !== undefined) q.since = new Date(Date.parse(since)).toISOString();
    const limit = queryLimit(req.query);
    if (limit !== undefined) q.limit = limit;
    return { sessions: deps.sessions.listSessions(q).map(sessionJson) };
  });

  app.get<{ Params: { id: string } }>('/api/sessions/:id', async (req) => {
    await authorize(req, ['auditor']);
    return sessionJson(sessionFor(req.params.id));
  });

  /**
   * Transcripts and verifications read whole recordings inside the gateway,
   * next to its live sessions: a few at a time, and a transcript (built in
   * memory) only of a recording up to TRANSCRIPT_MAX_BYTES. Larger ones are
   * for `sluice replay --file` on a downloaded copy, which streams.
   */
  let reading = 0;
  const maxReads = deps.recordingReads?.concurrent ?? MAX_RECORDING_READS;
  const transcriptMax = deps.recordingReads?.transcriptMaxBytes ?? TRANSCRIPT_MAX_BYTES;
  const transcriptEvents = deps.recordingReads?.transcriptMaxEvents ?? TRANSCRIPT_MAX_EVENTS;
  /** Takes one of the maxReads slots (503 when none is free); the function returned gives it back, once. */
  const readSlot = (): (() => void) => {
    if (reading >= maxReads) {
      throw new ApiError(503, ApiErrorCodes.API_BUSY, `${maxReads} transcripts or verifications are being made; try again shortly`);
    }
    reading++;
    let held = true;
    return () => {
      if (held) reading--;
      held = false;
    };
  };
  const readingRecording = async <T>(work: () => Promise<T>): Promise<T> => {
    const release = readSlot();
    try {
      return await work();
    } finally {
      release();
    }
  };

  app.get<{ Params: { id: string } }>('/api/sessions/:id/transcript', async (req, reply) => {
    await authorize(req, ['auditor']);
    const rec = sessionFor(req.params.id);
    const path = await recordingOf(rec);
    const format = queryString(req.query, 'format');
    if (format !== undefined && format !== 'json' && format !== 'text') throw badRequest('format must be json or text');
    const size = (await stat(path)).size;
    if (size > transcriptMax) {
      throw new ApiError(
        413,
        ApiErrorCodes.API_TOO_LARGE,
        `the recording of session ${rec.id} is ${size} bytes, more than the ${transcriptMax} the API makes a transcript of; download /api/sessions/${rec.id}/recording and run sluice replay --file`,
      );
    }
    const wantsJson = format === 'json' || (format === undefined && /application\/json/.test(String(req.headers.accept ?? '')));
    // The slot is held until the transcript is built AND its response is gone: a client that does
    // not read would otherwise have any number of finished transcripts wait in memory, and one that
    // hangs up mid-build (and asks again) any number being built.
    const release = readSlot();
    let holds = 2;
    const letGo = (): void => {
      if (--holds === 0) release();
    };
    // Called at once (on the next tick) for a response already closed: the client left while it waited.
    finished(reply.raw, letGo);
    try {
      const opts = { maxEvents: transcriptEvents };
      const body = wantsJson ? await transcriptJson(path, opts) : await transcriptText(path, opts);
      return reply.type(wantsJson ? 'application/json; charset=utf-8' : 'text/plain; charset=utf-8').send(body);
    } finally {
      letGo();
    }
  });

  app.get<{ Params: { id: string } }>('/api/sessions/:id/recording', async (req, reply) => {
    await authorize(req, ['auditor']);
    const rec = sessionFor(req.params.id);
    const path = await recordingOf(rec);
    // The path was resolved and checked; opening it without following a symlink, and checking what
    // was opened, leaves no moment in which a file swapped in for it (a link to the recording key)
    // is served instead.
    const fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW).catch(() => undefined);
    const regular = fh !== undefined && (await fh.stat().then((st) => st.isFile(), () => false));
    if (!regular) {
      await fh?.close();
      throw new ApiError(404, ApiErrorCodes.API_NOT_FOUND, `session ${rec.id} has no recording`);
    }
    return reply
      .type('application/octet-stream')
      .header('content-disposition', `attachment; filename="${rec.id}.sluicerec"`)
      .send(fh.createReadStream());
  });

  app.get<{ Params: { id: string } }>('/api/sessions/:id/verify', async (req) => {
    await authorize(req, ['auditor']);
    const rec = sessionFor(req.params.id);
    const path = await recordingOf(rec);
    const keys = deps.recordingKeys ? await deps.recordingKeys() : new Map<string, KeyObject>();
    const r = againstIndex(await readingRecording(() => verifyRecording(path, keys, { sessionId: rec.id })), rec, {
      footerDurable: (deps.recordingFsync ?? 'close') === 'close',
    });
    return {
      id: rec.id,
      ok: r.ok,
      complete: r.complete,
      records: r.records,
      first_bad: r.firstBad ?? null,
      verified_through_seq: r.verifiedThroughSeq,
      result: describeVerify(r),
    };
  });

  function decided(record: ApprovalRecord, outcome: 'approved' | 'denied'): void {
    const seconds = (Date.parse(record.decidedAt ?? '') - Date.parse(record.createdAt)) / 1000;
    if (Number.isFinite(seconds)) metrics.approvalDecided(Math.max(0, seconds), outcome);
    else metrics.approvalsTotal.inc([outcome]);
  }

  await app.listen({ host: config.listen.host, port: config.listen.port });
  const addr = app.server.address();
  const address =
    addr && typeof addr === 'object' ? { host: addr.address, port: addr.port } : { host: config.listen.host, port: config.listen.port };
  logger.info({ host: address.host, port: address.port }, 'api listening');

  return {
    address,
    close: async () => {
      await app.close();
    },
  };
}
