import type { GateContextBase, RedisCommandFacts, Verdict } from '../../src/policy/types.js';
import type { AuditEvent, AuditVerdict } from '../../src/store/types.js';
import { releases, type PendingApproval } from '../../src/policy/approvals.js';
import { fingerprintHmac } from '../../src/policy/fingerprint-key.js';
import { withoutRedisCredentials } from '../../src/recording/scrub.js';
import { classifyCommand, type CommandKind } from './classify.js';
import { error } from './replies.js';

/**
 * Policy and audit for one Redis session: each command the relay would
 * forward is classified from Redis' own command table and judged.
 *
 * The relay does the wire work (a refusal is answered in order; a refusal
 * inside MULTI turns the EXEC into EXECABORT, as Redis does for a command
 * rejected at queue time; a held command holds the rest of the pipeline).
 * This module decides and writes the audit trail.
 *
 * Audit volume: Redis serves tens of thousands of commands a second per
 * connection, and one SQLite row per allowed GET would cost more CPU than
 * relaying it. Refused, held and approved commands are always recorded one
 * by one; allowed commands are recorded one by one when `auditEachAllowed`
 * is on, and otherwise as one row per command name per second per session
 * (`kind: get`, `rows: <count>`, text `GET x1523`). See docs/policy.md.
 *
 * The hot path: when no rule of the policy looks at keys, a command's
 * verdict follows from its kind (name, subcommand, categories), so `allows`
 * judges each kind once per session and the relay asks it before building
 * the command's argument list. Commands of a kind not allowed as such go
 * through `judge`, keys and all.
 */
export interface RedisGateContext extends GateContextBase {
  /** One audit row per allowed command instead of per-second counts. */
  auditEachAllowed?: boolean;
}

export type Judgement =
  | { action: 'allow' }
  | { action: 'deny'; reply: Buffer }
  | { action: 'approve'; verdict: Verdict; facts: RedisCommandFacts };

const ALLOW: Judgement = Object.freeze({ action: 'allow' });
/** The rule named in the audit trail for what Sluice refuses whatever the policy says. */
const BUILT_IN_RULE = 'sluice';
/** Longest argument shown in audit text and to approvers. */
const ARG_PREVIEW = 200;
/** Characters of a command's description (audit text, approvals), past which the rest is counted, not shown. */
const DESCRIPTION_MAX = 4096;
const AGGREGATE_EVERY_MS = 1_000;

interface KindEntry {
  allowed: boolean;
  /** Allowed commands of this kind not yet in an aggregate row. */
  pending: number;
}

/**
 * Rule criteria that look at no more of a Redis command than its kind: the
 * PostgreSQL ones (a Redis command never matches them) and `commands`.
 * A rule with any other (`keys`, or one added later) disables `allows`.
 */
const KIND_CRITERIA = new Set(['kinds', 'tables', 'functions', 'withoutWhere', 'commands']);

/** Commands whose arguments carry a credential, and where it starts. */
function secretArgumentsFrom(facts: RedisCommandFacts): number {
  switch (facts.command) {
    case 'auth':
    case 'hello':
      return 1;
    case 'migrate':
      return 1; // MIGRATE ... AUTH password / AUTH2 user password
    case 'acl':
      return facts.subcommand === 'setuser' ? 3 : Infinity;
    case 'config':
      return facts.subcommand === 'set' ? 2 : Infinity;
    default:
      return Infinity;
  }
}

export class RedisCommandGate {
  readonly #counts = new Map<string, number>();
  #flushTimer: NodeJS.Timeout | undefined;
  #pending: PendingApproval | undefined;
  /** Verdicts by kind (true: allowed whatever the keys); absent when `allows` cannot decide (see KIND_CRITERIA). */
  /** Per command kind: whether its kind alone allows it, and how many went by since the last aggregate row. */
  readonly #byKind: Map<CommandKind, KindEntry> | undefined;

  constructor(private readonly ctx: RedisGateContext) {
    const kindDecides = ctx.policy.config.rules.every((rule) => Object.keys(rule.match).every((k) => KIND_CRITERIA.has(k)));
    // Each allowed command audited one by one needs its arguments: judge() it.
    this.#byKind = kindDecides && !ctx.auditEachAllowed ? new Map() : undefined;
  }

