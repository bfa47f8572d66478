import { describe, expect, it } from "vitest";
import { fromPromise } from "xstate";
import { type JobEvent, type JobOutput, jobMachine } from "../../machines/job.ts";
import type { JobOutcome, JobSpec } from "../../machines/shared.ts";
import { hostChild } from "../support/host.ts";

const timing = { offerTtlMs: 1_000, launchTimeoutMs: 2_000, maxDurationMs: 0 };
const spec: JobSpec = { jobId: "j1", agentName: "A" };
const flush = () => new Promise((resolve) => setImmediate(resolve));

function job(
  options: { preassigned?: boolean; decide?: () => Promise<boolean>; maxDurationMs?: number; spec?: JobSpec } = {},
) {
  const decide = options.decide ?? (async () => true);
  const t = hostChild(jobMachine.provide({ actors: { decideOffer: fromPromise(decide) } }), {
    spec: options.spec ?? spec,
    preassigned: options.preassigned ?? false,
    timing: { ...timing, maxDurationMs: options.maxDurationMs ?? 0 },
  });
  const value = () => t.snapshot().value;
  const output = () => t.snapshot().output as JobOutput;
  return { ...t, value, output };
}

async function offered() {
  const t = job();
  await flush();
  return t;
}

function assigned() {
  return job({ preassigned: true });
}

function launching() {
  const t = assigned();
  t.send({ type: "job.launching", slotId: "slot.1" });
  return t;
}

function running(options: Parameters<typeof job>[0] = {}) {
  const t = job({ preassigned: true, ...options });
  t.send({ type: "job.launching", slotId: "slot.1" });
  t.send({ type: "job.running" });
  return t;
}

const ended = (outcome: JobOutcome): JobEvent => ({ type: "job.ended", outcome });

