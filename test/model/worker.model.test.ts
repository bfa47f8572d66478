import { describe, expect, it } from "vitest";
import { type AnyActorRef, assign, SimulatedClock, setup } from "xstate";
import { createTestModel } from "xstate/graph";
import { slotMachine } from "../../machines/slot.ts";
import { type WorkerInput, workerMachine } from "../../machines/worker.ts";
import { createTracedActor } from "../support/actor.ts";
import { FakeProcesses } from "../support/fake-process.ts";

const input: WorkerInput = {
  maxProcesses: 1,
  numIdleProcesses: 1,
  loadThreshold: 0.75,
  timing: { drainTimeoutMs: 5_000, spawnBackoffBaseMs: 100, spawnBackoffMaxMs: 1_000 },
  job: { offerTtlMs: 1_000, launchTimeoutMs: 2_000, maxDurationMs: 0 },
  slot: {
    timing: {
      initializeTimeoutMs: 60_000,
      closeTimeoutMs: 1_000,
      killGraceMs: 500,
      pingIntervalMs: 1_000,
      pongTimeoutMs: 1_000,
      memorySampleIntervalMs: 60_000,
      memoryWarnIntervalMs: 60_000,
    },
    memoryWarnMb: 0,
    memoryLimitMb: 0,
  },
  random: () => 0.5,
};

/**
 * The worker's lifecycle with one process slot: why it is full (a job or the load) is part of the
 * state, and the exit code the worker must end with is in the context.
 */
const workerModel = setup({
  types: { context: {} as { exitCode: number } },
  actions: { exit: assign({ exitCode: (_, params: { code: number }) => params.code }) },
}).createMachine({
  id: "workerModel",
  context: { exitCode: -1 },
  initial: "starting",
  states: {
    starting: {
      on: {
        WARM: "available",
        STOP: { target: "stopped", actions: { type: "exit", params: { code: 0 } } },
        LINK_FAILED: { target: "stopped", actions: { type: "exit", params: { code: 1 } } },
      },
    },
    available: {
      on: {
        RUN: "fullByJob",
        FILL: "fullByLoad",
        DRAIN: { target: "stopped", actions: { type: "exit", params: { code: 0 } } },
        LINK_FAILED: { target: "stopped", actions: { type: "exit", params: { code: 1 } } },
      },
    },
    fullByJob: {
      on: {
        JOB_DONE: "available",
        DRAIN: "drainingWithJob",
        STOP: { target: "stopped", actions: { type: "exit", params: { code: 2 } } },
      },
    },
    fullByLoad: {
      on: { UNLOAD: "available", DRAIN: { target: "stopped", actions: { type: "exit", params: { code: 0 } } } },
    },
    drainingWithJob: {
      on: {
        JOB_DONE: { target: "stopped", actions: { type: "exit", params: { code: 0 } } },
        DRAIN_TIMEOUT: { target: "stopped", actions: { type: "exit", params: { code: 2 } } },
        STOP: { target: "stopped", actions: { type: "exit", params: { code: 2 } } },
      },
    },
    stopped: { type: "final" },
  },
});

function fakeLink() {
  return setup({}).createMachine({
    initial: "up",
    states: { up: { on: { "test.finish": "gone" } }, gone: { type: "final" } },
  });
}

function createSut() {
  let warm = false;
  const fakes = new FakeProcesses({
    onStart: (p) => {
      p.emit({ type: "proc.spawned", pid: p.pid });
      if (warm) p.emit({ type: "proc.ready" });
    },
    onCommand: (p, command) => {
      if (command.type === "ping") p.emit({ type: "proc.pong" });
      if (command.type === "start_job") p.emit({ type: "proc.job_running" });
      if (command.type === "shutdown" || command.type === "signal") {
        p.emit({ type: "proc.done", result: { ok: true } });
        p.emit({ type: "proc.exit", code: 0, signal: null });
      }
    },
  });
  const clock = new SimulatedClock();
  const machine = workerMachine.provide({
    actors: { slot: slotMachine.provide({ actors: { process: fakes.logic } }), registryLink: fakeLink() as never },
  });
  const actor = createTracedActor(machine, { clock, input });
  actor.start();
  return {
    actor,
    clock,
    fakes,
    warm: () => {
      warm = true;
      for (const p of fakes.live) p.emit({ type: "proc.ready" });
    },
    link: () => actor.getSnapshot().children.registryLink as AnyActorRef,
  };
}

describe("worker machine (model-based)", () => {
  const paths = createTestModel(workerModel).getShortestPaths();
  it("covers every model state", () => {
    const reached = new Set(paths.flatMap((p) => p.steps.map((s) => s.state.value as string)));
    expect([...reached].sort()).toEqual(Object.keys(workerModel.states).sort());
  });
  for (const path of paths) {
    it(path.description, async () => {
      const sut = createSut();
      const lifecycle = () => (sut.actor.getSnapshot().value as { active: { lifecycle: unknown } }).active.lifecycle;
      const slotsAlive = () =>
        Object.keys(sut.actor.getSnapshot().children).filter((id) => id.startsWith("slot.")).length;
      await path.test({
        states: {
          starting: () => expect(lifecycle()).toBe("starting"),
          available: () => {
            expect(lifecycle()).toEqual({ running: "available" });
            expect(slotsAlive()).toBeLessThanOrEqual(1);
          },
          fullByJob: () => {
            expect(lifecycle()).toEqual({ running: "full" });
            expect(sut.actor.getSnapshot().context.jobs.j1?.phase).toBe("placed");
          },
          fullByLoad: () => expect(lifecycle()).toEqual({ running: "full" }),
          drainingWithJob: () => expect(lifecycle()).toBe("draining"),
          stopped: (state) => {
            expect(sut.actor.getSnapshot().status).toBe("done");
            expect(sut.actor.getSnapshot().output).toEqual({
              exitCode: (state.context as { exitCode: number }).exitCode,
            });
            expect(sut.fakes.live.filter((p) => !p.disposed)).toEqual([]);
          },
        },
        events: {
          WARM: () => sut.warm(),
          RUN: () => sut.actor.send({ type: "worker.run", spec: { jobId: "j1" } }),
          FILL: () => sut.actor.send({ type: "worker.load", value: 0.9 }),
          UNLOAD: () => sut.actor.send({ type: "worker.load", value: 0.1 }),
          JOB_DONE: () => {
            const p = sut.fakes.live.find((f) => f.count("start_job") > 0);
            p?.emit({ type: "proc.job_ending" });
            p?.emit({ type: "proc.done", result: { ok: true } });
            p?.emit({ type: "proc.exit", code: 0, signal: null });
          },
          DRAIN: () => sut.actor.send({ type: "worker.drain" }),
          DRAIN_TIMEOUT: () => sut.clock.increment(input.timing.drainTimeoutMs),
          STOP: () => sut.actor.send({ type: "worker.stop" }),
          LINK_FAILED: () => sut.link().send({ type: "test.finish" }),
        },
      });
    });
  }
});
