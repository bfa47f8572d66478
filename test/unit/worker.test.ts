import { afterEach, describe, expect, it, vi } from "vitest";
import { type AnyActorLogic, type AnyActorRef, type AnyEventObject, fromCallback, fromPromise } from "xstate";
import { jobMachine } from "../../machines/job.ts";
import type { JobSpec, JobUpdate, WorkerStatus } from "../../machines/shared.ts";
import { slotMachine } from "../../machines/slot.ts";
import {
  EXIT_CLEAN,
  EXIT_FORCED,
  EXIT_LINK_FAILED,
  type LinkCommand,
  type WorkerEvent,
  type WorkerInput,
  workerMachine,
} from "../../machines/worker.ts";
import {
  BREAK,
  cooperativeBehaviour,
  type FakeBehaviour,
  FakeProcesses,
  flush,
  runMachine,
  scriptedActor,
  slowExitBehaviour,
  spawnFailingBehaviour,
  warmingBehaviour,
} from "../support/machine-harness.ts";

// ---------------------------------------------------------------------------------------------
// The real worker root with fake processes, a registry link and a load sampler the test speaks
// for, all on one SimulatedClock.
// ---------------------------------------------------------------------------------------------

const TIMING = { drainTimeoutMs: 10_000, spawnBackoffBaseMs: 1_000, spawnBackoffMaxMs: 8_000 };
const SLOT_TIMING = {
  initializeTimeoutMs: 1_000,
  closeTimeoutMs: 1_000,
  killGraceMs: 500,
  pingIntervalMs: 1_000,
  pongTimeoutMs: 1_000,
  memorySampleIntervalMs: 2_000,
  memoryWarnIntervalMs: 60_000,
};

function makeInput(overrides: Partial<WorkerInput> = {}): WorkerInput {
  return {
    maxProcesses: 3,
    numIdleProcesses: 1,
    loadThreshold: 0.75,
    timing: TIMING,
    job: { offerTtlMs: 5_000, launchTimeoutMs: 5_000, maxDurationMs: 0 },
    slot: { timing: SLOT_TIMING, memoryWarnMb: 100, memoryLimitMb: 0 },
    random: () => 0.5,
    ...overrides,
  };
}

const spec = (jobId: string, extra: Partial<JobSpec> = {}): JobSpec => ({ jobId, ...extra });

type SlotProvide = NonNullable<Parameters<typeof slotMachine.provide>[0]>;
type JobProvide = NonNullable<Parameters<typeof jobMachine.provide>[0]>;

interface HarnessOptions {
  input?: Partial<WorkerInput>;
  behaviour?: FakeBehaviour;
  slotActions?: SlotProvide["actions"];
  jobActions?: JobProvide["actions"];
  decide?: (spec: JobSpec) => Promise<boolean>;
  /** Replaces the scripted link (e.g. one that finishes). */
  link?: AnyActorLogic;
  sampler?: AnyActorLogic;
  /** Skip the after-test invariants (for deliberately synthetic events). */
  noInvariants?: boolean;
}

/** Every worker created by the running test; checked and stopped after it. */
const harnesses: Array<{ options: HarnessOptions; invariants: () => void; actor: { stop: () => void } }> = [];

function createWorker(options: HarnessOptions = {}) {
  const input = makeInput(options.input);
  const fakes = new FakeProcesses(options.behaviour ?? cooperativeBehaviour());
  /** Speaks for the registry: what the worker sends it is recorded, what the test sends is the registry's. */
  const link = scriptedActor<LinkCommand, WorkerEvent>("registry link");
  const sampler = scriptedActor<AnyEventObject, WorkerEvent>("load sampler");
  const machine = workerMachine.provide({
    actors: {
      slot: slotMachine.provide({ actors: { process: fakes.logic }, actions: options.slotActions ?? {} }),
      job: jobMachine.provide({
        actors: {
          decideOffer: fromPromise<boolean, JobSpec>(({ input: s }) => (options.decide ?? (async () => true))(s)),
        },
        actions: options.jobActions ?? {},
      }),
      registryLink: (options.link ?? link.logic) as typeof link.logic,
      loadSampler: (options.sampler ?? sampler.logic) as typeof sampler.logic,
    },
  });
  const { actor, clock, snapshot, emitted, delivered, errors } = runMachine(machine, { input, collectErrors: true });
  const commands = link.received;

  const h = {
    actor,
    clock,
    fakes,
    link,
    input,
    delivered,
    emitted,
    errors,
    options,
    snapshot,
    send: (event: WorkerEvent) => actor.send(event),
    /** A load sample from the sampler. */
    load: (value: number) => sampler.send({ type: "worker.load", value }),
    /** Advances simulated time 1 ms at a time, so timers set along the way fire when they are due. */
    tick(ms: number) {
      for (let t = 0; t < ms; t++) clock.increment(1);
    },
    status: () => snapshot().status,
    lifecycle: () => {
      const value = snapshot().value as { active?: { lifecycle: unknown } } | string;
      return typeof value === "string" ? value : value.active?.lifecycle;
    },
    pool: () => (snapshot().value as { active?: { pool: unknown } }).active?.pool,
    ctx: () => snapshot().context,
    slots: () => snapshot().context.slots,
    slotIds: () => Object.keys(snapshot().context.slots),
    phase: (phase: string) => Object.values(snapshot().context.slots).filter((s) => s.phase === phase).length,
    children: () => snapshot().children as Record<string, AnyActorRef | undefined>,
    jobChildren: () => Object.keys(snapshot().children).filter((id) => id.startsWith("job.")),
    slotOf: (jobId: string) => snapshot().context.jobs[jobId]?.slotId ?? null,
    proc: (slotId: string) => fakes.bySlot(slotId),
    sent: <T extends LinkCommand["type"]>(type: T) =>
      commands.filter((c): c is Extract<LinkCommand, { type: T }> => c.type === type),
    updates: (jobId?: string) =>
      commands.flatMap((c) =>
        c.type === "link.job_update" && (jobId === undefined || c.update.jobId === jobId) ? [c.update] : [],
      ),
    statuses: () =>
      commands.flatMap((c) => (c.type === "link.status" ? [c.status.status] : [])) as WorkerStatus["status"][],
    answers: (jobId?: string) =>
      commands.flatMap((c) =>
        c.type === "link.offer_answer" && (jobId === undefined || c.jobId === jobId) ? [c] : [],
      ),
    finished: () => emitted.flatMap((e) => (e.type === "job.finished" ? [e.output] : [])),
    rejected: () => emitted.flatMap((e) => (e.type === "job.rejected" ? [e] : [])),
    /** Events the root sent to one of its children. */
    toChild: (childId: string, type?: string) =>
      delivered.filter((d) => d.to === childId && d.from === actor.sessionId && (!type || d.event.type === type)),
    /** Ends a job's process the way a job that finished by itself does. */
    complete(jobId: string, ok = true) {
      const p = fakes.bySlot(h.slotOf(jobId) as string);
      p.emit({ type: "proc.job_ending" });
      p.emit({
        type: "proc.done",
        result: ok ? { ok: true } : { ok: false, error: { name: "TypeError", message: "bad" } },
      });
      p.emit({ type: "proc.exit", code: ok ? 0 : 1, signal: null });
    },
    /** Safety properties that must hold whenever the system is at rest. */
    invariants() {
      const s = snapshot();
      expect(errors, "root reported an error").toEqual([]);
      expect(s.status).not.toBe("error");
      expect(Object.keys(s.context.slots).length).toBeLessThanOrEqual(input.maxProcesses);
      const live = fakes.all.filter((p) => !p.disposed && !p.exited);
      expect(live.length, "live processes").toBeLessThanOrEqual(input.maxProcesses);
      // Every job actor is stopped as soon as it is final.
      for (const [id, child] of Object.entries(s.children)) {
        if (id.startsWith("job.")) expect((child as AnyActorRef).getSnapshot().status, id).toBe("active");
      }
      // No job on two slots.
      const busy = Object.values(s.context.slots).flatMap((v) => (v.jobId ? [v.jobId] : []));
      expect(new Set(busy).size).toBe(busy.length);
      const startedOn = new Map<string, number>();
      for (const p of live) {
        const started = p.last("start_job");
        if (started?.type === "start_job")
          startedOn.set(started.job.jobId, (startedOn.get(started.job.jobId) ?? 0) + 1);
      }
      for (const [jobId, n] of startedOn) expect(n, `live processes running ${jobId}`).toBe(1);
    },
  };
  harnesses.push(h);
  return h;
}
type Harness = ReturnType<typeof createWorker>;

afterEach(() => {
  const all = harnesses.splice(0);
  try {
    for (const h of all) if (!h.options.noInvariants) h.invariants();
  } finally {
    for (const h of all) h.actor.stop();
  }
});

/** Every job reported running at most once and final at most once (the repeat of a finished job aside). */
function expectUpdatesOnce(updates: JobUpdate[]) {
  const running = new Map<string, number>();
  const finals = new Map<string, number>();
  for (const u of updates) {
    const m = u.status === "running" ? running : finals;
    m.set(u.jobId, (m.get(u.jobId) ?? 0) + 1);
  }
  for (const [jobId, n] of running) expect(n, `running updates for ${jobId}`).toBe(1);
  for (const [jobId, n] of finals) expect(n, `final updates for ${jobId}`).toBe(1);
}

// ---------------------------------------------------------------------------------------------

