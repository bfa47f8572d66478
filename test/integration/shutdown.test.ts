import { afterAll, describe, it } from "vitest";
import { startInProcessWorker } from "./helpers/in-process.ts";
import { sweepFile } from "./helpers/processes.ts";

afterAll(sweepFile);

/** Ending job processes that do not cooperate: closeTimeout, killTimeout, initializeTimeout. */
describe.concurrent("stopping job processes that do not cooperate", { timeout: 60_000 }, () => {
  it("a cancelled job whose process ignores SIGTERM is SIGKILLed after closeTimeout + killTimeout", async (ctx) => {
    const { expect } = ctx;
    const worker = await startInProcessWorker(ctx, "ignores-sigterm", { closeTimeout: 1, killTimeout: 0.5 });
    await worker.waitForIdle(1, 30_000);
    worker.registry.assign("job-stubborn");
    await worker.registry.waitForUpdate("job-stubborn", "running", 30_000);
    const pid = worker.pidOfJob("job-stubborn");
    const cancelledAt = Date.now();
    worker.registry.terminate("job-stubborn");
    const outcome = await worker.finishedJob("job-stubborn", 15_000);
    const elapsedMs = Date.now() - cancelledAt;
    expect(outcome).toEqual({ jobId: "job-stubborn", status: "cancelled", reason: "cancelled" });
    const slot = await worker.exited.waitFor((o) => o.jobId === "job-stubborn", 5_000, "the slot to exit");
    expect(slot).toMatchObject({ pid, stopReason: "cancelled", exit: { code: null, signal: "SIGKILL" } });
    // The shutdown request, then SIGTERM after closeTimeout (ignored), then SIGKILL after killTimeout.
    expect(worker.logs.find((l) => l.msg === "ignoring SIGTERM")).toMatchObject({ jobId: "job-stubborn", jobPid: pid });
    const signals = worker.logs
      .filter((l) => l.msg === "signalling job process group" && l.jobPid === pid)
      .map((l) => l.signal);
    expect(signals).toEqual(["SIGTERM", "SIGKILL"]);
    expect(elapsedMs).toBeGreaterThanOrEqual(1_400);
    expect(elapsedMs).toBeLessThan(1_500 + 5_000);
    expect(worker.registry.updates("job-stubborn").at(-1)).toEqual({
      jobId: "job-stubborn",
      status: "cancelled",
      reason: "cancelled",
    });
  });

  it("a job that ends but whose shutdown never finishes and ignores SIGTERM fails close_timeout, SIGKILLed", async (ctx) => {
    const { expect } = ctx;
    const worker = await startInProcessWorker(ctx, "ignores-sigterm", { closeTimeout: 1, killTimeout: 0.5 });
    await worker.waitForIdle(1, 30_000);
    worker.registry.assign("job-hangs-on-exit", { returnAfterMs: 50 });
    await worker.registry.waitForUpdate("job-hangs-on-exit", "running", 30_000);
    const runningAt = Date.now();
    const outcome = await worker.finishedJob("job-hangs-on-exit", 15_000);
    expect(outcome).toEqual({
      jobId: "job-hangs-on-exit",
      status: "failed",
      reason: "close_timeout",
      exitCode: null,
      signal: "SIGKILL",
    });
    expect(Date.now() - runningAt).toBeGreaterThanOrEqual(1_400);
    const slot = await worker.exited.waitFor((o) => o.jobId === "job-hangs-on-exit", 5_000, "the slot to exit");
    expect(slot.stopReason).toBe("close_timeout");
    expect(worker.registry.updates("job-hangs-on-exit").at(-1)).toEqual({
      jobId: "job-hangs-on-exit",
      status: "failed",
      reason: "close_timeout",
      exitCode: null,
      signal: "SIGKILL",
    });
  });

  it("a shutdown callback slower than closeTimeout gets the process killed: failed close_timeout", async (ctx) => {
    const { expect } = ctx;
    const worker = await startInProcessWorker(ctx, "slow-shutdown", { closeTimeout: 1, killTimeout: 0.5 });
    await worker.waitForIdle(1, 30_000);
    worker.registry.assign("job-slow-close", { delayMs: 50, shutdownMs: 10_000, callbackTimeout: 60 });
    const started = await worker.logs.waitFor(
      (l) => l.msg === "slow shutdown callback started" && l.jobId === "job-slow-close",
      30_000,
      "the slow shutdown callback to start",
    );
    expect(started.reason).toBe("entrypoint returned");
    const callbackAt = Date.now();
    const outcome = await worker.finishedJob("job-slow-close", 15_000);
    expect(outcome).toMatchObject({
      jobId: "job-slow-close",
      status: "failed",
      reason: "close_timeout",
      exitCode: null,
    });
    // No SIGTERM handler: SIGTERM after closeTimeout ends it (SIGKILL only if it had not).
    expect(outcome.signal).toBe("SIGTERM");
    const elapsedMs = Date.now() - callbackAt;
    expect(elapsedMs).toBeGreaterThanOrEqual(800);
    expect(elapsedMs).toBeLessThan(1_000 + 5_000);
    const metrics = (await worker.get("/metrics")).text;
    expect(metrics).toMatch(/troupe_jobs_ended_total\{status="failed",reason="close_timeout"\} 1/);
    expect(metrics).toMatch(/troupe_process_kills_total\{reason="close_timeout"\} 1/);
  });

  it("a prewarm that never finishes: killed at initializeTimeout, replaced after a backoff, pool degraded meanwhile", async (ctx) => {
    const { expect } = ctx;
    const worker = await startInProcessWorker(ctx, "prewarm-hangs", {
      maxProcesses: 1,
      numIdleProcesses: 1,
      initializeTimeout: 1,
      // equal jitter: the first backoff lasts 1.5 to 3 s
      spawnBackoffBase: 3,
      spawnBackoffMax: 3,
    });
    const spawnedAt = new Map<string, number>();
    const noteSpawns = () => {
      for (const id of Object.keys(worker.snapshot().context.slots))
        if (!spawnedAt.has(id)) spawnedAt.set(id, Date.now());
    };
    noteSpawns();
    worker.handle.actor.subscribe(noteSpawns);

    const first = await worker.exited.waitFor((o) => o.slotId === "slot.0", 15_000, "the first process to be killed");
    const firstExitAt = Date.now();
    expect(first).toMatchObject({ becameReady: false, stopReason: "initialize_timeout", jobId: null });
    expect(first.exit?.signal ?? first.exit?.code).toBeTruthy();
    // Backing off: degraded, not ready, no process at all.
    const status = (await worker.get("/worker")).json() as { degraded: boolean; ready: boolean; slots: unknown[] };
    expect(status.degraded).toBe(true);
    expect(status.ready).toBe(false);
    expect(status.slots).toEqual([]);
    expect((await worker.get("/readyz")).status).toBe(503);
    expect(worker.logs.find((l) => l.msg === "job process failed to warm; backing off")).toMatchObject({
      slotId: "slot.0",
      reason: "initialize_timeout",
    });

    // The replacement comes after the backoff, and meets the same end.
    const second = await worker.exited.waitFor((o) => o.slotId === "slot.1", 15_000, "the replacement to be killed");
    expect(second).toMatchObject({ becameReady: false, stopReason: "initialize_timeout" });
    const replacementSpawnedAt = spawnedAt.get("slot.1") as number;
    expect(replacementSpawnedAt - firstExitAt).toBeGreaterThanOrEqual(1_400);
    const metrics = (await worker.get("/metrics")).text;
    expect(metrics).toMatch(/troupe_process_kills_total\{reason="initialize_timeout"\} 2/);
    expect(worker.finished.items).toEqual([]);
  });
});
