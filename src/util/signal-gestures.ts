/**
 * One Ctrl-C can reach a process several times. The terminal sends SIGINT to every process of the
 * foreground process group, and launchers relay what they got on top: `tsx` relays SIGINT/SIGTERM to
 * its child when the child does not confirm it within 30 ms (and npm, a shell or `troupe dev` may
 * hand one on too). The copies arrive within milliseconds of the original. So signals are counted
 * as *gestures*: a signal within `windowMs` of the start of the current gesture is a copy of it; a
 * later one is a new, deliberate gesture (a second Ctrl-C).
 */
export const SIGNAL_GESTURE_WINDOW_MS = 1_000;

export class SignalGestures {
  #startedAt: number | undefined;
  #count = 0;

  constructor(
    readonly windowMs = SIGNAL_GESTURE_WINDOW_MS,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** The gesture this signal belongs to: 1 for the first, 2 for the next deliberate one, …; 0 for a copy. */
  next(): number {
    const at = this.now();
    if (this.#startedAt !== undefined && at - this.#startedAt < this.windowMs) return 0;
    this.#startedAt = at;
    return ++this.#count;
  }

  /** Gestures seen so far. */
  get count(): number {
    return this.#count;
  }
}
