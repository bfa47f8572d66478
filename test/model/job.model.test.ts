import { describe, expect, it, vi } from "vitest";
import { type AnyActorRef, assign, fromPromise, type SnapshotFrom, setup } from "xstate";
import { createTestModel } from "xstate/graph";
import { type JobInput, type JobNotification, type JobOutput, type JobTiming, jobMachine } from "../../machines/job.ts";
import type { FailureReason, JobSpec } from "../../machines/shared.ts";
import { deferred, hostChild } from "../support/machine-harness.ts";
import { modelTransitions } from "../support/model-transitions.ts";

const OFFER_TTL = 10_000;
const LAUNCH_TIMEOUT = 5_000;
const MAX_DURATION = 60_000;
const TIMING: JobTiming = { offerTtlMs: OFFER_TTL, launchTimeoutMs: LAUNCH_TIMEOUT, maxDurationMs: MAX_DURATION };
const JOB_ID = "j1";
/** A leased job's validity: shorter than the launch deadline, so an unrenewed lease lapses first. */
const LEASE = 3_000;

type StopReason = Extract<JobNotification, { type: "job.stop" }>["reason"];

interface ModelContext {
  /** The stops the job must have asked for, in order: one, and a second when its lease lapsed while ending. */
  stops: StopReason[];
  /** The reason the final output must carry (declined and failed). */
  reason: string | null;
  /** The job holds a lease from the registry that has not lapsed (the driver renews it as time passes). */
  leased: boolean;
}

type ModelEvent =
  | { type: "OFFER" }
  | { type: "PREASSIGNED" }
  | { type: "PREASSIGNED_LEASED" }
  | { type: "ACCEPT" }
  | { type: "DECLINE" }
  | { type: "DECIDE_ERROR" }
  | { type: "DECIDE_TIMEOUT" }
  | { type: "OFFER_TTL" }
  | { type: "ASSIGN" }
  | { type: "ASSIGN_LEASED" }
  | { type: "LAUNCH" }
  | { type: "RUNNING" }
  | { type: "UNPLACED" }
  | { type: "LAUNCH_TIMEOUT" }
  | { type: "MAX_DURATION" }
  | { type: "LEASE_LAPSED" }
  | { type: "CANCEL" }
  | { type: "SHUTDOWN" }
  | { type: "ENDED_OK" }
  | { type: "ENDED_FAILED" }
  | { type: "ENDED_CANCELLED" };

const stopWith = (reason: StopReason) => ({ type: "expectStop", params: { reason } }) as const;
/** The lease runs out unrenewed: the job asks its slot to stop (lease_lapsed) and holds no lease any more. */
const lapseAndStop = { guard: "leased", target: "ending", actions: [stopWith("lease_lapsed"), "dropLease"] } as const;
const failWith = (reason: string) => ({ type: "expectReason", params: { reason } }) as const;
const slotEndings = {
  ENDED_OK: "completed",
  ENDED_FAILED: { target: "failed", actions: "expectSlotFailure" },
  ENDED_CANCELLED: "cancelled",
} as const;

const lastStop = (context: ModelContext) => context.stops.at(-1) ?? null;

/**
 * The job as its parent sees it. No invoke and no timers: requestFn's answer, each deadline, the
 * lease running out and each report from the worker is an abstract event that the test performs on
 * the real machine. A leased job's lease is renewed by the driver whenever other time passes.
 */
