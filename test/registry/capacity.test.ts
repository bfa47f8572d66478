import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { registryInternals } from "../../src/registry/server.ts";
import { until } from "../support/wait.ts";
import {
  closeRegistries,
  dispatch,
  ProcessGuard,
  readRunLog,
  startInProcessWorker,
  startRegistry,
  stopInProcessWorker,
  stopInProcessWorkers,
  tempDir,
  waitAvailableAgent,
} from "./helpers.ts";

const guard = new ProcessGuard();
const temp = tempDir();

afterEach(async () => {
  await stopInProcessWorkers();
  await closeRegistries();
  await guard.killAll();
});

afterAll(() => temp.remove());

describe("worker capacity", () => {
  it("a worker with maxProcesses 4 and the default loadThreshold takes 4 concurrent jobs, and not a fifth", {
    timeout: 60_000,
  }, async () => {
    const r = await startRegistry({
      offerTimeoutMs: 3_000,
      runningTimeoutMs: 30_000,
      dispatchTimeoutMs: 40_000,
      pingIntervalMs: 1_000,
      pongTimeoutMs: 5_000,
    });
    // Default loadThreshold (0.75). The measured load is pinned at 0 (loadFn) so the box's CPU use
    // cannot make the worker full: only the job cap counts.
    // Four warm processes, so the jobs need no fork (a slow one on a busy box could miss launchTimeout).
    const worker = await startInProcessWorker(r.url, {
      agentId: "four",
      maxProcesses: 4,
      numIdleProcesses: 4,
      initializeTimeout: 30,
      launchTimeout: 30,
    });
    expect(worker.actor.getSnapshot().context.loadThreshold).toBe(0.75);
    const workerId = await waitAvailableAgent(r, "four", 40_000);
    const runLog = join(temp.dir, "four.jsonl");
    const release = join(temp.dir, "four.release");

    const jobs = await Promise.all(
      [1, 2, 3, 4].map((n) => dispatch(r, { agent_name: "four", metadata: { n, releaseFile: release, runLog } })),
    );
    for (const job of jobs) await r.store.until(job.id, (rec) => rec.status === "running", 30_000, "running");
    const runs = await until(
      () => {
        const seen = readRunLog(runLog);
        return seen.length === 4 ? seen : undefined;
      },
      { label: "all four entrypoints to run" },
    );
    // Four at once, each in its own process, all on this one worker.
    expect(new Set(runs.map((run) => run.pid)).size).toBe(4);
    for (const job of jobs) expect((await r.store.get(job.id))?.workerId).toBe(workerId);

    // Full by the job cap only: the load it reports is the measured load.
    const session = registryInternals(r.registry).core.directory.get(workerId);
    await until(() => session?.context.jobCount === 4, { label: "the registry to see four jobs" });
    expect(session?.context.load).toBe(0);
    expect(session?.available).toBe(false);
    expect(worker.actor.getSnapshot().matches({ active: { lifecycle: { running: "full" } } })).toBe(true);

    // A fifth waits for a free process, then runs on the same worker once the first four end.
    const fifth = await dispatch(r, { agent_name: "four", metadata: { n: 5, holdMs: 1, runLog } });
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect((await r.store.get(fifth.id))?.status).not.toBe("running");
    expect(readRunLog(runLog)).toHaveLength(4);
    writeFileSync(release, "");
    for (const job of [...jobs, fifth]) {
      expect(await r.store.untilFinal(job.id, 30_000)).toMatchObject({ status: "completed", workerId });
    }

    expect(await stopInProcessWorker(worker)).toBe(0);
    expect(await guard.leftoversAfterExit()).toEqual([]);
  });
});
