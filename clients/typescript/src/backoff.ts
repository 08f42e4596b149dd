/** How long to wait before retrying after failures. */
export interface BackoffOptions {
  /** Delay ceiling of the first retry, in milliseconds. */
  initialMs: number;
  /** Delay ceiling of any retry, in milliseconds. */
  maxMs: number;
}

/**
 * The delay before retry number `attempt` (1 for the first retry):
 * exponential growth from `initialMs` capped at `maxMs`, with "equal jitter"
 * (a uniformly random point in the upper half of that ceiling). The jitter
 * spreads the retries of many clients that failed together (a server restart)
 * so they do not come back as one wave; keeping the lower half means a retry
 * is never immediate, so a failing server is never hammered.
 */
export function backoffDelay(
  attempt: number,
  { initialMs, maxMs }: BackoffOptions,
  random: () => number = Math.random,
): number {
  const exponent = Math.max(0, Math.min(attempt - 1, 30));
  const ceiling = Math.min(maxMs, initialMs * 2 ** exponent);
  return ceiling / 2 + random() * (ceiling / 2);
}
