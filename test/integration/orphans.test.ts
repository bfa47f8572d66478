import { afterAll, describe, it } from "vitest";
import { until } from "../support/wait.ts";
import { startInProcessWorker } from "./helpers/in-process.ts";
import { spawnWorker } from "./helpers/out-of-process.ts";
import { cpuTicks, isAlive, jobProcessesOf, sweepFile } from "./helpers/processes.ts";

afterAll(sweepFile);

/**
 * Nothing a job starts may outlive it: neither the job process nor the processes it starts itself
 * (the fixture starts `sleep 600` in its process group, as an agent would start a media tool). The
 * worker signals the job's whole process group when it kills one, and a job process exits by itself
 * when its worker dies (docs/process-model.md: "a worker killed with SIGKILL leaves no orphan").
 * Descendants that left the job's process group (setsid, detached): descendants.test.ts.
 */
describe.concurrent("no orphan processes", { timeout: 60_000 }, () => {
  it("a job killed as unresponsive takes its own subprocess along (the process group is signalled)", async (ctx) => {
    const { expect } = ctx;
    const worker = await startInProcessWorker(ctx, "spawns-subprocess", { ipcPingInterval: 0.2, ipcPongTimeout: 1 });
    await worker.waitForIdle(1, 30_000);
    worker.registry.assign("job-spin-sub", { mode: "spin" });
    const started = await worker.logs.waitFor((l) => l.msg === "job started", 30_000, "the job to start");
    const subprocess = started.subprocessPid as number;
    worker.scope.track(subprocess);
    expect(isAlive(subprocess)).toBe(true);
    expect(await worker.finishedJob("job-spin-sub", 15_000)).toMatchObject({
      status: "failed",
      reason: "unresponsive",
    });
    await until(() => !isAlive(subprocess), {
      label: `the job's subprocess ${subprocess} to be gone`,
      timeoutMs: 2_000,
    });
  });

  it("a job that completes leaves no subprocess of its own running", async (ctx) => {
    const { expect } = ctx;
    const worker = await startInProcessWorker(ctx, "spawns-subprocess");
    await worker.waitForIdle(1, 30_000);
    worker.registry.assign("job-done-sub", { mode: "return", delayMs: 100 });
    const started = await worker.logs.waitFor((l) => l.msg === "job started", 30_000, "the job to start");
    const subprocess = started.subprocessPid as number;
    worker.scope.track(subprocess);
    expect(await worker.finishedJob("job-done-sub", 15_000)).toEqual({ jobId: "job-done-sub", status: "completed" });
    await worker.exited.waitFor((o) => o.jobId === "job-done-sub", 5_000, "the job's process to exit");
    const gone = await until(() => !isAlive(subprocess), {
      label: "the subprocess to be gone",
      timeoutMs: 2_000,
    }).catch(() => false);
    expect(gone, `the completed job's subprocess ${subprocess} (sleep 600) is still running`).toBe(true);
  });

  it("the worker SIGKILLed: a job's own subprocess is gone within 2 s too", async (ctx) => {
    const { expect } = ctx;
    const worker = spawnWorker(ctx, "spawns-subprocess", { metadata: { mode: "wait" } });
    const started = await worker.line("job started", 30_000);
    const pids = [started.jobPid as number, started.subprocessPid as number];
    for (const pid of pids) expect(isAlive(pid)).toBe(true);
    process.kill(worker.pid, "SIGKILL");
    await worker.exited(5_000);
    const gone = await until(() => pids.every((pid) => !isAlive(pid)), {
      label: "the job's processes to go",
      timeoutMs: 2_000,
    }).catch(() => false);
    const label = (pid: number) => `${pid} (${pid === pids[0] ? "the job process" : "its sleep 600"})`;
    expect(gone, `still running after its worker was SIGKILLed: ${pids.filter(isAlive).map(label).join(", ")}`).toBe(
      true,
    );
  });

  it("the worker SIGKILLed: a job process with a blocked event loop is gone within 2 s too", async (ctx) => {
    const { expect } = ctx;
    // ipcPongTimeout long enough that the worker itself does not kill the spinning job first
    const worker = spawnWorker(ctx, "spins", { options: { ipcPongTimeout: 60 } });
    const started = await worker.line("job started", 30_000);
    const pid = started.jobPid as number;
    // Spinning for sure: it burnt 300 ms of CPU since it reported started (10 ms clock ticks).
    const ticks = cpuTicks(pid);
    await until(() => cpuTicks(pid) - ticks >= 30, { label: "the job process to spin", timeoutMs: 10_000 });
    process.kill(worker.pid, "SIGKILL");
    await worker.exited(5_000);
    const gone = await until(() => !isAlive(pid), { label: "the job process to go", timeoutMs: 2_000 }).catch(
      () => false,
    );
    expect(gone, `job process ${pid} (spinning) outlived its SIGKILLed worker`).toBe(true);
  });

  // Retried: each attempt keeps the 2 s bound, but on a CI box at load 20+ a starved process has
  // missed it once in a run (it never did on a quiet machine).
  it("the worker SIGKILLed while its job processes still boot: none of them survives", { retry: 2 }, async (ctx) => {
    const { expect } = ctx;
    // A prewarm that never finishes keeps a process busy warming (as loading a model would).
    const worker = spawnWorker(ctx, "prewarm-hangs", {
      options: { maxProcesses: 2, numIdleProcesses: 2, initializeTimeout: 30 },
    });
    await worker.port(30_000);
    // The pool forks its processes moments after "worker started"; their prewarm never finishes, so
    // they are still booting when the worker dies.
    const pids = await until(
      () => {
        const found = jobProcessesOf(worker.pid);
        return found.length === 2 ? found : undefined;
      },
      { label: "the pool's two job processes", timeoutMs: 10_000 },
    );
    expect(pids).toHaveLength(2);
    for (const pid of pids) worker.scope.track(pid);
    process.kill(worker.pid, "SIGKILL");
    await worker.exited(5_000);
    const gone = await until(() => pids.every((pid) => !isAlive(pid)), {
      label: "the job processes to go",
      timeoutMs: 2_000,
    }).catch(() => false);
    expect(gone, `job processes ${pids.filter(isAlive).join(", ")} outlived their SIGKILLed worker`).toBe(true);
  });
});
