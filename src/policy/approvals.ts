import { createHmac, randomBytes } from 'node:crypto';
import { ErrorCodes, SluiceError } from '../errors.js';
import type { Logger } from '../log.js';
import type { ApprovalQuery, ApprovalRecord, Store } from '../store/types.js';
import { postApprovalWebhook, type ApprovalWebhookConfig } from './webhook.js';

/**
 * Just-in-time approval: an `approve` rule holds one statement or command
 * (the gateway forwards nothing) until an approver decides, the request
 * expires, or the client goes away.
 *
 * Binding (security):
 * - A pending approval is released only through the `outcome` of the
 *   PendingApproval returned for that request: an id resolves exactly one
 *   held statement in exactly one session. The record carries the session,
 *   subject and an HMAC of the exact held bytes; before forwarding, both
 *   gates check with `releases()` that what they hold is what was
 *   approved, and refuse it otherwise.
 * - Decisions are single-use: a decided, expired or cancelled id cannot be
 *   decided again (APPROVAL_NOT_PENDING).
 * - An approver may not approve their own request (APPROVAL_SELF): same
 *   subject on both sides. Denying one's own request is allowed (it only
 *   withholds).
 * - A time window (`approve(id, who, { windowSeconds })`) lets the same
 *   subject run the same fingerprint on the same target without holding
 *   until it closes; it never applies to another subject or target.
 *
 * The in-memory map of pending requests is the authority on what can still
 * be decided: after a restart, pending rows left in the store belong to
 * sessions that no longer exist and are marked cancelled. (A shared store
 * for several gateway instances will need to scope that sweep per instance.)
 */

/**
 * Codes not yet in src/errors.ts (listed in the task report). Once added
 * there, use ErrorCodes.*; the cast only widens the type.
 */
export const ApprovalErrorCodes = {
  APPROVAL_NOT_FOUND: ErrorCodes.APPROVAL_NOT_FOUND,
  APPROVAL_NOT_PENDING: ErrorCodes.APPROVAL_NOT_PENDING,
  APPROVAL_SELF: ErrorCodes.APPROVAL_SELF,
  APPROVAL_WINDOW_INVALID: ErrorCodes.APPROVAL_WINDOW_INVALID,
  APPROVAL_LIMIT: ErrorCodes.APPROVAL_LIMIT,
} as const;

export interface ApprovalRequest {
  sessionId: string;
  subject: string;
  /**
   * The requester's issuer: with several trusted issuers, one subject name
   * may be two principals (the dev issuer's `deploy` and GitHub's). Self-
   * approval and time windows compare the pair, not the name alone.
   */
  issuer?: string;
  target: string;
  protocol: 'postgres' | 'redis';
  policy: string;
  rule: string;
  /** The held statement as text, for the approver to read. */
  text: string;
  /** Exact bytes held; hashed here into statementHash. */
  heldBytes: Buffer;
  /** Normalised fingerprint of the statement, for window grants. */
  fingerprint: string;
}

export type ApprovalOutcome =
  | { status: 'approved'; record: ApprovalRecord }
  | { status: 'denied' | 'expired' | 'cancelled'; record: ApprovalRecord };

export interface PendingApproval {
  record: ApprovalRecord;
  /** Resolves exactly once; never rejects. */
  outcome: Promise<ApprovalOutcome>;
  /** The client disconnected: cancel (no-op once decided). */
  cancel(): void;
}

export interface ApprovalManagerOptions {
  store: Store;
  /** How long a request waits for a decision; default 5 min. */
  timeoutMs?: number;
  /** Longest window an approver may grant; default 24 h. */
  maxWindowSeconds?: number;
  /** Requests one subject may have pending at once (approvals.max_pending_per_subject); default 10. */
  maxPendingPerSubject?: number;
  /** Requests one subject may make in a minute, decided or not (approvals.max_requests_per_minute); default 30. */
  maxRequestsPerMinute?: number;
  logger: Logger;
  webhook?: ApprovalWebhookConfig;
  now?: () => number;
  /** A request ended without a decision (for sluice_approvals_total; decisions are counted by the API). */
  onUndecided?(status: 'expired' | 'cancelled'): void;
}

interface Pending {
  record: ApprovalRecord;
  resolve: (o: ApprovalOutcome) => void;
  timer: NodeJS.Timeout;
  /** Stops the request's webhook delivery (its retries) once the request no longer waits. */
  webhook: AbortController | undefined;
}