  /**
   * True when the policy allows every command of this kind, whatever its
   * keys; the command is then counted as allowed, as `judge` would count it.
   * False: `judge` must decide.
   */
  allows(kind: CommandKind): boolean {
    const byKind = this.#byKind;
    if (byKind === undefined) return false;
    let entry = byKind.get(kind);
    if (entry === undefined) {
      const facts: RedisCommandFacts = { protocol: 'redis', command: kind.command, categories: kind.categories, keys: [] };
      if (kind.subcommand !== undefined) facts.subcommand = kind.subcommand;
      entry = { allowed: this.ctx.policy.evaluate(facts).action === 'allow', pending: 0 };
      byKind.set(kind, entry);
    }
    if (!entry.allowed) return false;
    // Counted on the entry (no lookup by name per command); folded into the aggregate rows at the flush.
    this.ctx.onVerdict?.('allowed');
    if (this.ctx.audit) {
      entry.pending++;
      this.#armFlush();
    }
    return true;
  }

  judge(args: Buffer[]): Judgement {
    const facts = classifyCommand(args);
    const verdict = this.ctx.policy.evaluate(facts);
    if (verdict.action === 'allow') {
      this.#allowed(facts, args);
      return ALLOW;
    }
    if (verdict.action === 'approve') {
      if (!this.ctx.approvals) {
        return this.#deny(verdict, facts, args, `${verdict.reason} (needs approval, but approvals are not configured)`);
      }
      const window = this.ctx.approvals.windowAllows(this.ctx.subject, this.ctx.target, fingerprintOf(facts, args), this.ctx.issuer);
      if (window) {
        this.#allowed(facts, args);
        return ALLOW;
      }
      return { action: 'approve', verdict, facts };
    }
    return this.#deny(verdict, facts, args, verdict.reason);
  }

  /**
   * A command that needs approval but cannot be held (HELLO, MULTI, EXEC,
   * DISCARD, RESET: the relay follows what they do to the connection as
   * they pass): refused as a denial is, and audited so.
   */
  refuseUnholdable(verdict: Verdict, facts: RedisCommandFacts, args: Buffer[]): Buffer {
    return this.#deny(verdict, facts, args, `${verdict.reason} (needs approval, but ${facts.command.toUpperCase()} cannot be held for one)`).reply;
  }

  /** Holds a command for a human; resolves with the reply to send instead, or undefined to forward it. */
  async hold(raw: Buffer, args: Buffer[], verdict: Verdict, facts: RedisCommandFacts): Promise<Buffer | undefined> {
    const approvals = this.ctx.approvals!;
    const text = describeCommand(args, facts);
    const pending = approvals.requestFor(this.ctx, {
      protocol: 'redis',
      policy: verdict.policy,
      rule: verdict.rule ?? '',
      text,
      heldBytes: raw,
      fingerprint: fingerprintOf(facts, args),
    });
    // Over the approval limits (too many waiting, too long to show): refused, as a denial is.
    if ('refused' in pending) return this.#deny(verdict, facts, args, `${verdict.reason} (needs approval, but ${pending.refused})`).reply;
    this.#pending = pending;
    const id = pending.record.id;
    this.ctx.logger.info({ approvalId: id, rule: verdict.rule, command: text.slice(0, 200) }, 'command held for approval');
    let outcome = await pending.outcome;
    this.#pending = undefined;
    if (outcome.status === 'approved' && !releases(outcome.record, this.ctx.sessionId, this.ctx.subject, raw)) {
      // Each hold waits on its own outcome, so this cannot happen; were it to, nothing unapproved runs.
      this.ctx.logger.error({ approvalId: id }, 'an approval does not match the held command; refused');
      outcome = { status: 'denied', record: { ...outcome.record, status: 'denied' } };
    }
    if (outcome.status === 'approved') {
      approvals.markUsed(id);
      this.#write(this.#event(facts, text, 'approved', { approvalId: id, ...(verdict.rule ? { rule: verdict.rule } : {}) }));
      this.ctx.onVerdict?.('approved');
      return undefined;
    }
    const auditVerdict: AuditVerdict =
      outcome.status === 'expired' ? 'approval_expired' : outcome.status === 'cancelled' ? 'approval_cancelled' : 'approval_denied';
    const what = outcome.status === 'expired' ? 'expired' : outcome.status === 'cancelled' ? 'was cancelled' : 'was denied';
    const message = `sluice: approval ${id} ${what}; the command was not run`;
    this.#write(this.#event(facts, text, auditVerdict, { approvalId: id, ...(verdict.rule ? { rule: verdict.rule } : {}), error: message }));
    this.ctx.onVerdict?.(auditVerdict);
    return error(message, 'NOPERM');
  }

