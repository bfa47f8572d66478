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
