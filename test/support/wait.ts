/**
 * The waits every real-time test shares: bound a promise, or poll a cheap condition. Both fail with a
 * TimeoutError whose message names what was awaited and for how long, so a hung test says what hung.
 */

/** A wait in a test that ran out of time. */
export class TimeoutError extends Error {
  override readonly name = "TimeoutError";
}

const timedOut = (label: string, timeoutMs: number) =>
  new TimeoutError(`timed out after ${timeoutMs} ms waiting for ${label}`);

/** Resolves with the promise's value, or rejects naming `label` if it does not settle within `timeoutMs`. */
export function within<T>(label: string, promise: Promise<T>, timeoutMs: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(timedOut(label, timeoutMs)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

type Falsy = false | 0 | "" | null | undefined;

export interface UntilOptions {
  /** What is awaited, for the timeout message ("the worker to be available"). */
  label: string;
  /** Default 10 s. */
  timeoutMs?: number;
  /** Pause between two checks; default 20 ms. */
  intervalMs?: number;
}

/**
 * Polls `check` (cheap: local state, /proc, a local HTTP request) until it returns a truthy value,
 * and returns that value; throws once `timeoutMs` passed without one.
 */
export async function until<T>(
  check: () => T | Falsy | Promise<T | Falsy>,
  { label, timeoutMs = 10_000, intervalMs = 20 }: UntilOptions,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() >= deadline) throw timedOut(label, timeoutMs);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