/** Webhook deliveries in flight at once (each up to 4 attempts); past this, a request is not posted, only listed. */
const MAX_WEBHOOKS_IN_FLIGHT = 64;
const MINUTE_MS = 60_000;

const LOG_TEXT_MAX = 500;
/**
 * The longest statement text a request may carry. A statement may be as
 * large as max_message_size (64 MiB): kept whole, a client with an
 * `approve` rule could fill the store with a few requests and make a
 * listing of 100 records gigabytes long; cut, an approver would approve a
 * statement they could not read to its end (64 KiB of padding, then what
 * it really does). So a longer one is not held: refused (request throws).
 */
export const APPROVAL_TEXT_MAX = 64 * 1024;
const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';
/** setTimeout's ceiling (a larger delay fires at once). */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** 'apr_' + 16 base32 characters: 80 random bits, unguessable and safe in a URL or a shell. */
export function newApprovalId(): string {
  const bytes = randomBytes(10);
  let bits = 0;
  let value = 0;
  let out = 'apr_';
  for (const b of bytes) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out += BASE32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  return out;
}

/**
 * The key statementHash is made with: random, and only in this process's
 * memory. A plain SHA-256 of the held bytes, shown to approvers and
 * auditors by the API, would let them test guesses at a password in them
 * (CREATE ROLE ... PASSWORD, CONFIG SET requirepass) offline. Approvals
 * never outlive the process that holds their statement (a restart cancels
 * every pending one), so nothing needs the hash to be the same in another.
 */
const STATEMENT_KEY = randomBytes(32);

/** What binds an approval to the exact bytes held: an HMAC-SHA256 of them (see STATEMENT_KEY). */
export function statementHash(bytes: Buffer): string {
  return createHmac('sha256', STATEMENT_KEY).update(bytes).digest('hex');
}

/**
 * The gateway's last check before forwarding held bytes on an approval: the
 * record is approved and was created for this session, this subject and
 * exactly these bytes.
 */
export function releases(record: ApprovalRecord, sessionId: string, subject: string, bytes: Buffer): boolean {
  return (
    record.status === 'approved' &&
    record.sessionId === sessionId &&
    record.subject === subject &&
    record.statementHash === statementHash(bytes)
  );
}

function truncate(text: string, max: number): string {
  return text.length > max ? text.slice(0, max) + '…' : text;
}

export class ApprovalManager {
  private readonly store: Store;
  private readonly timeoutMs: number;
  private readonly maxWindowSeconds: number;
  private readonly logger: Logger;
  private readonly webhook: ApprovalWebhookConfig | undefined;
  private readonly now: () => number;
  private readonly pending = new Map<string, Pending>();
  /** subject \0 target \0 fingerprint -> the approved record with the latest open window. */
  private readonly windows = new Map<string, ApprovalRecord>();
  private readonly webhooks = new Set<Promise<boolean>>();
  private closed = false;

  private readonly onUndecided: ((status: 'expired' | 'cancelled') => void) | undefined;
  private readonly maxPendingPerSubject: number;
  private readonly maxRequestsPerMinute: number;
  /** Per requester (issuer \0 subject): when its requests of the last minute were made, oldest first. */
  private readonly recentRequests = new Map<string, number[]>();
  /** When forgetQuietRequesters last swept recentRequests. */
  private lastForget = 0;

  constructor(opts: ApprovalManagerOptions) {
    this.store = opts.store;
    this.timeoutMs = Math.min(opts.timeoutMs ?? 5 * 60_000, MAX_TIMER_MS);
    this.maxWindowSeconds = opts.maxWindowSeconds ?? 24 * 3600;
    this.logger = opts.logger;
    this.webhook = opts.webhook;
    this.now = opts.now ?? Date.now;
    this.onUndecided = opts.onUndecided;
    this.maxPendingPerSubject = opts.maxPendingPerSubject ?? 10;
    this.maxRequestsPerMinute = opts.maxRequestsPerMinute ?? 30;
    this.recover();
  }