  /**
   * A command Sluice refuses itself, above any policy (docs/redis.md: AUTH
   * after login, MONITOR, SELECT of another db, CLIENT REPLY OFF, ...):
   * audited as denied by the built-in rule `sluice`, with the error the
   * client got. A credential in it (AUTH, HELLO ... AUTH, their NUL-suffixed
   * forms) is redacted as the recording scrubs it.
   */
  refusedBySluice(args: Buffer[], reply: Buffer): void {
    const facts = classifyCommand(args);
    const shown = withoutRedisCredentials(args);
    // The reply is Sluice's own `-ERR sluice: ...\r\n`: its text, without the type byte and CRLF.
    const message = reply.toString('utf8', 1, Math.min(reply.length - 2, 1 + ARG_PREVIEW));
    this.#write(this.#event(facts, describeCommand(shown, facts), 'denied', { rule: BUILT_IN_RULE, error: message }));
    this.ctx.onVerdict?.('denied');
  }

  close(): void {
    this.#pending?.cancel();
    if (this.#flushTimer) clearTimeout(this.#flushTimer);
    this.#flushCounts();
  }

  #deny(verdict: Verdict, facts: RedisCommandFacts, args: Buffer[], reason: string): Extract<Judgement, { action: 'deny' }> {
    const message = `sluice: denied by rule "${verdict.rule ?? `default of policy ${verdict.policy}`}": ${reason}`;
    const text = describeCommand(args, facts);
    this.ctx.logger.info({ rule: verdict.rule, policy: verdict.policy, command: text.slice(0, 200) }, 'command refused');
    this.#write(this.#event(facts, text, 'denied', { ...(verdict.rule ? { rule: verdict.rule } : {}), error: message }));
    this.ctx.onVerdict?.('denied');
    return { action: 'deny', reply: error(message, 'NOPERM') };
  }

  #allowed(facts: RedisCommandFacts, args: Buffer[]): void {
    if (this.ctx.audit && this.ctx.auditEachAllowed) {
      this.ctx.onVerdict?.('allowed');
      this.#write(this.#event(facts, describeCommand(args, facts), 'allowed'));
      return;
    }
    this.#countAllowed(auditKind(facts));
  }

  /** An allowed command, counted into its kind's row of this second. */
  #countAllowed(kind: string): void {
    this.ctx.onVerdict?.('allowed');
    if (!this.ctx.audit) return;
    this.#counts.set(kind, (this.#counts.get(kind) ?? 0) + 1);
    this.#armFlush();
  }

  /** The aggregate rows of this second are written in a second, once. */
  #armFlush(): void {
    if (!this.#flushTimer) {
      this.#flushTimer = setTimeout(() => {
        this.#flushTimer = undefined;
        this.#flushCounts();
      }, AGGREGATE_EVERY_MS);
      this.#flushTimer.unref();
    }
  }

  #flushCounts(): void {
    if (this.#byKind) {
      for (const [kind, entry] of this.#byKind) {
        if (entry.pending === 0) continue;
        this.#counts.set(kind.kind, (this.#counts.get(kind.kind) ?? 0) + entry.pending);
        entry.pending = 0;
      }
    }
    for (const [kind, n] of this.#counts) {
      this.#write({
        time: new Date().toISOString(),
        sessionId: this.ctx.sessionId,
        subject: this.ctx.subject,
        target: this.ctx.target,
        protocol: 'redis',
        kind,
        text: `${kind.toUpperCase()} x${n}`,
        verdict: 'allowed',
        policy: this.ctx.policy.name,
        rows: n,
      });
    }
    this.#counts.clear();
  }

  #event(facts: RedisCommandFacts, text: string, verdict: AuditVerdict, extra: Partial<AuditEvent> = {}): AuditEvent {
    return {
      time: new Date().toISOString(),
      sessionId: this.ctx.sessionId,
      subject: this.ctx.subject,
      target: this.ctx.target,
      protocol: 'redis',
      kind: auditKind(facts),
      text,
      verdict,
      policy: this.ctx.policy.name,
      ...extra,
    };
  }

  #write(event: AuditEvent): void {
    this.ctx.audit?.write(event);
  }
}

function kindOf(facts: RedisCommandFacts): string {
  return facts.subcommand ? `${facts.command}|${facts.subcommand}` : facts.command;
}

/**
 * The kind as the audit trail keeps it. An unknown command's name is the
 * client's bytes, up to a bulk string's 512 MB: one per audit row (and per
 * key of this second's counts) would let a client fill the store. Redis
 * cuts names in its own errors the same way. Only for what is kept or
 * shown: rules and fingerprints compare the whole name.
 */
function auditKind(facts: RedisCommandFacts): string {
  const kind = kindOf(facts);
  return kind.length <= AUDIT_KIND_MAX ? kind : `${kind.slice(0, AUDIT_KIND_MAX)}...`;
}

