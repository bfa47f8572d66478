import { describe, expect, it } from "vitest";
import { type AnyActorRef, type AnyEventObject, fromCallback, fromPromise, SimulatedClock, setup } from "xstate";
import { jobMachine } from "../../machines/job.ts";
import type { JobSpec } from "../../machines/shared.ts";
import { slotMachine } from "../../machines/slot.ts";
import {
  EXIT_CLEAN,
  EXIT_FORCED,
  EXIT_LINK_FAILED,
  type LinkCommand,
  type WorkerEmitted,
  type WorkerEvent,
  type WorkerInput,
  workerMachine,
} from "../../machines/worker.ts";
import { createTracedActor } from "../support/actor.ts";
import { cooperativeBehaviour, type FakeBehaviour, FakeProcesses } from "../support/fake-process.ts";

const flush = () => new Promise((resolve) => setImmediate(resolve));

const input = (overrides: Partial<WorkerInput> = {}): WorkerInput => ({
  maxProcesses: 3,
  numIdleProcesses: 1,
  loadThreshold: 0.75,
  timing: { drainTimeoutMs: 10_000, spawnBackoffBaseMs: 1_000, spawnBackoffMaxMs: 8_000 },
  job: { offerTtlMs: 5_000, launchTimeoutMs: 5_000, maxDurationMs: 0 },
  slot: {
    timing: {
      initializeTimeoutMs: 1_000,
      closeTimeoutMs: 1_000,
      killGraceMs: 500,
      pingIntervalMs: 1_000,
      pongTimeoutMs: 1_000,
      memorySampleIntervalMs: 2_000,
      memoryWarnIntervalMs: 60_000,
    },
    memoryWarnMb: 100,
    memoryLimitMb: 0,
  },
  random: () => 0.5,
  ...overrides,
});

/** A registry link that records what the worker sends it, and can finish or break on request. */
function fakeLink(commands: LinkCommand[]) {
  return setup({
    actions: {
      record: ({ event }) => {
        commands.push(event as LinkCommand);
      },
      explode: () => {
        throw new Error("link broke");
      },
    },
  }).createMachine({
    initial: "up",
    states: {
      up: { on: { "test.finish": "gone", "test.explode": { actions: "explode" }, "*": { actions: "record" } } },
      gone: { type: "final" },
    },
  });
}

interface WorkerOptions {
  input?: Partial<WorkerInput>;
  behaviour?: FakeBehaviour;
  decide?: () => Promise<boolean>;
  sampler?: ReturnType<typeof fromCallback>;
  slotActions?: Record<string, () => void>;
  jobActions?: Record<string, () => void>;
}

function worker(options: WorkerOptions = {}) {
  const fakes = new FakeProcesses(options.behaviour ?? cooperativeBehaviour());
  const commands: LinkCommand[] = [];
  const emitted: WorkerEmitted[] = [];
  const machine = workerMachine.provide({
    actors: {
      slot: slotMachine.provide({ actors: { process: fakes.logic }, actions: options.slotActions ?? {} }),
      job: jobMachine.provide({
        actors: { decideOffer: fromPromise(options.decide ?? (async () => true)) },
        actions: options.jobActions ?? {},
      }),
      registryLink: fakeLink(commands) as never,
      ...(options.sampler ? { loadSampler: options.sampler as never } : {}),
    },
  });
  const clock = new SimulatedClock();
  const actor = createTracedActor(machine, { clock, input: input(options.input) });
  actor.on("*", (event) => emitted.push(event as WorkerEmitted));
  actor.start();
  const snapshot = () => actor.getSnapshot();
  const lifecycle = () =>
    (snapshot().value as { active?: { lifecycle: unknown } }).active?.lifecycle ?? snapshot().value;
  const pool = () => (snapshot().value as { active?: { pool: unknown } }).active?.pool;
  const slots = () => snapshot().context.slots;
  const phases = (phase: string) => Object.values(slots()).filter((s) => s.phase === phase).length;
  const children = () => snapshot().children as Record<string, AnyActorRef | undefined>;
  const send = (event: WorkerEvent) => actor.send(event);
  const link = () => children().registryLink as AnyActorRef;
  const sent = (type: LinkCommand["type"]) => commands.filter((c) => c.type === type);
  const updates = () => commands.flatMap((c) => (c.type === "link.job_update" ? [c.update] : []));
  const finished = () => emitted.flatMap((e) => (e.type === "job.finished" ? [e.output] : []));
  const slotOf = (jobId: string) => snapshot().context.jobs[jobId]?.slotId ?? null;
  const procOf = (jobId: string) => fakes.bySlot(slotOf(jobId) as string);
  return {
    actor,
    clock,
    fakes,
    commands,
    emitted,
    snapshot,
    lifecycle,
    pool,
    slots,
    phases,
    children,
    send,
    link,
    sent,
    updates,
    finished,
    slotOf,
    procOf,
  };
}

