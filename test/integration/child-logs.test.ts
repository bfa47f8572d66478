import { once } from "node:events";
import { PassThrough } from "node:stream";
import { afterAll, describe, it } from "vitest";
import {
  LOG_BYTE_BURST,
  LOG_BYTES_PER_SECOND,
  LOG_LINE_BURST,
  LOG_LINE_MAX_BYTES,
  LOG_LINES_PER_SECOND,
  LogRateLimiter,
  truncateUtf8,
} from "../../src/job/log-limits.ts";
import { onBoundedLines } from "../../src/worker/bounded-lines.ts";
import { until } from "../support/wait.ts";
import { type InProcessWorker, type LogLine, startInProcessWorker } from "./helpers/in-process.ts";
import { sweepFile } from "./helpers/processes.ts";

afterAll(sweepFile);

/**
 * A job's log lines are rate-limited per job in the worker (and in the job process), so one job
 * cannot flood the worker's log (src/job/log-limits.ts).
 */

describe("the log budget", () => {
  it("lets a burst through, then the sustained rate, and counts what it drops", ({ expect }) => {
    let now = 0;
    const limiter = new LogRateLimiter(
      { linesPerSecond: 10, lineBurst: 5, bytesPerSecond: 1_000_000, byteBurst: 1_000_000 },
      () => now,
    );
    const admitted = (count: number) => Array.from({ length: count }, () => limiter.admit(10)).filter(Boolean).length;
    expect(admitted(8)).toBe(5);
    expect(limiter.takeDropped()).toBe(3);
    now += 500; // half a second: 5 more lines
    expect(admitted(8)).toBe(5);
    now += 10_000; // a long pause refills to the burst, not beyond
    expect(admitted(100)).toBe(5);
    expect(limiter.takeDropped()).toBe(3 + 95);
    expect(limiter.takeDropped()).toBe(0);
  });

  it("limits bytes too: a line passes only when both budgets can pay for it", ({ expect }) => {
    let now = 0;
    const limiter = new LogRateLimiter(
      { linesPerSecond: 1_000, lineBurst: 1_000, bytesPerSecond: 1_000, byteBurst: LOG_LINE_MAX_BYTES },
      () => now,
    );
    expect(limiter.admit(LOG_LINE_MAX_BYTES)).toBe(true);
    expect(limiter.admit(1)).toBe(false);
    now += 1_000;
    expect(limiter.admit(1_000)).toBe(true);
    expect(limiter.admit(1)).toBe(false);
    expect(limiter.takeDropped()).toBe(2);
  });

  it("truncates to whole UTF-8 characters and says how much it cut", ({ expect }) => {
    expect(truncateUtf8("short")).toEqual({ text: "short", cut: 0 });
    const long = "é".repeat(LOG_LINE_MAX_BYTES); // 2 bytes each
    const { text, cut } = truncateUtf8(long);
    expect(Buffer.byteLength(text)).toBe(LOG_LINE_MAX_BYTES);
    expect(text).toBe("é".repeat(LOG_LINE_MAX_BYTES / 2));
    expect(cut).toBe(LOG_LINE_MAX_BYTES);
    const odd = truncateUtf8(`x${long}`); // the cut falls inside a character: it is left out whole
    expect(Buffer.byteLength(odd.text)).toBe(LOG_LINE_MAX_BYTES - 1);
    expect(odd.cut).toBe(2 * LOG_LINE_MAX_BYTES + 1 - (LOG_LINE_MAX_BYTES - 1));
  });

  it("splits a stream into lines without buffering more than the maximum of any line", async ({ expect }) => {
    const stream = new PassThrough();
    const lines: { text: string; cut: number }[] = [];
    onBoundedLines(stream, 10, (line, cut) => lines.push({ text: line.toString(), cut }));
    stream.write("one\r\ntw");
    stream.write("o\n");
    // 5 MB without a newline, in pieces: only 10 bytes of it are ever kept
    for (let i = 0; i < 50; i++) stream.write("y".repeat(100_000));
    stream.write("\nlast");
    stream.end();
    await once(stream, "end");
    expect(lines).toEqual([
      { text: "one", cut: 0 },
      { text: "two", cut: 0 },
      { text: "yyyyyyyyyy", cut: 5_000_000 - 10 },
      { text: "last", cut: 0 },
    ]);
  });
});

const DROP_NOTICE = /^(\d+) log lines dropped from job (\S+) \(rate limit\)$/;

