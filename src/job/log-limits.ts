import { monotonicMs } from "../util/monotonic.ts";
import { TokenBucket } from "../util/token-bucket.ts";
/**
 * How much a job may log. The worker enforces these per job process on everything the job sends it
 * (ctx.logger lines over IPC, stdout and stderr lines), so a hostile job cannot flood the worker's
 * log; the job process applies the same budget to its own logger so the IPC channel is not flooded
 * either. Lines over budget are dropped and counted; the worker logs one notice per interval.
 */

/** Lines per second a job may log, sustained. */
export const LOG_LINES_PER_SECOND = 200;
/** Lines a job may log at once before the per-second rate applies (the bucket starts full). */
export const LOG_LINE_BURST = 1_000;
/** Bytes per second a job may log, sustained (message plus fields, UTF-8). */
export const LOG_BYTES_PER_SECOND = 64 * 1024;
/** Bytes a job may log at once before the per-second rate applies. */
export const LOG_BYTE_BURST = 512 * 1024;
/** A longer line is cut to this many bytes and marked with `truncatedBytes`. */
export const LOG_LINE_MAX_BYTES = 8 * 1024;
/** At most one "log lines dropped" notice per job per interval. */
export const LOG_DROP_NOTICE_INTERVAL_MS = 5_000;

/**
 * The field through which a job process tells the worker how many lines it dropped itself, on a
 * `log` message the worker does not print but adds to its own count.
 */
export const CHILD_DROPPED_LINES_FIELD = "troupeDroppedLogLines";

export interface LogLimits {
  linesPerSecond: number;
  lineBurst: number;
  bytesPerSecond: number;
  byteBurst: number;
}

export const DEFAULT_LOG_LIMITS: LogLimits = {
  linesPerSecond: LOG_LINES_PER_SECOND,
  lineBurst: LOG_LINE_BURST,
  bytesPerSecond: LOG_BYTES_PER_SECOND,
  byteBurst: LOG_BYTE_BURST,
};

/** One job's budget: a line passes when both the line and the byte bucket can pay for it. */
export class LogRateLimiter {
  readonly #lines: TokenBucket;
  readonly #bytes: TokenBucket;
  #dropped = 0;

  constructor(limits: LogLimits = DEFAULT_LOG_LIMITS, now: () => number = monotonicMs) {
    this.#lines = new TokenBucket(limits.linesPerSecond, limits.lineBurst, now);
    // A line longer than the byte burst could never pass; lines are truncated before they get here.
    this.#bytes = new TokenBucket(limits.bytesPerSecond, Math.max(limits.byteBurst, LOG_LINE_MAX_BYTES), now);
  }

  /** True when a line of `bytes` may be logged (and pays for it); false counts it as dropped. */
  admit(bytes: number): boolean {
    if (this.#lines.has(1) && this.#bytes.has(bytes)) {
      this.#lines.take(1);
      this.#bytes.take(bytes);
      return true;
    }
    this.#dropped++;
    return false;
  }

  /** Lines dropped since the last call. */
  takeDropped(): number {
    const dropped = this.#dropped;
    this.#dropped = 0;
    return dropped;
  }
}

/** `text` cut to at most `maxBytes` of UTF-8, and how many bytes were cut. */
export function truncateUtf8(text: string, maxBytes: number = LOG_LINE_MAX_BYTES): { text: string; cut: number } {
  // Fast path: even at 3 bytes per UTF-16 unit it fits.
  if (text.length * 3 <= maxBytes) return { text, cut: 0 };
  const bytes = Buffer.byteLength(text);
  if (bytes <= maxBytes) return { text, cut: 0 };
  // Cut the string before encoding: a 100 MB message must not be encoded whole.
  // A character split by the cut decodes as U+FFFD: leave it out whole.
  const head = Buffer.from(text.slice(0, maxBytes))
    .subarray(0, maxBytes)
    .toString("utf8")
    .replace(/\uFFFD$/, "");
  return { text: head, cut: bytes - Buffer.byteLength(head) };
}
