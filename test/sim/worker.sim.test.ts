import { describe, expect, it } from "vitest";
import { type AnyActorRef, fromPromise, SimulatedClock, setup } from "xstate";
import { jobMachine } from "../../machines/job.ts";
import type { ProcessCommand } from "../../machines/slot.ts";
import { slotMachine } from "../../machines/slot.ts";
import { type LinkCommand, type WorkerEmitted, type WorkerInput, workerMachine } from "../../machines/worker.ts";
import { createTracedActor } from "../support/actor.ts";
import { type FakeProcess, FakeProcesses } from "../support/fake-process.ts";

/**
 * Fault-injection simulation of the worker root: real worker, slot and job machines, fake processes
 * and a fake registry link, a SimulatedClock and a seeded PRNG that injects crashes, spawn failures,
 * hangs, memory spikes, lost offers and assignments, terminations, drain and stop. Invariants are
 * checked after every step. Replay one seed with its trace: SIM_SEED=<n> npx vitest run test/sim
 */

const SEEDS = Number(process.env.SIM_SEEDS ?? 500);
const ONLY_SEED = process.env.SIM_SEED === undefined ? undefined : Number(process.env.SIM_SEED);
const replay = (seed: number) => `SIM_SEED=${seed} npx vitest run test/sim/worker.sim.test.ts`;

function mulberry32(seed: number) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Personality = "healthy" | "spawnFails" | "neverReady" | "deaf" | "ignoresShutdown" | "ignoresTerm";

const SLOT_TIMING = {
  initializeTimeoutMs: 800,
  closeTimeoutMs: 600,
  killGraceMs: 300,
  pingIntervalMs: 400,
  pongTimeoutMs: 500,
  memorySampleIntervalMs: 700,
  memoryWarnIntervalMs: 5_000,
};

function linkMachine(commands: LinkCommand[]) {
  return setup({
    actions: {
      record: ({ event }) => {
        commands.push(event as LinkCommand);
      },
    },
  }).createMachine({ on: { "*": { actions: "record" } } });
}

interface World {
  seed: number;
  rng: () => number;
  clock: SimulatedClock;
  actor: ReturnType<typeof createTracedActor<typeof workerMachine>>;
  fakes: FakeProcesses;
  personalities: Map<FakeProcess, Personality>;
  commands: LinkCommand[];
  /** Per job id: how many times it ran to completed/failed/cancelled, and how many offers ended unused. */
  finished: Map<string, number>;
  unusedOffers: Map<string, number>;
  everSeen: Set<string>;
  acceptedOffers: Set<string>;
  input: WorkerInput;
  trace: string[];
  calm: boolean;
}

function behaviourFor(world: () => World) {
  const personalityOf = (p: FakeProcess) => world().personalities.get(p) ?? "healthy";
  return new FakeProcesses({
    onStart: (p) => {
      const w = world();
      const roll = w.rng();
      const personality: Personality = w.calm
        ? "healthy"
        : roll < 0.08
          ? "spawnFails"
          : roll < 0.13
            ? "neverReady"
            : roll < 0.18
              ? "deaf"
              : roll < 0.24
                ? "ignoresShutdown"
                : roll < 0.28
                  ? "ignoresTerm"
                  : "healthy";
      w.personalities.set(p, personality);
      if (personality === "spawnFails") {
        p.emit({ type: "proc.spawn_failed", error: { name: "Error", message: "EAGAIN" } });
        return;
      }
      p.emit({ type: "proc.spawned", pid: p.pid });
      if (personality !== "neverReady") p.emit({ type: "proc.ready" });
    },
    onCommand: (p, command: ProcessCommand) => {
      const personality = personalityOf(p);
      switch (command.type) {
        case "ping":
          if (personality !== "deaf") p.emit({ type: "proc.pong" });
          break;
        case "start_job":
          p.emit({ type: "proc.job_running" });
          break;
        case "shutdown":
          if (personality === "ignoresShutdown" || personality === "ignoresTerm") break;
          p.emit({ type: "proc.job_ending" });
          p.emit({ type: "proc.done", result: { ok: true } });
          p.emit({ type: "proc.exit", code: 0, signal: null });
          break;
        case "signal":
          if (personality === "ignoresTerm" && command.signal === "SIGTERM") break;
          p.emit({ type: "proc.exit", code: null, signal: command.signal });
          break;
        case "sample_memory":
          p.emit({ type: "proc.memory", mb: 40 + Math.floor(world().rng() * 20) });
          break;
      }
    },
  });
}

