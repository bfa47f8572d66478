import { describe, expect, it, vi } from "vitest";
import { type AnyStateMachine, assign, fromPromise, type SnapshotFrom, setup } from "xstate";
import { createTestModel } from "xstate/graph";
import { type JobInput, type JobNotification, type JobOutput, type JobTiming, jobMachine } from "../../machines/job.ts";
import type { FailureReason, JobSpec } from "../../machines/shared.ts";
import { deferred, hostChild } from "../support/machine-harness.ts";

const OFFER_TTL = 10_000;
const LAUNCH_TIMEOUT = 5_000;
const MAX_DURATION = 60_000;
const TIMING: JobTiming = { offerTtlMs: OFFER_TTL, launchTimeoutMs: LAUNCH_TIMEOUT, maxDurationMs: MAX_DURATION };
const JOB_ID = "j1";

type StopReason = Extract<JobNotification, { type: "job.stop" }>["reason"];

interface ModelContext {
  /** The stop the job must have asked for (once), when it asked for one. */
  stop: StopReason | null;
  /** The reason the final output must carry (declined and failed). */
  reason: string | null;
}

type ModelEvent =
  | { type: "OFFER" }
  | { type: "PREASSIGNED" }
  | { type: "ACCEPT" }
  | { type: "DECLINE" }
  | { type: "DECIDE_ERROR" }
  | { type: "DECIDE_TIMEOUT" }
  | { type: "OFFER_TTL" }
  | { type: "ASSIGN" }
  | { type: "LAUNCH" }
  | { type: "RUNNING" }
  | { type: "UNPLACED" }
  | { type: "LAUNCH_TIMEOUT" }
  | { type: "MAX_DURATION" }
  | { type: "CANCEL" }
  | { type: "SHUTDOWN" }
  | { type: "ENDED_OK" }
  | { type: "ENDED_FAILED" }
  | { type: "ENDED_CANCELLED" };

const stopWith = (reason: StopReason) => ({ type: "expectStop", params: { reason } }) as const;
const failWith = (reason: string) => ({ type: "expectReason", params: { reason } }) as const;
const slotEndings = {
  ENDED_OK: "completed",
  ENDED_FAILED: { target: "failed", actions: "expectSlotFailure" },
  ENDED_CANCELLED: "cancelled",
} as const;

/**
 * The job as its parent sees it. No invoke and no timers: requestFn's answer, each deadline and
 * each report from the worker is an abstract event that the test performs on the real machine.
 */
const jobModel = setup({
  types: { context: {} as ModelContext, events: {} as ModelEvent },
  actions: {
    expectStop: assign({ stop: (_, params: { reason: StopReason }) => params.reason }),
    expectReason: assign({ reason: (_, params: { reason: string }) => params.reason }),
    expectStopAsFailure: assign({ reason: ({ context }) => context.stop }),
    // After a stop the slot reports that stop's reason; without one, its process crashed.
    expectSlotFailure: assign({
      reason: ({ context }) => (context.stop && context.stop !== "cancelled" ? context.stop : "crashed"),
    }),
  },
}).createMachine({
  id: "jobModel",
  context: { stop: null, reason: null },
  initial: "idle",
  states: {
    /** Before the worker created the job. */
    idle: { on: { OFFER: "deciding", PREASSIGNED: "assigned" } },
    deciding: {
      on: {
        ACCEPT: "offered",
        DECLINE: { target: "declined", actions: failWith("requestFn declined the job") },
        DECIDE_ERROR: { target: "declined", actions: failWith("requestFn failed: boom") },
        DECIDE_TIMEOUT: { target: "declined", actions: failWith("requestFn did not answer in time") },
        CANCEL: { target: "declined", actions: failWith("cancelled") },
        SHUTDOWN: { target: "declined", actions: failWith("worker shutting down") },
      },
    },
    offered: {
      on: {
        ASSIGN: "assigned",
        OFFER_TTL: "expired",
        CANCEL: "cancelled",
        SHUTDOWN: { target: "failed", actions: failWith("worker_shutdown") },
      },
    },
    assigned: {
      on: {
        LAUNCH: "launching",
        LAUNCH_TIMEOUT: { target: "failed", actions: failWith("launch_failed") },
        CANCEL: "cancelled",
        SHUTDOWN: { target: "failed", actions: failWith("worker_shutdown") },
      },
    },
    launching: {
      on: {
        RUNNING: "running",
        UNPLACED: "assigned",
        LAUNCH_TIMEOUT: { target: "ending", actions: stopWith("launch_failed") },
        CANCEL: { target: "ending", actions: stopWith("cancelled") },
        SHUTDOWN: { target: "ending", actions: stopWith("worker_shutdown") },
        ...slotEndings,
      },
    },
    running: {
      on: {
        MAX_DURATION: { target: "ending", actions: stopWith("max_duration") },
        CANCEL: { target: "ending", actions: stopWith("cancelled") },
        SHUTDOWN: { target: "ending", actions: stopWith("worker_shutdown") },
        ...slotEndings,
      },
    },
    ending: {
      on: {
        ...slotEndings,
        // The slot exited before its process took the job: no outcome will come, the stop decides.
        UNPLACED: [
          { guard: ({ context }) => context.stop === "cancelled", target: "cancelled" },
          { target: "failed", actions: "expectStopAsFailure" },
        ],
      },
    },
    completed: { type: "final" },
    failed: { type: "final" },
    cancelled: { type: "final" },
    declined: { type: "final" },
    expired: { type: "final" },
  },
});

