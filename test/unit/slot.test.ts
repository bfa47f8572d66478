import { describe, expect, it } from "vitest";
import { fromCallback } from "xstate";
import type { JobOutcome, JobSpec, StopReason } from "../../machines/shared.ts";
import { jobOutcomeOf, type ProcessEvent, type SlotEvent, type SlotOutput, slotMachine } from "../../machines/slot.ts";
import { FakeProcesses, hostChild, unspawnedBehaviour } from "../support/machine-harness.ts";

const timing = {
  initializeTimeoutMs: 1_000,
  closeTimeoutMs: 500,
  killGraceMs: 200,
  pingIntervalMs: 100,
  pongTimeoutMs: 300,
  memorySampleIntervalMs: 250,
  memoryWarnIntervalMs: 5_000,
};
const job: JobSpec = { jobId: "j1", metadata: { a: 1 } };
type JobOutcomeStatus = JobOutcome["status"];

function slot(options: { memoryWarnMb?: number; memoryLimitMb?: number; fakes?: FakeProcesses } = {}) {
  const fakes = options.fakes ?? new FakeProcesses();
  const t = hostChild(slotMachine.provide({ actors: { process: fakes.logic } }), {
    slotId: "slot.0",
    timing,
    memoryWarnMb: options.memoryWarnMb ?? 100,
    memoryLimitMb: options.memoryLimitMb ?? 200,
  });
  const proc = () => fakes.bySlot("slot.0");
  const emit = (event: ProcessEvent) => proc().emit(event);
  const value = () => t.snapshot().value;
  const output = () => t.snapshot().output as SlotOutput;
  const done = () => t.snapshot().status === "done";
  return { ...t, fakes, proc, emit, value, output, done };
}

function ready(options: Parameters<typeof slot>[0] = {}) {
  const t = slot(options);
  t.emit({ type: "proc.ready" });
  return t;
}

function busy(options: Parameters<typeof slot>[0] = {}) {
  const t = ready(options);
  t.send({ type: "slot.assign", job });
  return t;
}

const readyValue = (work: string, heartbeat = "waiting", memory = "normal") => ({
  alive: { ready: { work, heartbeat, memorySampler: "sampling", memory } },
});

