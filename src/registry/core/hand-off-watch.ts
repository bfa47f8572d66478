import type { JobRecord } from "../store.ts";

/** How long after a hand-off this node still answers for it, should Redis lose its data. */
export const HAND_OFF_WATCH_MS = 60_000;
/** How long (at least; three heartbeats if longer) a node that found Redis emptied waits for the others to write back what they hold. */
export const HAND_OFF_RECOVERY_GRACE_MS = 3_000;
/** At most this many hand-offs are watched; past it, the oldest go first. */
export const MAX_WATCHED_HAND_OFFS = 10_000;

export interface WatchedHandOff {
  record: JobRecord;
  to: string;
  at: number;
}

/**
 * The hand-offs this node made lately. Once a job is handed to another node, only Redis holds it
 * until that node reads its inbox; if Redis restarts without its data in between, the record and
 * the message are both gone, and this node, which sent them, is the one left to say so.
 */
export class HandOffWatch {
  readonly #sent = new Map<string, WatchedHandOff>();

  constructor(private readonly now: () => number) {}

  sent(record: JobRecord, to: string): void {
    this.#sent.delete(record.id);
    this.#sent.set(record.id, { record, to, at: this.now() });
    this.#trim();
  }

  /**
   * Forgets the hand-offs their node has taken: once it started the job's dispatch (the record
   * moved on since the claim), that node answers for it, and writes it back itself if Redis loses it.
   */
  async dropTaken(read: (jobId: string) => Promise<JobRecord | undefined>): Promise<void> {
    for (const [jobId, handOff] of [...this.#sent]) {
      const record = await read(jobId);
      if (!record) continue;
      const taken =
        record.node !== handOff.to ||
        record.status !== handOff.record.status ||
        record.updatedAt !== handOff.record.updatedAt;
      if (taken && this.#sent.get(jobId) === handOff) this.#sent.delete(jobId);
    }
  }

  /** The hand-offs of the last HAND_OFF_WATCH_MS, oldest first. */
  recent(): WatchedHandOff[] {
    this.#trim();
    return [...this.#sent.values()];
  }

  #trim(): void {
    const oldest = this.now() - HAND_OFF_WATCH_MS;
    for (const [jobId, handOff] of this.#sent) {
      if (handOff.at >= oldest && this.#sent.size <= MAX_WATCHED_HAND_OFFS) break;
      this.#sent.delete(jobId);
    }
  }
}
