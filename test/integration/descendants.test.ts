import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, type ExpectStatic, it } from "vitest";
import { until } from "../support/wait.ts";
import { type InProcessWorker, type LogLine, startInProcessWorker } from "./helpers/in-process.ts";
import { spawnWorker } from "./helpers/out-of-process.ts";
import { isAlive, sweepFile } from "./helpers/processes.ts";

afterAll(sweepFile);

/**
 * A job's descendants die with it, whatever session or process group they moved to (DESIGN.md §1,
 * principle 7). The fixture starts `setsid sleep 1000`, a `detached: true` sleep and a detached sleep
 * with a cleared environment, and reports their pids once all three left its process group, so the
 * process-group kill alone cannot reach them. Each test checks, by pid and start time, that they are
 * gone within 2 s of the job's end, however it ended.
 */

/** Field 22 of /proc/<pid>/stat: with the pid it names one process, even if the pid is reused. */
function startTimeOf(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

interface Grandchild {
  pid: number;
  startTime: string | undefined;
}

function grandchildrenOf(started: LogLine): Grandchild[] {
  const pids = started.grandchildPids as number[];
  return pids.map((pid) => ({ pid, startTime: startTimeOf(pid) }));
}

/** Still the same process, and not a zombie. */
const stillRunning = (g: Grandchild) => isAlive(g.pid) && startTimeOf(g.pid) === g.startTime;

async function expectGoneWithin2s(grandchildren: Grandchild[], expect: ExpectStatic) {
  const gone = await until(() => !grandchildren.some(stillRunning), {
    label: "the grandchildren to be gone",
    timeoutMs: 2_000,
  }).catch(() => false);
  const left = grandchildren.filter(stillRunning).map((g) => g.pid);
  expect(gone, `grandchildren still running 2 s after the job ended: ${left.join(", ")}`).toBe(true);
}

async function startedJob(worker: InProcessWorker, jobId: string, metadata: Record<string, unknown>) {
  await worker.waitForIdle(1, 30_000);
  worker.registry.assign(jobId, metadata);
  const started = await worker.logs.waitFor(
    (l) => l.msg === "job started" && l.jobId === jobId,
    30_000,
    `job ${jobId} to start`,
  );
  const grandchildren = grandchildrenOf(started);
  for (const { pid } of grandchildren) worker.scope.track(pid);
  return grandchildren;
}

describe.concurrent("a job's descendants die with it", { timeout: 60_000 }, () => {
  it("when the job ends normally", async (ctx) => {
    const { expect } = ctx;
    const worker = await startInProcessWorker(ctx, "spawns-detached");
    const dir = mkdtempSync(join(tmpdir(), "troupe-descendants-"));
    ctx.onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    const releaseFile = join(dir, "release");
    const grandchildren = await startedJob(worker, "job-detached-done", { mode: "return", releaseFile });
    expect(grandchildren).toHaveLength(3);
    expect(grandchildren.every(stillRunning)).toBe(true);
    writeFileSync(releaseFile, "");
    expect(await worker.finishedJob("job-detached-done", 15_000)).toEqual({
      jobId: "job-detached-done",
      status: "completed",
    });
    await expectGoneWithin2s(grandchildren, expect);
    // The job process killed them itself as it ended, and said so.
    const notice = await worker.logs.waitFor(
      (l) => l.jobId === "job-detached-done" && typeof l.killed === "number",
      2_000,
      "the kill notice",
    );
    expect(notice.killed).toBe(3);
    expect(notice.msg).toContain("job ended: entrypoint returned");
  });

  it("when the job is cancelled", async (ctx) => {
    const { expect } = ctx;
    const worker = await startInProcessWorker(ctx, "spawns-detached");
    const grandchildren = await startedJob(worker, "job-detached-cancel", { mode: "wait" });
    expect(grandchildren.every(stillRunning)).toBe(true);
    worker.registry.terminate("job-detached-cancel");
    expect(await worker.finishedJob("job-detached-cancel", 15_000)).toMatchObject({ status: "cancelled" });
    await expectGoneWithin2s(grandchildren, expect);
  });

  it("when the worker kills the job (unresponsive): the worker finds them after the exit", async (ctx) => {
    const { expect } = ctx;
    const worker = await startInProcessWorker(ctx, "spawns-detached", { ipcPingInterval: 0.2, ipcPongTimeout: 1 });
    const grandchildren = await startedJob(worker, "job-detached-spin", { mode: "spin" });
    expect(grandchildren.every(stillRunning)).toBe(true);
    expect(await worker.finishedJob("job-detached-spin", 15_000)).toMatchObject({
      status: "failed",
      reason: "unresponsive",
    });
    await expectGoneWithin2s(grandchildren, expect);
    // A spinning job process cannot clean up: the worker's own sweep did, and logged it.
    const notice = await worker.logs.waitFor(
      (l) => l.jobId === "job-detached-spin" && typeof l.killed === "number",
      2_000,
      "the worker's kill notice",
    );
    expect(notice).toMatchObject({ killed: 3, level: 40 });
    expect(notice.msg).toMatch(
      /^killed 3 descendant process\(es\) of job job-detached-spin that left its process group/,
    );
  });

  // Retried: each attempt keeps the 2 s bound, but on a CI box at load 20+ the starved job process
  // has missed it once in a run (it never did on a quiet machine).
  it("when the worker is SIGKILLed mid-job: the job process or the orphan guardian kills them", {
    retry: 2,
  }, async (ctx) => {
    const { expect } = ctx;
    const worker = spawnWorker(ctx, "spawns-detached", { metadata: { mode: "wait" } });
    const started = await worker.line("job started", 30_000);
    const grandchildren = grandchildrenOf(started);
    for (const { pid } of grandchildren) worker.scope.track(pid);
    const jobPid = started.jobPid as number;
    expect(grandchildren.every(stillRunning)).toBe(true);
    process.kill(worker.pid, "SIGKILL");
    await worker.exited(5_000);
    await expectGoneWithin2s([...grandchildren, { pid: jobPid, startTime: startTimeOf(jobPid) }], expect);
  });
});
