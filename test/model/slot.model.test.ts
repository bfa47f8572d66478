import { describe, expect, it } from "vitest";
import { assign, type SnapshotFrom, setup } from "xstate";
import { createTestModel } from "xstate/graph";
import type { StopReason } from "../../machines/shared.ts";
import { type SlotOutput, slotMachine } from "../../machines/slot.ts";
import { FakeProcesses } from "../support/fake-process.ts";
import { hostChild } from "../support/host.ts";
import { modelTransitions } from "../support/model-transitions.ts";

const timing = {
  initializeTimeoutMs: 1_000,
  closeTimeoutMs: 600,
  killGraceMs: 200,
  pingIntervalMs: 100,
  pongTimeoutMs: 300,
  memorySampleIntervalMs: 10_000,
  memoryWarnIntervalMs: 60_000,
};

interface ModelContext {
  /** Why the slot is going down (its first reason), as its output must say. */
  stopReason: StopReason | null;
  /** The slot took a job: the output carries its outcome. */
  job: boolean;
}

const because = (reason: StopReason) => ({ type: "stopBecause", params: { reason } }) as const;
/** The worker's stop for a job whose lease ran out: SIGKILL at once, whatever the slot was doing. */
const LEASE_KILL = { target: "killing", actions: because("lease_lapsed") } as const;

/**
 * The slot as the worker sees it; timers and the process are abstract events here. STOP is the
 * worker's ordinary stop (cancelled), LEASE_STOP its stop for a lapsed lease (lease_lapsed).
 */
const slotModel = setup({
  types: { context: {} as ModelContext },
  actions: {
    stopBecause: assign({ stopReason: (_, params: { reason: StopReason }) => params.reason }),
    takeJob: assign({ job: true }),
  },
}).createMachine({
  id: "slotModel",
  context: { stopReason: null, job: false },
  initial: "spawning",
  states: {
    spawning: {
      on: {
        SPAWNED: "initializing",
        SPAWN_FAILED: "exited",
        STOP: { target: "terminating", actions: because("cancelled") },
        LEASE_STOP: LEASE_KILL,
      },
    },
    initializing: {
      on: {
        READY: "idle",
        INIT_TIMEOUT: { target: "terminating", actions: because("initialize_timeout") },
        STOP: { target: "stopping", actions: because("cancelled") },
        LEASE_STOP: LEASE_KILL,
        EXIT: "exited",
      },
    },
    idle: {
      on: {
        ASSIGN: { target: "busy", actions: "takeJob" },
        STOP: { target: "stopping", actions: because("cancelled") },
        PONG_TIMEOUT: { target: "terminating", actions: because("unresponsive") },
        MEMORY_LIMIT: { target: "stopping", actions: because("memory_limit") },
        LEASE_STOP: LEASE_KILL,
        EXIT: "exited",
      },
    },
    busy: {
      on: {
        JOB_ENDING: "ending",
        STOP: { target: "stopping", actions: because("cancelled") },
        PONG_TIMEOUT: { target: "terminating", actions: because("unresponsive") },
        MEMORY_LIMIT: { target: "stopping", actions: because("memory_limit") },
        LEASE_STOP: LEASE_KILL,
        EXIT: "exited",
      },
    },
    ending: {
      on: {
        CLOSE_TIMEOUT: { target: "terminating", actions: because("close_timeout") },
        // The job ended by itself, the process is closing: the lease cuts it short and is the reason.
        LEASE_STOP: LEASE_KILL,
        EXIT: "exited",
      },
    },
    // Already going down for a reason: the lease cuts it short, the first reason stays.
    stopping: { on: { CLOSE_TIMEOUT: "terminating", LEASE_STOP: "killing", EXIT: "exited" } },
    terminating: { on: { KILL_GRACE: "killing", LEASE_STOP: "killing", EXIT: "exited" } },
    killing: { on: { KILL_GRACE: "exited", EXIT: "exited" } },
    exited: { type: "final" },
  },
});

type ModelSnapshot = SnapshotFrom<typeof slotModel>;

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
  it("covers every model state and every model transition", () => {
    const reached = new Set(paths.flatMap((p) => p.steps.map((s) => s.state.value as string)));
    expect([...reached].sort()).toEqual(Object.keys(slotModel.states).sort());
    const edges = new Set<string>();
    for (const path of paths) {
      for (let i = 1; i < path.steps.length; i++) {
        const from = path.steps[i - 1]?.state.value as string;
        const step = path.steps[i];
        if (step) edges.add(`${from} -${step.event.type}-> ${step.state.value as string}`);
      }
    }
    expect([...edges].sort()).toEqual(modelTransitions(slotModel));
  });
  for (const path of paths) {
    it(path.description, async () => {
      const sut = createSut();
      const value = () => sut.snapshot().value as Record<string, unknown> | string;
      /** The reason the slot keeps, and (for a lease kill) no graceful step before the SIGKILL. */
      const reasonKept = (model: ModelSnapshot) => {
        expect(sut.snapshot().context.stopReason).toBe(model.context.stopReason);
        if (model.context.stopReason === "lease_lapsed") {
          expect(sut.proc().count("shutdown")).toBe(0);
          expect(sut.proc().commands.filter((c) => c.type === "signal")).toEqual([
            { type: "signal", signal: "SIGKILL" },
          ]);
        }
      };
      const alive = (state: string) => (model: ModelSnapshot) => {
        expect(value()).toEqual({ alive: state });
        reasonKept(model);
      };
      const work = (state: string) => (model: ModelSnapshot) => {
        expect((value() as { alive: { ready: { work: string } } }).alive.ready.work).toBe(state);
        reasonKept(model);
      };
      await path.test({
        states: {
          spawning: alive("spawning"),
          initializing: alive("initializing"),
          idle: work("idle"),
          busy: (model) => {
            work("busy")(model);
            expect(sut.proc().last("start_job")).toEqual({ type: "start_job", job: { jobId: "j1" } });
          },
          ending: alive("ending"),
          stopping: (model) => {
            alive("stopping")(model);
            expect(sut.proc().count("shutdown")).toBe(1);
          },
          terminating: (model) => {
            alive("terminating")(model);
            expect(sut.proc().last("signal")).toEqual({ type: "signal", signal: "SIGTERM" });
          },
          killing: (model) => {
            alive("killing")(model);
            expect(sut.proc().last("signal")).toEqual({ type: "signal", signal: "SIGKILL" });
            expect(sut.proc().count("signal")).toBeLessThanOrEqual(2);
          },
          exited: (model) => {
            expect(sut.snapshot().status).toBe("done");
            const output = sut.snapshot().output as SlotOutput;
            expect(output.stopReason).toBe(model.context.stopReason);
            expect(output.jobId).toBe(model.context.job ? "j1" : null);
            if (output.jobOutcome) expect(output.jobOutcome.status).not.toBe("completed");
            if (model.context.job && model.context.stopReason === "lease_lapsed") {
              expect(output.jobOutcome).toMatchObject({ status: "failed", reason: "lease_lapsed" });
            }
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
          LEASE_STOP: () => sut.send({ type: "slot.stop", reason: "lease_lapsed" }),
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
