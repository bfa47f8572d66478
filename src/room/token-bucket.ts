/**
 * A token bucket: `burst` tokens at most, refilled at `perSecond`. Each frame a member sends takes
 * one; a frame that finds the bucket empty is refused. Time is read from `now` (ms) so tests can
 * drive it.
 */
export class TokenBucket {
  #tokens: number;
  #refilledAt: number;

  constructor(
    private readonly perSecond: number,
    private readonly burst: number,
    private readonly now: () => number = performance.now.bind(performance),
  ) {
    this.#tokens = burst;
    this.#refilledAt = now();
  }

  /** Takes one token; false when none is left. */
  take(): boolean {
    const now = this.now();
    this.#tokens = Math.min(this.burst, this.#tokens + ((now - this.#refilledAt) / 1000) * this.perSecond);
    this.#refilledAt = now;
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }
}