describe("slot", () => {
  it("warms: spawned → initializing → ready, telling the worker once", () => {
    const t = slot();
    expect(t.value()).toEqual({ alive: "initializing" });
    expect(t.snapshot().context.pid).toBe(t.proc().pid);
    t.emit({ type: "proc.ready" });
    expect(t.value()).toEqual(readyValue("idle", "awaitingPong"));
    expect(t.ofType("slot.ready")).toEqual([{ type: "slot.ready", slotId: "slot.0" }]);
  });

  it("a spawn failure exits without ever being ready", () => {
    const fakes = new FakeProcesses(unspawnedBehaviour());
    const t = slot({ fakes });
    expect(t.value()).toEqual({ alive: "spawning" });
    t.emit({ type: "proc.spawn_failed", error: { name: "Error", message: "ENOENT" } });
    expect(t.done()).toBe(true);
    expect(t.output()).toMatchObject({ becameReady: false, spawnError: { message: "ENOENT" }, jobOutcome: null });
  });

  it("a process actor that throws is a launch failure, not a crash of the worker", () => {
    const throwing = fromCallback(() => {
      throw new Error("fork failed");
    });
    const t = hostChild(slotMachine.provide({ actors: { process: throwing as never } }), {
      slotId: "slot.0",
      timing,
      memoryWarnMb: 0,
      memoryLimitMb: 0,
    });
    expect(t.snapshot().status).toBe("done");
    expect((t.snapshot().output as SlotOutput).spawnError?.message).toBe("fork failed");
    expect(t.host.getSnapshot().status).toBe("active");
  });

  it("a stop while spawning terminates; while initializing asks for a shutdown", () => {
    const fakes = new FakeProcesses(unspawnedBehaviour());
    const spawning = slot({ fakes });
    spawning.send({ type: "slot.stop", reason: "idle_shutdown" });
    expect(spawning.value()).toEqual({ alive: "terminating" });
    expect(spawning.proc().last("signal")).toEqual({ type: "signal", signal: "SIGTERM" });

    const initializing = slot();
    initializing.send({ type: "slot.stop", reason: "worker_shutdown" });
    expect(initializing.value()).toEqual({ alive: "stopping" });
    expect(initializing.proc().last("shutdown")).toEqual({ type: "shutdown", reason: "worker_shutdown" });
  });

  it("an initialize timeout terminates, then kills, then gives up on an unkillable process", () => {
    const t = slot();
    t.clock.increment(999);
    expect(t.value()).toEqual({ alive: "initializing" });
    t.clock.increment(1);
    expect(t.value()).toEqual({ alive: "terminating" });
    t.clock.increment(200);
    expect(t.value()).toEqual({ alive: "killing" });
    expect(t.proc().last("signal")).toEqual({ type: "signal", signal: "SIGKILL" });
    t.clock.increment(200);
    expect(t.done()).toBe(true);
    expect(t.output()).toMatchObject({ stopReason: "initialize_timeout", exitConfirmed: false, becameReady: false });
  });

  it("runs a job and completes only on a reported success and a clean exit", () => {
    const t = busy();
    expect(t.proc().last("start_job")).toEqual({ type: "start_job", job });
    t.emit({ type: "proc.job_running" });
    expect(t.ofType("slot.job_running")).toEqual([{ type: "slot.job_running", slotId: "slot.0", jobId: "j1" }]);
    t.emit({ type: "proc.job_ending" });
    expect(t.value()).toEqual({ alive: "ending" });
    t.emit({ type: "proc.done", result: { ok: true } });
    t.emit({ type: "proc.exit", code: 0, signal: null });
    expect(t.output()).toMatchObject({ jobId: "j1", jobOutcome: { status: "completed" }, exitConfirmed: true });
  });

  it("a done report without the ending message also ends the job", () => {
    const t = busy();
    t.emit({ type: "proc.done", result: { ok: false, error: { name: "Error", message: "boom" } } });
    expect(t.value()).toEqual({ alive: "ending" });
    t.emit({ type: "proc.exit", code: 1, signal: null });
    expect(t.output().jobOutcome).toMatchObject({
      status: "failed",
      reason: "entrypoint_error",
      error: { message: "boom" },
    });
  });

  it("a crash is never a success", () => {
    const exit3 = busy();
    exit3.emit({ type: "proc.exit", code: 3, signal: null });
    expect(exit3.output().jobOutcome).toEqual({ status: "failed", reason: "crashed", exitCode: 3, signal: null });
    const killed = busy();
    killed.emit({ type: "proc.exit", code: null, signal: "SIGKILL" });
    expect(killed.output().jobOutcome).toMatchObject({ status: "failed", reason: "crashed", signal: "SIGKILL" });
    const reportedThenCrashed = busy();
    reportedThenCrashed.emit({ type: "proc.done", result: { ok: true } });
    reportedThenCrashed.emit({ type: "proc.exit", code: 7, signal: null });
    expect(reportedThenCrashed.output().jobOutcome).toMatchObject({ status: "failed", reason: "crashed", exitCode: 7 });
  });

  it("a job that ends but overruns closeTimeout is killed with close_timeout", () => {
    const t = busy();
    t.emit({ type: "proc.job_ending" });
    t.clock.increment(500);
    expect(t.value()).toEqual({ alive: "terminating" });
    t.emit({ type: "proc.exit", code: null, signal: "SIGTERM" });
    expect(t.output().jobOutcome).toMatchObject({ status: "failed", reason: "close_timeout" });
  });

  it.each<[StopReason, string]>([
    ["cancelled", "cancelled"],
    ["max_duration", "failed"],
    ["worker_shutdown", "failed"],
  ])("a stop (%s) asks for a shutdown and keeps its reason", (reason, status) => {
    const t = busy();
    t.send({ type: "slot.stop", reason });
    expect(t.value()).toEqual({ alive: "stopping" });
    expect(t.proc().last("shutdown")).toEqual({ type: "shutdown", reason });
    t.send({ type: "slot.stop", reason: "memory_limit" });
    t.emit({ type: "proc.done", result: { ok: true } });
    t.emit({ type: "proc.exit", code: 0, signal: null });
    expect(t.output().stopReason).toBe(reason);
    expect(t.output().jobOutcome?.status).toBe(status);
  });

  it("a stop that is ignored escalates: closeTimeout → SIGTERM → killTimeout → SIGKILL", () => {
    const t = busy();
    t.send({ type: "slot.stop", reason: "cancelled" });
    t.clock.increment(500);
    expect(t.value()).toEqual({ alive: "terminating" });
    t.clock.increment(200);
    expect(t.value()).toEqual({ alive: "killing" });
    t.emit({ type: "proc.exit", code: null, signal: "SIGKILL" });
    expect(t.output()).toMatchObject({
      stopReason: "cancelled",
      exit: { signal: "SIGKILL" },
      jobOutcome: { status: "cancelled" },
    });
  });

  it("pings once ready, then on an interval, and kills an unresponsive process", () => {
    const t = ready();
    // The first ping at once: it also takes the child's first-message cost off a start_job.
    expect(t.value()).toEqual(readyValue("idle", "awaitingPong"));
    expect(t.proc().count("ping")).toBe(1);
    t.emit({ type: "proc.pong" });
    expect(t.value()).toEqual(readyValue("idle", "waiting"));
    t.clock.increment(99);
    expect(t.proc().count("ping")).toBe(1);
    t.clock.increment(1);
    expect(t.value()).toEqual(readyValue("idle", "awaitingPong"));
    expect(t.proc().count("ping")).toBe(2);
    t.emit({ type: "proc.pong" });
    t.send({ type: "slot.assign", job });
    t.clock.increment(100);
    t.clock.increment(300);
    expect(t.value()).toEqual({ alive: "terminating" });
    t.emit({ type: "proc.exit", code: null, signal: "SIGTERM" });
    expect(t.output().jobOutcome).toMatchObject({ status: "failed", reason: "unresponsive" });
  });

  it("samples memory, warns once per interval, and stops at the limit", () => {
    const answersPings = new FakeProcesses({
      onCommand: (p, command) => {
        if (command.type === "ping") p.emit({ type: "proc.pong" });
      },
    });
    const t = busy({ memoryWarnMb: 100, memoryLimitMb: 200, fakes: answersPings });
    t.clock.increment(250);
    expect(t.proc().count("sample_memory")).toBe(1);
    t.emit({ type: "proc.memory", mb: 50 });
    expect(t.snapshot().context.memoryMb).toBe(50);
    t.emit({ type: "proc.memory", mb: 120 });
    expect(t.ofType("slot.memory_warning")).toEqual([
      { type: "slot.memory_warning", slotId: "slot.0", mb: 120, jobId: "j1" },
    ]);
    t.emit({ type: "proc.memory", mb: 150 });
    expect(t.ofType("slot.memory_warning")).toHaveLength(1);
    t.clock.increment(5_000);
    expect((t.value() as { alive: { ready: { memory: string } } }).alive.ready.memory).toBe("normal");
    t.emit({ type: "proc.memory", mb: 130 });
    expect(t.ofType("slot.memory_warning")).toHaveLength(2);
    t.emit({ type: "proc.memory", mb: 250 });
    expect(t.value()).toEqual({ alive: "stopping" });
  });

  it("a warned process that crosses the limit stops too", () => {
    const t = busy({ memoryWarnMb: 100, memoryLimitMb: 200 });
    t.emit({ type: "proc.memory", mb: 150 });
    t.emit({ type: "proc.memory", mb: 250 });
    expect(t.value()).toEqual({ alive: "stopping" });
    t.emit({ type: "proc.memory", mb: 400 });
    t.clock.increment(500 + 200);
    t.emit({ type: "proc.exit", code: null, signal: "SIGKILL" });
    expect(t.output().jobOutcome).toMatchObject({ status: "failed", reason: "memory_limit", signal: "SIGKILL" });
  });

  it("a process over the limit without a warning first stops too", () => {
    const t = ready({ memoryWarnMb: 100, memoryLimitMb: 200 });
    t.emit({ type: "proc.memory", mb: 300 });
    expect(t.value()).toEqual({ alive: "stopping" });
    expect(t.proc().last("shutdown")).toEqual({ type: "shutdown", reason: "memory_limit" });
  });

  it("an idle process that dies has no job outcome; an idle stop asks it to exit", () => {
    const died = ready();
    died.emit({ type: "proc.exit", code: 1, signal: null });
    expect(died.output()).toMatchObject({ jobId: null, becameReady: true, jobOutcome: null, stopReason: null });
    const stopped = ready();
    stopped.send({ type: "slot.stop", reason: "idle_shutdown" });
    expect(stopped.proc().last("shutdown")).toEqual({ type: "shutdown", reason: "idle_shutdown" });
    stopped.emit({ type: "proc.exit", code: 0, signal: null });
    expect(stopped.output()).toMatchObject({ stopReason: "idle_shutdown", jobOutcome: null });
  });

  it("hands an assignment back when it is not idle", () => {
    const t = busy();
    t.send({ type: "slot.assign", job: { jobId: "j2" } });
    expect(t.ofType("slot.assign_refused")).toEqual([
      { type: "slot.assign_refused", slotId: "slot.0", job: { jobId: "j2" } },
    ]);
    expect(t.snapshot().context.job?.jobId).toBe("j1");
  });

  it("maps outcomes without a job or with an unknown stop to null or the stop reason", () => {
    const base = busy().snapshot().context;
    expect(jobOutcomeOf({ ...base, job: null })).toBeNull();
    expect(jobOutcomeOf({ ...base, stopReason: "launch_failed", exit: null })).toMatchObject({
      reason: "launch_failed",
    });
    expect(
      jobOutcomeOf({
        ...base,
        stopReason: "memory_limit",
        jobResult: { ok: false, error: { name: "E", message: "m" } },
      }),
    ).toMatchObject({ reason: "memory_limit", error: { message: "m" } });
  });

  it("no event in any state it can reach puts it in error", () => {
    const events: SlotEvent[] = [
      { type: "proc.spawned", pid: 1 },
      { type: "proc.spawn_failed", error: { name: "E", message: "x" } },
      { type: "proc.ready" },
      { type: "proc.pong" },
      { type: "proc.job_running" },
      { type: "proc.job_ending" },
      { type: "proc.done", result: { ok: true } },
      { type: "proc.memory", mb: 150 },
      { type: "slot.assign", job },
      { type: "slot.stop", reason: "cancelled" },
      { type: "slot.stop", reason: "lease_lapsed" },
    ];
    const reach: Array<() => ReturnType<typeof slot>> = [
      () => slot({ fakes: new FakeProcesses(unspawnedBehaviour()) }),
      () => slot(),
      () => ready(),
      () => busy(),
      () => {
        const t = busy();
        t.emit({ type: "proc.job_ending" });
        return t;
      },
      () => {
        const t = busy();
        t.send({ type: "slot.stop", reason: "cancelled" });
        return t;
      },
      () => {
        const t = busy();
        t.send({ type: "slot.stop", reason: "cancelled" });
        t.clock.increment(500);
        return t;
      },
      () => {
        const t = busy();
        t.send({ type: "slot.stop", reason: "cancelled" });
        t.clock.increment(700);
        return t;
      },
      () => {
        const t = busy({ fakes: new FakeProcesses(unspawnedBehaviour()) });
        t.send({ type: "slot.stop", reason: "lease_lapsed" });
        return t;
      },
    ];
    for (const make of reach) {
      for (const event of events) {
        const t = make();
        t.send(event);
        t.clock.increment(50);
        expect(t.snapshot().status).not.toBe("error");
        expect(t.host.getSnapshot().status).toBe("active");
      }
    }
  });
});

