import { describe, expect, it, vi } from "vitest";
import { type AnyActorRef, type AnyEventObject, fromPromise, type SnapshotFrom } from "xstate";
import {
  type JobEvent,
  type JobInput,
  type JobMachineContext,
  type JobOutput,
  type JobTiming,
  jobMachine,
} from "../../machines/job.ts";
import type { JobOutcome, JobSpec } from "../../machines/shared.ts";
import { deferred, flush, hostChild } from "../support/machine-harness.ts";

const OFFER_TTL = 10_000;
const LAUNCH_TIMEOUT = 5_000;
const MAX_DURATION = 60_000;
const TIMING: JobTiming = { offerTtlMs: OFFER_TTL, launchTimeoutMs: LAUNCH_TIMEOUT, maxDurationMs: 0 };
const JOB_ID = "j1";
const SLOT = "slot.0";
/** A leased job's validity: shorter than the launch deadline, so a lapse comes first. */
const LEASE = 3_000;
const LEASED: StartOptions = { spec: { leaseValidForMs: LEASE } };

interface StartOptions {
  preassigned?: boolean;
  spec?: Partial<JobSpec>;
  timing?: Partial<JobTiming>;
}

/** The real job machine under a recording host; requestFn answers only when the test says so. */
function startJob(options: StartOptions = {}) {
  const decision = deferred<boolean>();
  const asked: JobSpec[] = [];
  const machine = jobMachine.provide({
    actors: {
      decideOffer: fromPromise<boolean, JobSpec>(({ input }) => {
        asked.push(input);
        return decision.promise;
      }),
    },
  });
  const input: JobInput = {
    spec: { jobId: JOB_ID, ...options.spec },
    preassigned: options.preassigned ?? false,
    timing: { ...TIMING, ...options.timing },
  };
  const h = hostChild(machine, input);
  const snapshot = () => h.snapshot() as SnapshotFrom<typeof jobMachine>;
  return {
    ...h,
    decision,
    asked,
    snapshot,
    value: () => snapshot().value,
    status: () => snapshot().status,
    context: (): JobMachineContext => snapshot().context,
    output: () => snapshot().output as JobOutput | undefined,
    emit: (event: JobEvent) => h.send(event),
    /** The notifications the job sent to its parent (job.answer, job.needs_slot, job.stop). */
    notifications: () => h.received.filter((e) => !e.type.startsWith("xstate.")),
    doneEvents: () => h.received.filter((e) => e.type === "xstate.done.actor.sut"),
  };
}

type Job = ReturnType<typeof startJob>;

/**
 * Sends events to a job that already finished. xstate's development build warns that the actor is
 * stopped; that warning (and nothing else) is expected, so it is checked and kept out of the output.
 */
function sendLate(job: Job, ...events: JobEvent[]) {
  const warn = vi.spyOn(console, "warn").mockImplementation(() => {});
  try {
    for (const event of events) job.emit(event);
    for (const call of warn.mock.calls) expect(String(call[0])).toMatch(/was sent to stopped actor/);
  } finally {
    warn.mockRestore();
  }
}

function expectHealthy(job: Job) {
  expect(job.status()).not.toBe("error");
  expect(job.host.getSnapshot().status).toBe("active");
  expect(job.received.filter((e) => e.type.startsWith("xstate.error"))).toEqual([]);
}

/** The job reached a final state, reported it to the host exactly once, with this output. */
function expectFinal(job: Job, value: string, output: JobOutput) {
  expect(job.value()).toBe(value);
  expect(job.status()).toBe("done");
  expect(job.output()).toEqual(output);
  const done = job.doneEvents();
  expect(done).toHaveLength(1);
  expect((done[0] as AnyEventObject).output).toEqual(output);
  expectHealthy(job);
}

const completed: JobOutcome = { status: "completed" };
const failedOutcome: JobOutcome = {
  status: "failed",
  reason: "entrypoint_error",
  error: { name: "TypeError", message: "boom" },
  exitCode: 1,
  signal: null,
};
const cancelledOutcome: JobOutcome = { status: "cancelled", reason: "cancelled" };

/** Each job.ended outcome, the final state it leads to and the job's output. */
const ENDINGS: { label: string; outcome: JobOutcome; value: string; output: JobOutput }[] = [
  { label: "completed", outcome: completed, value: "completed", output: { jobId: JOB_ID, status: "completed" } },
  {
    label: "failed",
    outcome: failedOutcome,
    value: "failed",
    output: {
      jobId: JOB_ID,
      status: "failed",
      reason: "entrypoint_error",
      error: { name: "TypeError", message: "boom" },
      exitCode: 1,
      signal: null,
    },
  },
  {
    label: "cancelled",
    outcome: cancelledOutcome,
    value: "cancelled",
    output: { jobId: JOB_ID, status: "cancelled", reason: "cancelled" },
  },
];

// ---- reaching each state the job can be in -------------------------------------------------------

type Reachable =
  | "deciding"
  | "offered"
  | "assigned"
  | "assigned (after unplaced)"
  | "launching"
  | "running"
  | "ending (cancelled)"
  | "ending (launch_failed)"
  | "assigned (leased)"
  | "running (leased)"
  | "ending (lease_lapsed)"
  | "completed"
  | "failed"
  | "cancelled"
  | "declined"
  | "expired";

