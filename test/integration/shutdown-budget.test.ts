import { afterAll, describe, it } from "vitest";
import { startInProcessWorker } from "./helpers/in-process.ts";
import { sweepFile } from "./helpers/processes.ts";

afterAll(sweepFile);

/** Blocks this process's event loop (the in-process worker's) for `ms`, as a burst of work would. */
function busy(ms: number): void {
  const until = Date.now() + ms;
  while (Date.now() < until) {}
}

/**
 * closeTimeout is the whole budget of a job's ending: a shutdown callback that overruns it is a kill
 * (failed close_timeout), never a success, however busy the worker is when the job starts ending.
 * Not concurrent: the test blocks the event loop it shares with the worker.
 */
describe("the closeTimeout budget of a job's ending", { timeout: 60_000 }, () => {
  it("a shutdown callback (default deadline) overrunning closeTimeout is not reported completed when the worker is briefly busy", async (ctx) => {
    const { expect } = ctx;
    const worker = await startInProcessWorker(ctx, "slow-shutdown", { closeTimeout: 1, killTimeout: 0.5 });
    await worker.waitForIdle(1, 30_000);
    worker.registry.assign("job-overrun", { delayMs: 50, shutdownMs: 10_000 });
    await worker.logs.waitFor((l) => l.msg === "job started" && l.jobId === "job-overrun", 30_000, "the job to start");
    // The job returns 50 ms from now and its 10 s shutdown callback starts; the worker notices 400 ms late.
    busy(400);
    const outcome = await worker.finishedJob("job-overrun", 15_000);
    const cutShort = worker.logs.find((l) => l.msg === "shutdown callbacks did not all finish");
    expect(
      outcome,
      `a 10 s shutdown callback with closeTimeout 1 s ended as ${JSON.stringify(outcome)}; the job process ${
        cutShort ? `cut the callback short itself (${JSON.stringify({ timedOut: cutShort.timedOut })})` : "was killed"
      }`,
    ).toMatchObject({ jobId: "job-overrun", status: "failed", reason: "close_timeout" });
  });
});