function createWorld(seed: number): World {
  const rng = mulberry32(seed);
  const maxProcesses = 1 + Math.floor(rng() * 4);
  const numIdleProcesses = Math.floor(rng() * (maxProcesses + 1));
  const input: WorkerInput = {
    maxProcesses,
    numIdleProcesses,
    loadThreshold: rng() < 0.5 ? 1 : 0.75,
    timing: { drainTimeoutMs: 4_000, spawnBackoffBaseMs: 200, spawnBackoffMaxMs: 3_200 },
    job: { offerTtlMs: 1_500, launchTimeoutMs: 2_500, maxDurationMs: rng() < 0.3 ? 3_000 : 0 },
    slot: { timing: SLOT_TIMING, memoryWarnMb: 100, memoryLimitMb: 300 },
    random: rng,
  };
  let world: World | undefined;
  const fakes = behaviourFor(() => world as World);
  const commands: LinkCommand[] = [];
  const machine = workerMachine.provide({
    actors: {
      slot: slotMachine.provide({ actors: { process: fakes.logic } }),
      job: jobMachine.provide({ actors: { decideOffer: fromPromise(async () => (world as World).rng() < 0.9) } }),
      registryLink: linkMachine(commands) as never,
    },
  });
  const clock = new SimulatedClock();
  const actor = createTracedActor(machine, { clock, input });
  world = {
    seed,
    rng,
    clock,
    actor,
    fakes,
    personalities: new Map(),
    commands,
    finished: new Map(),
    unusedOffers: new Map(),
    everSeen: new Set(),
    acceptedOffers: new Set(),
    input,
    trace: [],
    calm: false,
  };
  const w = world;
  // An offer that expired or was declined never ran; a late assignment may still run the job once.
  actor.on("job.finished", ({ output }: Extract<WorkerEmitted, { type: "job.finished" }>) => {
    const tally = output.status === "expired" || output.status === "declined" ? w.unusedOffers : w.finished;
    tally.set(output.jobId, (tally.get(output.jobId) ?? 0) + 1);
  });
  actor.start();
  return w;
}

const flush = () => new Promise((resolve) => setImmediate(resolve));

function liveChildren(w: World, prefix: string): [string, AnyActorRef][] {
  return Object.entries(w.actor.getSnapshot().children as Record<string, AnyActorRef | undefined>).filter(
    (entry): entry is [string, AnyActorRef] => entry[0].startsWith(prefix) && entry[1] !== undefined,
  );
}

/** Checked after every step; a violation names the seed and the command that replays it. */
function checkInvariants(w: World, step: string): void {
  const fail = (what: string) => {
    throw new Error(
      `seed ${w.seed}: ${what} after "${step}"\nreplay: ${replay(w.seed)}\n${w.trace.slice(-15).join("\n")}`,
    );
  };
  const snapshot = w.actor.getSnapshot();
  if (snapshot.status === "error") fail(`the root is in error: ${String(snapshot.error)}`);
  const slots = liveChildren(w, "slot.").filter(([, ref]) => ref.getSnapshot().status === "active");
  if (slots.length > w.input.maxProcesses) fail(`${slots.length} slots alive, maxProcesses ${w.input.maxProcesses}`);
  const jobsInSlots = slots.flatMap(([, ref]) => {
    const jobId = (ref.getSnapshot().context as { job: { jobId: string } | null }).job?.jobId;
    return jobId ? [jobId] : [];
  });
  if (new Set(jobsInSlots).size !== jobsInSlots.length) fail(`a job is in two slots: ${jobsInSlots.join(", ")}`);
  for (const [id, ref] of liveChildren(w, "job.")) {
    if (ref.getSnapshot().status !== "active") fail(`final job actor ${id} left in children`);
  }
  for (const jobId of Object.keys(snapshot.context?.jobs ?? {})) w.everSeen.add(jobId);
  for (const [jobId, count] of w.finished) if (count > 1) fail(`job ${jobId} finished ${count} times`);
  // A repeated assignment of a finished job gets the same final report again: never a different one.
  const finals = new Map<string, Set<string>>();
  for (const c of w.commands) {
    if (c.type === "link.job_update" && c.update.status !== "running") {
      const reports = finals.get(c.update.jobId) ?? new Set<string>();
      reports.add(JSON.stringify(c.update));
      finals.set(c.update.jobId, reports);
    }
    if (c.type === "link.offer_answer" && c.accept) w.acceptedOffers.add(c.jobId);
  }
  for (const [jobId, reports] of finals) {
    if (reports.size > 1) fail(`job ${jobId} reported different finals: ${[...reports].join(" / ")}`);
  }
}