async function reach(state: Reachable, options: StartOptions = {}): Promise<Job> {
  switch (state) {
    case "deciding":
      return startJob(options);
    case "offered": {
      const job = startJob(options);
      job.decision.resolve(true);
      await flush();
      return job;
    }
    case "declined": {
      const job = startJob(options);
      job.decision.resolve(false);
      await flush();
      return job;
    }
    case "expired": {
      const job = await reach("offered", options);
      job.clock.increment(OFFER_TTL);
      return job;
    }
    case "assigned":
      return startJob({ ...options, preassigned: true });
    case "assigned (after unplaced)": {
      const job = await reach("launching", options);
      job.emit({ type: "job.unplaced" });
      return job;
    }
    case "launching": {
      const job = await reach("assigned", options);
      job.emit({ type: "job.launching", slotId: SLOT });
      return job;
    }
    case "running": {
      const job = await reach("launching", options);
      job.emit({ type: "job.running" });
      return job;
    }
    case "ending (cancelled)": {
      const job = await reach("running", options);
      job.emit({ type: "job.cancel" });
      return job;
    }
    case "ending (launch_failed)": {
      const job = await reach("launching", options);
      job.clock.increment(LAUNCH_TIMEOUT);
      return job;
    }
    case "assigned (leased)":
      return startJob({ ...options, preassigned: true, spec: { ...options.spec, leaseValidForMs: LEASE } });
    case "running (leased)": {
      const job = await reach("assigned (leased)", options);
      job.emit({ type: "job.launching", slotId: SLOT });
      job.emit({ type: "job.running" });
      return job;
    }
    case "ending (lease_lapsed)": {
      const job = await reach("running (leased)", options);
      job.clock.increment(LEASE);
      return job;
    }
    case "completed":
    case "failed":
    case "cancelled": {
      const job = await reach("running", options);
      const outcome = { completed, failed: failedOutcome, cancelled: cancelledOutcome }[state];
      job.emit({ type: "job.ended", outcome });
      return job;
    }
  }
}

const machineValueOf = (state: Reachable) => state.replace(/ \(.*\)$/, "");

// ---- received ---------------------------------------------------------------------------------------

describe("job: received", () => {
  it("an offer goes to deciding and asks requestFn with the spec, sending nothing yet", () => {
    const job = startJob({ spec: { agentName: "agent", roomId: "r1" } });
    expect(job.value()).toBe("deciding");
    expect(job.asked).toEqual([{ jobId: JOB_ID, agentName: "agent", roomId: "r1" }]);
    expect(job.notifications()).toEqual([]);
    expectHealthy(job);
  });

  it("a preassigned job skips the offer: assigned at once, asks for a slot, never asks requestFn", () => {
    const job = startJob({ preassigned: true });
    expect(job.value()).toBe("assigned");
    expect(job.asked).toEqual([]);
    expect(job.notifications()).toEqual([{ type: "job.needs_slot", jobId: JOB_ID }]);
    expect(job.context().slotId).toBeNull();
    expectHealthy(job);
  });
});

// ---- deciding ---------------------------------------------------------------------------------------

describe("job: deciding", () => {
  it("requestFn yes → offered, answers accept", async () => {
    const job = startJob();
    job.decision.resolve(true);
    await flush();
    expect(job.value()).toBe("offered");
    expect(job.notifications()).toEqual([{ type: "job.answer", jobId: JOB_ID, accept: true }]);
    expect(job.ofType("job.needs_slot")).toEqual([]);
    expectHealthy(job);
  });

  it("requestFn no → declined, answers no with the reason", async () => {
    const job = startJob();
    job.decision.resolve(false);
    await flush();
    expect(job.notifications()).toEqual([
      { type: "job.answer", jobId: JOB_ID, accept: false, error: "requestFn declined the job" },
    ]);
    expectFinal(job, "declined", { jobId: JOB_ID, status: "declined", reason: "requestFn declined the job" });
  });

  it("requestFn throws → declined with the error text", async () => {
    const job = startJob();
    job.decision.reject(new Error("quota exceeded"));
    await flush();
    expect(job.notifications()).toEqual([
      { type: "job.answer", jobId: JOB_ID, accept: false, error: "requestFn failed: quota exceeded" },
    ]);
    expectFinal(job, "declined", { jobId: JOB_ID, status: "declined", reason: "requestFn failed: quota exceeded" });
  });

  it("requestFn hangs → declined exactly after offerTtl; a late answer changes nothing", async () => {
    const job = startJob();
    job.clock.increment(OFFER_TTL - 1);
    expect(job.value()).toBe("deciding");
    expect(job.notifications()).toEqual([]);
    job.clock.increment(1);
    const answer = { type: "job.answer", jobId: JOB_ID, accept: false, error: "requestFn did not answer in time" };
    expect(job.notifications()).toEqual([answer]);
    expectFinal(job, "declined", { jobId: JOB_ID, status: "declined", reason: "requestFn did not answer in time" });
    job.decision.resolve(true);
    await flush();
    expect(job.notifications()).toEqual([answer]);
    expectFinal(job, "declined", { jobId: JOB_ID, status: "declined", reason: "requestFn did not answer in time" });
  });

  it.each([
    { event: { type: "job.cancel", reason: "user" } as JobEvent, reason: "cancelled" },
    { event: { type: "job.shutdown" } as JobEvent, reason: "worker shutting down" },
  ])("$event.type → declined ($reason); the pending decision is dropped", async ({ event, reason }) => {
    const job = startJob();
    job.emit(event);
    expect(job.notifications()).toEqual([{ type: "job.answer", jobId: JOB_ID, accept: false, error: reason }]);
    expectFinal(job, "declined", { jobId: JOB_ID, status: "declined", reason });
    job.decision.resolve(true);
    await flush();
    job.clock.increment(OFFER_TTL * 10);
    expect(job.notifications()).toHaveLength(1);
    expectFinal(job, "declined", { jobId: JOB_ID, status: "declined", reason });
  });
});