const spec = (jobId: string, extra: Partial<JobSpec> = {}): JobSpec => ({ jobId, ...extra });

/** Ends a job's process the way a job that finished by itself does. */
function complete(w: ReturnType<typeof worker>, jobId: string) {
  const p = w.procOf(jobId);
  p.emit({ type: "proc.job_ending" });
  p.emit({ type: "proc.done", result: { ok: true } });
  p.emit({ type: "proc.exit", code: 0, signal: null });
}

describe("worker machine", () => {
  it("warms the pool, then runs available; never more than maxProcesses slots", () => {
    const w = worker({ input: { numIdleProcesses: 2 } });
    expect(w.lifecycle()).toEqual({ running: "available" });
    expect(w.phases("idle")).toBe(2);
    expect(Object.keys(w.slots())).toHaveLength(2);
    expect(w.sent("link.status").map((c) => (c as { status: { status: string } }).status.status)).toContain("starting");
  });

  it("with numIdleProcesses 0 it runs at once and spawns on demand", () => {
    const w = worker({ input: { numIdleProcesses: 0 } });
    expect(w.lifecycle()).toEqual({ running: "available" });
    expect(Object.keys(w.slots())).toHaveLength(0);
    w.send({ type: "worker.run", spec: spec("a") });
    expect(w.finished()).toEqual([]);
    expect(w.slotOf("a")).toBe("slot.0");
  });

  it("accepts an offer, reserves capacity, and runs the assignment on a warm slot", async () => {
    const w = worker();
    w.send({ type: "worker.offer", spec: spec("a") });
    await flush();
    expect(w.sent("link.offer_answer")).toEqual([{ type: "link.offer_answer", jobId: "a", accept: true }]);
    expect(w.snapshot().context.jobs.a?.phase).toBe("reserved");
    expect(Object.keys(w.slots())).toHaveLength(2);
    w.send({ type: "worker.assignment", spec: spec("a", { roomId: "r1" }) });
    expect(w.slotOf("a")).toBe("slot.0");
    expect(w.fakes.bySlot("slot.0").last("start_job")).toEqual({
      type: "start_job",
      job: { jobId: "a", roomId: "r1" },
    });
    expect(w.updates()).toEqual([{ jobId: "a", status: "running" }]);
    expect(w.phases("idle")).toBe(1);
    complete(w, "a");
    expect(w.updates().at(-1)).toEqual({ jobId: "a", status: "completed" });
    expect(w.finished()).toEqual([{ jobId: "a", status: "completed" }]);
    expect(Object.keys(w.children()).filter((id) => id.startsWith("job."))).toEqual([]);
  });

  it("declines offers when starting, full, for a known job, or when requestFn says no", async () => {
    const starting = worker({ behaviour: { onStart: (p) => p.emit({ type: "proc.spawned", pid: p.pid }) } });
    expect(starting.lifecycle()).toBe("starting");
    starting.send({ type: "worker.offer", spec: spec("a") });
    expect(starting.sent("link.offer_answer")).toEqual([
      { type: "link.offer_answer", jobId: "a", accept: false, error: "worker not available" },
    ]);

    const full = worker({ input: { maxProcesses: 1 } });
    full.send({ type: "worker.offer", spec: spec("a") });
    await flush();
    expect(full.lifecycle()).toEqual({ running: "full" });
    full.send({ type: "worker.offer", spec: spec("b") });
    expect(full.sent("link.offer_answer").at(-1)).toMatchObject({ jobId: "b", accept: false });

    const dup = worker();
    dup.send({ type: "worker.offer", spec: spec("a") });
    dup.send({ type: "worker.offer", spec: spec("a") });
    expect(dup.sent("link.offer_answer").at(-1)).toEqual({
      type: "link.offer_answer",
      jobId: "a",
      accept: false,
      error: "job already on this worker",
    });

    const no = worker({ decide: async () => false });
    no.send({ type: "worker.offer", spec: spec("a") });
    await flush();
    expect(no.sent("link.offer_answer")).toEqual([
      { type: "link.offer_answer", jobId: "a", accept: false, error: "requestFn declined the job" },
    ]);
    expect(no.finished()).toEqual([{ jobId: "a", status: "declined", reason: "requestFn declined the job" }]);
    expect(no.updates()).toEqual([]);
  });

  it("goes full by external load and back", () => {
    const w = worker();
    w.send({ type: "worker.load", value: 0.9 });
    expect(w.lifecycle()).toEqual({ running: "full" });
    w.send({ type: "worker.load", value: Number.NaN });
    expect(w.lifecycle()).toEqual({ running: "available" });
    w.send({ type: "worker.load", value: 2 });
    expect(w.snapshot().context.externalLoad).toBe(1);
  });

  it("takes unannounced assignments when it has room and rejects them when not", () => {
    const w = worker({ input: { maxProcesses: 1 } });
    w.send({ type: "worker.assignment", spec: spec("a") });
    expect(w.slotOf("a")).toBe("slot.0");
    w.send({ type: "worker.assignment", spec: spec("b") });
    expect(w.updates().at(-1)).toMatchObject({ jobId: "b", status: "failed", reason: "launch_failed" });
    expect(w.emitted.find((e) => e.type === "job.rejected")).toMatchObject({ jobId: "b" });
    w.send({ type: "worker.run", spec: spec("c") });
    expect(w.emitted.filter((e) => e.type === "job.rejected").at(-1)).toMatchObject({ jobId: "c" });
  });

  it("spawns the replacement after handing an idle slot out", () => {
    const w = worker({ input: { numIdleProcesses: 1, maxProcesses: 2 } });
    w.send({ type: "worker.run", spec: spec("a") });
    expect(w.phases("busy")).toBe(1);
    expect(w.phases("idle")).toBe(1);
    expect(Object.keys(w.slots())).toEqual(["slot.0", "slot.1"]);
  });

  it("never runs a job twice: a repeated run or assignment gets the same final report again", async () => {
    const w = worker();
    w.send({ type: "worker.run", spec: spec("a") });
    complete(w, "a");
    const finalReport = w.updates().at(-1);
    w.send({ type: "worker.run", spec: spec("a") });
    w.send({ type: "worker.assignment", spec: spec("a") });
    w.send({ type: "worker.offer", spec: spec("a") });
    await flush();
    expect(w.updates().slice(-2)).toEqual([finalReport, finalReport]);
    expect(w.sent("link.offer_answer").at(-1)).toMatchObject({
      accept: false,
      error: "job already ran on this worker",
    });
    expect(w.finished()).toHaveLength(1);
  });

  it("retires an idle process the pool no longer needs", async () => {
    const w = worker({ input: { numIdleProcesses: 0, maxProcesses: 2 } });
    w.send({ type: "worker.offer", spec: spec("a") });
    await flush();
    expect(w.phases("idle")).toBe(1);
    w.clock.increment(5_000);
    expect(w.finished()).toEqual([{ jobId: "a", status: "expired" }]);
    expect(w.phases("idle")).toBe(0);
  });

  it("cancels a job on termination", () => {
    const w = worker();
    w.send({ type: "worker.run", spec: spec("a") });
    w.send({ type: "worker.terminate", jobId: "a" });
    w.send({ type: "worker.terminate", jobId: "nope" });
    expect(w.finished()).toEqual([{ jobId: "a", status: "cancelled", reason: "cancelled" }]);
    expect(w.updates().at(-1)).toEqual({ jobId: "a", status: "cancelled", reason: "cancelled" });
  });

  it("a slot that dies idle is never given a job, and is replaced after the backoff", () => {
    const w = worker({ input: { maxProcesses: 2 } });
    const first = w.fakes.bySlot("slot.0");
    first.emit({ type: "proc.exit", code: 1, signal: null });
    expect(w.pool()).toBe("backingOff");
    expect(Object.keys(w.slots())).toEqual([]);
    w.send({ type: "worker.run", spec: spec("a") });
    expect(w.slotOf("a")).toBeNull();
    w.clock.increment(749);
    expect(Object.keys(w.slots())).toEqual([]);
    w.clock.increment(1);
    expect(w.pool()).toBe("ready");
    expect(w.slotOf("a")).toBe("slot.1");
  });

  it("under permanent spawn failure it backs off exponentially and probes one process at a time", () => {
    const w = worker({
      input: { numIdleProcesses: 2, maxProcesses: 3 },
      behaviour: { onStart: (p) => p.emit({ type: "proc.spawn_failed", error: { name: "E", message: "ENOMEM" } }) },
    });
    expect(w.lifecycle()).toBe("starting");
    const spawnTimes: number[] = [];
    let seen = w.fakes.all.length;
    for (let t = 0; t < 60_000; t += 50) {
      w.clock.increment(50);
      if (w.fakes.all.length > seen) {
        spawnTimes.push(t + 50);
        seen = w.fakes.all.length;
      }
    }
    const gaps = spawnTimes.slice(1).map((t, i) => t - (spawnTimes[i] as number));
    expect(gaps.every((g, i) => i === 0 || g >= (gaps[i - 1] as number) || g >= 4_000)).toBe(true);
    expect(spawnTimes.length).toBeLessThanOrEqual(12);
    expect(w.snapshot().context.spawnFailures).toBeGreaterThan(3);
  });

  it("a slot that refuses an assignment, or dies before taking it, hands the job on", () => {
    const w = worker({ input: { numIdleProcesses: 2 } });
    w.send({ type: "slot.assign_refused", slotId: "slot.0", job: spec("ghost") });
    w.send({ type: "worker.run", spec: spec("a") });
    w.send({ type: "slot.assign_refused", slotId: "slot.1", job: spec("a") });
    const placed = w.slotOf("a");
    expect(placed).toBeNull();
    w.clock.increment(0);
    w.send({ type: "slot.ready", slotId: "slot.9" });
    expect(w.finished()).toEqual([]);
  });

  it("a slot that exits before it processed its assignment puts the job back in line", () => {
    const w = worker({ input: { numIdleProcesses: 2, maxProcesses: 3 } });
    // The slot dies in the same instant it is handed the job: its mailbox never sees the assignment.
    const exitOnStart: FakeBehaviour = cooperativeBehaviour();
    w.fakes.behaviour = {
      ...exitOnStart,
      onCommand: (p, command) => {
        if (command.type === "start_job") p.emit({ type: "proc.exit", code: 1, signal: null });
        else exitOnStart.onCommand?.(p, command);
      },
    };
    w.send({ type: "worker.run", spec: spec("a") });
    expect(w.finished()).toEqual([{ jobId: "a", status: "failed", reason: "crashed", exitCode: 1, signal: null }]);
  });

  it("drains: no new work, running jobs finish, then it stops cleanly", async () => {
    const w = worker({ input: { numIdleProcesses: 2 } });
    w.send({ type: "worker.run", spec: spec("a") });
    w.send({ type: "worker.drain" });
    expect(w.lifecycle()).toBe("draining");
    expect(w.sent("link.status").at(-1)).toMatchObject({ status: { status: "draining" } });
    w.send({ type: "worker.offer", spec: spec("b") });
    w.send({ type: "worker.run", spec: spec("c") });
    w.send({ type: "worker.assignment", spec: spec("d") });
    w.send({ type: "worker.drain" });
    expect(w.sent("link.offer_answer").at(-1)).toMatchObject({ jobId: "b", accept: false });
    expect(w.emitted.filter((e) => e.type === "job.rejected").map((e) => (e as { jobId: string }).jobId)).toEqual([
      "c",
      "d",
    ]);
    expect(w.phases("idle")).toBe(0);
    complete(w, "a");
    expect(w.snapshot().status).toBe("done");
    expect(w.snapshot().output).toEqual({ exitCode: EXIT_CLEAN });
  });

  it("an accepted offer assigned during drain still runs; a slot warming for it is kept", async () => {
    const w = worker({ input: { numIdleProcesses: 1, maxProcesses: 2 } });
    w.send({ type: "worker.offer", spec: spec("a") });
    await flush();
    w.send({ type: "worker.drain" });
    w.send({ type: "worker.assignment", spec: spec("a") });
    expect(w.slotOf("a")).not.toBeNull();
    complete(w, "a");
    expect(w.finished()).toEqual([{ jobId: "a", status: "completed" }]);
  });

  it("while draining, jobs waiting for a process still get one", () => {
    const w = worker({
      input: { numIdleProcesses: 0, maxProcesses: 2 },
      behaviour: {
        onStart: (p) => p.emit({ type: "proc.spawned", pid: p.pid }),
        onCommand: cooperativeBehaviour().onCommand,
      },
    });
    w.send({ type: "worker.run", spec: spec("a") });
    w.send({ type: "worker.drain" });
    w.fakes.bySlot("slot.0").emit({ type: "proc.exit", code: 1, signal: null });
    w.clock.increment(1_000);
    w.fakes.all.at(-1)?.emit({ type: "proc.ready" });
    expect(w.slotOf("a")).toBe("slot.1");
    w.fakes.all.at(-1)?.emit({ type: "proc.ready" });
  });

  it("a slot that becomes ready during drain or stop is sent away", () => {
    const warming: FakeBehaviour = {
      onStart: (p) => p.emit({ type: "proc.spawned", pid: p.pid }),
      onCommand: cooperativeBehaviour().onCommand,
    };
    const w = worker({ behaviour: warming, input: { numIdleProcesses: 1 } });
    w.send({ type: "worker.run", spec: spec("a") });
    w.send({ type: "worker.drain" });
    w.fakes.bySlot("slot.0").emit({ type: "proc.ready" });
    const stopping = worker({ behaviour: warming });
    stopping.send({ type: "worker.stop" });
    stopping.send({ type: "slot.ready", slotId: "slot.0" });
    expect(stopping.snapshot().status).toBe("done");
  });

  it("a drain timeout stops running jobs with worker_shutdown and exits 2", () => {
    const w = worker();
    w.send({ type: "worker.run", spec: spec("a") });
    w.send({ type: "worker.drain" });
    w.clock.increment(10_000);
    expect(w.finished()).toEqual([
      expect.objectContaining({ jobId: "a", status: "failed", reason: "worker_shutdown" }),
    ]);
    expect(w.snapshot().output).toEqual({ exitCode: EXIT_FORCED });
  });

  it("stop at once from starting, running or draining", async () => {
    const fromRunning = worker();
    fromRunning.send({ type: "worker.run", spec: spec("a") });
    fromRunning.send({ type: "worker.offer", spec: spec("b") });
    fromRunning.send({ type: "worker.stop" });
    fromRunning.send({ type: "worker.stop" });
    fromRunning.send({ type: "worker.drain" });
    fromRunning.send({ type: "worker.run", spec: spec("c") });
    fromRunning.send({ type: "worker.assignment", spec: spec("d") });
    await flush();
    expect(fromRunning.snapshot().status).toBe("done");
    expect(fromRunning.snapshot().output).toEqual({ exitCode: EXIT_FORCED });
    const ids = fromRunning.finished().map((o) => `${o.jobId}:${o.status}`);
    expect(ids).toContain("a:failed");
    expect(ids).toContain("b:declined");

    const fromDraining = worker();
    fromDraining.send({ type: "worker.run", spec: spec("a") });
    fromDraining.send({ type: "worker.drain" });
    fromDraining.send({ type: "worker.stop" });
    expect(fromDraining.snapshot().output).toEqual({ exitCode: EXIT_FORCED });

    const fromStarting = worker({ behaviour: { onStart: (p) => p.emit({ type: "proc.spawned", pid: p.pid }) } });
    fromStarting.send({ type: "worker.drain" });
    expect(fromStarting.snapshot().status).toBe("active");
    // SimulatedClock starts timers set during a flush at the new time: step through each one.
    for (const step of [1_000, 500, 500]) fromStarting.clock.increment(step);
    expect(fromStarting.snapshot().output).toEqual({ exitCode: EXIT_CLEAN });
    const stopStarting = worker({ behaviour: { onStart: (p) => p.emit({ type: "proc.spawned", pid: p.pid }) } });
    stopStarting.send({ type: "worker.stop" });
    for (const step of [1_000, 500, 500]) stopStarting.clock.increment(step);
    expect(stopStarting.snapshot().output).toEqual({ exitCode: EXIT_CLEAN });
  });

  it("a job waiting for a process when the worker stops fails with worker_shutdown", () => {
    const w = worker({
      input: { numIdleProcesses: 0, maxProcesses: 1 },
      behaviour: {
        onStart: (p) => p.emit({ type: "proc.spawned", pid: p.pid }),
        onCommand: cooperativeBehaviour().onCommand,
      },
    });
    w.send({ type: "worker.run", spec: spec("a") });
    w.send({ type: "worker.stop" });
    w.send({ type: "job.needs_slot", jobId: "a" });
    w.clock.increment(5_000);
    expect(w.finished()).toEqual([
      expect.objectContaining({ jobId: "a", status: "failed", reason: "worker_shutdown" }),
    ]);
    expect(w.snapshot().status).toBe("done");
  });

  it("while stopping it refuses new work and sends away any process that becomes ready", () => {
    const slowToExit: FakeBehaviour = {
      onStart: (p) => {
        p.emit({ type: "proc.spawned", pid: p.pid });
        p.emit({ type: "proc.ready" });
      },
      onCommand: (p, command) => {
        if (command.type === "ping") p.emit({ type: "proc.pong" });
        if (command.type === "start_job") p.emit({ type: "proc.job_running" });
        if (command.type === "signal") p.emit({ type: "proc.exit", code: null, signal: command.signal });
      },
    };
    const w = worker({ behaviour: slowToExit, input: { numIdleProcesses: 1 } });
    w.send({ type: "worker.run", spec: spec("a") });
    w.send({ type: "worker.stop" });
    expect(w.lifecycle()).toBe("stopping");
    w.send({ type: "worker.stop" });
    w.send({ type: "worker.run", spec: spec("b") });
    w.send({ type: "worker.assignment", spec: spec("c") });
    expect(w.emitted.filter((e) => e.type === "job.rejected").map((e) => (e as { jobId: string }).jobId)).toEqual([
      "b",
      "c",
    ]);
    w.send({ type: "slot.ready", slotId: "slot.1" });
    w.send({ type: "job.needs_slot", jobId: "a" });
    expect(w.lifecycle()).toBe("stopping");
    w.clock.increment(1_000);
    expect(w.snapshot().status).toBe("done");
    expect(w.finished()).toEqual([
      expect.objectContaining({ jobId: "a", status: "failed", reason: "worker_shutdown", signal: "SIGTERM" }),
    ]);
  });

  it("exits 1 when the registry link gives up or breaks", () => {
    const finished = worker();
    finished.link().send({ type: "test.finish" });
    expect(finished.snapshot().output).toEqual({ exitCode: EXIT_LINK_FAILED });
    const broken = worker();
    broken.link().send({ type: "test.explode" });
    expect(broken.snapshot().output).toEqual({ exitCode: EXIT_LINK_FAILED });
  });

  it("tolerates a broken load sampler", () => {
    const w = worker({
      sampler: fromCallback(() => {
        throw new Error("no cpu stats");
      }),
    });
    expect(w.snapshot().status).toBe("active");
    expect(w.snapshot().context.externalLoad).toBe(0);
  });

  it("settles a slot machine that fails and a job machine that fails without failing itself", () => {
    const brokenSlot = worker({
      slotActions: {
        notifyJobRunning: () => {
          throw new Error("slot bug");
        },
      },
    });
    brokenSlot.send({ type: "worker.run", spec: spec("a") });
    expect(brokenSlot.snapshot().status).toBe("active");
    expect(brokenSlot.finished()).toEqual([
      expect.objectContaining({ jobId: "a", status: "failed", reason: "crashed" }),
    ]);

    const brokenJob = worker({
      jobActions: {
        requestSlot: () => {
          throw new Error("job bug");
        },
      },
    });
    brokenJob.send({ type: "worker.run", spec: spec("a") });
    expect(brokenJob.snapshot().status).toBe("active");
    expect(brokenJob.updates().at(-1)).toMatchObject({ jobId: "a", status: "failed", reason: "crashed" });

    const brokenPlacedJob = worker({
      jobActions: {
        requestStop: () => {
          throw new Error("job bug");
        },
      },
    });
    brokenPlacedJob.send({ type: "worker.run", spec: spec("a") });
    brokenPlacedJob.send({ type: "worker.terminate", jobId: "a" });
    expect(brokenPlacedJob.finished().at(-1)).toMatchObject({ jobId: "a", status: "failed", reason: "crashed" });
    expect(brokenPlacedJob.snapshot().status).toBe("active");
  });

  it("reports memory warnings", () => {
    const w = worker();
    w.send({ type: "worker.run", spec: spec("a") });
    w.procOf("a").emit({ type: "proc.memory", mb: 150 });
    expect(w.emitted.find((e) => e.type === "memory.warning")).toEqual({
      type: "memory.warning",
      slotId: "slot.0",
      mb: 150,
      jobId: "a",
    });
  });

  it("no event in any lifecycle state puts the root in error", async () => {
    const events: WorkerEvent[] = [
      { type: "worker.offer", spec: spec("x") },
      { type: "worker.assignment", spec: spec("x") },
      { type: "worker.run", spec: spec("y") },
      { type: "worker.terminate", jobId: "zz" },
      { type: "worker.load", value: 0.5 },
      { type: "worker.capacity_changed" },
      { type: "slot.ready", slotId: "slot.77" },
      { type: "slot.job_running", slotId: "slot.77", jobId: "zz" },
      { type: "slot.assign_refused", slotId: "slot.77", job: spec("zz") },
      { type: "slot.memory_warning", slotId: "slot.77", mb: 1, jobId: null },
      { type: "job.answer", jobId: "zz", accept: true },
      { type: "job.needs_slot", jobId: "zz" },
      { type: "job.stop", jobId: "zz", slotId: "slot.77", reason: "cancelled" },
      { type: "worker.drain" },
      { type: "worker.stop" },
    ];
    const reach: Array<() => ReturnType<typeof worker>> = [
      () => worker({ behaviour: { onStart: (p) => p.emit({ type: "proc.spawned", pid: p.pid }) } }),
      () => worker(),
      () => worker({ input: { maxProcesses: 1, numIdleProcesses: 1 } }),
      () => {
        const w = worker();
        w.send({ type: "worker.run", spec: spec("a") });
        w.send({ type: "worker.drain" });
        return w;
      },
    ];
    for (const make of reach) {
      for (const event of events) {
        const w = make();
        if (w.snapshot().status === "active") w.send(event as AnyEventObject as WorkerEvent);
        await flush();
        w.clock.increment(100);
        expect(w.snapshot().status).not.toBe("error");
      }
    }
  });
});