  /** Sweep pending rows a previous run left behind, and reload windows that are still open. */
  private recover(): void {
    const at = new Date(this.now()).toISOString();
    for (;;) {
      const stale = this.store.listApprovals({ status: 'pending', limit: 1000 });
      if (!stale.length) break;
      for (const r of stale) {
        this.store.saveApproval({ ...r, status: 'cancelled', decidedAt: at, reason: 'gateway restarted before a decision' });
      }
      this.logger.warn({ count: stale.length }, 'pending approvals from a previous run cancelled');
    }
    // Windows are short (24 h at most) and recent, so the newest 1000
    // approved records hold every window that can still be open.
    for (const status of ['approved', 'used'] as const) {
      for (const r of this.store.listApprovals({ status, limit: 1000 })) {
        if (r.windowUntil && Date.parse(r.windowUntil) > this.now()) this.addWindow(r);
      }
    }
  }

  /**
   * `request` for a session's gate (the requester's fields from its
   * context): a request over the limits comes back as the reason it is
   * refused, which the gate answers as a denial, instead of as a throw.
   */
  requestFor(
    requester: { sessionId: string; subject: string; issuer?: string; target: string },
    req: Omit<ApprovalRequest, 'sessionId' | 'subject' | 'issuer' | 'target'>,
  ): PendingApproval | { refused: string } {
    try {
      return this.request({
        ...req,
        sessionId: requester.sessionId,
        subject: requester.subject,
        ...(requester.issuer !== undefined ? { issuer: requester.issuer } : {}),
        target: requester.target,
      });
    } catch (err) {
      if (err instanceof SluiceError && err.code === ErrorCodes.APPROVAL_LIMIT) return { refused: err.message };
      throw err;
    }
  }

  /**
   * Records a request and starts its timer. Throws a SluiceError
   * (SLUICE_APPROVAL_LIMIT) when the subject already has
   * maxPendingPerSubject requests pending: each of its sessions may hold one
   * statement, and without a bound one token could open session after
   * session, each posting to the approvers' channel. The caller refuses
   * the statement with that message.
   */
  request(req: ApprovalRequest): PendingApproval {
    if (this.closed) throw new Error('approval manager is closed');
    if (req.text.length > APPROVAL_TEXT_MAX) {
      throw new SluiceError(
        ErrorCodes.APPROVAL_LIMIT,
        `the statement is ${req.text.length} characters long, more than an approver is shown (${APPROVAL_TEXT_MAX}); it cannot be held for approval`,
      );
    }
    let pending = 0;
    for (const p of this.pending.values()) if (p.record.subject === req.subject && p.record.issuer === req.issuer) pending++;
    if (pending >= this.maxPendingPerSubject) {
      throw new SluiceError(
        ErrorCodes.APPROVAL_LIMIT,
        `${pending} approvals are already pending for this subject (approvals.max_pending_per_subject); wait for a decision before asking for another`,
      );
    }
    const created = this.now();
    // Pending requests are bounded above; this bounds their rate. A client that disconnects cancels
    // its request and frees its place at once, so connect, hold, disconnect in a loop would otherwise
    // post to the approvers' channel (and add a row) as fast as it can log in.
    const requester = `${req.issuer ?? ''}\0${req.subject}`;
    const recent = (this.recentRequests.get(requester) ?? []).filter((at) => created - at < MINUTE_MS);
    if (recent.length >= this.maxRequestsPerMinute) {
      this.recentRequests.set(requester, recent);
      throw new SluiceError(
        ErrorCodes.APPROVAL_LIMIT,
        `this subject asked for ${recent.length} approvals in the last minute (approvals.max_requests_per_minute); wait before asking for another`,
      );
    }
    const record: ApprovalRecord = {
      id: newApprovalId(),
      status: 'pending',
      sessionId: req.sessionId,
      subject: req.subject,
      ...(req.issuer !== undefined ? { issuer: req.issuer } : {}),
      target: req.target,
      protocol: req.protocol,
      policy: req.policy,
      rule: req.rule,
      text: req.text,
      statementHash: statementHash(req.heldBytes),
      fingerprint: req.fingerprint,
      createdAt: new Date(created).toISOString(),
      expiresAt: new Date(created + this.timeoutMs).toISOString(),
    };
    // If the store cannot save the request, this throws and the caller
    // refuses the statement (fail closed): nothing is held without a record.
    this.store.saveApproval(record);
    recent.push(created);
    this.recentRequests.set(requester, recent);
    this.forgetQuietRequesters(created);

    let resolve!: (o: ApprovalOutcome) => void;
    const outcome = new Promise<ApprovalOutcome>((r) => (resolve = r));
    const timer = setTimeout(() => this.finish(record.id, 'expired', undefined, 'no decision before the approval expired'), this.timeoutMs);
    const entry: Pending = { record, resolve, timer, webhook: undefined };
    this.pending.set(record.id, entry);

    this.logger.info(
      {
        approvalId: record.id,
        sessionId: record.sessionId,
        subject: record.subject,
        target: record.target,
        policy: record.policy,
        rule: record.rule,
        text: truncate(record.text, LOG_TEXT_MAX),
        expiresAt: record.expiresAt,
        approveCommand: `sluice approvals approve ${record.id}`,
      },
      'approval requested',
    );
    entry.webhook = this.notify(record);

    return {
      record: { ...record },
      outcome,
      cancel: () => {
        this.finish(record.id, 'cancelled', undefined, 'the client disconnected');
      },
    };
  }