async function randomStep(w: World, jobCounter: { n: number }): Promise<string | "end"> {
  const roll = w.rng();
  const live = w.fakes.live;
  const pick = <T>(items: T[]): T | undefined => items[Math.floor(w.rng() * items.length)];
  const knownJobs = [...w.everSeen];
  if (roll < 0.3) {
    const ms = Math.floor(w.rng() * 1_500);
    w.clock.increment(ms);
    return `advance ${ms} ms`;
  }
  if (roll < 0.45) {
    const jobId = `j${jobCounter.n++}`;
    w.actor.send({ type: "worker.offer", spec: { jobId } });
    await flush();
    const accepted = w.commands.some((c) => c.type === "link.offer_answer" && c.jobId === jobId && c.accept);
    if (accepted && w.rng() < 0.85) w.actor.send({ type: "worker.assignment", spec: { jobId, roomId: "r" } });
    return `offer ${jobId}${accepted ? " (accepted)" : ""}`;
  }
  if (roll < 0.52) {
    const jobId = `j${jobCounter.n++}`;
    w.actor.send({ type: "worker.run", spec: { jobId } });
    return `run ${jobId}`;
  }
  if (roll < 0.57) {
    const jobId = pick(knownJobs) ?? "nobody";
    w.actor.send({ type: "worker.terminate", jobId });
    return `terminate ${jobId}`;
  }
  if (roll < 0.66) {
    const p = pick(live);
    if (!p) return "no process to crash";
    const signal = w.rng() < 0.5 ? "SIGSEGV" : null;
    p.emit({ type: "proc.exit", code: signal ? null : 1 + Math.floor(w.rng() * 3), signal });
    return `crash ${p.slotId}`;
  }
  if (roll < 0.8) {
    const busy = live.filter((p) => p.count("start_job") > 0);
    const p = pick(busy);
    if (!p) return "no job to end";
    const ok = w.rng() < 0.7;
    p.emit({ type: "proc.job_ending" });
    p.emit({ type: "proc.done", result: ok ? { ok: true } : { ok: false, error: { name: "Error", message: "boom" } } });
    p.emit({ type: "proc.exit", code: ok ? 0 : 1, signal: null });
    return `job on ${p.slotId} ${ok ? "completes" : "throws"}`;
  }
  if (roll < 0.86) {
    const p = pick(live);
    if (!p) return "no process for memory";
    const mb = w.rng() < 0.5 ? 150 : 400;
    p.emit({ type: "proc.memory", mb });
    return `memory ${mb} MB on ${p.slotId}`;
  }
  if (roll < 0.92) {
    const value = w.rng();
    w.actor.send({ type: "worker.load", value });
    return `load ${value.toFixed(2)}`;
  }
  if (roll < 0.95) {
    // A lost assignment: the registry re-sends it for a job the worker may or may not know.
    const jobId = pick(knownJobs) ?? `j${jobCounter.n++}`;
    w.actor.send({ type: "worker.assignment", spec: { jobId } });
    return `assignment again for ${jobId}`;
  }
  if (roll < 0.975) {
    w.actor.send({ type: "worker.drain" });
    return "end: drain";
  }
  if (roll < 0.985) {
    w.actor.send({ type: "worker.stop" });
    return "end: stop";
  }
  return "nothing";
}

