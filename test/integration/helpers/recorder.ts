/** Records events as they happen and lets a test wait for one, with a timeout instead of a sleep. */
export class Recorder<T> {
  readonly items: T[] = [];
  readonly #waiters = new Set<{ predicate: (item: T) => boolean; resolve: (item: T) => void }>();

  constructor(private readonly describe: (item: T) => unknown = (item) => item) {}

  push(item: T): void {
    this.items.push(item);
    for (const waiter of [...this.#waiters]) {
      if (waiter.predicate(item)) {
        this.#waiters.delete(waiter);
        waiter.resolve(item);
      }
    }
  }

  find(predicate: (item: T) => boolean): T | undefined {
    return this.items.find(predicate);
  }

  filter(predicate: (item: T) => boolean): T[] {
    return this.items.filter(predicate);
  }

  /** The first recorded item (already seen or still to come) that matches. */
  waitFor(predicate: (item: T) => boolean, timeoutMs: number, label: string): Promise<T> {
    const seen = this.items.find(predicate);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise<T>((resolve, reject) => {
      const waiter = {
        predicate,
        resolve: (item: T) => {
          clearTimeout(timer);
          resolve(item);
        },
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(waiter);
        const recent = this.items.slice(-8).map(this.describe);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${label}; last seen: ${JSON.stringify(recent)}`));
      }, timeoutMs);
      this.#waiters.add(waiter);
    });
  }
}

/** Rejects with a clear message when `promise` takes longer than `timeoutMs`. */
export function within<T>(promise: Promise<T>, timeoutMs: number, label: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${label}`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Polls a condition (cheap: local state, /proc, a local HTTP request) until it holds or the time is up. */
export async function until<T>(
  check: () => T | undefined | null | false | Promise<T | undefined | null | false>,
  timeoutMs: number,
  label: string,
  intervalMs = 20,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${label}`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
