/**
 * This node's presence key as the node itself can vouch for it: the key a renewal sets lives for
 * the TTL from when Redis ran the command, which is no earlier than when it was sent. So while less
 * than the TTL (less a margin for clock rates) has passed since the newest renewal Redis confirmed
 * was sent, no other node can have found the key gone and taken this node for dead. Sans-I/O: the
 * cluster and its simulation tell it when a renewal leaves and when Redis confirms it.
 */
export class Presence {
  /** Until when the key surely stands; −∞ before the first confirmed renewal. */
  #heldUntil = Number.NEGATIVE_INFINITY;
  /** Since when it has stood without a break this node could not rule out. */
  #heldSince = Number.POSITIVE_INFINITY;

  constructor(
    private readonly ttlMs: number,
    private readonly now: () => number,
  ) {}

  /** Runs one renewal (the Redis command), and counts it once Redis confirms it. */
  async renew(write: () => Promise<unknown>): Promise<void> {
    const sentAt = this.now();
    await write();
    const confirmedAt = this.now();
    // Confirmed after the last one ran out: the key may have been gone in between, so the node may
    // have been reaped; what it stands for starts over from now.
    if (confirmedAt >= this.#heldUntil) this.#heldSince = confirmedAt;
    this.#heldUntil = Math.max(this.#heldUntil, sentAt + this.ttlMs - this.#marginMs);
  }

  /** The key surely stands now. */
  held(): boolean {
    return this.now() < this.#heldUntil;
  }

  /**
   * Since when the key has surely stood without a break, or +∞ when it may be gone now. A job this
   * node started before then may have been claimed by a reaper in a break, so only jobs it started
   * since then are this node's to vouch for.
   */
  heldSince(): number {
    return this.held() ? this.#heldSince : Number.POSITIVE_INFINITY;
  }

  /** A quarter of the TTL, at most a second: Redis and this node measure time at slightly different rates. */
  get #marginMs(): number {
    return Math.min(1_000, this.ttlMs / 4);
  }
}