describe("worker: starting", () => {
  it("stays starting until numIdleProcesses are warm, then runs available", () => {
    const w = createWorker({ input: { numIdleProcesses: 2, maxProcesses: 3 }, behaviour: warmingBehaviour() });
    expect(w.lifecycle()).toBe("starting");
    expect(w.pool()).toBe("ready");
    expect(w.slotIds()).toEqual(["slot.0", "slot.1"]);
    expect(w.phase("warming")).toBe(2);
    expect(w.statuses()).toEqual(["starting"]);
    w.proc("slot.0").emit({ type: "proc.ready" });
    expect(w.lifecycle()).toBe("starting");
    // A capacity change while starting republishes "starting" with the new idle count.
    expect(w.sent("link.status").at(-1)?.status).toEqual({
      status: "starting",
      load: 0,
      jobCount: 0,
      idleProcesses: 1,
    });
    w.proc("slot.1").emit({ type: "proc.ready" });
    expect(w.lifecycle()).toEqual({ running: "available" });
    expect(w.phase("idle")).toBe(2);
    expect(w.slotIds()).toHaveLength(2);
    expect(w.statuses().at(-1)).toBe("available");
    expect(w.sent("link.status").at(-1)?.status).toEqual({
      status: "available",
      load: 0,
      jobCount: 0,
      idleProcesses: 2,
    });
  });

  it("never warms more than maxProcesses slots, and counts the pool warm at maxProcesses", () => {
    const w = createWorker({ input: { numIdleProcesses: 5, maxProcesses: 2 } });
    expect(w.lifecycle()).toEqual({ running: "available" });
    expect(w.slotIds()).toEqual(["slot.0", "slot.1"]);
    expect(w.fakes.all).toHaveLength(2);
    w.tick(3_000);
    expect(w.fakes.all).toHaveLength(2);
  });

  it("with numIdleProcesses 0 it is available at once and spawns on demand", () => {
    const w = createWorker({ input: { numIdleProcesses: 0 } });
    expect(w.lifecycle()).toEqual({ running: "available" });
    expect(w.slotIds()).toEqual([]);
    w.send({ type: "worker.run", spec: spec("a") });
    expect(w.slotOf("a")).toBe("slot.0");
    expect(w.updates("a")).toEqual([{ jobId: "a", status: "running" }]);
  });

  it("a load sample while starting republishes starting", () => {
    const w = createWorker({ behaviour: warmingBehaviour() });
    w.load(0.3);
    expect(w.lifecycle()).toBe("starting");
    expect(w.sent("link.status").at(-1)?.status).toEqual({
      status: "starting",
      load: 0.3,
      jobCount: 0,
      idleProcesses: 0,
    });
  });
});

describe("worker: available ⇄ full", () => {
  it("goes full by job count and back when a job ends", () => {
    const w = createWorker({ input: { maxProcesses: 2, numIdleProcesses: 1, loadThreshold: 1 } });
    w.send({ type: "worker.run", spec: spec("a") });
    expect(w.lifecycle()).toEqual({ running: "available" });
    w.send({ type: "worker.run", spec: spec("b") });
    expect(w.lifecycle()).toEqual({ running: "full" });
    expect(w.sent("link.status").at(-1)?.status).toMatchObject({ status: "full", load: 0, jobCount: 2 });
    expect(w.slotIds()).toHaveLength(2);
    w.complete("a");
    expect(w.lifecycle()).toEqual({ running: "available" });
    expect(w.sent("link.status").at(-1)?.status).toMatchObject({ status: "available", jobCount: 1 });
  });

  it("takes maxProcesses jobs: the job share never counts as load, loadThreshold applies to the measured load", () => {
    const w = createWorker({ input: { maxProcesses: 4, numIdleProcesses: 1, loadThreshold: 0.75 } });
    for (const id of ["a", "b", "c"]) w.send({ type: "worker.run", spec: spec(id) });
    expect(w.lifecycle()).toEqual({ running: "available" });
    expect(w.sent("link.status").at(-1)?.status).toMatchObject({ status: "available", load: 0, jobCount: 3 });
    w.send({ type: "worker.run", spec: spec("d") });
    expect(w.lifecycle()).toEqual({ running: "full" });
    expect(w.sent("link.status").at(-1)?.status).toMatchObject({ status: "full", load: 0, jobCount: 4 });
    expect(w.jobChildren()).toHaveLength(4);
    // The measured load still counts on its own, whatever the job count.
    w.complete("a");
    expect(w.lifecycle()).toEqual({ running: "available" });
    w.load(0.75);
    expect(w.lifecycle()).toEqual({ running: "full" });
    expect(w.sent("link.status").at(-1)?.status).toMatchObject({ status: "full", load: 0.75, jobCount: 3 });
  });

  it("goes full by external load from the sampler and back", () => {
    const w = createWorker();
    w.load(0.8);
    expect(w.lifecycle()).toEqual({ running: "full" });
    expect(w.sent("link.status").at(-1)?.status).toMatchObject({ status: "full", load: 0.8 });
    w.load(0.9);
    expect(w.sent("link.status").at(-1)?.status).toMatchObject({ status: "full", load: 0.9 });
    w.load(0.2);
    expect(w.lifecycle()).toEqual({ running: "available" });
    expect(w.sent("link.status").at(-1)?.status).toMatchObject({ status: "available", load: 0.2 });
    w.load(Number.NaN);
    expect(w.ctx().externalLoad).toBe(0);
    w.load(7);
    expect(w.ctx().externalLoad).toBe(1);
    expect(w.lifecycle()).toEqual({ running: "full" });
    w.load(-3);
    expect(w.ctx().externalLoad).toBe(0);
    expect(w.lifecycle()).toEqual({ running: "available" });
  });
});

describe("worker: offers", () => {
  it("accepts an offer: spawns the job, reserves slot capacity, forwards yes once, then runs the assignment", async () => {
    const w = createWorker({ input: { maxProcesses: 3, numIdleProcesses: 1 } });
    w.link.send({ type: "worker.offer", spec: spec("a") });
    expect(w.jobChildren()).toEqual(["job.a"]);
    expect(w.ctx().jobs.a).toEqual({ spec: spec("a"), phase: "reserved", slotId: null });
    // The reservation counts as demand: one more process is warmed for it.
    expect(w.phase("idle")).toBe(2);
    await flush();
    expect(w.answers()).toEqual([{ type: "link.offer_answer", jobId: "a", accept: true }]);
    expect(w.sent("link.status").at(-1)?.status).toMatchObject({ status: "available", jobCount: 1 });
    w.link.send({ type: "worker.assignment", spec: spec("a", { roomId: "r1" }) });
    expect(w.slotOf("a")).toBe("slot.0");
    expect(w.ctx().jobs.a?.spec).toEqual({ jobId: "a", roomId: "r1" });
    expect(w.proc("slot.0").last("start_job")).toEqual({ type: "start_job", job: { jobId: "a", roomId: "r1" } });
    expect(w.updates("a")).toEqual([{ jobId: "a", status: "running" }]);
    // The pool keeps numIdleProcesses warm next to the busy slot.
    expect(w.phase("idle")).toBe(1);
    w.complete("a");
    expect(w.updates("a")).toEqual([
      { jobId: "a", status: "running" },
      { jobId: "a", status: "completed" },
    ]);
    expect(w.answers("a")).toHaveLength(1);
    expect(w.jobChildren()).toEqual([]);
  });

  it("an accepted offer can make the worker full", async () => {
    const w = createWorker({ input: { maxProcesses: 1, numIdleProcesses: 1 } });
    w.link.send({ type: "worker.offer", spec: spec("a") });
    expect(w.lifecycle()).toEqual({ running: "full" });
    expect(w.slotIds()).toHaveLength(1);
    await flush();
    expect(w.answers()).toEqual([{ type: "link.offer_answer", jobId: "a", accept: true }]);
  });

  it("declines while full by jobs and while full by load", async () => {
    const w = createWorker({ input: { maxProcesses: 1 } });
    w.send({ type: "worker.run", spec: spec("a") });
    expect(w.lifecycle()).toEqual({ running: "full" });
    w.link.send({ type: "worker.offer", spec: spec("b") });
    await flush();
    expect(w.answers("b")).toEqual([
      { type: "link.offer_answer", jobId: "b", accept: false, error: "worker not available" },
    ]);
    expect(w.jobChildren()).toEqual(["job.a"]);

    const loaded = createWorker();
    loaded.load(0.95);
    loaded.link.send({ type: "worker.offer", spec: spec("c") });
    await flush();
    expect(loaded.answers()).toEqual([
      { type: "link.offer_answer", jobId: "c", accept: false, error: "worker not available" },
    ]);
    expect(loaded.jobChildren()).toEqual([]);
  });

  it("declines while starting and while draining", async () => {
    const starting = createWorker({ behaviour: warmingBehaviour() });
    starting.link.send({ type: "worker.offer", spec: spec("a") });
    await flush();
    expect(starting.answers()).toEqual([
      { type: "link.offer_answer", jobId: "a", accept: false, error: "worker not available" },
    ]);
    expect(starting.jobChildren()).toEqual([]);

    const draining = createWorker();
    draining.send({ type: "worker.run", spec: spec("x") });
    draining.send({ type: "worker.drain" });
    draining.link.send({ type: "worker.offer", spec: spec("b") });
    await flush();
    expect(draining.answers()).toEqual([
      { type: "link.offer_answer", jobId: "b", accept: false, error: "worker not available" },
    ]);
    expect(draining.jobChildren()).toEqual(["job.x"]);
  });

  it("declines a duplicate job id and a job that already ran here", async () => {
    const w = createWorker();
    w.link.send({ type: "worker.offer", spec: spec("a") });
    w.link.send({ type: "worker.offer", spec: spec("a") });
    await flush();
    expect(w.answers("a")).toEqual([
      { type: "link.offer_answer", jobId: "a", accept: false, error: "job already on this worker" },
      { type: "link.offer_answer", jobId: "a", accept: true },
    ]);
    w.send({ type: "worker.run", spec: spec("r") });
    w.complete("r");
    w.link.send({ type: "worker.offer", spec: spec("r") });
    await flush();
    expect(w.answers("r")).toEqual([
      { type: "link.offer_answer", jobId: "r", accept: false, error: "job already ran on this worker" },
    ]);
  });

  it("forwards requestFn's no, and the declined job actor is stopped without a job update", async () => {
    const w = createWorker({ decide: async () => false });
    w.link.send({ type: "worker.offer", spec: spec("a") });
    await flush();
    expect(w.answers()).toEqual([
      { type: "link.offer_answer", jobId: "a", accept: false, error: "requestFn declined the job" },
    ]);
    expect(w.finished()).toEqual([{ jobId: "a", status: "declined", reason: "requestFn declined the job" }]);
    expect(w.updates()).toEqual([]);
    expect(w.jobChildren()).toEqual([]);
    expect(w.ctx().jobs).toEqual({});
  });

  it("an offer never assigned expires, and the process warmed for it is retired", async () => {
    const w = createWorker({ input: { numIdleProcesses: 1, maxProcesses: 3 } });
    w.link.send({ type: "worker.offer", spec: spec("a") });
    await flush();
    expect(w.phase("idle")).toBe(2);
    w.tick(5_000);
    expect(w.finished()).toEqual([{ jobId: "a", status: "expired" }]);
    expect(w.updates()).toEqual([]);
    expect(w.jobChildren()).toEqual([]);
    expect(w.phase("idle")).toBe(1);
    expect(w.slotIds()).toEqual(["slot.0"]);
    expect(w.proc("slot.1").last("shutdown")).toEqual({ type: "shutdown", reason: "idle_shutdown" });
  });
});