// ---- offered ----------------------------------------------------------------------------------------

describe("job: offered", () => {
  it("job.assigned → assigned with the assignment merged into the spec; asks for a slot", async () => {
    const job = await reach("offered", { spec: { agentName: "agent", roomId: "old", metadata: { a: 1 } } });
    job.emit({ type: "job.assigned", spec: { jobId: JOB_ID, roomId: "r1", roomToken: "tok", url: "wss://x" } });
    expect(job.value()).toBe("assigned");
    expect(job.context().spec).toEqual({
      jobId: JOB_ID,
      agentName: "agent",
      roomId: "r1",
      roomToken: "tok",
      url: "wss://x",
      metadata: { a: 1 },
    });
    expect(job.notifications()).toEqual([
      { type: "job.answer", jobId: JOB_ID, accept: true },
      { type: "job.needs_slot", jobId: JOB_ID },
    ]);
    expectHealthy(job);
  });

  it("offer TTL → expired, counted from entering offered; a late assignment changes nothing", async () => {
    const job = startJob();
    job.clock.increment(3_000);
    job.decision.resolve(true);
    await flush();
    expect(job.value()).toBe("offered");
    job.clock.increment(OFFER_TTL - 1);
    expect(job.value()).toBe("offered");
    job.clock.increment(1);
    expectFinal(job, "expired", { jobId: JOB_ID, status: "expired" });
    sendLate(job, { type: "job.assigned", spec: { jobId: JOB_ID, roomId: "late" } });
    expectFinal(job, "expired", { jobId: JOB_ID, status: "expired" });
    expect(job.ofType("job.needs_slot")).toEqual([]);
  });

  it("a slot's reports before the assignment (launching, running, unplaced, ended) change nothing", async () => {
    const job = await reach("offered");
    const before = structuredClone(job.context());
    for (const event of [
      { type: "job.launching", slotId: SLOT },
      { type: "job.running" },
      { type: "job.unplaced" },
      { type: "job.ended", outcome: completed },
    ] as JobEvent[]) {
      job.emit(event);
    }
    expect(job.value()).toBe("offered");
    expect(job.context()).toEqual(before);
    expect(job.notifications()).toEqual([{ type: "job.answer", jobId: JOB_ID, accept: true }]);
    expectHealthy(job);
  });

  it("job.cancel → cancelled, with no stop (no slot yet)", async () => {
    const job = await reach("offered");
    job.emit({ type: "job.cancel", reason: "user" });
    expectFinal(job, "cancelled", { jobId: JOB_ID, status: "cancelled", reason: "cancelled" });
    expect(job.ofType("job.stop")).toEqual([]);
  });

  it("job.shutdown → failed worker_shutdown, with no stop", async () => {
    const job = await reach("offered");
    job.emit({ type: "job.shutdown" });
    expectFinal(job, "failed", { jobId: JOB_ID, status: "failed", reason: "worker_shutdown" });
    expect(job.ofType("job.stop")).toEqual([]);
  });
});

// ---- assigned ---------------------------------------------------------------------------------------

describe("job: assigned", () => {
  it("job.launching → launching and records the slot", async () => {
    const job = await reach("assigned");
    job.emit({ type: "job.launching", slotId: SLOT });
    expect(job.value()).toBe("launching");
    expect(job.context().slotId).toBe(SLOT);
    expectHealthy(job);
  });

  it("no slot within launchTimeout → failed launch_failed", async () => {
    const job = await reach("assigned");
    job.clock.increment(LAUNCH_TIMEOUT - 1);
    expect(job.value()).toBe("assigned");
    job.clock.increment(1);
    expectFinal(job, "failed", {
      jobId: JOB_ID,
      status: "failed",
      reason: "launch_failed",
      error: { name: "Error", message: "no process became free in time" },
    });
    expect(job.ofType("job.stop")).toEqual([]);
  });

  it("the launch deadline of an offered job starts at its assignment", async () => {
    const job = await reach("offered");
    job.clock.increment(OFFER_TTL - 1);
    job.emit({ type: "job.assigned", spec: { jobId: JOB_ID } });
    job.clock.increment(LAUNCH_TIMEOUT - 1);
    expect(job.value()).toBe("assigned");
    job.clock.increment(1);
    expect(job.value()).toBe("failed");
    expect(job.output()?.reason).toBe("launch_failed");
  });

  it("job.cancel → cancelled, with no stop", async () => {
    const job = await reach("assigned");
    job.emit({ type: "job.cancel" });
    expectFinal(job, "cancelled", { jobId: JOB_ID, status: "cancelled", reason: "cancelled" });
    expect(job.ofType("job.stop")).toEqual([]);
  });

  it("job.shutdown → failed worker_shutdown, with no stop", async () => {
    const job = await reach("assigned");
    job.emit({ type: "job.shutdown" });
    expectFinal(job, "failed", { jobId: JOB_ID, status: "failed", reason: "worker_shutdown" });
    expect(job.ofType("job.stop")).toEqual([]);
  });
});

// ---- launching --------------------------------------------------------------------------------------