  approve(id: string, approver: { subject: string; issuer?: string }, opts: { windowSeconds?: number } = {}): ApprovalRecord {
    const p = this.decidable(id);
    // The same name from another issuer is another principal; a record or an approver without an
    // issuer is compared by name alone (the stricter reading).
    const sameIssuer = p.record.issuer === undefined || approver.issuer === undefined || p.record.issuer === approver.issuer;
    if (approver.subject === p.record.subject && sameIssuer) {
      throw new SluiceError(
        ApprovalErrorCodes.APPROVAL_SELF,
        `approval ${id}: an approver may not approve their own request`,
      );
    }
    let windowUntil: string | undefined;
    if (opts.windowSeconds !== undefined) {
      const s = opts.windowSeconds;
      if (!Number.isFinite(s) || s <= 0 || s > this.maxWindowSeconds) {
        throw new SluiceError(
          ApprovalErrorCodes.APPROVAL_WINDOW_INVALID,
          `approval ${id}: a window must be between 1 second and ${this.maxWindowSeconds} seconds`,
        );
      }
      windowUntil = new Date(this.now() + s * 1000).toISOString();
    }
    // decidable() just found it pending, so finish() has it.
    const record = this.finish(id, 'approved', approver.subject, undefined, windowUntil, true)!;
    if (record.windowUntil) this.addWindow(record);
    return record;
  }

  deny(id: string, approver: { subject: string }, reason?: string): ApprovalRecord {
    this.decidable(id);
    return this.finish(id, 'denied', approver.subject, reason, undefined, true)!;
  }

  get(id: string): ApprovalRecord | undefined {
    const p = this.pending.get(id);
    return p ? { ...p.record } : this.store.getApproval(id);
  }

  list(query: ApprovalQuery): ApprovalRecord[] {
    return this.store.listApprovals(query);
  }

  /**
   * The gateway forwarded the approved bytes: mark the record used, so the
   * trail shows the approval was consumed. Only an approved record moves;
   * anything else is left alone. (Added to the brief's API: the store's
   * status set has 'used' and nothing else would set it.)
   */
  markUsed(id: string): void {
    const r = this.store.getApproval(id);
    if (!r || r.status !== 'approved') return;
    const used: ApprovalRecord = { ...r, status: 'used' };
    this.store.saveApproval(used);
    const key = windowKey(r.issuer, r.subject, r.target, r.fingerprint);
    if (this.windows.get(key)?.id === id) this.windows.set(key, used);
  }

  /**
   * A window granted earlier for this subject (of this issuer) + target +
   * fingerprint that is still open; the caller may forward without holding.
   */
  windowAllows(subject: string, target: string, fingerprint: string, issuer?: string): ApprovalRecord | undefined {
    const key = windowKey(issuer, subject, target, fingerprint);
    const r = this.windows.get(key);
    if (!r) return undefined;
    if (!r.windowUntil || Date.parse(r.windowUntil) <= this.now()) {
      this.windows.delete(key);
      return undefined;
    }
    return { ...r };
  }

  /** Resolves when every webhook in flight has been delivered or given up. */
  async webhooksSettled(): Promise<void> {
    while (this.webhooks.size) await Promise.all([...this.webhooks]);
  }