describe("worker: assignments and local runs", () => {
  it("runs an unannounced assignment when it has capacity", () => {
    const w = createWorker({ input: { maxProcesses: 2 } });
    w.link.send({ type: "worker.assignment", spec: spec("a", { roomId: "r" }) });
    expect(w.jobChildren()).toEqual(["job.a"]);
    expect(w.slotOf("a")).toBe("slot.0");
    expect(w.updates("a")).toEqual([{ jobId: "a", status: "running" }]);
    expect(w.answers()).toEqual([]);
  });

  it("rejects an unannounced assignment without capacity: job_update failed launch_failed, no job actor", () => {
    const w = createWorker({ input: { maxProcesses: 1 } });
    w.link.send({ type: "worker.assignment", spec: spec("a") });
    w.link.send({ type: "worker.assignment", spec: spec("b") });
    expect(w.jobChildren()).toEqual(["job.a"]);
    expect(w.updates("b")).toEqual([
      {
        jobId: "b",
        status: "failed",
        reason: "launch_failed",
        error: { name: "Error", message: "no capacity for an unannounced assignment" },
      },
    ]);
    expect(w.rejected()).toEqual([
      { type: "job.rejected", jobId: "b", reason: "no capacity for an unannounced assignment" },
    ]);
    // Remembered: the same job offered later is refused.
    expect(w.ctx().finishedJobs.map((f) => f.jobId)).toEqual(["b"]);
  });

  it("worker.run (local mode) runs with capacity and is rejected without", () => {
    const w = createWorker({ input: { maxProcesses: 1 } });
    w.send({ type: "worker.run", spec: spec("a") });
    expect(w.slotOf("a")).toBe("slot.0");
    w.send({ type: "worker.run", spec: spec("b") });
    expect(w.rejected()).toEqual([{ type: "job.rejected", jobId: "b", reason: "no free process for this job" }]);
    expect(w.updates("b")).toEqual([
      {
        jobId: "b",
        status: "failed",
        reason: "launch_failed",
        error: { name: "Error", message: "no free process for this job" },
      },
    ]);
    expect(w.jobChildren()).toEqual(["job.a"]);
  });

  it("a finished job assigned or run again is reported again with its own final status, never run again", () => {
    const w = createWorker();
    w.send({ type: "worker.run", spec: spec("a") });
    w.complete("a");
    const final = { jobId: "a", status: "completed" };
    w.link.send({ type: "worker.assignment", spec: spec("a") });
    w.send({ type: "worker.run", spec: spec("a") });
    expect(w.updates("a")).toEqual([{ jobId: "a", status: "running" }, final, final, final]);
    expect(w.jobChildren()).toEqual([]);
    expect(w.rejected().map((r) => r.reason)).toEqual([
      "job already ran on this worker",
      "job already ran on this worker",
    ]);
    expect(w.fakes.all.filter((p) => p.count("start_job") > 0)).toHaveLength(1);
  });

  it("spawns the replacement slot after an idle slot is handed out", () => {
    const w = createWorker({ input: { numIdleProcesses: 1, maxProcesses: 2 } });
    expect(w.slotIds()).toEqual(["slot.0"]);
    w.send({ type: "worker.run", spec: spec("a") });
    expect(w.slots()).toEqual({
      "slot.0": { phase: "busy", jobId: "a" },
      "slot.1": { phase: "idle", jobId: null },
    });
    // At maxProcesses no replacement can be spawned.
    w.send({ type: "worker.run", spec: spec("b") });
    expect(w.slots()).toEqual({
      "slot.0": { phase: "busy", jobId: "a" },
      "slot.1": { phase: "busy", jobId: "b" },
    });
    w.complete("a");
    expect(w.slots()).toEqual({
      "slot.1": { phase: "busy", jobId: "b" },
      "slot.2": { phase: "idle", jobId: null },
    });
  });
});

describe("worker: job updates and termination", () => {
  it("forwards running and completed exactly once", () => {
    const w = createWorker();
    w.send({ type: "worker.run", spec: spec("a") });
    w.tick(3_000);
    w.complete("a");
    w.tick(3_000);
    expect(w.updates()).toEqual([
      { jobId: "a", status: "running" },
      { jobId: "a", status: "completed" },
    ]);
    expect(w.finished()).toEqual([{ jobId: "a", status: "completed" }]);
  });

  it("forwards a failed job exactly once with its reason", () => {
    const w = createWorker();
    w.send({ type: "worker.run", spec: spec("a") });
    w.complete("a", false);
    w.tick(2_000);
    expect(w.updates()).toEqual([
      { jobId: "a", status: "running" },
      {
        jobId: "a",
        status: "failed",
        reason: "entrypoint_error",
        error: { name: "TypeError", message: "bad" },
        exitCode: 1,
        signal: null,
      },
    ]);
  });

  it("a late running report for a job that already ended is not forwarded", () => {
    const w = createWorker({ noInvariants: true });
    w.send({ type: "worker.run", spec: spec("a") });
    const slotId = w.slotOf("a") as string;
    w.complete("a");
    w.send({ type: "slot.job_running", slotId, jobId: "a" });
    w.send({ type: "slot.job_running", slotId: "slot.9", jobId: "a" });
    expectUpdatesOnce(w.updates());
    expect(w.updates("a")).toHaveLength(2);
  });

  it("forwards running once even when the process repeats its running report", () => {
    const w = createWorker();
    w.send({ type: "worker.run", spec: spec("a") });
    w.proc(w.slotOf("a") as string).emit({ type: "proc.job_running" });
    w.complete("a");
    expect(w.updates("a")).toEqual([
      { jobId: "a", status: "running" },
      { jobId: "a", status: "completed" },
    ]);
  });

  it("worker.terminate cancels a running job; unknown ids are ignored", () => {
    const w = createWorker();
    w.send({ type: "worker.run", spec: spec("a") });
    const p = w.proc(w.slotOf("a") as string);
    w.link.send({ type: "worker.terminate", jobId: "a", reason: "room closed" });
    w.link.send({ type: "worker.terminate", jobId: "nope" });
    expect(p.last("shutdown")).toEqual({ type: "shutdown", reason: "cancelled" });
    expect(w.toChild("job.a", "job.cancel").map((d) => d.event)).toEqual([
      { type: "job.cancel", reason: "room closed" },
    ]);
    expect(w.finished()).toEqual([{ jobId: "a", status: "cancelled", reason: "cancelled" }]);
    expect(w.updates("a")).toEqual([
      { jobId: "a", status: "running" },
      { jobId: "a", status: "cancelled", reason: "cancelled" },
    ]);
    expect(w.jobChildren()).toEqual([]);
  });

  it("worker.terminate of an accepted, unassigned offer cancels it", async () => {
    const w = createWorker();
    w.link.send({ type: "worker.offer", spec: spec("a") });
    await flush();
    w.link.send({ type: "worker.terminate", jobId: "a" });
    expect(w.updates("a")).toEqual([{ jobId: "a", status: "cancelled", reason: "cancelled" }]);
    expect(w.jobChildren()).toEqual([]);
  });

  it("emits memory warnings from slots", () => {
    const w = createWorker();
    w.send({ type: "worker.run", spec: spec("a") });
    w.proc("slot.0").emit({ type: "proc.memory", mb: 150 });
    expect(w.emitted.filter((e) => e.type === "memory.warning")).toEqual([
      { type: "memory.warning", slotId: "slot.0", mb: 150, jobId: "a" },
    ]);
  });
});

