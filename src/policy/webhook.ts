import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../log.js';
import type { ApprovalRecord } from '../store/types.js';

export interface ApprovalWebhookConfig {
  url: string;
  /** Per attempt; default 5000 ms. */
  timeoutMs?: number;
  /** Attempts after the first; default 3. */
  retries?: number;
  /** First backoff delay, doubled after each failure; default 500 ms. */
  backoffMs?: number;
}

/** The webhook carries enough for a human to decide, and nothing secret: no token, no credential. */
export interface ApprovalWebhookPayload {
  event: 'approval.requested';
  approval: {
    id: string;
    subject: string;
    target: string;
    rule: string;
    text: string;
    createdAt: string;
    expiresAt: string;
  };
  approve_command: string;
}

/** Longer statements are cut in the notification; the API returns the whole text. */
export const WEBHOOK_TEXT_MAX = 4000;

export function approvalWebhookPayload(record: ApprovalRecord): ApprovalWebhookPayload {
  return {
    event: 'approval.requested',
    approval: {
      id: record.id,
      subject: record.subject,
      target: record.target,
      rule: record.rule,
      text: record.text.length > WEBHOOK_TEXT_MAX ? record.text.slice(0, WEBHOOK_TEXT_MAX) + '…' : record.text,
      createdAt: record.createdAt,
      expiresAt: record.expiresAt,
    },
    approve_command: `sluice approvals approve ${record.id}`,
  };
}

/**
 * POSTs the payload as JSON; retries with exponential backoff on a network
 * error, a timeout or a non-2xx answer. Resolves true once delivered, false
 * when it gave up or `signal` aborted it. Never rejects: a failing webhook
 * is logged, never surfaced to the session that waits for the approval.
 *
 * The URL is not logged: chat webhooks carry their secret in the path. Only
 * its origin is.
 */
export async function postApprovalWebhook(
  cfg: ApprovalWebhookConfig,
  record: ApprovalRecord,
  logger: Logger,
  signal?: AbortSignal,
): Promise<boolean> {
  const timeoutMs = cfg.timeoutMs ?? 5000;
  const retries = Math.max(0, cfg.retries ?? 3);
  let delay = cfg.backoffMs ?? 500;
  let origin = '[invalid url]';
  try {
    origin = new URL(cfg.url).origin;
  } catch {
    logger.error({ approvalId: record.id }, 'approval webhook url is not a valid URL; not notifying');
    return false;
  }
  const body = JSON.stringify(approvalWebhookPayload(record));
  for (let attempt = 1; attempt <= retries + 1; attempt++) {
    if (signal?.aborted) return false;
    let problem: string;
    try {
      const res = await fetch(cfg.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body,
        // A redirect could carry the approval text to another host.
        redirect: 'error',
        signal: signal ? AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]) : AbortSignal.timeout(timeoutMs),
      });
      // Drain the body so the connection can be reused or closed.
      await res.arrayBuffer().catch(() => undefined);
      if (res.ok) {
        logger.debug({ approvalId: record.id, webhook: origin, attempt }, 'approval webhook delivered');
        return true;
      }
      problem = `HTTP ${res.status}`;
    } catch (err) {
      if (signal?.aborted) return false;
      // Error texts may quote the URL (undici does, for one it refuses): its path can be a
      // secret (a Slack-style hook) and its user info a password. Only the origin is logged.
      problem = err instanceof Error ? withoutUrl(`${err.name}: ${err.message}`, cfg.url, origin) : 'request failed';
    }
    const last = attempt > retries;
    logger.warn(
      { approvalId: record.id, webhook: origin, attempt, problem, willRetry: !last },
      last ? 'approval webhook failed; giving up' : 'approval webhook failed; retrying',
    );
    if (last) return false;
    try {
      await sleep(delay, undefined, { signal });
    } catch {
      return false; // aborted while waiting
    }
    delay *= 2;
  }
  return false;
}

/** `text` with the webhook URL, and anything of it past the host, replaced by the origin. */
function withoutUrl(text: string, url: string, origin: string): string {
  let out = text.split(url).join(`${origin}/[path]`);
  const u = new URL(url);
  for (const part of [u.username, u.password, u.pathname.length > 1 ? u.pathname : '', u.search]) {
    if (part !== '') out = out.split(part).join('[redacted]');
  }
  return out;
}