describe("job machine", () => {
  it("asks requestFn, answers yes and holds the offer", async () => {
    const t = job();
    expect(t.value()).toBe("deciding");
    await flush();
    expect(t.value()).toBe("offered");
    expect(t.ofType("job.answer")).toEqual([{ type: "job.answer", jobId: "j1", accept: true }]);
  });

  it("declines when requestFn says no, throws, or does not answer in time", async () => {
    const no = job({ decide: async () => false });
    await flush();
    expect(no.value()).toBe("declined");
    expect(no.ofType("job.answer")[0]).toMatchObject({ accept: false, error: "requestFn declined the job" });
    expect(no.output()).toEqual({ jobId: "j1", status: "declined", reason: "requestFn declined the job" });

    const throws = job({
      decide: async () => {
        throw new Error("nope");
      },
    });
    await flush();
    expect(throws.ofType("job.answer")[0]).toMatchObject({ accept: false, error: "requestFn failed: nope" });

    const hangs = job({ decide: () => new Promise(() => {}) });
    hangs.clock.increment(1_000);
    expect(hangs.value()).toBe("declined");
    expect(hangs.ofType("job.answer")[0]).toMatchObject({ error: "requestFn did not answer in time" });
  });

  it("a cancel or shutdown while deciding declines", () => {
    for (const event of [{ type: "job.cancel" }, { type: "job.shutdown" }] as const) {
      const t = job({ decide: () => new Promise(() => {}) });
      t.send(event);
      expect(t.value()).toBe("declined");
      expect(t.ofType("job.answer")[0]?.accept).toBe(false);
    }
  });

  it("an offer expires without its assignment", async () => {
    const t = await offered();
    t.clock.increment(999);
    expect(t.value()).toBe("offered");
    t.clock.increment(1);
    expect(t.output()).toEqual({ jobId: "j1", status: "expired" });
  });

  it("an assignment merges into the spec and asks for a slot", async () => {
    const t = await offered();
    t.send({ type: "job.assigned", spec: { jobId: "j1", roomId: "r1", metadata: { x: 1 } } });
    expect(t.value()).toBe("assigned");
    expect(t.snapshot().context.spec).toMatchObject({ agentName: "A", roomId: "r1", metadata: { x: 1 } });
    expect(t.ofType("job.needs_slot")).toEqual([{ type: "job.needs_slot", jobId: "j1" }]);
  });

  it("offered jobs end on cancel and shutdown", async () => {
    const cancel = await offered();
    cancel.send({ type: "job.cancel" });
    expect(cancel.output()).toEqual({ jobId: "j1", status: "cancelled", reason: "cancelled" });
    const shutdown = await offered();
    shutdown.send({ type: "job.shutdown" });
    expect(shutdown.output()).toMatchObject({ status: "failed", reason: "worker_shutdown" });
  });

  it("a preassigned job waits for a slot, and fails when none comes in time", () => {
    const t = assigned();
    expect(t.value()).toBe("assigned");
    t.clock.increment(2_000);
    expect(t.output()).toMatchObject({
      status: "failed",
      reason: "launch_failed",
      error: { message: "no process became free in time" },
    });
    const cancel = assigned();
    cancel.send({ type: "job.cancel" });
    expect(cancel.value()).toBe("cancelled");
    const shutdown = assigned();
    shutdown.send({ type: "job.shutdown" });
    expect(shutdown.output().reason).toBe("worker_shutdown");
  });

  it("launching → running; a lost slot puts it back to waiting for one", () => {
    const t = launching();
    expect(t.snapshot().context.slotId).toBe("slot.1");
    t.send({ type: "job.unplaced" });
    expect(t.value()).toBe("assigned");
    expect(t.ofType("job.needs_slot")).toHaveLength(2);
    t.send({ type: "job.launching", slotId: "slot.2" });
    t.send({ type: "job.running" });
    expect(t.value()).toBe("running");
    expect(t.snapshot().context.slotId).toBe("slot.2");
  });

  it("a launch that never reports running is stopped as launch_failed", () => {
    const t = launching();
    t.clock.increment(2_000);
    expect(t.value()).toBe("ending");
    expect(t.ofType("job.stop")).toEqual([
      { type: "job.stop", jobId: "j1", slotId: "slot.1", reason: "launch_failed" },
    ]);
    t.send(ended({ status: "failed", reason: "launch_failed" }));
    expect(t.output()).toMatchObject({ status: "failed", reason: "launch_failed" });
  });

  it("cancel and shutdown while launching or running go through the slot", () => {
    for (const make of [launching, () => running()]) {
      const cancel = make();
      cancel.send({ type: "job.cancel" });
      expect(cancel.value()).toBe("ending");
      expect(cancel.ofType("job.stop").at(-1)?.reason).toBe("cancelled");
      cancel.send(ended({ status: "cancelled", reason: "cancelled" }));
      expect(cancel.output().status).toBe("cancelled");
      const shutdown = make();
      shutdown.send({ type: "job.shutdown" });
      expect(shutdown.ofType("job.stop").at(-1)?.reason).toBe("worker_shutdown");
      shutdown.send(ended({ status: "failed", reason: "worker_shutdown" }));
      expect(shutdown.output()).toMatchObject({ status: "failed", reason: "worker_shutdown" });
    }
  });

  it("ends with the slot's outcome from launching, running and ending", () => {
    const outcomes: JobOutcome[] = [
      { status: "completed" },
      { status: "cancelled", reason: "cancelled" },
      { status: "failed", reason: "crashed", exitCode: 3, signal: null, error: { name: "E", message: "m" } },
    ];
    for (const outcome of outcomes) {
      for (const make of [launching, () => running()]) {
        const t = make();
        t.send(ended(outcome));
        expect(t.output().status).toBe(outcome.status);
        if (outcome.status === "failed") {
          expect(t.output()).toMatchObject({ reason: "crashed", exitCode: 3, signal: null, error: { message: "m" } });
        }
      }
      const ending = running();
      ending.send({ type: "job.cancel" });
      ending.send(ended(outcome));
      expect(ending.output().status).toBe(outcome.status);
    }
  });

  it("stops a job at its maximum duration, from the worker or from the assignment", () => {
    const fromWorker = running({ maxDurationMs: 5_000 });
    fromWorker.clock.increment(4_999);
    expect(fromWorker.value()).toBe("running");
    fromWorker.clock.increment(1);
    expect(fromWorker.ofType("job.stop").at(-1)?.reason).toBe("max_duration");
    const fromSpec = running({ spec: { jobId: "j1", maxDurationMs: 300 }, maxDurationMs: 5_000 });
    fromSpec.clock.increment(300);
    expect(fromSpec.value()).toBe("ending");
    const unlimited = running();
    unlimited.clock.increment(1_000_000);
    expect(unlimited.value()).toBe("running");
  });

  it("late or repeated events change nothing and never put it in error", async () => {
    const events: JobEvent[] = [
      { type: "job.assigned", spec: { jobId: "j1" } },
      { type: "job.launching", slotId: "slot.9" },
      { type: "job.running" },
      { type: "job.unplaced" },
      ended({ status: "completed" }),
      { type: "job.cancel" },
      { type: "job.shutdown" },
    ];
    const reach = [() => job({ decide: () => new Promise(() => {}) }), assigned, launching, () => running()];
    for (const make of reach) {
      for (const event of events) {
        for (const second of events) {
          const t = make();
          t.send(event);
          t.send(second);
          expect(t.snapshot().status).not.toBe("error");
          expect(t.host.getSnapshot().status).toBe("active");
        }
      }
    }
    const done = running();
    done.send(ended({ status: "completed" }));
    const before = done.output();
    for (const event of events) done.send(event);
    expect(done.output()).toEqual(before);
    const offeredJob = await offered();
    offeredJob.send({ type: "job.running" });
    expect(offeredJob.value()).toBe("offered");
  });
});
