import { parentPort, workerData } from "node:worker_threads";
import { runSeed, type SeedResult } from "./run.ts";

/** A thread's share: seeds first..last, every `stride`-th; or a list of seeds, each result returned. */
export type ThreadTask = { first: number; last: number; stride: number } | { list: number[]; traced: boolean };

export interface ThreadReport {
  seeds: number;
  failures: SeedResult[];
  /** The results of a list. */
  results: SeedResult[];
  settledAfterMs: number[];
  steps: number;
  cpuMs: number;
}

/** How many failing seeds a thread runs again with their trace (more would only repeat themselves). */
const TRACED_FAILURES = 20;

/**
 * Runs its share of the seeds; a failing seed is run again with its trace (the same history, as
 * everything in it is seeded), and the report carries it.
 */
async function main(task: ThreadTask): Promise<ThreadReport> {
  const started = process.cpuUsage();
  const report: ThreadReport = { seeds: 0, failures: [], results: [], settledAfterMs: [], steps: 0, cpuMs: 0 };
  if ("list" in task) {
    for (const seed of task.list) report.results.push(await runSeed(seed, task.traced));
  } else {
    for (let seed = task.first; seed <= task.last; seed += task.stride) {
      const result = await runSeed(seed);
      report.seeds++;
      report.steps += result.steps;
      if (result.settledAfterMs !== undefined) report.settledAfterMs.push(result.settledAfterMs);
      if (result.ok) continue;
      const unknown = report.failures.filter((failure) => !failure.knownBug).length;
      report.failures.push(!result.knownBug && unknown < TRACED_FAILURES ? await runSeed(seed, true) : result);
    }
  }
  const used = process.cpuUsage(started);
  report.cpuMs = (used.user + used.system) / 1000;
  return report;
}

const port = parentPort;
if (port) {
  main(workerData as ThreadTask).then(
    (report) => port.postMessage({ ok: true, report }),
    (error: Error) => port.postMessage({ ok: false, error: error.stack ?? String(error) }),
  );
}
