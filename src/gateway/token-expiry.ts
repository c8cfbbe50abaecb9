/**
 * A session ends when the token it logged in with expires
 * (`limits.end_at_token_expiry`, on by default): a short-lived token is
 * meant to bound what its holder can do, and a connection opened a minute
 * before the expiry would otherwise outlive it by days. The deadline is the
 * identity's `expiresAt`: the token's `exp` plus `identity.clock_tolerance`,
 * the moment the gateway would refuse the same token at a new login.
 */

/** Node's timers hold at most 2^31 - 1 ms (24.8 days); a later deadline is re-armed on the way. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Calls `end` once `expiresAt` has passed (unref'd: it never keeps the process up). Returns the cancel. */
export function endAtTokenExpiry(expiresAt: Date, end: () => void): () => void {
  let timer: NodeJS.Timeout | undefined;
  const arm = (): void => {
    const left = expiresAt.getTime() - Date.now();
    if (!(left > 0)) {
      timer = undefined;
      end();
      return;
    }
    timer = setTimeout(arm, Math.min(left, MAX_TIMER_MS));
    timer.unref();
  };
  arm();
  return () => {
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
  };
}

/** The words a client is told when its session ends so. */
export function tokenExpiredMessage(expiresAt: Date): string {
  return `terminating connection: the token this session logged in with expired at ${expiresAt.toISOString()}; connect again with a fresh token`;
}