async function runSeed(seed: number, verbose = false): Promise<void> {
  const w = createWorld(seed);
  const counter = { n: 0 };
  const steps = 60 + Math.floor(w.rng() * 60);
  let ended = false;
  for (let i = 0; i < steps && w.actor.getSnapshot().status === "active"; i++) {
    const step = await randomStep(w, counter);
    w.trace.push(`${i}: ${step}`);
    if (verbose) console.log(`${i}: ${step}`, JSON.stringify(w.actor.getSnapshot().value));
    checkInvariants(w, step);
    if (step.startsWith("end:")) {
      ended = true;
      break;
    }
  }
  // Quiescence: no more faults; every process behaves; time passes.
  w.calm = true;
  for (const p of w.fakes.live) w.personalities.set(p, "healthy");
  for (let t = 0; t < 120 && w.actor.getSnapshot().status === "active"; t++) {
    // Jobs end on their own now: a job with no maximum duration could otherwise run for ever.
    for (const p of w.fakes.live.filter((p) => p.count("start_job") > 0)) {
      p.emit({ type: "proc.job_ending" });
      p.emit({ type: "proc.done", result: { ok: true } });
      p.emit({ type: "proc.exit", code: 0, signal: null });
    }
    w.clock.increment(250);
    await flush();
    checkInvariants(w, `quiet ${t}`);
  }
  const snapshot = w.actor.getSnapshot();
  if (verbose) {
    console.log(
      "end state",
      JSON.stringify(snapshot.value),
      JSON.stringify(snapshot.context?.jobs),
      JSON.stringify(snapshot.context?.slots),
    );
    for (const [id, ref] of liveChildren(w, "")) console.log("child", id, JSON.stringify(ref.getSnapshot().value));
  }
  const context = `seed ${seed}\nreplay: ${replay(seed)}\n${w.trace.slice(-20).join("\n")}`;
  for (const jobId of w.everSeen) {
    const ended = (w.finished.get(jobId) ?? 0) + (w.unusedOffers.get(jobId) ?? 0);
    expect(ended, `job ${jobId} never reached a final state; ${context}`).toBeGreaterThanOrEqual(1);
    expect(w.finished.get(jobId) ?? 0, `job ${jobId} ran more than once; ${context}`).toBeLessThanOrEqual(1);
  }
  for (const jobId of w.acceptedOffers) {
    expect(w.everSeen.has(jobId), `accepted offer ${jobId} was never a job; ${context}`).toBe(true);
  }
  if (ended || snapshot.status === "done") {
    expect(snapshot.status, `a drained or stopped worker must stop; ${context}`).toBe("done");
    expect(
      w.fakes.live.filter((p) => !p.disposed),
      `processes left after stop; ${context}`,
    ).toEqual([]);
  } else {
    const idle = Object.values(snapshot.context.slots).filter((s) => s.phase === "idle").length;
    expect(idle, `idle processes after quiescence; ${context}`).toBe(
      Math.min(w.input.numIdleProcesses, w.input.maxProcesses),
    );
    expect(Object.keys(snapshot.context.jobs), `jobs left after quiescence; ${context}`).toEqual([]);
  }
}

describe("worker simulation", () => {
  if (ONLY_SEED !== undefined) {
    it(`replays seed ${ONLY_SEED}`, async () => {
      await runSeed(ONLY_SEED, true);
    });
    return;
  }

  it(`${SEEDS} seeded runs keep every invariant`, { timeout: 120_000 }, async () => {
    for (let seed = 1; seed <= SEEDS; seed++) await runSeed(seed);
  });

  it("under permanent spawn failure, spawn attempts per minute stay bounded by the backoff", async () => {
    const base = 200;
    const max = 3_200;
    const fakes = new FakeProcesses({
      onStart: (p) => p.emit({ type: "proc.spawn_failed", error: { name: "Error", message: "ENOMEM" } }),
    });
    const clock = new SimulatedClock();
    const rng = mulberry32(7);
    const machine = workerMachine.provide({
      actors: {
        slot: slotMachine.provide({ actors: { process: fakes.logic } }),
        registryLink: linkMachine([]) as never,
      },
    });
    const actor = createTracedActor(machine, {
      clock,
      input: {
        maxProcesses: 4,
        numIdleProcesses: 3,
        loadThreshold: 1,
        timing: { drainTimeoutMs: 1_000, spawnBackoffBaseMs: base, spawnBackoffMaxMs: max },
        job: { offerTtlMs: 1_000, launchTimeoutMs: 1_000, maxDurationMs: 0 },
        slot: { timing: SLOT_TIMING, memoryWarnMb: 0, memoryLimitMb: 0 },
        random: rng,
      },
    });
    actor.start();
    const attempts: number[] = [0];
    let seen = fakes.all.length;
    for (let t = 10; t <= 10 * 60_000; t += 10) {
      clock.increment(10);
      while (fakes.all.length > seen) {
        attempts.push(t);
        seen++;
      }
    }
    // Each wait is at least half the capped step (equal jitter), so once the step is at its cap,
    // a minute holds at most 60 000 / (max / 2) + 1 attempts; the first minute also holds the ramp.
    const saturatedBound = Math.ceil(60_000 / (max / 2)) + 1;
    const rampSteps = Math.ceil(Math.log2(max / base)) + 1;
    for (let minute = 0; minute < 10; minute++) {
      const inMinute = attempts.filter((t) => t >= minute * 60_000 && t < (minute + 1) * 60_000).length;
      expect(inMinute, `minute ${minute}`).toBeLessThanOrEqual(
        minute === 0 ? saturatedBound + rampSteps : saturatedBound,
      );
    }
    for (let k = 1; k < attempts.length; k++) {
      const step = Math.min(max, base * 2 ** (k - 1));
      expect((attempts[k] as number) - (attempts[k - 1] as number)).toBeGreaterThanOrEqual(step / 2 - 10);
    }
    expect(actor.getSnapshot().matches({ active: { lifecycle: "starting" } })).toBe(true);
    actor.stop();
  });
});