describe("worker: pool under process failures", () => {
  it("a slot that crashes while idle is never given a job, and is replaced after the spawn backoff", () => {
    const w = createWorker({ input: { numIdleProcesses: 1, maxProcesses: 2 } });
    const dead = w.proc("slot.0");
    dead.emit({ type: "proc.exit", code: 1, signal: null });
    expect(w.pool()).toBe("backingOff");
    expect(w.slotIds()).toEqual([]);
    expect(w.ctx().spawnFailures).toBe(1);
    expect(w.emitted.filter((e) => e.type === "slot.exited")).toHaveLength(1);
    w.send({ type: "worker.run", spec: spec("a") });
    expect(w.slotOf("a")).toBeNull();
    expect(w.ctx().waiting).toEqual(["a"]);
    // base 1000, one failure: step 1000, delay = 500 + 0.5 * 500.
    w.clock.increment(749);
    expect(w.pool()).toBe("backingOff");
    expect(w.fakes.all).toHaveLength(1);
    w.clock.increment(1);
    expect(w.pool()).toBe("ready");
    expect(w.slotOf("a")).toBe("slot.1");
    expect(dead.count("start_job")).toBe(0);
    expect(w.toChild("slot.0", "slot.assign")).toEqual([]);
    expect(w.updates("a")).toEqual([{ jobId: "a", status: "running" }]);
    // The new process warmed: failures are forgotten.
    expect(w.ctx().spawnFailures).toBe(0);
  });

  it.each([
    { failures: 1, random: 0, delay: 500 },
    { failures: 1, random: 0.999, delay: 999.5 },
    { failures: 2, random: 0, delay: 1_000 },
    { failures: 3, random: 0.5, delay: 3_000 },
    { failures: 4, random: 0.999, delay: 7_996 },
    { failures: 5, random: 0, delay: 4_000 },
    { failures: 6, random: 0.25, delay: 5_000 },
  ])(
    "spawn backoff after $failures failures with random $random is $delay ms (equal jitter, capped)",
    ({ failures, random, delay }) => {
      const w = createWorker({
        input: { numIdleProcesses: 1, maxProcesses: 2, random: () => random },
        behaviour: spawnFailingBehaviour(),
      });
      // Walk up to the requested failure count; each backoff is at least step/2 and at most step.
      for (let n = 1; n < failures; n++) {
        expect(w.ctx().spawnFailures).toBe(n);
        const step = Math.min(TIMING.spawnBackoffMaxMs, TIMING.spawnBackoffBaseMs * 2 ** (n - 1));
        const spawned = w.fakes.all.length;
        w.clock.increment(Math.floor(step / 2) - 1);
        expect(w.fakes.all.length).toBe(spawned);
        w.clock.increment(Math.ceil(step / 2) + 1);
        expect(w.fakes.all.length).toBe(spawned + 1);
      }
      expect(w.ctx().spawnFailures).toBe(failures);
      expect(w.pool()).toBe("backingOff");
      const step = Math.min(TIMING.spawnBackoffMaxMs, TIMING.spawnBackoffBaseMs * 2 ** (failures - 1));
      expect(delay).toBeGreaterThanOrEqual(step / 2);
      expect(delay).toBeLessThanOrEqual(step);
      const spawned = w.fakes.all.length;
      w.clock.increment(Math.ceil(delay) - 1);
      expect(w.pool()).toBe("backingOff");
      expect(w.fakes.all.length).toBe(spawned);
      w.clock.increment(1);
      expect(w.fakes.all.length).toBe(spawned + 1);
    },
  );

  it("under permanent spawn failure it keeps backing off, probing one process at a time", () => {
    const hang: FakeBehaviour = {
      onStart: (p) => p.emit({ type: "proc.spawned", pid: p.pid }),
      onCommand: cooperativeBehaviour().onCommand,
    };
    const w = createWorker({
      input: { numIdleProcesses: 2, maxProcesses: 3, random: () => 0.5 },
      behaviour: spawnFailingBehaviour(),
    });
    // The first attempt spawns numIdleProcesses at once; both fail, the second while already backing off.
    expect(w.fakes.all).toHaveLength(2);
    expect(w.pool()).toBe("backingOff");
    expect(w.ctx().spawnFailures).toBe(2);
    expect(w.lifecycle()).toBe("starting");
    // From now on processes hang while initializing, until initializeTimeout kills them.
    w.fakes.behaviour = hang;
    let maxWarming = 0;
    let backingOffMs = 0;
    for (let t = 0; t < 60_000; t++) {
      w.clock.increment(1);
      maxWarming = Math.max(maxWarming, w.phase("warming"));
      if (w.pool() === "backingOff") backingOffMs++;
    }
    expect(maxWarming).toBe(1);
    expect(w.lifecycle()).toBe("starting");
    expect(w.ctx().spawnFailures).toBeGreaterThan(5);
    // Backing off most of the time: each probe lives ≤ initialize + grace, each pause ≥ 4 s once capped.
    expect(backingOffMs).toBeGreaterThan(30_000);
    expect(w.fakes.all.length).toBeLessThanOrEqual(2 + 12);
    expect(w.sent("link.status").every((c) => c.status.status === "starting")).toBe(true);
  });
});

describe("worker: a job handed back goes to another slot", () => {
  it("slot.assign_refused puts the job back in line (job.unplaced) and it runs on another slot", () => {
    const w = createWorker({
      input: {
        numIdleProcesses: 1,
        maxProcesses: 2,
        slot: { timing: SLOT_TIMING, memoryWarnMb: 0, memoryLimitMb: 200 },
      },
      behaviour: {
        onStart: (p) => {
          p.emit({ type: "proc.spawned", pid: p.pid });
          p.emit({ type: "proc.ready" });
        },
        onCommand: (p, command) => {
          if (command.type === "ping") p.emit({ type: "proc.pong" });
          if (command.type === "start_job") p.emit({ type: "proc.job_running" });
          if (command.type === "signal") p.emit({ type: "proc.exit", code: null, signal: command.signal });
        },
      },
    });
    // slot.0 goes over its memory limit while idle and starts stopping; the root still counts it idle.
    w.proc("slot.0").emit({ type: "proc.memory", mb: 300 });
    expect(w.slots()["slot.0"]).toEqual({ phase: "idle", jobId: null });
    w.send({ type: "worker.run", spec: spec("a") });
    expect(w.toChild("slot.0", "slot.assign")).toHaveLength(1);
    expect(w.toChild("job.a", "job.unplaced")).toHaveLength(1);
    expect(w.slotOf("a")).toBe("slot.1");
    expect(w.slots()["slot.0"]).toEqual({ phase: "closing", jobId: null });
    expect(w.proc("slot.0").count("start_job")).toBe(0);
    expect(w.updates("a")).toEqual([{ jobId: "a", status: "running" }]);
    w.tick(2_000);
    expect(w.slotIds()).not.toContain("slot.0");
    // A stop the worker asked for is not a failure to warm.
    expect(w.pool()).toBe("ready");
    w.proc("slot.1").emit({ type: "proc.job_ending" });
    w.proc("slot.1").emit({ type: "proc.done", result: { ok: true } });
    w.proc("slot.1").emit({ type: "proc.exit", code: 0, signal: null });
    expect(w.updates("a")).toEqual([
      { jobId: "a", status: "running" },
      { jobId: "a", status: "completed" },
    ]);
  });

  it("a refusal from a slot that no longer holds the job changes nothing for the job", () => {
    const w = createWorker({ input: { numIdleProcesses: 2 }, noInvariants: true });
    w.send({ type: "worker.run", spec: spec("a") });
    const slotId = w.slotOf("a");
    w.send({ type: "slot.assign_refused", slotId: "slot.1", job: spec("a") });
    w.send({ type: "slot.assign_refused", slotId: "slot.77", job: spec("ghost") });
    expect(w.slotOf("a")).toBe(slotId);
    expect(w.toChild("job.a", "job.unplaced")).toEqual([]);
    // The refusing slot is leaving: it is never handed work again.
    expect(w.slots()["slot.1"]).toEqual({ phase: "closing", jobId: null });
  });

  it("a slot that dies before it took its job puts the job back in line, and it runs on another slot", () => {
    const w = createWorker({ input: { numIdleProcesses: 1, maxProcesses: 2 } });
    const first = w.proc("slot.0");
    // While the root handles slot.0's memory warning, slot.0's process exits and a job arrives: the
    // assignment for slot.0 lands in its mailbox behind the exit.
    w.actor.on("memory.warning", () => {
      first.emit({ type: "proc.exit", code: 1, signal: null });
      w.send({ type: "worker.run", spec: spec("a") });
    });
    first.emit({ type: "proc.memory", mb: 150 });
    expect(w.toChild("slot.0", "slot.assign")).toHaveLength(1);
    expect(first.count("start_job")).toBe(0);
    expect(w.toChild("job.a", "job.unplaced")).toHaveLength(1);
    expect(w.slotOf("a")).toBe("slot.1");
    expect(w.proc("slot.1").last("start_job")).toEqual({ type: "start_job", job: spec("a") });
    expect(w.updates("a")).toEqual([{ jobId: "a", status: "running" }]);
    expect(w.finished()).toEqual([]);
  });

  it("a slot that dies after it took its job fails the job as crashed, once", () => {
    const w = createWorker();
    w.send({ type: "worker.run", spec: spec("a") });
    w.proc("slot.0").emit({ type: "proc.exit", code: null, signal: "SIGSEGV" });
    expect(w.updates("a")).toEqual([
      { jobId: "a", status: "running" },
      { jobId: "a", status: "failed", reason: "crashed", exitCode: null, signal: "SIGSEGV" },
    ]);
    expect(w.finished()).toEqual([
      { jobId: "a", status: "failed", reason: "crashed", exitCode: null, signal: "SIGSEGV" },
    ]);
    // Dying with a job is the job's failure, not a failure to warm.
    expect(w.pool()).toBe("ready");
  });
});

