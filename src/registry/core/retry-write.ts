import type { RegistryClock } from "./ports.ts";

/** A refused write is tried again after this, doubling up to the maximum. */
const FIRST_RETRY_MS = 100;
const MAX_RETRY_MS = 5_000;

export interface RetryWrite<T> {
  write: () => Promise<T>;
  clock: RegistryClock;
  /** The node is closing (or crashed): give up, the next owner of the record reconciles it. */
  stopped: () => boolean;
  /** Told of each refusal, with the wait before the next try. */
  onRefused: (error: Error, retryInMs: number) => void;
}

/**
 * Writes an outcome only this node knows (a dispatch's final status, a worker's final report) until
 * the store takes it: a Redis that is down or unreachable for a while must not lose it. Resolves
 * with the write's result, or undefined once stopped; never rejects.
 */
export function retryWrite<T>(retry: RetryWrite<T>, failures = 0): Promise<T | undefined> {
  return retry.write().catch((error: Error) => {
    if (retry.stopped()) return undefined;
    const delay = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** failures);
    retry.onRefused(error, delay);
    return new Promise<T | undefined>((resolve) => {
      retry.clock.setTimeout(() => {
        if (retry.stopped()) resolve(undefined);
        else resolve(retryWrite(retry, failures + 1));
      }, delay);
    });
  });
}