/** Lets an already-settled requestFn promise reach the machine. Never waits on time. */
const settle = () => new Promise<void>((resolve) => setImmediate(resolve));

/** The real job machine under a recording host, created by the model's OFFER or PREASSIGNED. */
function startJob(preassigned: boolean) {
  const decision = deferred<boolean>();
  const machine = jobMachine.provide({
    actors: { decideOffer: fromPromise<boolean, JobSpec>(() => decision.promise) },
  });
  const input: JobInput = { spec: { jobId: JOB_ID, agentName: "agent" }, preassigned, timing: TIMING };
  const h = hostChild(machine, input);
  const snapshot = () => h.snapshot() as SnapshotFrom<typeof jobMachine>;
  return { ...h, decision, snapshot };
}

type ModelSnapshot = SnapshotFrom<typeof jobModel>;

/** One path's driver: the real job, and what the model's path has made it do so far. */
function createDriver() {
  let job: ReturnType<typeof startJob> | undefined;
  let slots = 0;
  let slotRequests = 0;
  const sut = () => {
    if (!job) throw new Error("the job was not created yet");
    return job;
  };
  const currentSlot = () => `slot.${slots - 1}`;

  /** Advances a deadline in two steps: nothing happens a millisecond early. */
  const elapse = (ms: number) => {
    const before = sut().snapshot().value;
    sut().clock.increment(ms - 1);
    expect(sut().snapshot().value).toBe(before);
    sut().clock.increment(1);
  };

  const expectValue = (value: string, status: "active" | "done") => {
    const j = sut();
    expect(j.snapshot().value).toBe(value);
    expect(j.snapshot().status).toBe(status);
    expect(j.host.getSnapshot().status).toBe("active");
    expect(j.received.filter((e) => e.type.startsWith("xstate.error"))).toEqual([]);
    expect(j.ofType("xstate.done.actor.sut")).toHaveLength(status === "done" ? 1 : 0);
  };

  /** Checks what every state shares: the stops asked for, and the slot requests. */
  const expectNotifications = (model: ModelSnapshot) => {
    const j = sut();
    const stops = j.ofType("job.stop");
    if (model.context.stop) {
      expect(stops).toEqual([{ type: "job.stop", jobId: JOB_ID, slotId: currentSlot(), reason: model.context.stop }]);
    } else {
      expect(stops).toEqual([]);
    }
    expect(j.ofType("job.needs_slot")).toHaveLength(slotRequests);
    expect(j.ofType("job.answer").length).toBeLessThanOrEqual(1);
  };

  const expectOutput = (output: JobOutput) => {
    expect(sut().snapshot().output).toEqual(output);
    expect(sut().ofType("xstate.done.actor.sut")[0]?.output).toEqual(output);
  };

  const states = {
    idle: () => expect(job).toBeUndefined(),
    deciding: (model: ModelSnapshot) => {
      expectValue("deciding", "active");
      expect(sut().ofType("job.answer")).toEqual([]);
      expectNotifications(model);
    },
    offered: (model: ModelSnapshot) => {
      expectValue("offered", "active");
      expect(sut().ofType("job.answer")).toEqual([{ type: "job.answer", jobId: JOB_ID, accept: true }]);
      expectNotifications(model);
    },
    assigned: (model: ModelSnapshot) => {
      slotRequests++;
      expectValue("assigned", "active");
      expect(sut().ofType("job.needs_slot").at(-1)).toEqual({ type: "job.needs_slot", jobId: JOB_ID });
      expectNotifications(model);
    },
    launching: (model: ModelSnapshot) => {
      expectValue("launching", "active");
      expect(sut().snapshot().context.slotId).toBe(currentSlot());
      expectNotifications(model);
    },
    running: (model: ModelSnapshot) => {
      expectValue("running", "active");
      expectNotifications(model);
    },
    ending: (model: ModelSnapshot) => {
      expectValue("ending", "active");
      expect(model.context.stop).not.toBeNull();
      expectNotifications(model);
    },
    completed: (model: ModelSnapshot) => {
      expectValue("completed", "done");
      expectOutput({ jobId: JOB_ID, status: "completed" });
      expectNotifications(model);
    },
    failed: (model: ModelSnapshot) => {
      expectValue("failed", "done");
      expect(sut().snapshot().output).toMatchObject({ jobId: JOB_ID, status: "failed", reason: model.context.reason });
      expectOutput(sut().snapshot().output as JobOutput);
      expectNotifications(model);
    },
    cancelled: (model: ModelSnapshot) => {
      expectValue("cancelled", "done");
      expectOutput({ jobId: JOB_ID, status: "cancelled", reason: "cancelled" });
      expectNotifications(model);
    },
    declined: (model: ModelSnapshot) => {
      expectValue("declined", "done");
      const reason = model.context.reason as string;
      expect(sut().ofType("job.answer")).toEqual([{ type: "job.answer", jobId: JOB_ID, accept: false, error: reason }]);
      expectOutput({ jobId: JOB_ID, status: "declined", reason });
      expectNotifications(model);
    },
    expired: (model: ModelSnapshot) => {
      expectValue("expired", "done");
      expectOutput({ jobId: JOB_ID, status: "expired" });
      expectNotifications(model);
    },
  };

  type Step = { state: ModelSnapshot };
  const events = {
    OFFER: () => {
      job = startJob(false);
    },
    PREASSIGNED: () => {
      job = startJob(true);
    },
    ACCEPT: async () => {
      sut().decision.resolve(true);
      await settle();
    },
    DECLINE: async () => {
      sut().decision.resolve(false);
      await settle();
    },
    DECIDE_ERROR: async () => {
      sut().decision.reject(new Error("boom"));
      await settle();
    },
    DECIDE_TIMEOUT: () => elapse(OFFER_TTL),
    OFFER_TTL: () => elapse(OFFER_TTL),
    ASSIGN: () => sut().send({ type: "job.assigned", spec: { jobId: JOB_ID, roomId: "room-1" } }),
    LAUNCH: () => sut().send({ type: "job.launching", slotId: `slot.${slots++}` }),
    RUNNING: () => sut().send({ type: "job.running" }),
    UNPLACED: () => sut().send({ type: "job.unplaced" }),
    LAUNCH_TIMEOUT: () => elapse(LAUNCH_TIMEOUT),
    MAX_DURATION: () => elapse(MAX_DURATION),
    CANCEL: () => sut().send({ type: "job.cancel", reason: "user" }),
    SHUTDOWN: () => sut().send({ type: "job.shutdown" }),
    ENDED_OK: () => sut().send({ type: "job.ended", outcome: { status: "completed" } }),
    ENDED_FAILED: ({ state }: Step) =>
      sut().send({
        type: "job.ended",
        outcome: { status: "failed", reason: state.context.reason as FailureReason, exitCode: 1, signal: null },
      }),
    ENDED_CANCELLED: () => sut().send({ type: "job.ended", outcome: { status: "cancelled", reason: "cancelled" } }),
  };

  /** After the path: late events and every timer change nothing once the job is final. */
  const expectSettledAfterPath = async () => {
    const j = sut();
    if (j.snapshot().status !== "done") return;
    const received = [...j.received];
    const output = j.snapshot().output;
    // xstate's development build warns that the actor is stopped: expected, checked, kept quiet.
    const warn = vi.spyOn(console, "warn").mockImplementation(() => {});
    for (const event of [
      { type: "job.assigned", spec: { jobId: JOB_ID } },
      { type: "job.launching", slotId: "slot.late" },
      { type: "job.running" },
      { type: "job.unplaced" },
      { type: "job.ended", outcome: { status: "completed" } },
      { type: "job.cancel" },
      { type: "job.shutdown" },
    ]) {
      j.send(event);
    }
    for (const call of warn.mock.calls) expect(String(call[0])).toMatch(/was sent to stopped actor/);
    warn.mockRestore();
    j.decision.resolve(true);
    await settle();
    j.clock.increment(OFFER_TTL + LAUNCH_TIMEOUT + MAX_DURATION);
    expect(j.received).toEqual(received);
    expect(j.snapshot().output).toEqual(output);
    expect(j.snapshot().status).toBe("done");
  };

  return { states, events, expectSettledAfterPath };
}