describe("worker: draining and stopping", () => {
  it("drains: idle processes go, new work is refused, running jobs finish, then stopped with exit 0", async () => {
    const w = createWorker({ input: { numIdleProcesses: 2, maxProcesses: 3 } });
    w.send({ type: "worker.run", spec: spec("a") });
    w.link.send({ type: "worker.drain" });
    expect(w.lifecycle()).toBe("draining");
    expect(w.statuses().at(-1)).toBe("draining");
    expect(w.phase("idle")).toBe(0);
    expect(w.slotIds()).toEqual(["slot.0"]);
    w.link.send({ type: "worker.assignment", spec: spec("d") });
    w.send({ type: "worker.run", spec: spec("c") });
    w.send({ type: "worker.drain" });
    expect(w.rejected()).toEqual([
      { type: "job.rejected", jobId: "d", reason: "worker is draining" },
      { type: "job.rejected", jobId: "c", reason: "worker is draining" },
    ]);
    w.load(0.1);
    expect(w.sent("link.status").at(-1)?.status).toMatchObject({ status: "draining", jobCount: 1 });
    w.tick(9_000);
    expect(w.lifecycle()).toBe("draining");
    w.complete("a");
    expect(w.snapshot().status).toBe("done");
    expect(w.snapshot().output).toEqual({ exitCode: EXIT_CLEAN });
    expect(w.updates("a")).toEqual([
      { jobId: "a", status: "running" },
      { jobId: "a", status: "completed" },
    ]);
    expect(w.fakes.live).toEqual([]);
  });

  it("draining with no jobs stops at once", () => {
    const w = createWorker({ input: { numIdleProcesses: 2 } });
    w.send({ type: "worker.drain" });
    expect(w.snapshot().status).toBe("done");
    expect(w.snapshot().output).toEqual({ exitCode: EXIT_CLEAN });
    expect(w.fakes.all.every((p) => p.last("shutdown")?.type === "shutdown")).toBe(true);
  });

  it("an accepted offer assigned while draining still runs, on a process spawned for it", async () => {
    const w = createWorker({ input: { numIdleProcesses: 1, maxProcesses: 2 }, behaviour: warmingBehaviour() });
    w.proc("slot.0").emit({ type: "proc.ready" });
    w.link.send({ type: "worker.offer", spec: spec("a") });
    await flush();
    w.proc("slot.1").emit({ type: "proc.ready" });
    w.send({ type: "worker.drain" });
    // Nothing waits for a process yet: every idle one is let go.
    expect(w.phase("idle")).toBe(0);
    w.link.send({ type: "worker.assignment", spec: spec("a", { roomId: "r" }) });
    expect(w.ctx().waiting).toEqual(["a"]);
    const spawned = w.slotIds().filter((id) => w.slots()[id]?.phase === "warming");
    expect(spawned).toHaveLength(1);
    // The process warming for it becomes ready while draining and gets the job.
    w.proc(spawned[0] as string).emit({ type: "proc.ready" });
    expect(w.slotOf("a")).toBe(spawned[0]);
    expect(w.updates("a")).toEqual([{ jobId: "a", status: "running" }]);
    w.complete("a");
    expect(w.snapshot().output).toEqual({ exitCode: EXIT_CLEAN });
  });

  it("while draining, a job whose process died before it warmed gets a new one after the spawn backoff", () => {
    const w = createWorker({ input: { numIdleProcesses: 0, maxProcesses: 2 }, behaviour: warmingBehaviour() });
    w.send({ type: "worker.run", spec: spec("a") });
    w.send({ type: "worker.drain" });
    w.proc("slot.0").emit({ type: "proc.exit", code: 1, signal: null });
    expect(w.pool()).toBe("backingOff");
    expect(w.ctx().waiting).toEqual(["a"]);
    w.tick(750);
    expect(w.slotIds()).toEqual(["slot.1"]);
    w.proc("slot.1").emit({ type: "proc.ready" });
    expect(w.slotOf("a")).toBe("slot.1");
    expect(w.updates("a")).toEqual([{ jobId: "a", status: "running" }]);
    w.complete("a");
    expect(w.snapshot().output).toEqual({ exitCode: EXIT_CLEAN });
  });

  it("while draining, a process that turns ready with no job waiting for it any more is let go", () => {
    const w = createWorker({ input: { numIdleProcesses: 0, maxProcesses: 3 }, behaviour: warmingBehaviour() });
    w.send({ type: "worker.run", spec: spec("a") });
    w.send({ type: "worker.run", spec: spec("b") });
    w.send({ type: "worker.drain" });
    // Both processes warm on: each has a job waiting for it.
    expect(w.phase("warming")).toBe(2);
    w.send({ type: "worker.terminate", jobId: "b" });
    w.proc("slot.0").emit({ type: "proc.ready" });
    expect(w.slotOf("a")).toBe("slot.0");
    w.proc("slot.1").emit({ type: "proc.ready" });
    expect(w.proc("slot.1").last("shutdown")).toEqual({ type: "shutdown", reason: "idle_shutdown" });
    expect(w.slotIds()).toEqual(["slot.0"]);
    expect(w.lifecycle()).toBe("draining");
  });

  it("a drain timeout stops running jobs with worker_shutdown and exits 2", () => {
    const w = createWorker();
    w.send({ type: "worker.run", spec: spec("a") });
    w.send({ type: "worker.drain" });
    w.tick(9_999);
    expect(w.lifecycle()).toBe("draining");
    w.tick(1);
    expect(w.snapshot().status).toBe("done");
    expect(w.snapshot().output).toEqual({ exitCode: EXIT_FORCED });
    expect(w.proc("slot.0").last("shutdown")).toEqual({ type: "shutdown", reason: "worker_shutdown" });
    expect(w.updates("a")).toEqual([
      { jobId: "a", status: "running" },
      { jobId: "a", status: "failed", reason: "worker_shutdown", exitCode: 0, signal: null },
    ]);
  });

  it("worker.stop during drain exits 2 with jobs left", () => {
    const w = createWorker();
    w.send({ type: "worker.run", spec: spec("a") });
    w.send({ type: "worker.drain" });
    w.send({ type: "worker.stop" });
    expect(w.snapshot().status).toBe("done");
    expect(w.snapshot().output).toEqual({ exitCode: EXIT_FORCED });
    expect(w.updates("a").at(-1)).toEqual({
      jobId: "a",
      status: "failed",
      reason: "worker_shutdown",
      exitCode: 0,
      signal: null,
    });
  });

  it("worker.stop while running exits 2 with jobs and 0 without", async () => {
    const busy = createWorker();
    busy.send({ type: "worker.run", spec: spec("a") });
    busy.link.send({ type: "worker.offer", spec: spec("b") });
    busy.send({ type: "worker.stop" });
    await flush();
    expect(busy.snapshot().status).toBe("done");
    expect(busy.snapshot().output).toEqual({ exitCode: EXIT_FORCED });
    expect(
      busy
        .finished()
        .map((o) => `${o.jobId}:${o.status}`)
        .sort(),
    ).toEqual(["a:failed", "b:declined"]);
    expect(busy.answers("b")).toEqual([
      { type: "link.offer_answer", jobId: "b", accept: false, error: "worker shutting down" },
    ]);
    expectUpdatesOnce(busy.updates());

    const idle = createWorker();
    idle.send({ type: "worker.stop" });
    expect(idle.snapshot().output).toEqual({ exitCode: EXIT_CLEAN });
  });

  it("worker.drain and worker.stop while starting stop the warming processes", () => {
    for (const type of ["worker.drain", "worker.stop"] as const) {
      const w = createWorker({ behaviour: warmingBehaviour() });
      w.send({ type });
      expect(w.snapshot().status).toBe("done");
      expect(w.snapshot().output).toEqual({ exitCode: EXIT_CLEAN });
      expect(w.proc("slot.0").last("shutdown")).toEqual({ type: "shutdown", reason: "idle_shutdown" });
    }
  });

  it("a drain or stop while starting terminates, then kills, warming processes that ignore it, and exits 0", () => {
    const deafWhileWarming: FakeBehaviour = { onStart: (p) => p.emit({ type: "proc.spawned", pid: p.pid }) };
    for (const type of ["worker.drain", "worker.stop"] as const) {
      const w = createWorker({ behaviour: deafWhileWarming });
      w.send({ type });
      expect(w.lifecycle()).toBe("stopping");
      w.tick(1_000 + 500 + 500);
      expect(w.snapshot().output).toEqual({ exitCode: EXIT_CLEAN });
      expect(w.proc("slot.0").commands.map((c) => (c.type === "signal" ? c.signal : c.type))).toEqual([
        "shutdown",
        "SIGTERM",
        "SIGKILL",
      ]);
    }
  });

  it("a job still waiting for a process when the worker stops fails with worker_shutdown", () => {
    const w = createWorker({ input: { numIdleProcesses: 0, maxProcesses: 1 }, behaviour: warmingBehaviour() });
    w.send({ type: "worker.run", spec: spec("a") });
    expect(w.ctx().waiting).toEqual(["a"]);
    w.send({ type: "worker.stop" });
    w.tick(5_000);
    expect(w.snapshot().status).toBe("done");
    expect(w.snapshot().output).toEqual({ exitCode: EXIT_FORCED });
    expect(w.finished()).toEqual([{ jobId: "a", status: "failed", reason: "worker_shutdown" }]);
    expect(w.updates("a")).toEqual([{ jobId: "a", status: "failed", reason: "worker_shutdown" }]);
  });

  it("while stopping it refuses new work, ignores drain and stop, and sends away a process that turns ready", () => {
    const w = createWorker({ behaviour: slowExitBehaviour(), input: { numIdleProcesses: 1 } });
    w.send({ type: "worker.run", spec: spec("a") });
    w.send({ type: "worker.stop" });
    expect(w.lifecycle()).toBe("stopping");
    w.send({ type: "worker.stop" });
    w.send({ type: "worker.drain" });
    expect(w.lifecycle()).toBe("stopping");
    w.send({ type: "worker.run", spec: spec("b") });
    w.link.send({ type: "worker.assignment", spec: spec("c") });
    expect(w.rejected()).toEqual([
      { type: "job.rejected", jobId: "b", reason: "worker is stopping" },
      { type: "job.rejected", jobId: "c", reason: "worker is stopping" },
    ]);
    // A readiness report that crossed the stop: the process is told to go (again).
    w.send({ type: "slot.ready", slotId: "slot.1" });
    expect(w.slots()["slot.1"]?.phase).toBe("closing");
    // A job asking for a process while stopping is told to shut down.
    w.send({ type: "job.needs_slot", jobId: "a" });
    expect(w.toChild("job.a", "job.shutdown")).toHaveLength(2);
    expect(w.jobChildren()).toEqual(["job.a"]);
    w.tick(1_000 + 500 + 500);
    expect(w.snapshot().status).toBe("done");
    expect(w.snapshot().output).toEqual({ exitCode: EXIT_FORCED });
    expect(w.updates("a")).toEqual([
      { jobId: "a", status: "running" },
      { jobId: "a", status: "failed", reason: "worker_shutdown", exitCode: null, signal: "SIGKILL" },
    ]);
  });
});

