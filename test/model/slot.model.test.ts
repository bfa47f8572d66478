import { describe, expect, it } from "vitest";
import { setup } from "xstate";
import { createTestModel } from "xstate/graph";
import { type SlotOutput, slotMachine } from "../../machines/slot.ts";
import { FakeProcesses } from "../support/fake-process.ts";
import { hostChild } from "../support/host.ts";

const timing = {
  initializeTimeoutMs: 1_000,
  closeTimeoutMs: 600,
  killGraceMs: 200,
  pingIntervalMs: 100,
  pongTimeoutMs: 300,
  memorySampleIntervalMs: 10_000,
  memoryWarnIntervalMs: 60_000,
};

/** The slot as the worker sees it; timers and the process are abstract events here. */
const slotModel = setup({}).createMachine({
  id: "slotModel",
  initial: "spawning",
  states: {
    spawning: { on: { SPAWNED: "initializing", SPAWN_FAILED: "exited", STOP: "terminating" } },
    initializing: { on: { READY: "idle", INIT_TIMEOUT: "terminating", STOP: "stopping", EXIT: "exited" } },
    idle: {
      on: { ASSIGN: "busy", STOP: "stopping", PONG_TIMEOUT: "terminating", MEMORY_LIMIT: "stopping", EXIT: "exited" },
    },
    busy: {
      on: {
        JOB_ENDING: "ending",
        STOP: "stopping",
        PONG_TIMEOUT: "terminating",
        MEMORY_LIMIT: "stopping",
        EXIT: "exited",
      },
    },
    ending: { on: { CLOSE_TIMEOUT: "terminating", EXIT: "exited" } },
    stopping: { on: { CLOSE_TIMEOUT: "terminating", EXIT: "exited" } },
    terminating: { on: { KILL_GRACE: "killing", EXIT: "exited" } },
    killing: { on: { KILL_GRACE: "exited", EXIT: "exited" } },
    exited: { type: "final" },
  },
});

function createSut() {
  let deaf = false;
  const fakes = new FakeProcesses({
    onStart: () => {},
    onCommand: (p, command) => {
      if (command.type === "ping" && !deaf) p.emit({ type: "proc.pong" });
    },
  });
  const t = hostChild(slotMachine.provide({ actors: { process: fakes.logic } }), {
    slotId: "slot.0",
    timing,
    memoryWarnMb: 100,
    memoryLimitMb: 200,
  });
  const proc = () => fakes.bySlot("slot.0");
  return { ...t, proc, makeDeaf: () => (deaf = true) };
}

describe("slot machine (model-based)", () => {
  const paths = createTestModel(slotModel).getShortestPaths();
  it("covers every model state", () => {
    const reached = new Set(paths.flatMap((p) => p.steps.map((s) => s.state.value as string)));
    expect([...reached].sort()).toEqual(Object.keys(slotModel.states).sort());
  });
  for (const path of paths) {
    it(path.description, async () => {
      const sut = createSut();
      const value = () => sut.snapshot().value as Record<string, unknown> | string;
      const alive = (state: string) => () => expect(value()).toEqual({ alive: state });
      const work = (state: string) => () =>
        expect((value() as { alive: { ready: { work: string } } }).alive.ready.work).toBe(state);
      await path.test({
        states: {
          spawning: alive("spawning"),
          initializing: alive("initializing"),
          idle: work("idle"),
          busy: () => {
            work("busy")();
            expect(sut.proc().last("start_job")).toEqual({ type: "start_job", job: { jobId: "j1" } });
          },
          ending: alive("ending"),
          stopping: () => {
            alive("stopping")();
            expect(sut.proc().count("shutdown")).toBe(1);
          },
          terminating: () => {
            alive("terminating")();
            expect(sut.proc().last("signal")).toEqual({ type: "signal", signal: "SIGTERM" });
          },
          killing: () => {
            alive("killing")();
            expect(sut.proc().last("signal")).toEqual({ type: "signal", signal: "SIGKILL" });
          },
          exited: () => {
            expect(sut.snapshot().status).toBe("done");
            const output = sut.snapshot().output as SlotOutput;
            if (output.jobOutcome) expect(output.jobOutcome.status).not.toBe("completed");
          },
        },
        events: {
          SPAWNED: () => sut.proc().emit({ type: "proc.spawned", pid: 42 }),
          SPAWN_FAILED: () => sut.proc().emit({ type: "proc.spawn_failed", error: { name: "Error", message: "x" } }),
          READY: () => sut.proc().emit({ type: "proc.ready" }),
          INIT_TIMEOUT: () => sut.clock.increment(timing.initializeTimeoutMs),
          ASSIGN: () => sut.send({ type: "slot.assign", job: { jobId: "j1" } }),
          JOB_ENDING: () => sut.proc().emit({ type: "proc.job_ending" }),
          STOP: () => sut.send({ type: "slot.stop", reason: "cancelled" }),
          PONG_TIMEOUT: () => {
            sut.makeDeaf();
            sut.clock.increment(timing.pingIntervalMs);
            sut.clock.increment(timing.pongTimeoutMs);
          },
          MEMORY_LIMIT: () => sut.proc().emit({ type: "proc.memory", mb: 250 }),
          CLOSE_TIMEOUT: () => sut.clock.increment(timing.closeTimeoutMs),
          KILL_GRACE: () => sut.clock.increment(timing.killGraceMs),
          EXIT: () => sut.proc().emit({ type: "proc.exit", code: 9, signal: null }),
        },
      });
    });
  }
});