  /** Shutdown: every pending request is cancelled (its session gets an error), webhook retries stop. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const id of [...this.pending.keys()]) this.finish(id, 'cancelled', undefined, 'the gateway shut down');
  }

  /** The pending entry for a decision, or the typed reason there is none. */
  private decidable(id: string): Pending {
    const p = this.pending.get(id);
    if (p) {
      // The timer may lag behind the clock: past expiresAt, it has expired.
      if (this.now() >= Date.parse(p.record.expiresAt)) {
        this.finish(id, 'expired', undefined, 'no decision before the approval expired');
      } else {
        return p;
      }
    }
    const stored = this.store.getApproval(id);
    if (!stored) throw new SluiceError(ApprovalErrorCodes.APPROVAL_NOT_FOUND, `approval ${id} not found`);
    throw new SluiceError(
      ApprovalErrorCodes.APPROVAL_NOT_PENDING,
      `approval ${id} is ${stored.status}, no longer pending`,
    );
  }

  /**
   * Moves a pending request to its final status, saves it, resolves its
   * outcome once. For a decision (`strict`) a store failure throws and
   * nothing changes; for expiry/cancel the request ends anyway (the session
   * is answered, fail closed) and the failure is logged.
   */
  private finish(
    id: string,
    status: 'approved' | 'denied' | 'expired' | 'cancelled',
    decidedBy: string | undefined,
    reason: string | undefined,
    windowUntil?: string,
    strict = false,
  ): ApprovalRecord | undefined {
    const p = this.pending.get(id);
    // cancel() or a timer after the decision: nothing to do.
    if (!p) return undefined;
    const record: ApprovalRecord = { ...p.record, status, decidedAt: new Date(this.now()).toISOString() };
    if (decidedBy !== undefined) record.decidedBy = decidedBy;
    if (reason !== undefined) record.reason = reason;
    if (windowUntil !== undefined) record.windowUntil = windowUntil;
    try {
      this.store.saveApproval(record);
    } catch (err) {
      if (strict) throw err;
      this.logger.error({ err, approvalId: id, status }, 'approval outcome could not be saved');
    }
    this.pending.delete(id);
    clearTimeout(p.timer);
    // Nothing is left to decide: an approver need not be told (again) of a request that no longer waits.
    p.webhook?.abort();
    const waitedMs = Date.parse(record.decidedAt!) - Date.parse(record.createdAt);
    this.logger.info(
      { approvalId: id, status, decidedBy, reason, windowUntil, waitedMs, subject: record.subject, target: record.target },
      `approval ${status}`,
    );
    if (status === 'expired' || status === 'cancelled') this.onUndecided?.(status);
    p.resolve({ status, record: { ...record } } as ApprovalOutcome);
    return { ...record };
  }

  private addWindow(r: ApprovalRecord): void {
    const key = windowKey(r.issuer, r.subject, r.target, r.fingerprint);
    const cur = this.windows.get(key);
    if (!cur || Date.parse(cur.windowUntil!) < Date.parse(r.windowUntil!)) this.windows.set(key, { ...r });
  }

  /** Posts the request to the webhook; the controller stops that delivery. */
  private notify(record: ApprovalRecord): AbortController | undefined {
    if (!this.webhook) return undefined;
    if (this.webhooks.size >= MAX_WEBHOOKS_IN_FLIGHT) {
      this.logger.warn({ approvalId: record.id, inFlight: this.webhooks.size }, 'approval webhook not posted: too many deliveries in flight; the request is listed by the API and the CLI');
      return undefined;
    }
    // Aborted when the request ends (finish), which close() brings about for every one still pending.
    const own = new AbortController();
    const sent = postApprovalWebhook(this.webhook, record, this.logger, own.signal);
    this.webhooks.add(sent);
    void sent.finally(() => this.webhooks.delete(sent));
    return own;
  }

  /** Drops requesters with no request in the last minute, at most once a minute: the map stays as large as the active requesters. */
  private forgetQuietRequesters(now: number): void {
    if (now - this.lastForget < MINUTE_MS) return;
    this.lastForget = now;
    for (const [who, times] of this.recentRequests) {
      if (times.length === 0 || now - times[times.length - 1]! >= MINUTE_MS) this.recentRequests.delete(who);
    }
  }
}

/** A window is the requester's: its issuer and subject, the target, the fingerprint (no issuer: '', matching none of a session's). */
function windowKey(issuer: string | undefined, subject: string, target: string, fingerprint: string): string {
  return `${issuer ?? ''}\0${subject}\0${target}\0${fingerprint}`;
}