describe("job: launching", () => {
  it("job.running → running", async () => {
    const job = await reach("launching");
    job.emit({ type: "job.running" });
    expect(job.value()).toBe("running");
    expectHealthy(job);
  });

  it("job.unplaced → assigned again: asks for a slot again, with a fresh launch deadline", async () => {
    const job = await reach("launching");
    job.clock.increment(LAUNCH_TIMEOUT - 1);
    job.emit({ type: "job.unplaced" });
    expect(job.value()).toBe("assigned");
    expect(job.ofType("job.needs_slot")).toHaveLength(2);
    job.clock.increment(LAUNCH_TIMEOUT - 1);
    expect(job.value()).toBe("assigned");
    job.emit({ type: "job.launching", slotId: "slot.1" });
    expect(job.value()).toBe("launching");
    expect(job.context().slotId).toBe("slot.1");
    job.emit({ type: "job.cancel" });
    expect(job.ofType("job.stop")).toEqual([
      { type: "job.stop", jobId: JOB_ID, slotId: "slot.1", reason: "cancelled" },
    ]);
  });

  it("no running report within launchTimeout → ending, asks the slot to stop (launch_failed)", async () => {
    const job = await reach("launching");
    job.clock.increment(LAUNCH_TIMEOUT - 1);
    expect(job.value()).toBe("launching");
    expect(job.ofType("job.stop")).toEqual([]);
    job.clock.increment(1);
    expect(job.value()).toBe("ending");
    expect(job.status()).toBe("active");
    expect(job.ofType("job.stop")).toEqual([
      { type: "job.stop", jobId: JOB_ID, slotId: SLOT, reason: "launch_failed" },
    ]);
    job.emit({
      type: "job.ended",
      outcome: { status: "failed", reason: "launch_failed", exitCode: null, signal: "SIGTERM" },
    });
    expectFinal(job, "failed", {
      jobId: JOB_ID,
      status: "failed",
      reason: "launch_failed",
      exitCode: null,
      signal: "SIGTERM",
    });
  });

  it.each([
    { event: { type: "job.cancel", reason: "user" } as JobEvent, reason: "cancelled" },
    { event: { type: "job.shutdown" } as JobEvent, reason: "worker_shutdown" },
  ])("$event.type → ending, asks the slot to stop ($reason)", async ({ event, reason }) => {
    const job = await reach("launching");
    job.emit(event);
    expect(job.value()).toBe("ending");
    expect(job.ofType("job.stop")).toEqual([{ type: "job.stop", jobId: JOB_ID, slotId: SLOT, reason }]);
    // The launch deadline is gone with the state: no second stop.
    job.clock.increment(LAUNCH_TIMEOUT * 10);
    expect(job.ofType("job.stop")).toHaveLength(1);
    expectHealthy(job);
  });

  it.each(ENDINGS)("job.ended $label → $value", async ({ outcome, value, output }) => {
    const job = await reach("launching");
    job.emit({ type: "job.ended", outcome });
    expectFinal(job, value, output);
    expect(job.ofType("job.stop")).toEqual([]);
  });
});

// ---- running ----------------------------------------------------------------------------------------

describe("job: running", () => {
  it("stops after timing.maxDurationMs, counted from the running report", async () => {
    const job = await reach("launching", { timing: { maxDurationMs: MAX_DURATION } });
    job.clock.increment(1_000);
    job.emit({ type: "job.running" });
    job.clock.increment(MAX_DURATION - 1);
    expect(job.value()).toBe("running");
    expect(job.ofType("job.stop")).toEqual([]);
    job.clock.increment(1);
    expect(job.value()).toBe("ending");
    expect(job.ofType("job.stop")).toEqual([{ type: "job.stop", jobId: JOB_ID, slotId: SLOT, reason: "max_duration" }]);
    job.emit({
      type: "job.ended",
      outcome: { status: "failed", reason: "max_duration", exitCode: 0, signal: null },
    });
    expectFinal(job, "failed", { jobId: JOB_ID, status: "failed", reason: "max_duration", exitCode: 0, signal: null });
  });

  it("spec.maxDurationMs overrides the worker's maximum", async () => {
    const job = await reach("running", { spec: { maxDurationMs: 2_000 }, timing: { maxDurationMs: MAX_DURATION } });
    job.clock.increment(1_999);
    expect(job.value()).toBe("running");
    job.clock.increment(1);
    expect(job.value()).toBe("ending");
    expect(job.ofType("job.stop").map((e) => e.reason)).toEqual(["max_duration"]);
  });

  it("spec.maxDurationMs also applies when only unlimited by the worker", async () => {
    const job = await reach("running", { spec: { maxDurationMs: 2_000 } });
    job.clock.increment(2_000);
    expect(job.value()).toBe("ending");
    expect(job.ofType("job.stop").map((e) => e.reason)).toEqual(["max_duration"]);
  });

  it("a maximum that comes with the assignment applies (spec merged)", async () => {
    const job = await reach("offered", { timing: { maxDurationMs: MAX_DURATION } });
    job.emit({ type: "job.assigned", spec: { jobId: JOB_ID, maxDurationMs: 3_000 } });
    job.emit({ type: "job.launching", slotId: SLOT });
    job.emit({ type: "job.running" });
    job.clock.increment(2_999);
    expect(job.value()).toBe("running");
    job.clock.increment(1);
    expect(job.value()).toBe("ending");
    expect(job.ofType("job.stop")).toEqual([{ type: "job.stop", jobId: JOB_ID, slotId: SLOT, reason: "max_duration" }]);
  });

  it("no maximum when both are 0: runs for ever, never stopped", async () => {
    const job = await reach("running", { spec: { maxDurationMs: 0 }, timing: { maxDurationMs: 0 } });
    job.clock.increment(0);
    job.clock.increment(1_000_000_000);
    expect(job.value()).toBe("running");
    expect(job.ofType("job.stop")).toEqual([]);
    expectHealthy(job);
    job.emit({ type: "job.ended", outcome: completed });
    expectFinal(job, "completed", { jobId: JOB_ID, status: "completed" });
  });

  it.each([
    { event: { type: "job.cancel", reason: "user" } as JobEvent, reason: "cancelled" },
    { event: { type: "job.shutdown" } as JobEvent, reason: "worker_shutdown" },
  ])("$event.type → ending, asks the slot to stop ($reason); no max_duration stop after it", async (row) => {
    const job = await reach("running", { timing: { maxDurationMs: MAX_DURATION } });
    job.emit(row.event);
    expect(job.value()).toBe("ending");
    job.clock.increment(MAX_DURATION * 2);
    expect(job.ofType("job.stop")).toEqual([{ type: "job.stop", jobId: JOB_ID, slotId: SLOT, reason: row.reason }]);
    expectHealthy(job);
  });

  it.each(ENDINGS)("job.ended $label → $value", async ({ outcome, value, output }) => {
    const job = await reach("running", { timing: { maxDurationMs: MAX_DURATION } });
    job.emit({ type: "job.ended", outcome });
    expectFinal(job, value, output);
    job.clock.increment(MAX_DURATION * 2);
    expect(job.ofType("job.stop")).toEqual([]);
  });
});