const model = createTestModel(jobModel);
const paths = model.getShortestPaths();

/** Every transition of the model, as "from -EVENT-> to". */
function modelTransitions(machine: AnyStateMachine): string[] {
  const edges: string[] = [];
  for (const node of Object.values(machine.root.states)) {
    for (const [eventType, list] of node.transitions) {
      for (const t of list) edges.push(`${node.key} -${eventType}-> ${t.target?.[0]?.key ?? node.key}`);
    }
  }
  return edges.sort();
}

describe("job (model-based)", () => {
  it("the shortest paths cover every state and every transition of the model", () => {
    const states = new Set<string>();
    const edges = new Set<string>();
    for (const path of paths) {
      let previous: string | null = null;
      for (const step of path.steps) {
        const value = step.state.value as string;
        states.add(value);
        if (previous !== null) edges.add(`${previous} -${step.event.type}-> ${value}`);
        previous = value;
      }
    }
    expect([...states].sort()).toEqual(Object.keys(jobModel.root.states).sort());
    expect([...edges].sort()).toEqual(modelTransitions(jobModel));
  });

  for (const path of paths) {
    it(path.description, async () => {
      const driver = createDriver();
      await path.test({ states: driver.states, events: driver.events });
      await driver.expectSettledAfterPath();
    });
  }
});
