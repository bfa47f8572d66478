import {
  CHILD_DROPPED_LINES_FIELD,
  LOG_DROP_NOTICE_INTERVAL_MS,
  LOG_LINE_MAX_BYTES,
  LogRateLimiter,
  truncateUtf8,
} from "../job/log-limits.ts";
import type { Logger } from "../observability/logger.ts";

type Level = "debug" | "info" | "warn" | "error";

/** Fields a job may not set on its lines: the worker's own tags, or pino's. */
const RESERVED_FIELDS = ["time", "pid", "hostname", "level", "msg", "slotId", "jobPid", "jobId"];

/**
 * Everything one job process logs passes here on its way to the worker's log: its ctx.logger lines
 * (IPC) and its stdout and stderr lines. Lines are truncated to LOG_LINE_MAX_BYTES and admitted
 * within the job's budget (src/job/log-limits.ts); the rest are counted, and one notice per
 * LOG_DROP_NOTICE_INTERVAL_MS says how many were dropped. `close()` reports what is still uncounted.
 */
export class JobLogGate {
  readonly #limiter = new LogRateLimiter();
  #droppedByChild = 0;
  #noticeTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly logger: Logger,
    private readonly jobId: () => string | undefined,
    private readonly slotId: string,
  ) {}

  /** A stdout or stderr line (already cut to LOG_LINE_MAX_BYTES by the line splitter). */
  streamLine(stream: "stdout" | "stderr", line: Buffer, cutBytes: number): void {
    if (!this.#limiter.admit(line.length)) {
      this.#scheduleNotice();
      return;
    }
    const fields = { jobId: this.jobId(), stream, ...(cutBytes > 0 ? { truncatedBytes: cutBytes } : {}) };
    this.logger[stream === "stdout" ? "info" : "warn"](fields, line.toString("utf8"));
  }

  /** A `log` message from the job process. */
  message(level: Level, msg: string, rawFields: Record<string, unknown> | undefined): void {
    const reported = rawFields?.[CHILD_DROPPED_LINES_FIELD];
    if (typeof reported === "number") {
      // the job process's own count of lines it dropped: added to ours, never printed
      if (Number.isSafeInteger(reported) && reported > 0) this.#droppedByChild += reported;
      this.#scheduleNotice();
      return;
    }
    const own: Record<string, unknown> = { ...rawFields };
    for (const name of RESERVED_FIELDS) delete own[name];
    const text = truncateUtf8(msg);
    const fieldsJson = Object.keys(own).length > 0 ? safeJson(own) : "";
    let fieldsBytes = fieldsJson === undefined ? Number.POSITIVE_INFINITY : Buffer.byteLength(fieldsJson);
    let fields: Record<string, unknown> = own;
    if (fieldsBytes > LOG_LINE_MAX_BYTES) {
      fields = { fieldsDropped: true };
      fieldsBytes = 0;
    }
    if (!this.#limiter.admit(Buffer.byteLength(text.text) + fieldsBytes)) {
      this.#scheduleNotice();
      return;
    }
    const tags = { ...fields, jobId: this.jobId(), ...(text.cut > 0 ? { truncatedBytes: text.cut } : {}) };
    this.logger[level](tags, text.text);
  }

  /** Reports drops not yet reported (the job process exited) and stops the notice timer. */
  close(): void {
    clearTimeout(this.#noticeTimer);
    this.#noticeTimer = undefined;
    this.#notice();
  }

  /** Something was dropped: the notice goes out at the end of this interval (or at close). */
  #scheduleNotice(): void {
    if (this.#noticeTimer) return;
    this.#noticeTimer = setTimeout(() => {
      this.#noticeTimer = undefined;
      this.#notice();
    }, LOG_DROP_NOTICE_INTERVAL_MS);
    // close() reports what is left; the timer must not keep a stopping worker alive
    this.#noticeTimer.unref();
  }

  #notice(): void {
    const dropped = this.#limiter.takeDropped() + this.#droppedByChild;
    this.#droppedByChild = 0;
    if (dropped === 0) return;
    const jobId = this.jobId();
    this.logger.warn(
      { jobId, droppedLines: dropped },
      `${dropped} log lines dropped from ${jobId ? `job ${jobId}` : `job process ${this.slotId}`} (rate limit)`,
    );
  }
}

function safeJson(value: unknown): string | undefined {
  try {
    return JSON.stringify(value);
  } catch {
    return undefined;
  }
}
