import { describe, expect, it } from "vitest";
import { KNOWN_BUGS } from "../../support/sim/known-bugs.ts";
import { runInThread, runSeedsInThreads } from "../../support/sim/pool.ts";
import { replayCommand, type SeedResult } from "../../support/sim/run.ts";
import { LIVENESS_BOUND_MS } from "../../support/sim/timing.ts";

/**
 * The deterministic simulation of the whole cluster (test/support/sim/, docs/machines.md): 1–3
 * registry nodes running the real registry core, 1–6 workers running the real worker, slot, job and
 * connection machines on fake processes, a simulated network, Redis and node bus, and faults in all
 * of them, on one clock and one seeded PRNG. SIM_SEEDS sets how many seeds run (default 10,000, over
 * one worker thread per core); SIM_SEED=<n> replays one seed and prints its trace.
 */

const SEEDS = Number(process.env.SIM_SEEDS ?? 10_000);
const ONLY_SEED = process.env.SIM_SEED === undefined ? undefined : Number(process.env.SIM_SEED);

function describeFailure(result: SeedResult, traceLines: number): string {
  const trace = result.trace ?? [];
  return [
    `seed ${result.seed}: ${result.failure}`,
    `replay: ${replayCommand(result.seed)}`,
    ...trace.slice(-traceLines).map((line) => `  ${line}`),
  ].join("\n");
}

const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];

describe("cluster simulation", () => {
  if (ONLY_SEED !== undefined) {
    it(`replays seed ${ONLY_SEED}`, { timeout: 120_000 }, async () => {
      const [result] = (await runInThread([ONLY_SEED], true)) as [SeedResult];
      console.log((result.trace ?? []).join("\n"));
      const known = KNOWN_BUGS.find((bug) => bug.id === result.knownBug);
      if (known) console.log(`\nknown bug ${known.id}: ${known.title}`);
      expect(result.failure, describeFailure(result, 0)).toBeUndefined();
    });
    return;
  }

  it(`${SEEDS} seeds keep every invariant`, { timeout: 900_000 }, async () => {
    const started = performance.now();
    const run = await runSeedsInThreads(1, SEEDS);
    const seconds = (performance.now() - started) / 1000;
    const settled = run.settledAfterMs;
    console.log(
      `cluster simulation: ${run.seeds} seeds on ${run.threads} threads in ${seconds.toFixed(0)} s ` +
        `(${(run.cpuMs / run.seeds).toFixed(0)} ms of CPU and ${(run.steps / run.seeds).toFixed(0)} steps a seed); ` +
        `settled after the faults in p50 ${percentile(settled, 0.5)} ms, p99 ${percentile(settled, 0.99)} ms, ` +
        `max ${settled.at(-1)} ms (bound ${LIVENESS_BOUND_MS} ms)`,
    );
    for (const bug of KNOWN_BUGS) {
      const seeds = run.failures.filter((failure) => failure.knownBug === bug.id).map((failure) => failure.seed);
      if (seeds.length === 0) continue;
      console.log(
        `  known bug ${bug.id}: ${seeds.length} seeds (${seeds.slice(0, 5).join(", ")}${seeds.length > 5 ? ", …" : ""}); ` +
          `replay: ${replayCommand(seeds[0] as number)}`,
      );
    }
    const unknown = run.failures.filter((failure) => failure.knownBug === undefined);
    expect(run.seeds).toBe(SEEDS);
    if (unknown.length > 0) {
      expect.fail(
        `${unknown.length} of ${run.seeds} seeds broke an invariant:\n\n${unknown
          .slice(0, 3)
          .map((failure) => describeFailure(failure, 60))
          .join("\n\n")}${unknown.length > 3 ? `\n\n…and seeds ${unknown.slice(3, 23).map((f) => f.seed)}` : ""}`,
      );
    }
  });
});
