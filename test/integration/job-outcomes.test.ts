import { afterAll, describe, it } from "vitest";
import { startInProcessWorker } from "./helpers/in-process.ts";
import { isAlive, sweepFile } from "./helpers/processes.ts";

afterAll(sweepFile);

/**
 * How each way a job process can end maps to the job's outcome, with real job processes of fixture
 * agents, a worker in this process and a fake registry link. Each test has a worker of its own, so
 * they run concurrently.
 */
describe.concurrent("job outcomes with real job processes", { timeout: 60_000 }, () => {
  it("a job that returns completes; its logs carry jobId and jobPid; metadata reaches it", async (ctx) => {
    const { expect } = ctx;
    const worker = await startInProcessWorker(ctx, "completes", { numIdleProcesses: 1 });
    await worker.waitForIdle(1, 30_000);
    worker.registry.assign("job-ok", { delayMs: 100, echo: "hello", n: 7 });
    await worker.registry.waitForUpdate("job-ok", "running", 30_000);
    const pid = worker.pidOfJob("job-ok");
    expect(pid).toBeTypeOf("number");
    const outcome = await worker.finishedJob("job-ok", 15_000);
    expect(outcome).toEqual({ jobId: "job-ok", status: "completed" });
    expect(worker.registry.updates("job-ok")).toEqual([
      { jobId: "job-ok", status: "running" },
      { jobId: "job-ok", status: "completed" },
    ]);

    const started = worker.logs.find((l) => l.msg === "job started");
    expect(started).toMatchObject({ jobId: "job-ok", jobPid: pid, metadata: { delayMs: 100, echo: "hello", n: 7 } });
    expect(started?.slotId).toMatch(/^slot\.\d+$/);
    const echoed = worker.logs.find((l) => l.msg === "job finishing");
    expect(echoed).toMatchObject({ jobId: "job-ok", jobPid: pid, echo: { delayMs: 100, echo: "hello", n: 7 } });
    const stdout = worker.logs.find((l) => l.stream === "stdout");
    expect(stdout).toMatchObject({ jobId: "job-ok", jobPid: pid, msg: "stdout line from job-ok" });
    expect(worker.logs.find((l) => l.msg === "shutdown callback ran")).toMatchObject({
      jobId: "job-ok",
      jobPid: pid,
      reason: "entrypoint returned",
    });

    const slot = await worker.exited.waitFor((o) => o.jobId === "job-ok", 5_000, "the job's slot to exit");
    expect(slot).toMatchObject({ pid, stopReason: null, exit: { code: 0, signal: null }, exitConfirmed: true });
    expect(isAlive(pid as number)).toBe(false);
  });

  it("an entrypoint that throws fails the job with entrypoint_error and the error's message", async (ctx) => {
    const { expect } = ctx;
    const worker = await startInProcessWorker(ctx, "throws");
    await worker.waitForIdle(1, 30_000);
    worker.registry.assign("job-throws", { tag: "tag-1" });
    const outcome = await worker.finishedJob("job-throws", 30_000);
    expect(outcome).toMatchObject({
      jobId: "job-throws",
      status: "failed",
      reason: "entrypoint_error",
      error: { name: "Error", message: "boom tag-1" },
      exitCode: 1,
      signal: null,
    });
    expect(worker.registry.updates("job-throws").at(-1)).toMatchObject({
      status: "failed",
      reason: "entrypoint_error",
      error: { message: "boom tag-1" },
    });
  });

  it("a job process that calls process.exit(3) fails the job as crashed with exit code 3", async (ctx) => {
    const { expect } = ctx;
    const worker = await startInProcessWorker(ctx, "exits");
    await worker.waitForIdle(1, 30_000);
    worker.registry.assign("job-exit", { exitCode: 3 });
    const outcome = await worker.finishedJob("job-exit", 30_000);
    expect(outcome).toEqual({ jobId: "job-exit", status: "failed", reason: "crashed", exitCode: 3, signal: null });
    const slot = await worker.exited.waitFor((o) => o.jobId === "job-exit", 5_000, "the slot to exit");
    expect(slot).toMatchObject({ stopReason: null, exit: { code: 3, signal: null } });
    expect(worker.registry.updates("job-exit").at(-1)).toEqual({
      jobId: "job-exit",
      status: "failed",
      reason: "crashed",
      exitCode: 3,
      signal: null,
    });
  });

  it("a job process SIGKILLed from outside fails the job as crashed with signal SIGKILL", async (ctx) => {
    const { expect } = ctx;
    const worker = await startInProcessWorker(ctx, "waits-forever");
    await worker.waitForIdle(1, 30_000);
    worker.registry.assign("job-killed");
    await worker.registry.waitForUpdate("job-killed", "running", 30_000);
    const pid = worker.pidOfJob("job-killed");
    expect(pid).toBeTypeOf("number");
    process.kill(pid as number, "SIGKILL");
    const outcome = await worker.finishedJob("job-killed", 15_000);
    expect(outcome).toEqual({
      jobId: "job-killed",
      status: "failed",
      reason: "crashed",
      exitCode: null,
      signal: "SIGKILL",
    });
    expect(worker.registry.updates("job-killed").at(-1)).toEqual({
      jobId: "job-killed",
      status: "failed",
      reason: "crashed",
      exitCode: null,
      signal: "SIGKILL",
    });
  });

  it("a job process that blocks its event loop is killed as unresponsive within ping interval + pong timeout", async (ctx) => {
    const { expect } = ctx;
    const worker = await startInProcessWorker(ctx, "spins", { ipcPingInterval: 0.2, ipcPongTimeout: 1 });
    await worker.waitForIdle(1, 30_000);
    worker.registry.assign("job-spins");
    await worker.logs.waitFor((l) => l.msg === "job started" && l.jobId === "job-spins", 30_000, "the job to start");
    const blockedAt = Date.now();
    const outcome = await worker.finishedJob("job-spins", 15_000);
    const elapsedMs = Date.now() - blockedAt;
    expect(outcome).toMatchObject({ jobId: "job-spins", status: "failed", reason: "unresponsive", exitCode: null });
    // SIGTERM ends a process whose JavaScript never runs again; SIGKILL would follow after killTimeout.
    expect(["SIGTERM", "SIGKILL"]).toContain(outcome.signal);
    // Detection takes the pong timeout (1 s) after a ping (every 0.2 s); then SIGTERM, at worst SIGKILL
    // after killTimeout (0.5 s). The upper bound leaves room for a loaded machine's scheduling.
    expect(elapsedMs).toBeGreaterThanOrEqual(700);
    expect(elapsedMs).toBeLessThan(200 + 1_000 + 500 + 3_000);
    const slot = await worker.exited.waitFor((o) => o.jobId === "job-spins", 5_000, "the slot to exit");
    expect(slot.stopReason).toBe("unresponsive");
    expect((await worker.get("/metrics")).text).toMatch(/troupe_process_kills_total\{reason="unresponsive"\} 1/);
  });

  it("a job past memoryLimitMb is stopped as memory_limit; the worker keeps serving and re-warms", async (ctx) => {
    const { expect } = ctx;
    const worker = await startInProcessWorker(ctx, "allocates", {
      maxProcesses: 1,
      numIdleProcesses: 1,
      memoryWarnMb: 150,
      memoryLimitMb: 250,
      memorySampleInterval: 0.1,
    });
    const warnings: { mb: number; jobId: string | null }[] = [];
    worker.handle.actor.on("memory.warning", (event) => warnings.push(event));
    await worker.waitForIdle(1, 30_000);
    const firstSlot = worker.idleSlotIds()[0];
    worker.registry.assign("job-hog", { stepMb: 20, intervalMs: 50, maxMb: 600 });
    const outcome = await worker.finishedJob("job-hog", 30_000);
    expect(outcome).toMatchObject({ jobId: "job-hog", status: "failed", reason: "memory_limit" });
    const hogSlot = await worker.exited.waitFor((o) => o.jobId === "job-hog", 5_000, "the hog's slot to exit");
    expect(hogSlot.slotId).toBe(firstSlot);
    expect(hogSlot.stopReason).toBe("memory_limit");
    expect(warnings.some((w) => w.jobId === "job-hog" && w.mb >= 150)).toBe(true);
    const allocated = worker.logs.find((l) => l.msg === "allocated" && l.jobId === "job-hog");
    expect(allocated, "the job was stopped before it reached 600 MB").toBeUndefined();

    // The pool warms a new process and the next job runs and completes on it.
    await worker.waitForIdle(1, 30_000);
    const secondSlot = worker.idleSlotIds()[0];
    expect(secondSlot).not.toBe(firstSlot);
    worker.registry.assign("job-small", { stepMb: 10, maxMb: 20, holdMs: 50 });
    expect(await worker.finishedJob("job-small", 30_000)).toEqual({ jobId: "job-small", status: "completed" });
    // ... and the pool warms again after it.
    await worker.waitForWorker(
      () => worker.idleSlotIds().some((id) => id !== firstSlot && id !== secondSlot),
      30_000,
      "a third warm process",
    );
    const metrics = (await worker.get("/metrics")).text;
    expect(metrics).toMatch(/troupe_jobs_ended_total\{status="failed",reason="memory_limit"\} 1/);
    expect(metrics).toMatch(/troupe_jobs_ended_total\{status="completed",reason=""\} 1/);
    expect(metrics).toMatch(/troupe_process_kills_total\{reason="memory_limit"\} 1/);
  });
});