// ---- ending -----------------------------------------------------------------------------------------

describe("job: ending", () => {
  it.each(ENDINGS)("job.ended $label → $value", async ({ outcome, value, output }) => {
    const job = await reach("ending (cancelled)");
    job.emit({ type: "job.ended", outcome });
    expectFinal(job, value, output);
  });

  it("a second cancel, a shutdown or a late report neither leaves ending nor stops twice", async () => {
    const job = await reach("ending (cancelled)");
    for (const event of [
      { type: "job.cancel" },
      { type: "job.shutdown" },
      { type: "job.running" },
      { type: "job.launching", slotId: "slot.9" },
      { type: "job.assigned", spec: { jobId: JOB_ID } },
    ] as JobEvent[]) {
      job.emit(event);
      expect(job.value()).toBe("ending");
    }
    expect(job.ofType("job.stop")).toHaveLength(1);
    expect(job.context().slotId).toBe(SLOT);
    expectHealthy(job);
  });

  // The worker sends job.unplaced when the slot it placed the job on exits (or refuses the assignment)
  // before its process took the job: the slot's exit then carries no outcome, so no job.ended follows.
  // A job that already asked that slot to stop must still settle, or it never reaches a final state.
  it.each([
    {
      how: "cancelled while launching",
      to: (job: Job) => job.emit({ type: "job.cancel" }),
      value: "cancelled",
      output: { jobId: JOB_ID, status: "cancelled", reason: "cancelled" } as JobOutput,
    },
    {
      how: "shut down while launching",
      to: (job: Job) => job.emit({ type: "job.shutdown" }),
      value: "failed",
      output: { jobId: JOB_ID, status: "failed", reason: "worker_shutdown" } as JobOutput,
    },
    {
      how: "launch timed out",
      to: (job: Job) => job.clock.increment(LAUNCH_TIMEOUT),
      value: "failed",
      output: { jobId: JOB_ID, status: "failed", reason: "launch_failed" } as JobOutput,
    },
  ])("$how, then unplaced by its slot → reaches a final state ($value)", async ({ to, value, output }) => {
    const job = await reach("launching");
    to(job);
    expect(job.value()).toBe("ending");
    job.emit({ type: "job.unplaced" });
    // No job.ended will ever come for this slot; waiting for one leaves the job stuck.
    job.clock.increment(LAUNCH_TIMEOUT * 100);
    expect(job.value()).toBe(value);
    expect(job.status()).toBe("done");
    expect(job.output()).toMatchObject(output);
  });
});

// ---- lease ------------------------------------------------------------------------------------------

/** The state of the job's lease actor (none, held, lapsed). */
const leaseOf = (job: Job) => (job.snapshot().children.lease as AnyActorRef).getSnapshot().value;
const lapsedOutput = (extra: Partial<JobOutput> = {}): JobOutput => ({
  jobId: JOB_ID,
  status: "failed",
  reason: "lease_lapsed",
  ...extra,
});
const killedForLease: JobOutcome = { status: "failed", reason: "lease_lapsed", exitCode: null, signal: "SIGKILL" };

