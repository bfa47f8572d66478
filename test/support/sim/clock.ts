import type { RegistryClock } from "../../../src/registry/core/ports.ts";

interface Timer {
  at: number;
  seq: number;
  fn: () => void;
  cancelled: boolean;
}

/**
 * Lets every promise continuation queued so far run (and those they queue), before the next event.
 * Node runs a nextTick callback only once the microtask queue is empty, so this waits exactly for
 * that, without the cost of a turn of the event loop (setImmediate).
 */
const drainMicrotasks = () => new Promise<void>((resolve) => process.nextTick(resolve));

/**
 * The simulation's one clock, a discrete-event scheduler. Unlike XState's SimulatedClock, whose
 * `increment` fires every due timer at the end of the jump, each timer here runs at its own time, in
 * time order (ties in the order they were set), and the promise continuations it causes run before
 * the next one: a store reply that arrives at 1,203 ms is handled at 1,203 ms. It implements XState's
 * clock interface, so the machines' `after` timers, the registry core and the world share one time line.
 */
export class SimClock implements RegistryClock {
  #now: number;
  #seq = 0;
  readonly #heap: Timer[] = [];
  readonly #byId = new Map<number, Timer>();

  constructor(start = 0) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  setTimeout(fn: (...args: unknown[]) => void, timeout: number): number {
    return this.#add(this.#now + Math.max(0, timeout), fn);
  }

  clearTimeout(id: unknown): void {
    const timer = this.#byId.get(id as number);
    if (!timer) return;
    timer.cancelled = true;
    this.#byId.delete(id as number);
  }

  /** Runs `fn` at `time` (now if it has passed). */
  at(time: number, fn: () => void): number {
    return this.#add(Math.max(this.#now, time), fn);
  }

  after(ms: number, fn: () => void): number {
    return this.#add(this.#now + Math.max(0, ms), fn);
  }

  /** Time of the next timer, if any. */
  get next(): number | undefined {
    this.#skipCancelled();
    return this.#heap[0]?.at;
  }

  /**
   * Runs every timer due by `until`, one at a time; after each, its promise continuations, then
   * `afterStep` (the invariant checks). Ends with the clock at `until`.
   */
  async runUntil(until: number, afterStep: () => void): Promise<void> {
    for (;;) {
      this.#skipCancelled();
      const top = this.#heap[0];
      if (!top || top.at > until) break;
      this.#pop();
      this.#byId.delete(top.seq);
      this.#now = top.at;
      top.fn();
      await drainMicrotasks();
      afterStep();
    }
    this.#now = Math.max(this.#now, until);
  }

  #add(at: number, fn: () => void): number {
    const timer: Timer = { at, seq: ++this.#seq, fn, cancelled: false };
    this.#byId.set(timer.seq, timer);
    this.#push(timer);
    return timer.seq;
  }

  #skipCancelled(): void {
    while (this.#heap[0]?.cancelled) this.#pop();
  }

  #before(a: Timer, b: Timer): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq);
  }

  #push(timer: Timer): void {
    const heap = this.#heap;
    heap.push(timer);
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.#before(heap[i] as Timer, heap[parent] as Timer)) break;
      [heap[i], heap[parent]] = [heap[parent] as Timer, heap[i] as Timer];
      i = parent;
    }
  }

  #pop(): Timer | undefined {
    const heap = this.#heap;
    const top = heap[0];
    const last = heap.pop();
    if (heap.length === 0 || !last) return top;
    heap[0] = last;
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      const right = left + 1;
      let smallest = i;
      if (left < heap.length && this.#before(heap[left] as Timer, heap[smallest] as Timer)) smallest = left;
      if (right < heap.length && this.#before(heap[right] as Timer, heap[smallest] as Timer)) smallest = right;
      if (smallest === i) break;
      [heap[i], heap[smallest]] = [heap[smallest] as Timer, heap[i] as Timer];
      i = smallest;
    }
    return top;
  }
}
