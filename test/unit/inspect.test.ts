import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { SimulatedClock } from "xstate";
import { createLogger } from "../../src/observability/logger.ts";
import { Options } from "../../src/options.ts";
import { createWorkerActor } from "../../src/worker/worker-actor.ts";
import { cooperativeBehaviour, FakeProcesses } from "../support/fake-process.ts";

function memoryLogger(level: "DEBUG" | "INFO") {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk, _encoding, done) {
      for (const line of String(chunk).split("\n").filter(Boolean)) lines.push(JSON.parse(line));
      done();
    },
  });
  return { logger: createLogger(level, stream), lines };
}

async function runWorker(options: Options, level: "DEBUG" | "INFO") {
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

describe("inspect option", () => {
  it("logs every transition with actor id, from, event and to at debug level", async () => {
    const { actor, lines } = await runWorker(new Options({ inspect: true, logLevel: "DEBUG" }, {}), "DEBUG");
    expect(actor.getSnapshot().status).toBe("done");
    const transitions = lines.filter((l) => l.msg === "transition");
    expect(transitions.length).toBeGreaterThan(5);
    for (const t of transitions) {
      expect(t.level).toBe(20);
      expect(typeof t.actor).toBe("string");
      expect(typeof t.event).toBe("string");
      expect(typeof t.to).toBe("string");
    }
    const worker = transitions.filter((t) => t.actor === "worker");
    expect(worker.some((t) => t.from === null && String(t.to).includes("lifecycle.starting"))).toBe(true);
    expect(worker.some((t) => t.event === "worker.stop" && String(t.to).includes("lifecycle.stopping"))).toBe(true);
    expect(worker.at(-1)?.to).toBe("stopped");
    const slot = transitions.filter((t) => t.actor === "slot.0");
    expect(slot.some((t) => t.event === "slot.assign" && String(t.to).includes("work.busy"))).toBe(true);
    expect(slot.at(-1)?.to).toBe("exited");
    const job = transitions.filter((t) => t.actor === "job.j1");
    expect(job.map((t) => t.to)).toContain("running");
  });

  it("logs nothing when inspect is off", async () => {
    const { lines } = await runWorker(new Options({ inspect: false, logLevel: "DEBUG" }, {}), "DEBUG");
    expect(lines.filter((l) => l.msg === "transition")).toEqual([]);
  });

  it("logs nothing below debug level even when inspect is on", async () => {
    const { lines } = await runWorker(new Options({ inspect: true }, {}), "INFO");
    expect(lines.filter((l) => l.msg === "transition")).toEqual([]);
  });
});
