import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import type { SeedResult } from "./run.ts";
import type { ThreadReport, ThreadTask } from "./thread.ts";

/**
 * Runs seeds first..last spread over worker threads (one per core), and merges their reports.
 * vitest gives this 2-core machine one test worker, so the simulation brings its own parallelism.
 */
export async function runSeedsInThreads(first: number, last: number, threads = availableParallelism()) {
  const count = Math.max(1, Math.min(threads, last - first + 1));
  const reports = await Promise.all(
    Array.from({ length: count }, (_, i) => runThread({ first: first + i, last, stride: count })),
  );
  return {
    threads: count,
    seeds: reports.reduce((sum, r) => sum + r.seeds, 0),
    failures: reports.flatMap((r) => r.failures).sort((a, b) => a.seed - b.seed),
    settledAfterMs: reports.flatMap((r) => r.settledAfterMs).sort((a, b) => a - b),
    steps: reports.reduce((sum, r) => sum + r.steps, 0),
    cpuMs: reports.reduce((sum, r) => sum + r.cpuMs, 0),
  };
}

/**
 * Runs these seeds in a thread like the bulk run (with XState's production build, as in production:
 * vitest's own process loads the development build, which also warns on the console).
 */
export async function runInThread(seeds: number[], traced: boolean): Promise<SeedResult[]> {
  return (await runThread({ list: seeds, traced })).results;
}

function runThread(task: ThreadTask): Promise<ThreadReport> {
  return new Promise((resolve, reject) => {
    // No inherited flags: vitest runs with `--conditions development`, which would load XState's
    // development build (slower, and chatty about events to stopped actors) instead of production's.
    const worker = new Worker(new URL("./thread-entry.mjs", import.meta.url), { workerData: task, execArgv: [] });
    worker.once("message", (message: { ok: true; report: ThreadReport } | { ok: false; error: string }) => {
      if (message.ok) resolve(message.report);
      else reject(new Error(message.error));
      worker.terminate().catch(() => {});
    });
    worker.once("error", reject);
    worker.once("exit", (code) => {
      if (code !== 0) reject(new Error(`simulation thread exited with code ${code}`));
    });
  });
}
