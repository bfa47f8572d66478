import { Writable } from "node:stream";
import { SimulatedClock } from "xstate";
import { createLogger } from "../../src/observability/logger.ts";
import type { Options } from "../../src/options.ts";
import { createWorkerActor } from "../../src/worker/worker-actor.ts";
import { cooperativeBehaviour, FakeProcesses } from "./fake-process.ts";

/** A logger whose JSON lines are kept in memory, parsed. */
export function memoryLogger(level: "DEBUG" | "INFO" = "DEBUG") {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk, _encoding, done) {
      for (const line of String(chunk).split("\n").filter(Boolean)) lines.push(JSON.parse(line));
      done();
    },
  });
  return { logger: createLogger(level, stream), lines };
}

/**
 * Runs one job on a worker with fake processes to the worker's end, on a simulated clock: what the
 * worker's `inspect` option sees and logs from a whole life.
 */
export async function runOneJob(options: Options, level: "DEBUG" | "INFO" = "DEBUG") {
  const { logger, lines } = memoryLogger(level);
  const fakes = new FakeProcesses(cooperativeBehaviour());
  const clock = new SimulatedClock();
  const actor = createWorkerActor(options, { process: fakes.logic }, { logger, clock, random: () => 0.5 });
  actor.start();
  actor.send({ type: "worker.run", spec: { jobId: "j1" } });
  clock.increment(1_000);
  actor.send({ type: "worker.stop" });
  clock.increment(120_000);
  await new Promise((resolve) => setImmediate(resolve));
  return { actor, lines };
}