describe("job: lease", () => {
  it("a leased job that waits for a slot unrenewed fails lease_lapsed exactly at its validity, with no stop", async () => {
    const job = await reach("assigned", LEASED);
    expect(leaseOf(job)).toBe("held");
    job.clock.increment(LEASE - 1);
    expect(job.value()).toBe("assigned");
    job.clock.increment(1);
    expectFinal(job, "failed", lapsedOutput({ error: { name: "Error", message: "lost the registry's lease" } }));
    // Nothing ran yet: no slot to stop.
    expect(job.ofType("job.stop")).toEqual([]);
    expect(job.notifications()).toEqual([{ type: "job.needs_slot", jobId: JOB_ID }]);
  });

  it.each(["launching", "running"] as const)(
    "a lapse while %s → ending, asks the slot to stop (lease_lapsed); the slot's outcome decides",
    async (state) => {
      const job = await reach(state, { ...LEASED, timing: { maxDurationMs: MAX_DURATION } });
      job.clock.increment(LEASE - 1);
      expect(job.value()).toBe(state);
      expect(job.ofType("job.stop")).toEqual([]);
      job.clock.increment(1);
      expect(job.value()).toBe("ending");
      expect(job.status()).toBe("active");
      expect(job.context().stopReason).toBe("lease_lapsed");
      expect(job.ofType("job.stop")).toEqual([
        { type: "job.stop", jobId: JOB_ID, slotId: SLOT, reason: "lease_lapsed" },
      ]);
      // The launch and maximum-duration deadlines went with the state: no other stop follows.
      job.clock.increment(LAUNCH_TIMEOUT + MAX_DURATION);
      expect(job.ofType("job.stop")).toHaveLength(1);
      job.emit({ type: "job.ended", outcome: killedForLease });
      expectFinal(job, "failed", lapsedOutput({ exitCode: null, signal: "SIGKILL" }));
    },
  );

  it("stopped for its lease and unplaced by its slot (no outcome will come), it fails lease_lapsed", async () => {
    const job = await reach("launching", LEASED);
    job.clock.increment(LEASE);
    expect(job.value()).toBe("ending");
    job.emit({ type: "job.unplaced" });
    expectFinal(job, "failed", lapsedOutput());
  });

  it("job.lease_renewed keeps a running job past its original validity; it lapses a validity after the last renewal", async () => {
    const job = await reach("running", LEASED);
    for (let round = 0; round < 10; round++) {
      job.clock.increment(LEASE - 1);
      job.emit({ type: "job.lease_renewed", validForMs: LEASE });
    }
    expect(job.clock.now()).toBe(10 * (LEASE - 1));
    expect(job.value()).toBe("running");
    expect(job.ofType("job.stop")).toEqual([]);
    expect(leaseOf(job)).toBe("held");
    job.clock.increment(LEASE - 1);
    expect(job.value()).toBe("running");
    job.clock.increment(1);
    expect(job.value()).toBe("ending");
    expect(job.ofType("job.stop")).toEqual([{ type: "job.stop", jobId: JOB_ID, slotId: SLOT, reason: "lease_lapsed" }]);
  });

  it("renewed while it waits for a slot, the launch deadline decides (launch_failed, not lease_lapsed)", async () => {
    const job = await reach("assigned", LEASED);
    job.clock.increment(LEASE - 1);
    job.emit({ type: "job.lease_renewed", validForMs: LEASE });
    // The first validity is gone; the launch deadline (5000) comes before the renewed one (5999).
    job.clock.increment(LAUNCH_TIMEOUT - LEASE);
    expect(job.value()).toBe("assigned");
    job.clock.increment(1);
    expect(job.value()).toBe("failed");
    expect(job.output()).toMatchObject({ status: "failed", reason: "launch_failed" });
  });

  it("a renewal with no validity left (≤ 0) neither shortens nor extends the lease", async () => {
    const job = await reach("running", LEASED);
    job.clock.increment(1_000);
    job.emit({ type: "job.lease_renewed", validForMs: 0 });
    job.emit({ type: "job.lease_renewed", validForMs: -1 });
    expect(job.value()).toBe("running");
    expect(leaseOf(job)).toBe("held");
    job.clock.increment(LEASE - 1_000 - 1);
    expect(job.value()).toBe("running");
    job.clock.increment(1);
    expect(job.value()).toBe("ending");
  });

  it("a job assigned with a lease that already ran out (0) fails lease_lapsed at once", () => {
    const job = startJob({ preassigned: true, spec: { leaseValidForMs: 0 } });
    expectFinal(job, "failed", lapsedOutput({ error: { name: "Error", message: "lost the registry's lease" } }));
    expect(job.ofType("job.stop")).toEqual([]);
  });

  it("an offered job takes its lease from the assignment (takeLease) and loses it unrenewed", async () => {
    const job = await reach("offered");
    expect(leaseOf(job)).toBe("none");
    job.clock.increment(OFFER_TTL - 1);
    job.emit({ type: "job.assigned", spec: { jobId: JOB_ID, roomId: "r1", leaseValidForMs: LEASE } });
    expect(job.value()).toBe("assigned");
    expect(job.context().spec).toEqual({ jobId: JOB_ID, roomId: "r1", leaseValidForMs: LEASE });
    expect(leaseOf(job)).toBe("held");
    job.emit({ type: "job.launching", slotId: SLOT });
    job.emit({ type: "job.running" });
    job.clock.increment(LEASE - 1);
    expect(job.value()).toBe("running");
    job.clock.increment(1);
    expect(job.value()).toBe("ending");
    expect(job.ofType("job.stop")).toEqual([{ type: "job.stop", jobId: JOB_ID, slotId: SLOT, reason: "lease_lapsed" }]);
  });

  it("a renewal that reaches a job before its assignment is ignored: the lease starts with the assignment", async () => {
    // The registry vouches for a job once the worker said yes, so a pong can list it while it is offered.
    const job = await reach("offered");
    job.emit({ type: "job.lease_renewed", validForMs: 500 });
    expect(leaseOf(job)).toBe("none");
    job.clock.increment(600);
    job.emit({ type: "job.assigned", spec: { jobId: JOB_ID, leaseValidForMs: LEASE } });
    job.emit({ type: "job.launching", slotId: SLOT });
    job.emit({ type: "job.running" });
    expect(leaseOf(job)).toBe("held");
    job.clock.increment(LEASE);
    expect(job.value()).toBe("ending");
    expect(job.ofType("job.stop")).toEqual([{ type: "job.stop", jobId: JOB_ID, slotId: SLOT, reason: "lease_lapsed" }]);
  });

  it("an offered job whose assignment grants a lease already run out (0) fails lease_lapsed at once", async () => {
    const job = await reach("offered");
    job.emit({ type: "job.assigned", spec: { jobId: JOB_ID, leaseValidForMs: 0 } });
    expectFinal(job, "failed", lapsedOutput({ error: { name: "Error", message: "lost the registry's lease" } }));
    expect(job.notifications()).toEqual([
      { type: "job.answer", jobId: JOB_ID, accept: true },
      { type: "job.needs_slot", jobId: JOB_ID },
    ]);
  });

  it("an offered job assigned without a lease holds none and never lapses", async () => {
    const job = await reach("offered");
    job.emit({ type: "job.assigned", spec: { jobId: JOB_ID, roomId: "r1" } });
    job.emit({ type: "job.launching", slotId: SLOT });
    job.emit({ type: "job.running" });
    expect(leaseOf(job)).toBe("none");
    job.clock.increment(1_000_000_000);
    expect(job.value()).toBe("running");
    expect(job.ofType("job.stop")).toEqual([]);
    expectHealthy(job);
  });

  it("a preassigned job without a lease holds none and never lapses, in any state", async () => {
    for (const state of ["assigned", "launching", "running"] as const) {
      const job = await reach(state, { timing: { launchTimeoutMs: 1_000_000_000 } });
      expect(leaseOf(job)).toBe("none");
      job.clock.increment(999_999_999);
      expect(job.value()).toBe(state);
      expect(job.ofType("job.stop")).toEqual([]);
    }
  });

  it("a lapse while ending asks the slot to stop again, now with lease_lapsed; the slot's outcome still decides", async () => {
    const job = await reach("running", LEASED);
    job.clock.increment(1_000);
    job.emit({ type: "job.cancel" });
    expect(job.value()).toBe("ending");
    expect(job.ofType("job.stop").map((e) => e.reason)).toEqual(["cancelled"]);
    job.clock.increment(LEASE - 1_000 - 1);
    expect(job.ofType("job.stop")).toHaveLength(1);
    job.clock.increment(1);
    expect(job.value()).toBe("ending");
    expect(job.context().stopReason).toBe("lease_lapsed");
    expect(job.ofType("job.stop")).toEqual([
      { type: "job.stop", jobId: JOB_ID, slotId: SLOT, reason: "cancelled" },
      { type: "job.stop", jobId: JOB_ID, slotId: SLOT, reason: "lease_lapsed" },
    ]);
    // The slot keeps its first reason: the job ends cancelled.
    job.emit({ type: "job.ended", outcome: cancelledOutcome });
    expectFinal(job, "cancelled", { jobId: JOB_ID, status: "cancelled", reason: "cancelled" });
  });

  it("renewed while ending, a graceful stop is not cut short", async () => {
    const job = await reach("ending (cancelled)", LEASED);
    job.clock.increment(LEASE - 1);
    job.emit({ type: "job.lease_renewed", validForMs: LEASE });
    job.clock.increment(LEASE - 1);
    expect(job.ofType("job.stop").map((e) => e.reason)).toEqual(["cancelled"]);
    job.clock.increment(1);
    expect(job.ofType("job.stop").map((e) => e.reason)).toEqual(["cancelled", "lease_lapsed"]);
  });

  it("an offer holds no lease (deciding, offered): one on its spec or a renewal changes nothing", async () => {
    // An offer does not carry a lease from the registry; were it to, the lease starts with the assignment.
    const deciding = startJob({ spec: { leaseValidForMs: LEASE } });
    expect(leaseOf(deciding)).toBe("none");
    deciding.clock.increment(LEASE);
    expect(deciding.value()).toBe("deciding");
    expect(deciding.notifications()).toEqual([]);
    expectHealthy(deciding);
    deciding.decision.resolve(true);
    await flush();
    expect(deciding.value()).toBe("offered");

    const offered = await reach("offered");
    offered.emit({ type: "job.lease_renewed", validForMs: 0 });
    expect(leaseOf(offered)).toBe("none");
    expect(offered.value()).toBe("offered");
    expect(offered.notifications()).toEqual([{ type: "job.answer", jobId: JOB_ID, accept: true }]);
    expectHealthy(offered);
  });

  it("a final job's lease is stopped with it: nothing more happens when its validity would run out", async () => {
    const job = await reach("running", LEASED);
    job.emit({ type: "job.ended", outcome: completed });
    expectFinal(job, "completed", { jobId: JOB_ID, status: "completed" });
    const received = [...job.received];
    job.clock.increment(LEASE * 10);
    expect(job.received).toEqual(received);
    expectFinal(job, "completed", { jobId: JOB_ID, status: "completed" });
  });
});

