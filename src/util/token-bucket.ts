import { monotonicMs } from "./monotonic.ts";

/**
 * A token bucket: `burst` tokens at most, refilled at `perSecond`. Used for a room member's frames
 * and a job's log lines and bytes. Time is read from `now` (ms) so tests can drive it.
 */
export class TokenBucket {
  #tokens: number;
  #refilledAt: number;

  constructor(
    private readonly perSecond: number,
    private readonly burst: number,
    private readonly now: () => number = monotonicMs,
  ) {
    this.#tokens = burst;
    this.#refilledAt = now();
  }

  /** Refills up to now; true when `amount` tokens are there (none are taken). */
  has(amount = 1): boolean {
    const now = this.now();
    this.#tokens = Math.min(this.burst, this.#tokens + ((now - this.#refilledAt) / 1000) * this.perSecond);
    this.#refilledAt = now;
    return this.#tokens >= amount;
  }

  /** Takes `amount` tokens; false (and nothing taken) when there are not that many. */
  take(amount = 1): boolean {
    if (!this.has(amount)) return false;
    this.#tokens -= amount;
    return true;
  }
}