const AUDIT_KIND_MAX = 64;

/**
 * What an approval window for a command covers: its kind and keys, so a
 * window for `UNLINK old:1` covers that again with other values. Where the
 * other arguments are what the command does, they are part of it too, as a
 * digest, credentials left out: for scripting and administration (the
 * script of EVAL, the parameter and value of CONFIG SET), and for a command
 * whose keys do not say what it touches: one that names none (PUBLISH's
 * channel is an argument) or may touch any (a module's JSON.SET, whose
 * keys Sluice cannot find).
 */
export function fingerprintOf(facts: RedisCommandFacts, args: readonly Buffer[]): string {
  // Each key with its length: joined with a separator, `UNLINK a b` and `UNLINK "a\0b"` would be one fingerprint.
  let keys = '';
  for (const k of facts.keys) keys += `${k.length}:${k}`;
  const base = `redis:${kindOf(facts)}:${keys}`;
  const argumentsMatter = facts.keys.length === 0 || facts.anyKey === true || facts.categories.some((c) => c === '@scripting' || c === '@admin' || c === '@dangerous');
  if (!argumentsMatter) return base;
  const digest = fingerprintHmac();
  const secret = secretPositions(facts, args);
  for (let i = 1; i < args.length; i++) {
    const a = secret.has(i) ? SECRET_MARK : args[i]!;
    digest.update(`${a.length}:`).update(a);
  }
  return `${base}:${digest.digest('hex')}`;
}

const SECRET_MARK = Buffer.from('[secret]');
/**
 * Configuration parameters whose value is a secret: requirepass, masterauth,
 * and the TLS key passphrases (tls-key-file-pass, tls-client-key-file-pass,
 * Redis 6.2+); by their names' endings, so a module's `...pass` or
 * `...password` is taken for one too (withholding too much is harmless).
 */
const SECRET_CONFIG = /(?:pass|auth|password)$/;

/**
 * Arguments that are credentials, for the window digest: ACL SETUSER's
 * password rules (`>pw`, `<pw`, `#hash`, `!hash`), the value of CONFIG SET
 * requirepass / masterauth / a TLS key passphrase (SECRET_CONFIG), and
 * what follows MIGRATE's AUTH / AUTH2. An
 * approver decided on the command with them shown as [redacted]; a window
 * covers the same command whatever they are.
 */
export function secretPositions(facts: RedisCommandFacts, args: readonly Buffer[]): Set<number> {
  const out = new Set<number>();
  const lower = (i: number): string => args[i]!.toString('latin1').toLowerCase();
  if (facts.command === 'acl' && facts.subcommand === 'setuser') {
    for (let i = 3; i < args.length; i++) if ('><#!'.includes(args[i]!.toString('latin1', 0, 1) || ' ')) out.add(i);
  } else if (facts.command === 'config' && facts.subcommand === 'set') {
    for (let i = 2; i + 1 < args.length; i += 2) if (SECRET_CONFIG.test(lower(i))) out.add(i + 1);
  } else if (facts.command === 'migrate') {
    for (let i = 1; i < args.length; i++) {
      if (lower(i) === 'auth') out.add(i + 1);
      else if (lower(i) === 'auth2') out.add(i + 1).add(i + 2);
    }
  }
  return out;
}

/**
 * The command as an approver or auditor reads it: arguments quoted and cut,
 * credentials replaced, and the whole cut at DESCRIPTION_MAX characters. A
 * command may carry hundreds of thousands of arguments up to
 * max_message_size, and JSON.stringify writes a control byte as six
 * characters: uncut, one refused command became a string of hundreds of
 * millions of characters in the audit queue.
 */
export function describeCommand(args: readonly Buffer[], facts: RedisCommandFacts): string {
  const secretFrom = secretArgumentsFrom(facts);
  let out = '';
  for (let i = 0; i < args.length; i++) {
    if (out.length >= DESCRIPTION_MAX) {
      const bytes = args.slice(i).reduce((n, a) => n + a.length, 0);
      return `${out} ...(${args.length - i} more arguments, ${bytes} bytes)`;
    }
    const a = args[i]!;
    let shown: string;
    if (i >= secretFrom) shown = '[redacted]';
    else {
      const s = a.toString('utf8', 0, Math.min(a.length, ARG_PREVIEW));
      const quoted = /^[\x21-\x7e]+$/.test(s) ? s : JSON.stringify(s);
      shown = a.length > ARG_PREVIEW ? `${quoted}...(${a.length} bytes)` : quoted;
    }
    out = i === 0 ? shown : `${out} ${shown}`;
  }
  return out;
}