// ---- outputs ----------------------------------------------------------------------------------------

describe("job: output of each final state", () => {
  it("completed", async () => {
    expectFinal(await reach("completed"), "completed", { jobId: JOB_ID, status: "completed" });
  });

  it("failed from the slot's outcome keeps reason, error, exitCode and signal", async () => {
    const job = await reach("running");
    job.emit({
      type: "job.ended",
      outcome: { status: "failed", reason: "memory_limit", exitCode: null, signal: "SIGKILL" },
    });
    expectFinal(job, "failed", {
      jobId: JOB_ID,
      status: "failed",
      reason: "memory_limit",
      exitCode: null,
      signal: "SIGKILL",
    });
    const crashed = await reach("failed");
    expectFinal(crashed, "failed", ENDINGS[1]?.output as JobOutput);
  });

  it("failed without an exit (no exitCode or signal keys)", async () => {
    const job = await reach("running");
    job.emit({ type: "job.ended", outcome: { status: "failed", reason: "crashed" } });
    expectFinal(job, "failed", { jobId: JOB_ID, status: "failed", reason: "crashed" });
    expect(Object.keys(job.output() ?? {})).toEqual(["jobId", "status", "reason"]);
  });

  it("failed by the job itself (launch timeout, shutdown)", async () => {
    const timedOut = await reach("assigned");
    timedOut.clock.increment(LAUNCH_TIMEOUT);
    expect(timedOut.output()).toEqual({
      jobId: JOB_ID,
      status: "failed",
      reason: "launch_failed",
      error: { name: "Error", message: "no process became free in time" },
    });
    const shutdown = await reach("assigned");
    shutdown.emit({ type: "job.shutdown" });
    expect(shutdown.output()).toEqual({ jobId: JOB_ID, status: "failed", reason: "worker_shutdown" });
  });

  it("cancelled (by the job or by the slot's outcome)", async () => {
    const byJob = await reach("assigned");
    byJob.emit({ type: "job.cancel", reason: "user asked" });
    expectFinal(byJob, "cancelled", { jobId: JOB_ID, status: "cancelled", reason: "cancelled" });
    expectFinal(await reach("cancelled"), "cancelled", { jobId: JOB_ID, status: "cancelled", reason: "cancelled" });
  });

  it("declined carries the decline reason; expired only its status", async () => {
    expectFinal(await reach("declined"), "declined", {
      jobId: JOB_ID,
      status: "declined",
      reason: "requestFn declined the job",
    });
    expectFinal(await reach("expired"), "expired", { jobId: JOB_ID, status: "expired" });
  });
});