const jobModel = setup({
  types: { context: {} as ModelContext, events: {} as ModelEvent },
  guards: {
    leased: ({ context }) => context.leased,
    stoppedToCancel: ({ context }) => lastStop(context) === "cancelled",
  },
  actions: {
    expectStop: assign({ stops: ({ context }, params: { reason: StopReason }) => [...context.stops, params.reason] }),
    expectReason: assign({ reason: (_, params: { reason: string }) => params.reason }),
    // The job's last stop request decides when no outcome comes.
    expectStopAsFailure: assign({ reason: ({ context }) => lastStop(context) }),
    // After a stop the slot reports that (its first) stop's reason; without one, its process crashed.
    expectSlotFailure: assign({
      reason: ({ context }) => {
        const first = context.stops[0] ?? null;
        return first && first !== "cancelled" ? first : "crashed";
      },
    }),
    takeLease: assign({ leased: true }),
    dropLease: assign({ leased: false }),
  },
}).createMachine({
  id: "jobModel",
  context: { stops: [], reason: null, leased: false },
  initial: "idle",
  states: {
    /** Before the worker created the job. */
    idle: {
      on: {
        OFFER: "deciding",
        PREASSIGNED: "assigned",
        PREASSIGNED_LEASED: { target: "assigned", actions: "takeLease" },
      },
    },
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
        ASSIGN_LEASED: { target: "assigned", actions: "takeLease" },
        OFFER_TTL: "expired",
        CANCEL: "cancelled",
        SHUTDOWN: { target: "failed", actions: failWith("worker_shutdown") },
      },
    },
    assigned: {
      on: {
        LAUNCH: "launching",
        LAUNCH_TIMEOUT: { target: "failed", actions: failWith("launch_failed") },
        LEASE_LAPSED: { guard: "leased", target: "failed", actions: [failWith("lease_lapsed"), "dropLease"] },
        CANCEL: "cancelled",
        SHUTDOWN: { target: "failed", actions: failWith("worker_shutdown") },
      },
    },
    launching: {
      on: {
        RUNNING: "running",
        UNPLACED: "assigned",
        LAUNCH_TIMEOUT: { target: "ending", actions: stopWith("launch_failed") },
        LEASE_LAPSED: lapseAndStop,
        CANCEL: { target: "ending", actions: stopWith("cancelled") },
        SHUTDOWN: { target: "ending", actions: stopWith("worker_shutdown") },
        ...slotEndings,
      },
    },
    running: {
      on: {
        MAX_DURATION: { target: "ending", actions: stopWith("max_duration") },
        LEASE_LAPSED: lapseAndStop,
        CANCEL: { target: "ending", actions: stopWith("cancelled") },
        SHUTDOWN: { target: "ending", actions: stopWith("worker_shutdown") },
        ...slotEndings,
      },
    },
    ending: {
      on: {
        ...slotEndings,
        // The slot exited before its process took the job: no outcome will come, the last stop decides.
        UNPLACED: [
          { guard: "stoppedToCancel", target: "cancelled" },
          { target: "failed", actions: "expectStopAsFailure" },
        ],
        // A graceful stop is cut short: the job asks again, now with lease_lapsed.
        LEASE_LAPSED: lapseAndStop,
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
function startJob(preassigned: boolean, leased = false) {
  const decision = deferred<boolean>();
  const machine = jobMachine.provide({
    actors: { decideOffer: fromPromise<boolean, JobSpec>(() => decision.promise) },
  });
  const spec: JobSpec = { jobId: JOB_ID, agentName: "agent", ...(leased ? { leaseValidForMs: LEASE } : {}) };
  const input: JobInput = { spec, preassigned, timing: TIMING };
  const h = hostChild(machine, input);
  const snapshot = () => h.snapshot() as SnapshotFrom<typeof jobMachine>;
  const leaseActor = () => snapshot().children.lease as AnyActorRef | undefined;
  /** The state of the job's lease actor (none, held, lapsed), and whether it still runs. */
  const lease = () => leaseActor()?.getSnapshot().value;
  const leaseStatus = () => leaseActor()?.getSnapshot().status;
  return { ...h, decision, snapshot, lease, leaseStatus };
}

type ModelSnapshot = SnapshotFrom<typeof jobModel>;

/** One path's driver: the real job, and what the model's path has made it do so far. */
function createDriver() {
  let job: ReturnType<typeof startJob> | undefined;
  let slots = 0;
  let slotRequests = 0;
  /** When the job's lease must lapse (clock time); null while it holds none. */
  let leaseDeadline: number | null = null;
  let renewals = 0;
  const sut = () => {
    if (!job) throw new Error("the job was not created yet");
    return job;
  };
  const currentSlot = () => `slot.${slots - 1}`;
  const now = () => sut().clock.now();

  /** The registry vouches for the job again: its lease runs LEASE from now. */
  const renewLease = () => {
    sut().send({ type: "job.lease_renewed", validForMs: LEASE });
    leaseDeadline = now() + LEASE;
    renewals++;
  };

  /** Lets time pass; a held lease is renewed before it could lapse, as a live link does. */
  const advance = (ms: number) => {
    let left = ms;
    while (left > 0) {
      if (leaseDeadline !== null) renewLease();
      const step = Math.min(left, LEASE - 1);
      sut().clock.increment(step);
      left -= step;
    }
  };

  /** Advances a deadline in two steps: nothing happens a millisecond early. */
  const elapse = (ms: number) => {
    const before = sut().snapshot().value;
    advance(ms - 1);
    expect(sut().snapshot().value).toBe(before);
    if (leaseDeadline !== null) renewLease();
    sut().clock.increment(1);
  };

  /** The lease's own deadline, unrenewed: nothing happens a millisecond early either. */
  const lapse = () => {
    if (leaseDeadline === null) throw new Error("the job holds no lease");
    const before = sut().snapshot().value;
    sut().clock.increment(leaseDeadline - now() - 1);
    expect(sut().snapshot().value).toBe(before);
    expect(sut().lease()).toBe("held");
    sut().clock.increment(1);
    leaseDeadline = null;
  };

  const expectValue = (value: string, status: "active" | "done") => {
    const j = sut();
    expect(j.snapshot().value).toBe(value);
    expect(j.snapshot().status).toBe(status);
    expect(j.host.getSnapshot().status).toBe("active");
    expect(j.received.filter((e) => e.type.startsWith("xstate.error"))).toEqual([]);
    expect(j.ofType("xstate.done.actor.sut")).toHaveLength(status === "done" ? 1 : 0);
  };

  /** Checks what every state shares: the stops asked for, the slot requests, and the lease. */
  const expectNotifications = (model: ModelSnapshot) => {
    const j = sut();
    expect(j.ofType("job.stop")).toEqual(
      model.context.stops.map((reason) => ({ type: "job.stop", jobId: JOB_ID, slotId: currentSlot(), reason })),
    );
    expect(j.ofType("job.needs_slot")).toHaveLength(slotRequests);
    expect(j.ofType("job.answer").length).toBeLessThanOrEqual(1);
    const lapsed = model.context.stops.includes("lease_lapsed") || model.context.reason === "lease_lapsed";
    if (j.snapshot().status === "active") {
      expect(j.lease()).toBe(model.context.leased ? "held" : lapsed ? "lapsed" : "none");
      expect(j.leaseStatus()).toBe(model.context.leased || !lapsed ? "active" : "done");
      expect(leaseDeadline !== null).toBe(model.context.leased);
    } else {
      // A final job stopped its lease with it (or the lease ended first: it lapsed).
      expect(j.leaseStatus()).toBe(lapsed ? "done" : "stopped");
    }
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
      expect(model.context.stops).not.toEqual([]);
      expect(sut().snapshot().context.stopReason).toBe(model.context.stops.at(-1));
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
    PREASSIGNED_LEASED: () => {
      job = startJob(true, true);
      leaseDeadline = now() + LEASE;
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
    ASSIGN_LEASED: () => {
      sut().send({ type: "job.assigned", spec: { jobId: JOB_ID, roomId: "room-1", leaseValidForMs: LEASE } });
      expect(sut().snapshot().context.spec.leaseValidForMs).toBe(LEASE);
      leaseDeadline = now() + LEASE;
    },
    LAUNCH: () => sut().send({ type: "job.launching", slotId: `slot.${slots++}` }),
    RUNNING: () => sut().send({ type: "job.running" }),
    UNPLACED: () => sut().send({ type: "job.unplaced" }),
    LAUNCH_TIMEOUT: () => elapse(LAUNCH_TIMEOUT),
    MAX_DURATION: () => elapse(MAX_DURATION),
    LEASE_LAPSED: () => lapse(),
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
      { type: "job.lease_renewed", validForMs: LEASE },
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

  return { states, events, expectSettledAfterPath, renewals: () => renewals };
}

const model = createTestModel(jobModel);
// Only events the model takes in a state: a lapse of a lease the job does not hold is no step.
const paths = model.getShortestPaths({ filterEvents: (state, event) => state.can(event) });

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
