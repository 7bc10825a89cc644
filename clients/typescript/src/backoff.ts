/** How the client waits between reconnect attempts. */
export interface BackoffOptions {
  /** The first wait, in ms (default 500). */
  initialDelayMs?: number;
  /** The longest wait, in ms (default 30000). */
  maxDelayMs?: number;
  /** Each failed attempt multiplies the wait by this (default 2). */
  factor?: number;
  /** The share of the wait that is random, 0..1 (default 0.5): the wait is scaled by `1 - jitter + jitter * random()`. */
  jitter?: number;
  /** Attempts after which the client gives up and closes (default unlimited). */
  maxAttempts?: number;
}

export const DEFAULT_BACKOFF: Required<BackoffOptions> = {
  initialDelayMs: 500,
  maxDelayMs: 30_000,
  factor: 2,
  jitter: 0.5,
  maxAttempts: Number.POSITIVE_INFINITY,
};

/**
 * The wait before reconnect attempt `attempt` (0 for the first): exponential, capped at
 * `maxDelayMs`, with `jitter` of it random so that clients cut off together do not return
 * together.
 */
export function backoffDelay(attempt: number, options: BackoffOptions = {}, random: () => number = Math.random): number {
  const { initialDelayMs, maxDelayMs, factor, jitter } = { ...DEFAULT_BACKOFF, ...options };
  const share = Math.min(1, Math.max(0, jitter));
  const exponential = initialDelayMs * Math.pow(factor, Math.max(0, attempt));
  const capped = Math.min(maxDelayMs, Number.isFinite(exponential) ? exponential : maxDelayMs);
  const draw = Math.min(1, Math.max(0, random()));
  return Math.round(capped * (1 - share + share * draw));
}