// ---- every event in every state ---------------------------------------------------------------------

const EVERY_EVENT: { label: string; event: JobEvent }[] = [
  { label: "job.assigned", event: { type: "job.assigned", spec: { jobId: JOB_ID, roomId: "late-room" } } },
  { label: "job.launching", event: { type: "job.launching", slotId: "slot.9" } },
  { label: "job.running", event: { type: "job.running" } },
  { label: "job.unplaced", event: { type: "job.unplaced" } },
  { label: "job.ended completed", event: { type: "job.ended", outcome: completed } },
  { label: "job.ended failed", event: { type: "job.ended", outcome: failedOutcome } },
  { label: "job.ended cancelled", event: { type: "job.ended", outcome: cancelledOutcome } },
  { label: "job.cancel", event: { type: "job.cancel" } },
  { label: "job.cancel with reason", event: { type: "job.cancel", reason: "user" } },
  { label: "job.shutdown", event: { type: "job.shutdown" } },
  { label: "job.lease_renewed", event: { type: "job.lease_renewed", validForMs: LEASE } },
  { label: "job.lease_renewed with no validity left", event: { type: "job.lease_renewed", validForMs: 0 } },
];

const EVERY_STATE: Reachable[] = [
  "deciding",
  "offered",
  "assigned",
  "assigned (after unplaced)",
  "launching",
  "running",
  "ending (cancelled)",
  "ending (launch_failed)",
  "assigned (leased)",
  "running (leased)",
  "ending (lease_lapsed)",
  "completed",
  "failed",
  "cancelled",
  "declined",
  "expired",
];
const FINAL = new Set(["completed", "failed", "cancelled", "declined", "expired"]);

describe("job: every event in every state", () => {
  for (const state of EVERY_STATE) {
    describe(state, () => {
      it.each(EVERY_EVENT)("$label is handled or ignored, never an error", async ({ event }) => {
        const job = await reach(state, { timing: { maxDurationMs: MAX_DURATION } });
        expect(job.value()).toBe(machineValueOf(state));
        const before = {
          value: job.value(),
          status: job.status(),
          context: structuredClone(job.context()),
          output: structuredClone(job.output()),
          received: [...job.received],
        };
        // A renewal for a lease that already lapsed goes to a stopped lease actor: warned, dropped.
        const toLapsedLease = state === "ending (lease_lapsed)" && event.type === "job.lease_renewed";
        if (FINAL.has(before.value as string) || toLapsedLease) sendLate(job, event);
        else job.emit(event);
        expectHealthy(job);
        if (FINAL.has(before.value as string)) {
          // A late event after the job finished changes nothing and notifies nobody.
          expect(job.value()).toBe(before.value);
          expect(job.status()).toBe("done");
          expect(job.context()).toEqual(before.context);
          expect(job.output()).toEqual(before.output);
          expect(job.received).toEqual(before.received);
        }
        // Every timer the job may still hold fires without an error, and a finished job stays done.
        job.decision.resolve(true);
        await flush();
        job.clock.increment(OFFER_TTL + LAUNCH_TIMEOUT + MAX_DURATION);
        job.clock.increment(OFFER_TTL + LAUNCH_TIMEOUT + MAX_DURATION);
        expectHealthy(job);
        expect(job.doneEvents().length).toBeLessThanOrEqual(1);
        if (FINAL.has(before.value as string)) expect(job.received).toEqual(before.received);
      });
    });
  }
});