describe("worker: a job is reported final once, in every lifecycle state", () => {
  it("while running, a repeated local run of a live job does not report it failed", () => {
    const w = createWorker();
    w.send({ type: "worker.run", spec: spec("a") });
    w.send({ type: "worker.run", spec: spec("a") });
    w.complete("a");
    expect(w.updates("a")).toEqual([
      { jobId: "a", status: "running" },
      { jobId: "a", status: "completed" },
    ]);
  });

  it("while draining, a finished job assigned or run again gets its own final status again", () => {
    const w = createWorker();
    w.send({ type: "worker.run", spec: spec("a") });
    w.send({ type: "worker.run", spec: spec("b") });
    w.complete("a");
    w.send({ type: "worker.drain" });
    w.link.send({ type: "worker.assignment", spec: spec("a") });
    w.send({ type: "worker.run", spec: spec("a") });
    const finals = w.updates("a").filter((u) => u.status !== "running");
    expect(finals).toEqual([
      { jobId: "a", status: "completed" },
      { jobId: "a", status: "completed" },
      { jobId: "a", status: "completed" },
    ]);
  });

  it("while stopping, a repeated assignment of a live job does not report it failed before it ends", () => {
    const w = createWorker({ behaviour: slowExitBehaviour() });
    w.send({ type: "worker.run", spec: spec("a") });
    w.send({ type: "worker.stop" });
    w.link.send({ type: "worker.assignment", spec: spec("a") });
    w.tick(2_000);
    expect(w.snapshot().status).toBe("done");
    expect(w.updates("a")).toEqual([
      { jobId: "a", status: "running" },
      { jobId: "a", status: "failed", reason: "worker_shutdown", exitCode: null, signal: "SIGKILL" },
    ]);
  });

  it("while stopping, a finished job run again locally gets its own final status again", () => {
    const w = createWorker({ behaviour: slowExitBehaviour() });
    w.send({ type: "worker.run", spec: spec("a") });
    w.send({ type: "worker.run", spec: spec("r") });
    w.complete("a");
    w.send({ type: "worker.stop" });
    expect(w.lifecycle()).toBe("stopping");
    w.send({ type: "worker.run", spec: spec("a") });
    expect(w.updates("a").filter((u) => u.status !== "running")).toEqual([
      { jobId: "a", status: "completed" },
      { jobId: "a", status: "completed" },
    ]);
    expect(w.rejected()).toEqual([{ type: "job.rejected", jobId: "a", reason: "job already ran on this worker" }]);
  });

  it("while stopping, the assignment of an accepted offer that was just shut down gets that same final status", async () => {
    const w = createWorker({ behaviour: slowExitBehaviour() });
    w.send({ type: "worker.run", spec: spec("r") });
    w.link.send({ type: "worker.offer", spec: spec("a") });
    await flush();
    w.send({ type: "worker.stop" });
    w.link.send({ type: "worker.assignment", spec: spec("a") });
    const finals = w.updates("a");
    expect(finals).toEqual([
      { jobId: "a", status: "failed", reason: "worker_shutdown" },
      { jobId: "a", status: "failed", reason: "worker_shutdown" },
    ]);
  });
});