/** The worker's stop for a job whose lease ran out: the job may run elsewhere from now on. */
const LAPSED: SlotEvent = { type: "slot.stop", reason: "lease_lapsed" };

/** What the slot told its process to make it stop: shutdown requests and signals, in order. */
const stopCommands = (t: ReturnType<typeof slot>) =>
  t.proc().commands.flatMap((c) => (c.type === "shutdown" ? ["shutdown"] : c.type === "signal" ? [c.signal] : []));

describe("slot: a lapsed lease (slot.stop lease_lapsed)", () => {
  const reachable = {
    spawning: () => slot({ fakes: new FakeProcesses(unspawnedBehaviour()) }),
    initializing: () => slot(),
    idle: () => ready(),
    busy: () => busy(),
  };

  it.each(Object.keys(reachable) as (keyof typeof reachable)[])(
    "while %s goes straight to killing: SIGKILL at once, no graceful shutdown, no SIGTERM",
    (state) => {
      const t = reachable[state]();
      t.send(LAPSED);
      expect(t.value()).toEqual({ alive: "killing" });
      expect(stopCommands(t)).toEqual(["SIGKILL"]);
      expect(t.snapshot().context.stopReason).toBe("lease_lapsed");
      t.emit({ type: "proc.exit", code: null, signal: "SIGKILL" });
      expect(t.done()).toBe(true);
      expect(t.output()).toMatchObject({
        stopReason: "lease_lapsed",
        exit: { code: null, signal: "SIGKILL" },
        exitConfirmed: true,
        jobId: state === "busy" ? "j1" : null,
      });
      expect(t.output().jobOutcome).toEqual(
        state === "busy" ? { status: "failed", reason: "lease_lapsed", exitCode: null, signal: "SIGKILL" } : null,
      );
      expect(t.host.getSnapshot().status).toBe("active");
    },
  );

  it("a busy slot's job fails lease_lapsed even when its process reported success before the kill", () => {
    const t = busy();
    t.emit({ type: "proc.job_running" });
    t.send(LAPSED);
    t.emit({ type: "proc.exit", code: 0, signal: null });
    expect(t.output().jobOutcome).toEqual({ status: "failed", reason: "lease_lapsed", exitCode: 0, signal: null });
  });

  it("a process that outlives the SIGKILL is given up on after killGrace; its job still fails lease_lapsed", () => {
    const t = busy({ fakes: new FakeProcesses({ onStart: (p) => p.emit({ type: "proc.spawned", pid: p.pid }) }) });
    t.emit({ type: "proc.ready" });
    t.send({ type: "slot.assign", job });
    t.send(LAPSED);
    t.clock.increment(199);
    expect(t.value()).toEqual({ alive: "killing" });
    t.clock.increment(1);
    expect(t.done()).toBe(true);
    expect(t.output()).toMatchObject({ stopReason: "lease_lapsed", exitConfirmed: false, exit: null });
    expect(t.output().jobOutcome).toEqual({ status: "failed", reason: "lease_lapsed", exitCode: null, signal: null });
    expect(stopCommands(t)).toEqual(["SIGKILL"]);
  });

  it.each<[StopReason, JobOutcomeStatus]>([
    ["cancelled", "cancelled"],
    ["max_duration", "failed"],
    ["worker_shutdown", "failed"],
  ])("while stopping (%s) it cuts to killing at once and keeps the first reason", (reason, status) => {
    const t = busy({ fakes: new FakeProcesses({ onStart: (p) => p.emit({ type: "proc.spawned", pid: p.pid }) }) });
    t.emit({ type: "proc.ready" });
    t.send({ type: "slot.assign", job });
    t.send({ type: "slot.stop", reason });
    expect(t.value()).toEqual({ alive: "stopping" });
    t.clock.increment(100);
    t.send(LAPSED);
    expect(t.value()).toEqual({ alive: "killing" });
    expect(stopCommands(t)).toEqual(["shutdown", "SIGKILL"]);
    expect(t.snapshot().context.stopReason).toBe(reason);
    t.emit({ type: "proc.exit", code: null, signal: "SIGKILL" });
    expect(t.output().stopReason).toBe(reason);
    expect(t.output().jobOutcome).toMatchObject({ status, reason });
  });

  it("while terminating it sends SIGKILL at once instead of waiting out killGrace, and keeps the first reason", () => {
    const t = busy({ fakes: new FakeProcesses({ onStart: (p) => p.emit({ type: "proc.spawned", pid: p.pid }) }) });
    t.emit({ type: "proc.ready" });
    t.send({ type: "slot.assign", job });
    t.send({ type: "slot.stop", reason: "max_duration" });
    t.clock.increment(500);
    expect(t.value()).toEqual({ alive: "terminating" });
    t.clock.increment(50);
    t.send(LAPSED);
    expect(t.value()).toEqual({ alive: "killing" });
    expect(stopCommands(t)).toEqual(["shutdown", "SIGTERM", "SIGKILL"]);
    // The kill grace starts at the kill: given up on 200 ms after the lapse, not after SIGTERM's grace.
    t.clock.increment(199);
    expect(t.value()).toEqual({ alive: "killing" });
    t.clock.increment(1);
    expect(t.output()).toMatchObject({ stopReason: "max_duration", exitConfirmed: false });
    expect(t.output().jobOutcome).toMatchObject({ status: "failed", reason: "max_duration" });
  });

  it("while ending (the job ended by itself) it cuts the graceful close short: SIGKILL at once", () => {
    const t = busy();
    t.emit({ type: "proc.job_ending" });
    expect(t.value()).toEqual({ alive: "ending" });
    t.clock.increment(100);
    t.send(LAPSED);
    expect(t.value()).toEqual({ alive: "killing" });
    expect(stopCommands(t)).toEqual(["SIGKILL"]);
    t.emit({ type: "proc.exit", code: null, signal: "SIGKILL" });
    expect(t.done()).toBe(true);
    expect(t.output().jobOutcome?.status).toBe("failed");
  });

  // The job ended by itself and its process is closing when the lease lapses: it is SIGKILLed, and
  // reported `lease_lapsed` (docs/protocol.md, "Leases"), not `crashed` (a bug these tests found).
  it("while ending, the job killed for its lease is reported lease_lapsed, not crashed", () => {
    const t = busy();
    t.emit({ type: "proc.done", result: { ok: true } });
    t.send(LAPSED);
    t.emit({ type: "proc.exit", code: null, signal: "SIGKILL" });
    expect(t.output().jobOutcome).toMatchObject({ status: "failed", reason: "lease_lapsed" });
  });

  it.each(["ending", "stopping", "terminating"] as const)(
    "while %s, any other stop is still ignored (the slot goes down its own way)",
    (state) => {
      const t = busy({ fakes: new FakeProcesses({ onStart: (p) => p.emit({ type: "proc.spawned", pid: p.pid }) }) });
      t.emit({ type: "proc.ready" });
      t.send({ type: "slot.assign", job });
      if (state === "ending") t.emit({ type: "proc.job_ending" });
      else t.send({ type: "slot.stop", reason: "cancelled" });
      if (state === "terminating") t.clock.increment(500);
      expect(t.value()).toEqual({ alive: state });
      const commands = stopCommands(t);
      for (const reason of ["cancelled", "max_duration", "worker_shutdown", "memory_limit"] as const) {
        t.send({ type: "slot.stop", reason });
      }
      expect(t.value()).toEqual({ alive: state });
      expect(stopCommands(t)).toEqual(commands);
    },
  );

  it("while killing, another lease stop sends no second SIGKILL", () => {
    const t = busy({ fakes: new FakeProcesses({ onStart: (p) => p.emit({ type: "proc.spawned", pid: p.pid }) }) });
    t.emit({ type: "proc.ready" });
    t.send({ type: "slot.assign", job });
    t.send(LAPSED);
    t.send(LAPSED);
    t.send({ type: "slot.stop", reason: "cancelled" });
    expect(t.value()).toEqual({ alive: "killing" });
    expect(stopCommands(t)).toEqual(["SIGKILL"]);
    expect(t.snapshot().context.stopReason).toBe("lease_lapsed");
  });

  it("jobOutcomeOf keeps the job's own error with a lease_lapsed stop", () => {
    const base = busy().snapshot().context;
    expect(
      jobOutcomeOf({
        ...base,
        stopReason: "lease_lapsed",
        jobResult: { ok: false, error: { name: "E", message: "m" } },
        exit: { code: null, signal: "SIGKILL" },
      }),
    ).toEqual({
      status: "failed",
      reason: "lease_lapsed",
      error: { name: "E", message: "m" },
      exitCode: null,
      signal: "SIGKILL",
    });
  });
});
