import { classify } from "./known-bugs.ts";
import { schedule } from "./scenario.ts";
import { LIVENESS_BOUND_MS } from "./timing.ts";
import { START_MS, World } from "./world.ts";

export interface SeedResult {
  seed: number;
  ok: boolean;
  failure?: string;
  /** The failure is a known bug of src/ (see known-bugs.ts): its id. */
  knownBug?: string;
  /** The replayed history (only when traced). */
  trace?: string[];
  /** Simulated milliseconds from the end of the faults until everything settled. */
  settledAfterMs?: number;
  steps: number;
  dispatches: number;
}

/** What a failing seed prints: the one command that replays it with its trace. */
export const replayCommand = (seed: number) => `SIM_SEED=${seed} npx vitest run test/sim/cluster/cluster.sim.test.ts`;

class Stop extends Error {}

/**
 * Runs one seed: the faults and requests of its fault phase, then calm until everything has settled
 * (or the liveness bound passes). Safety invariants are checked after every step.
 */
export async function runSeed(seed: number, tracing = false): Promise<SeedResult> {
  const world = new World(seed, tracing);
  let steps = 0;
  const afterStep = () => {
    steps++;
    world.checks.afterStep();
    if (world.violations.length > 0) throw new Stop();
  };
  const result = (failure?: string, settledAfterMs?: number): SeedResult => {
    const known = failure ? classify(world, failure) : undefined;
    return {
      seed,
      ok: failure === undefined,
      ...(failure ? { failure } : {}),
      ...(known ? { knownBug: known.id } : {}),
      ...(tracing ? { trace: [...world.traceLines, "--- state at the end ---", ...world.describeState()] } : {}),
      ...(settledAfterMs !== undefined ? { settledAfterMs } : {}),
      steps,
      dispatches: world.checks.ledger.size,
    };
  };
  try {
    schedule(world);
    const calmAt = START_MS + world.shape.faultPhaseMs;
    await world.clock.runUntil(calmAt, afterStep);
    const deadline = calmAt + LIVENESS_BOUND_MS;
    for (let t = calmAt + 250; ; t += 250) {
      await world.clock.runUntil(Math.min(t, deadline), afterStep);
      const why = world.unsettled();
      if (world.violations.length > 0) throw new Stop();
      if (!why) return result(undefined, world.clock.now() - calmAt);
      if (t >= deadline) {
        return result(`liveness: not settled ${LIVENESS_BOUND_MS} ms after the faults stopped: ${why}`);
      }
    }
  } catch (error) {
    if (error instanceof Stop) return result(world.violations.join("; "));
    return result(`the simulation threw: ${(error as Error).stack ?? String(error)}`);
  }
}