describe("worker: leases", () => {
  /** A leased job's validity: shorter than the launch deadline. */
  const LEASE = 3_000;
  const leased = (jobId: string, validForMs = LEASE) => spec(jobId, { leaseValidForMs: validForMs });
  /** What a slot told its process to make it stop: shutdown requests and signals, in order. */
  const stopCommands = (w: Harness, slotId: string) =>
    w
      .proc(slotId)
      .commands.flatMap((c) => (c.type === "shutdown" ? ["shutdown"] : c.type === "signal" ? [c.signal] : []));
  const killedForLease = (jobId: string): JobUpdate => ({
    jobId,
    status: "failed",
    reason: "lease_lapsed",
    exitCode: null,
    signal: "SIGKILL",
  });

  it("worker.lease_renewed forwards job.lease_renewed only to the listed jobs it holds; unknown ids are ignored", () => {
    const w = createWorker({ input: { maxProcesses: 3 } });
    w.link.send({ type: "worker.assignment", spec: leased("a") });
    w.link.send({ type: "worker.assignment", spec: leased("b") });
    w.tick(1_000);
    w.link.send({ type: "worker.lease_renewed", jobIds: ["a", "ghost"], validForMs: 7_000 });
    expect(w.toChild("job.a", "job.lease_renewed").map((d) => d.event)).toEqual([
      { type: "job.lease_renewed", validForMs: 7_000 },
    ]);
    expect(w.toChild("job.b", "job.lease_renewed")).toEqual([]);
    expect(w.delivered.filter((d) => d.to === "job.ghost")).toEqual([]);
    expect(w.jobChildren().sort()).toEqual(["job.a", "job.b"]);
    // b was not renewed: it is killed at its first validity; a runs on until its renewed one.
    const slotB = w.slotOf("b") as string;
    w.tick(LEASE - 1_000 - 1);
    expect(w.toChild(slotB, "slot.stop")).toEqual([]);
    w.tick(1);
    expect(w.toChild(slotB, "slot.stop").map((d) => d.event)).toEqual([{ type: "slot.stop", reason: "lease_lapsed" }]);
    expect(stopCommands(w, slotB)).toEqual(["SIGKILL"]);
    expect(w.updates("b")).toEqual([{ jobId: "b", status: "running" }, killedForLease("b")]);
    expect(w.updates("a")).toEqual([{ jobId: "a", status: "running" }]);
    const slotA = w.slotOf("a") as string;
    // Renewed at 1000 for 7000: it lapses at 8000.
    w.tick(1_000 + 7_000 - LEASE - 1);
    expect(w.updates("a")).toEqual([{ jobId: "a", status: "running" }]);
    w.tick(1);
    expect(stopCommands(w, slotA)).toEqual(["SIGKILL"]);
    expect(w.updates("a")).toEqual([{ jobId: "a", status: "running" }, killedForLease("a")]);
    expect(w.finished().map((o) => `${o.jobId}:${o.reason}`)).toEqual(["b:lease_lapsed", "a:lease_lapsed"]);
    expect(w.jobChildren()).toEqual([]);
  });

  it("renewed before each deadline, a leased job runs for as long as the renewals come", () => {
    const w = createWorker();
    w.link.send({ type: "worker.assignment", spec: leased("a") });
    const slotId = w.slotOf("a") as string;
    for (let round = 0; round < 10; round++) {
      w.tick(LEASE - 1);
      w.link.send({ type: "worker.lease_renewed", jobIds: ["a"], validForMs: LEASE });
    }
    expect(w.toChild("job.a", "job.lease_renewed")).toHaveLength(10);
    expect(w.toChild(slotId, "slot.stop")).toEqual([]);
    w.complete("a");
    expect(w.updates("a")).toEqual([
      { jobId: "a", status: "running" },
      { jobId: "a", status: "completed" },
    ]);
  });

  it("a renewal for a job that already ended, or an empty list, changes nothing", () => {
    const w = createWorker();
    w.link.send({ type: "worker.assignment", spec: leased("a") });
    w.complete("a");
    w.link.send({ type: "worker.lease_renewed", jobIds: ["a"], validForMs: LEASE });
    w.link.send({ type: "worker.lease_renewed", jobIds: [], validForMs: LEASE });
    expect(w.delivered.filter((d) => d.event.type === "job.lease_renewed")).toEqual([]);
    expect(w.snapshot().status).toBe("active");
  });

  it("an accepted offer takes its lease from the assignment, and is killed when it lapses unrenewed", async () => {
    const w = createWorker();
    w.link.send({ type: "worker.offer", spec: spec("a") });
    await flush();
    w.tick(500);
    w.link.send({ type: "worker.assignment", spec: leased("a") });
    const slotId = w.slotOf("a") as string;
    expect(w.updates("a")).toEqual([{ jobId: "a", status: "running" }]);
    w.tick(LEASE - 1);
    expect(stopCommands(w, slotId)).toEqual([]);
    w.tick(1);
    expect(stopCommands(w, slotId)).toEqual(["SIGKILL"]);
    expect(w.updates("a")).toEqual([{ jobId: "a", status: "running" }, killedForLease("a")]);
  });

  it("a job without a lease is never stopped for one, however long it runs", () => {
    const w = createWorker();
    w.link.send({ type: "worker.assignment", spec: spec("a") });
    w.tick(30_000);
    expect(w.toChild(w.slotOf("a") as string, "slot.stop")).toEqual([]);
    expect(w.updates("a")).toEqual([{ jobId: "a", status: "running" }]);
  });

  it("a leased job still waiting for a process when its lease lapses fails lease_lapsed, no process started", () => {
    const w = createWorker({ input: { numIdleProcesses: 0, maxProcesses: 1 }, behaviour: warmingBehaviour() });
    w.link.send({ type: "worker.assignment", spec: leased("a", 500) });
    expect(w.ctx().waiting).toEqual(["a"]);
    w.tick(499);
    expect(w.finished()).toEqual([]);
    w.tick(1);
    const update = {
      jobId: "a",
      status: "failed",
      reason: "lease_lapsed",
      error: { name: "Error", message: "lost the registry's lease" },
    };
    expect(w.finished()).toEqual([update]);
    expect(w.updates("a")).toEqual([update]);
    expect(w.ctx().waiting).toEqual([]);
    expect(w.jobChildren()).toEqual([]);
    expect(w.fakes.all.every((p) => p.count("start_job") === 0)).toBe(true);
  });

  /**
   * The race settleJob closes: the job actor ends (its lease lapsed, or it was cancelled) while the
   * worker hands it a process, so the job never hears it was placed and the slot would run it alone.
   * While the root rejects job "b", slot.0 turns ready (its slot.ready is queued first) and then job
   * "a" ends (its done event is queued behind): the root places "a" on slot.0, then settles it.
   */
  function placedAsItEnds(end: (w: Harness) => void) {
    const w = createWorker({ input: { numIdleProcesses: 1, maxProcesses: 1 }, behaviour: warmingBehaviour() });
    w.link.send({ type: "worker.assignment", spec: leased("a", 500) });
    expect(w.ctx().waiting).toEqual(["a"]);
    let armed = true;
    w.actor.on("job.rejected", () => {
      if (!armed) return;
      armed = false;
      w.proc("slot.0").emit({ type: "proc.ready" });
      end(w);
    });
    // xstate's development build warns of the job.launching that reaches the ended job actor.
    const warn = vi.spyOn(console, "warn").mockImplementation(() => {});
    try {
      w.send({ type: "worker.run", spec: spec("b") });
      expect(warn.mock.calls.length).toBeGreaterThan(0);
      for (const call of warn.mock.calls) expect(String(call[0])).toMatch(/"job\.launching" was sent to stopped actor/);
    } finally {
      warn.mockRestore();
    }
    expect(armed).toBe(false);
    expect(w.rejected()).toEqual([{ type: "job.rejected", jobId: "b", reason: "no free process for this job" }]);
    // The root did hand slot.0 the job, and its process started it.
    expect(w.toChild("slot.0", "slot.assign")).toHaveLength(1);
    expect(w.proc("slot.0").last("start_job")).toEqual({ type: "start_job", job: leased("a", 500) });
    return w;
  }

  it("a job whose lease lapses as a slot is handed to it: the worker stops that slot with lease_lapsed (SIGKILL)", () => {
    const w = placedAsItEnds((worker) => worker.clock.increment(500));
    expect(w.toChild("slot.0", "slot.stop").map((d) => d.event)).toEqual([
      { type: "slot.stop", reason: "lease_lapsed" },
    ]);
    expect(stopCommands(w, "slot.0")).toEqual(["SIGKILL"]);
    const update = {
      jobId: "a",
      status: "failed",
      reason: "lease_lapsed",
      error: { name: "Error", message: "lost the registry's lease" },
    };
    expect(w.finished()).toEqual([update]);
    // Reported once, and never running: the process's late running report is not forwarded.
    expect(w.updates("a")).toEqual([update]);
    expect(w.slotIds()).not.toContain("slot.0");
    expect(w.jobChildren()).toEqual([]);
  });

  it("a job cancelled as a slot is handed to it: the worker stops that slot with cancelled", () => {
    const w = placedAsItEnds((worker) => (worker.children()["job.a"] as AnyActorRef).send({ type: "job.cancel" }));
    expect(w.toChild("slot.0", "slot.stop").map((d) => d.event)).toEqual([{ type: "slot.stop", reason: "cancelled" }]);
    expect(w.proc("slot.0").last("shutdown")).toEqual({ type: "shutdown", reason: "cancelled" });
    expect(w.updates("a")).toEqual([{ jobId: "a", status: "cancelled", reason: "cancelled" }]);
    expect(w.slotIds()).not.toContain("slot.0");
  });
});

describe("worker: registry link and load sampler", () => {
  it("a registry link that finishes stops the worker with exit 1", async () => {
    let finish: () => void = () => {};
    const link = fromPromise<void, unknown>(
      () =>
        new Promise<void>((resolve) => {
          finish = resolve;
        }),
    );
    const w = createWorker({ link });
    w.send({ type: "worker.run", spec: spec("a") });
    finish();
    await flush();
    expect(w.snapshot().status).toBe("done");
    expect(w.snapshot().output).toEqual({ exitCode: EXIT_LINK_FAILED });
    expect(w.finished()).toEqual([
      expect.objectContaining({ jobId: "a", status: "failed", reason: "worker_shutdown" }),
    ]);
  });

  it("a registry link that breaks at run time stops the worker with exit 1", () => {
    const w = createWorker({ behaviour: slowExitBehaviour() });
    w.send({ type: "worker.run", spec: spec("a") });
    (w.children().registryLink as AnyActorRef).send({ type: BREAK });
    expect(w.lifecycle()).toBe("stopping");
    w.tick(2_000);
    expect(w.snapshot().status).toBe("done");
    expect(w.snapshot().output).toEqual({ exitCode: EXIT_LINK_FAILED });
  });

  it("a registry link that throws on start stops the worker with exit 1", () => {
    const link = fromCallback(() => {
      throw new Error("no registry url");
    });
    const w = createWorker({ link });
    expect(w.snapshot().status).toBe("done");
    expect(w.snapshot().output).toEqual({ exitCode: EXIT_LINK_FAILED });
  });

  it("a link that fails while draining keeps exit 1", () => {
    const w = createWorker({ behaviour: slowExitBehaviour() });
    w.send({ type: "worker.run", spec: spec("a") });
    w.send({ type: "worker.drain" });
    (w.children().registryLink as AnyActorRef).send({ type: BREAK });
    w.tick(2_000);
    expect(w.snapshot().output).toEqual({ exitCode: EXIT_LINK_FAILED });
  });

  it("tolerates a load sampler that throws", () => {
    const w = createWorker({
      sampler: fromCallback(() => {
        throw new Error("no cpu stats");
      }),
    });
    expect(w.snapshot().status).toBe("active");
    expect(w.lifecycle()).toEqual({ running: "available" });
    expect(w.ctx().externalLoad).toBe(0);
    w.send({ type: "worker.run", spec: spec("a") });
    expect(w.updates("a")).toEqual([{ jobId: "a", status: "running" }]);
  });

  it("a load sampler that breaks after reporting load resets the load to 0", () => {
    const w = createWorker();
    w.load(0.9);
    expect(w.lifecycle()).toEqual({ running: "full" });
    (w.children().loadSampler as AnyActorRef).send({ type: BREAK });
    expect(w.ctx().externalLoad).toBe(0);
    expect(w.lifecycle()).toEqual({ running: "available" });
    expect(w.snapshot().status).toBe("active");
  });
});