/**
 * Runs the floods-logs fixture in a job and returns what reached the worker's log: the job's flood
 * lines, its long line, the drop notices, and how long the job ran.
 */
async function flood(worker: InProcessWorker, jobId: string, metadata: Record<string, unknown>) {
  await worker.waitForIdle(1, 30_000);
  const assignedAt = performance.now();
  worker.registry.assign(jobId, metadata);
  const outcome = await worker.finishedJob(jobId, 60_000);
  const seconds = (performance.now() - assignedAt) / 1000;
  const ofJob = (l: LogLine) => l.jobId === jobId;
  const notices = () => worker.logs.filter((l) => ofJob(l) && DROP_NOTICE.test(l.msg));
  const dropped = () => notices().reduce((sum, l) => sum + (l.droppedLines as number), 0);
  const floodLines = worker.logs.filter((l) => ofJob(l) && l.msg.startsWith("flood "));
  const longLine = worker.logs.find((l) => ofJob(l) && l.msg.startsWith("long "));
  return { outcome, seconds, notices, dropped, floodLines, longLine };
}

/**
 * Writing 100,000 lines blocks the job's event loop for a while, and parsing them keeps the worker
 * (this process) busy: timeouts long enough that neither is mistaken for a hung job.
 */
const PATIENT = { ipcPongTimeout: 30, closeTimeout: 15 };

describe("a job that floods its log", { timeout: 90_000 }, () => {
  for (const via of ["stdout", "logger"] as const) {
    it(`through ${via}: the worker's log gets at most the budget and one drop notice; the job completes`, async (ctx) => {
      const { expect } = ctx;
      const worker = await startInProcessWorker(ctx, "floods-logs", PATIENT);
      const jobId = `job-flood-${via}`;
      const lines = 100_000;
      const result = await flood(worker, jobId, { via, lines });
      expect(result.outcome).toEqual({ jobId, status: "completed" });
      const received = result.floodLines.length;
      // a full burst passes (the bucket starts full), and no more than the rate allows since
      expect(received).toBeGreaterThanOrEqual(LOG_LINE_BURST / 2);
      expect(received).toBeLessThanOrEqual(LOG_LINE_BURST + Math.ceil(LOG_LINES_PER_SECOND * result.seconds));
      // every line is accounted for: logged, or counted in a notice (a few stray lines of the job
      // process itself, such as a loader warning, may be dropped and counted too)
      await until(() => received + result.dropped() >= lines, {
        label: "the drop notices to count every line",
        timeoutMs: 5_000,
      }).catch((error: Error) => {
        throw new Error(`${error.message}: ${received} logged, ${result.dropped()} dropped`);
      });
      expect(received + result.dropped()).toBeLessThanOrEqual(lines + 5);
      expect(result.notices().length).toBeLessThanOrEqual(1 + Math.floor(result.seconds / 5));
      expect(result.notices()[0]).toMatchObject({
        level: 40,
        msg: `${result.notices()[0]?.droppedLines} log lines dropped from job ${jobId} (rate limit)`,
      });
      // the 100 KiB line came through cut to the maximum, saying by how much
      expect(result.longLine).toBeDefined();
      expect(Buffer.byteLength(result.longLine?.msg ?? "")).toBeLessThanOrEqual(LOG_LINE_MAX_BYTES);
      expect(result.longLine?.truncatedBytes).toBeGreaterThan(100 * 1024 - LOG_LINE_MAX_BYTES);
    });
  }

  it("of big lines: the byte budget binds before the line budget", async (ctx) => {
    const { expect } = ctx;
    const worker = await startInProcessWorker(ctx, "floods-logs", PATIENT);
    const jobId = "job-flood-bytes";
    const lineBytes = 4 * 1024;
    const result = await flood(worker, jobId, { via: "stdout", lines: 5_000, lineBytes });
    expect(result.outcome).toEqual({ jobId, status: "completed" });
    // the long line (cut to 8 KiB) paid from the same budget
    const budget = LOG_BYTE_BURST + LOG_BYTES_PER_SECOND * result.seconds - LOG_LINE_MAX_BYTES;
    expect(result.floodLines.length).toBeGreaterThan(0);
    expect(result.floodLines.length).toBeLessThanOrEqual(Math.ceil(budget / lineBytes));
    expect(result.floodLines.length).toBeLessThan(LOG_LINE_BURST);
    await until(() => result.floodLines.length + result.dropped() >= 5_000, {
      label: "the drop notice",
      timeoutMs: 5_000,
    });
  });
});