describe("worker: supervision of child machines", () => {
  it("a slot machine that errors is settled: its job fails as crashed, the root stays active", () => {
    const w = createWorker({
      input: { numIdleProcesses: 1, maxProcesses: 1 },
      slotActions: {
        notifyJobRunning: () => {
          throw new Error("slot bug");
        },
      },
      // The process-count invariant is asserted below, where it fails.
      noInvariants: true,
    });
    w.send({ type: "worker.run", spec: spec("a") });
    expect(w.snapshot().status).toBe("active");
    expect(w.updates("a")).toEqual([
      { jobId: "a", status: "failed", reason: "crashed", error: { name: "Error", message: "slot supervisor failed" } },
    ]);
    expect(w.children()["slot.0"]).toBeUndefined();
    expect(w.slotIds()).toEqual([]);
    expect(w.pool()).toBe("backingOff");
    w.tick(1_000);
    expect(w.slotIds()).toEqual(["slot.1"]);
    expect(w.lifecycle()).toEqual({ running: "available" });
    // The broken slot's process must not outlive its supervisor: with maxProcesses 1, the
    // replacement may only run once the old process is gone.
    expect(w.proc("slot.0").disposed, "process of the failed slot machine stopped").toBe(true);
    expect(w.fakes.live.filter((p) => !p.disposed).length).toBeLessThanOrEqual(1);
  });

  it("an idle slot machine that errors is replaced after the backoff", () => {
    const w = createWorker({
      input: { numIdleProcesses: 1, maxProcesses: 2 },
      slotActions: {
        requestMemorySample: () => {
          throw new Error("slot bug");
        },
      },
      noInvariants: true,
    });
    w.tick(2_000);
    expect(w.snapshot().status).toBe("active");
    expect(w.slotIds()).not.toContain("slot.0");
    expect(w.ctx().spawnFailures).toBeGreaterThanOrEqual(1);
  });

  it("a job machine that errors before placement is reported failed once; the root stays active", () => {
    const w = createWorker({
      jobActions: {
        requestSlot: () => {
          throw new Error("job bug");
        },
      },
    });
    w.send({ type: "worker.run", spec: spec("a") });
    expect(w.snapshot().status).toBe("active");
    expect(w.updates("a")).toEqual([
      { jobId: "a", status: "failed", reason: "crashed", error: { name: "Error", message: "job bug" } },
    ]);
    expect(w.finished()).toEqual([
      { jobId: "a", status: "failed", reason: "crashed", error: { name: "Error", message: "job bug" } },
    ]);
    expect(w.jobChildren()).toEqual([]);
    expect(w.ctx().jobs).toEqual({});
    expect(w.ctx().waiting).toEqual([]);
  });

  it("a job machine that errors while placed stops its slot with worker_shutdown", () => {
    const w = createWorker({
      jobActions: {
        recordSlot: () => {
          throw new Error("job bug");
        },
      },
    });
    w.send({ type: "worker.run", spec: spec("a") });
    expect(w.snapshot().status).toBe("active");
    expect(w.proc("slot.0").last("shutdown")).toEqual({ type: "shutdown", reason: "worker_shutdown" });
    expect(w.slotIds()).not.toContain("slot.0");
    expectUpdatesOnce(w.updates());
    expect(w.updates("a").at(-1)).toEqual({
      jobId: "a",
      status: "failed",
      reason: "crashed",
      error: { name: "Error", message: "job bug" },
    });
    expect(w.lifecycle()).toEqual({ running: "available" });
  });

  it("every job actor is stopped as soon as it is final", async () => {
    const w = createWorker({ input: { maxProcesses: 4 }, decide: async (s) => s.jobId !== "no" });
    const check = () =>
      expect(w.jobChildren().sort()).toEqual(
        Object.keys(w.ctx().jobs)
          .map((id) => `job.${id}`)
          .sort(),
      );
    w.send({ type: "worker.run", spec: spec("done") });
    w.link.send({ type: "worker.offer", spec: spec("no") });
    w.link.send({ type: "worker.offer", spec: spec("ttl") });
    w.send({ type: "worker.run", spec: spec("cancel") });
    await flush();
    check();
    w.complete("done");
    check();
    w.send({ type: "worker.terminate", jobId: "cancel" });
    check();
    w.tick(5_000);
    check();
    expect(w.jobChildren()).toEqual([]);
    expect(w.finished().map((o) => `${o.jobId}:${o.status}`)).toEqual([
      "no:declined",
      "done:completed",
      "cancel:cancelled",
      "ttl:expired",
    ]);
  });
});

describe("worker: robustness", () => {
  const unknownJob = "zz";
  const unknownSlot = "slot.77";
  /** Every WorkerEvent type, with plausible payloads: known ids, unknown ids, odd values. */
  const eventsFor = (jobId: string | null, slotId: string | null): WorkerEvent[] => {
    const ids = [jobId, unknownJob].filter((x): x is string => x !== null);
    const slots = [slotId, unknownSlot].filter((x): x is string => x !== null);
    const events: WorkerEvent[] = [
      { type: "worker.offer", spec: spec("new") },
      { type: "worker.assignment", spec: spec("new") },
      { type: "worker.run", spec: spec("new") },
      { type: "worker.load", value: 0.5 },
      { type: "worker.load", value: 2 },
      { type: "worker.load", value: Number.NaN },
      { type: "worker.drain" },
      { type: "worker.stop" },
      { type: "worker.capacity_changed" },
    ];
    for (const id of ids) {
      events.push(
        { type: "worker.offer", spec: spec(id) },
        { type: "worker.assignment", spec: spec(id) },
        { type: "worker.run", spec: spec(id) },
        { type: "worker.terminate", jobId: id },
        { type: "job.answer", jobId: id, accept: true },
        { type: "job.answer", jobId: id, accept: false, error: "no" },
        { type: "job.needs_slot", jobId: id },
        { type: "worker.lease_renewed", jobIds: [id], validForMs: 5_000 },
        { type: "worker.lease_renewed", jobIds: [id, "other"], validForMs: 0 },
      );
      for (const s of slots) {
        events.push(
          { type: "slot.job_running", slotId: s, jobId: id },
          { type: "slot.assign_refused", slotId: s, job: spec(id) },
          { type: "slot.memory_warning", slotId: s, mb: 900, jobId: id },
          { type: "job.stop", jobId: id, slotId: s, reason: "cancelled" },
          { type: "job.stop", jobId: id, slotId: s, reason: "worker_shutdown" },
          { type: "job.stop", jobId: id, slotId: s, reason: "lease_lapsed" },
        );
      }
    }
    for (const s of slots) events.push({ type: "slot.ready", slotId: s });
    events.push({ type: "worker.lease_renewed", jobIds: [], validForMs: 5_000 });
    return events;
  };

  interface Probe {
    w: Harness;
    jobId: string | null;
    slotId: string | null;
  }
  /** Each lifecycle state, reached for real; a known job "a" (on a known slot where there is one). */
  const states: Array<{ name: string; lifecycle: unknown; pool: string; reach: () => Promise<Probe> }> = [
    {
      name: "starting",
      lifecycle: "starting",
      pool: "ready",
      reach: async () => {
        const w = createWorker({ behaviour: warmingBehaviour(), noInvariants: true });
        w.send({ type: "worker.run", spec: spec("a") });
        return { w, jobId: "a", slotId: "slot.0" };
      },
    },
    {
      name: "available with a running job",
      lifecycle: { running: "available" },
      pool: "ready",
      reach: async () => {
        const w = createWorker({ noInvariants: true });
        w.send({ type: "worker.run", spec: spec("a") });
        return { w, jobId: "a", slotId: w.slotOf("a") };
      },
    },
    {
      name: "available with an accepted offer",
      lifecycle: { running: "available" },
      pool: "ready",
      reach: async () => {
        const w = createWorker({ noInvariants: true });
        w.link.send({ type: "worker.offer", spec: spec("a") });
        await flush();
        return { w, jobId: "a", slotId: "slot.0" };
      },
    },
    {
      name: "available while the pool backs off",
      lifecycle: { running: "available" },
      pool: "backingOff",
      reach: async () => {
        const w = createWorker({ noInvariants: true });
        w.proc("slot.0").emit({ type: "proc.exit", code: 1, signal: null });
        w.send({ type: "worker.run", spec: spec("a") });
        return { w, jobId: "a", slotId: null };
      },
    },
    {
      name: "full",
      lifecycle: { running: "full" },
      pool: "ready",
      reach: async () => {
        const w = createWorker({ input: { maxProcesses: 1 }, noInvariants: true });
        w.send({ type: "worker.run", spec: spec("a") });
        return { w, jobId: "a", slotId: w.slotOf("a") };
      },
    },
    {
      name: "draining",
      lifecycle: "draining",
      pool: "ready",
      reach: async () => {
        const w = createWorker({ noInvariants: true });
        w.send({ type: "worker.run", spec: spec("a") });
        w.send({ type: "worker.drain" });
        return { w, jobId: "a", slotId: w.slotOf("a") };
      },
    },
    {
      name: "stopping",
      lifecycle: "stopping",
      pool: "ready",
      reach: async () => {
        const w = createWorker({ behaviour: slowExitBehaviour(), noInvariants: true });
        w.send({ type: "worker.run", spec: spec("a") });
        w.send({ type: "worker.stop" });
        return { w, jobId: "a", slotId: w.slotOf("a") };
      },
    },
  ];

  it("no WorkerEvent in any lifecycle state puts the root into status error", async () => {
    const failures: string[] = [];
    for (const state of states) {
      const probe = await state.reach();
      expect(probe.w.lifecycle(), state.name).toEqual(state.lifecycle);
      expect(probe.w.pool(), state.name).toBe(state.pool);
      probe.w.actor.stop();
      for (const event of eventsFor(probe.jobId, probe.slotId)) {
        const { w } = await state.reach();
        w.send(event);
        await flush();
        w.tick(100);
        if (w.snapshot().status === "error" || w.errors.length > 0) {
          failures.push(`${state.name} + ${JSON.stringify(event)}: ${String(w.errors[0] ?? w.snapshot().error)}`);
        }
        w.actor.stop();
      }
    }
    expect(failures).toEqual([]);
  });
});
