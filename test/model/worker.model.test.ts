import { afterEach, describe, expect, it } from "vitest";
import { type AnyActorRef, type AnyEventObject, assign, fromCallback, SimulatedClock, setup } from "xstate";
import { createTestModel } from "xstate/graph";
import type { JobSpec, JobUpdate } from "../../machines/shared.ts";
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
import { FakeProcesses } from "../support/fake-process.ts";

/** One process, so one job (or the load) makes the worker full. Offers outlive the drain timeout. */
const input: WorkerInput = {
  maxProcesses: 1,
  numIdleProcesses: 1,
  loadThreshold: 0.75,
  timing: { drainTimeoutMs: 5_000, spawnBackoffBaseMs: 100, spawnBackoffMaxMs: 1_000 },
  job: { offerTtlMs: 60_000, launchTimeoutMs: 30_000, maxDurationMs: 0 },
  slot: {
    timing: {
      initializeTimeoutMs: 60_000,
      closeTimeoutMs: 1_000,
      killGraceMs: 500,
      pingIntervalMs: 1_000,
      pongTimeoutMs: 1_000,
      memorySampleIntervalMs: 60_000,
      memoryWarnIntervalMs: 60_000,
    },
    memoryWarnMb: 0,
    memoryLimitMb: 0,
  },
  random: () => 0.5,
};

/** A leased job's validity, and the one a renewal grants: both shorter than the drain timeout. */
const LEASE = 3_000;
const RENEWED = 4_000;

const exit = (code: number) => ({ type: "exit" as const, params: { code } });

/**
 * The worker's lifecycle as the registry sees it, with timers and children turned into events.
 * Why the worker is full (an accepted offer, a running job, the load) and whether a drain still
 * has a job are states of their own; the exit code the worker must end with is in the context.
 */
interface ModelContext {
  exitCode: number;
  /** The running job holds a lease from the registry (dispatched with `redispatch`). */
  leased: boolean;
  /** The registry renewed that lease since the assignment. */
  renewed: boolean;
}

const workerModel = setup({
  types: {
    context: {} as ModelContext,
    events: {} as
      | { type: "WARM" }
      | { type: "OFFER" }
      | { type: "ASSIGN" }
      | { type: "JOB_DONE" }
      | { type: "FILL" }
      | { type: "UNLOAD" }
      | { type: "DRAIN" }
      | { type: "DRAIN_TIMEOUT" }
      | { type: "STOP" }
      | { type: "LINK_FAILED" }
      | { type: "ASSIGN_LEASED" }
      | { type: "RENEW" }
      | { type: "LEASE_LAPSED" },
  },
  guards: { leased: ({ context }) => context.leased },
  actions: {
    exit: assign({ exitCode: (_, params: { code: number }) => params.code }),
    takeLease: assign({ leased: true }),
    renew: assign({ renewed: true }),
    dropLease: assign({ leased: false, renewed: false }),
  },
}).createMachine({
  id: "workerModel",
  context: { exitCode: -1, leased: false, renewed: false },
  initial: "starting",
  states: {
    starting: {
      on: {
        WARM: "available",
        DRAIN: { target: "stopped", actions: exit(EXIT_CLEAN) },
        STOP: { target: "stopped", actions: exit(EXIT_CLEAN) },
        LINK_FAILED: { target: "stopped", actions: exit(EXIT_LINK_FAILED) },
      },
    },
    available: {
      on: {
        OFFER: "reserved",
        // An unannounced assignment: the registry skipped the offer.
        ASSIGN: "running",
        ASSIGN_LEASED: { target: "running", actions: "takeLease" },
        FILL: "loaded",
        DRAIN: { target: "stopped", actions: exit(EXIT_CLEAN) },
        STOP: { target: "stopped", actions: exit(EXIT_CLEAN) },
        LINK_FAILED: { target: "stopped", actions: exit(EXIT_LINK_FAILED) },
      },
    },
    /** An accepted offer holds the only process; full until it is assigned or given up. */
    reserved: {
      on: {
        ASSIGN: "running",
        // The assignment of an accepted offer may grant it a lease.
        ASSIGN_LEASED: { target: "running", actions: "takeLease" },
        DRAIN: "drainingReserved",
        STOP: { target: "stopped", actions: exit(EXIT_FORCED) },
        LINK_FAILED: { target: "stopped", actions: exit(EXIT_LINK_FAILED) },
      },
    },
    running: {
      on: {
        JOB_DONE: { target: "available", actions: "dropLease" },
        RENEW: { guard: "leased", target: "running", actions: "renew" },
        // Unrenewed, the job's process is SIGKILLed and the job fails lease_lapsed: the worker is free again.
        LEASE_LAPSED: { guard: "leased", target: "available", actions: "dropLease" },
        DRAIN: "drainingRunning",
        STOP: { target: "stopped", actions: exit(EXIT_FORCED) },
        LINK_FAILED: { target: "stopped", actions: exit(EXIT_LINK_FAILED) },
      },
    },
    /** Full by external load alone. */
    loaded: {
      on: {
        UNLOAD: "available",
        DRAIN: { target: "stopped", actions: exit(EXIT_CLEAN) },
        STOP: { target: "stopped", actions: exit(EXIT_CLEAN) },
        LINK_FAILED: { target: "stopped", actions: exit(EXIT_LINK_FAILED) },
      },
    },
    drainingReserved: {
      on: {
        ASSIGN: "drainingRunning",
        ASSIGN_LEASED: { target: "drainingRunning", actions: "takeLease" },
        DRAIN_TIMEOUT: { target: "stopped", actions: exit(EXIT_FORCED) },
        STOP: { target: "stopped", actions: exit(EXIT_FORCED) },
        LINK_FAILED: { target: "stopped", actions: exit(EXIT_LINK_FAILED) },
      },
    },
    drainingRunning: {
      on: {
        JOB_DONE: { target: "stopped", actions: exit(EXIT_CLEAN) },
        RENEW: { guard: "leased", target: "drainingRunning", actions: "renew" },
        // The last job ended (killed for its lease): the drain is over, in time.
        LEASE_LAPSED: { guard: "leased", target: "stopped", actions: ["dropLease", exit(EXIT_CLEAN)] },
        DRAIN_TIMEOUT: { target: "stopped", actions: exit(EXIT_FORCED) },
        STOP: { target: "stopped", actions: exit(EXIT_FORCED) },
        LINK_FAILED: { target: "stopped", actions: exit(EXIT_LINK_FAILED) },
      },
    },
    stopped: { type: "final" },
  },
});

const flush = () => new Promise<void>((resolve) => setImmediate(resolve));

const systems: Array<{ stop: () => void }> = [];
afterEach(() => {
  for (const s of systems.splice(0)) s.stop();
});

/** The real worker root: fake processes (warm only after WARM), a recording link, a fake sampler. */
function createSut() {
  let warm = false;
  const fakes = new FakeProcesses({
    onStart: (p) => {
      p.emit({ type: "proc.spawned", pid: p.pid });
      if (warm) p.emit({ type: "proc.ready" });
    },
    onCommand: (p, command) => {
      if (command.type === "ping") p.emit({ type: "proc.pong" });
      if (command.type === "start_job") p.emit({ type: "proc.job_running" });
      if (command.type === "shutdown") {
        p.emit({ type: "proc.done", result: { ok: true } });
        p.emit({ type: "proc.exit", code: 0, signal: null });
      }
      if (command.type === "signal") p.emit({ type: "proc.exit", code: null, signal: command.signal });
    },
  });
  const commands: LinkCommand[] = [];
  let linkBack: ((event: WorkerEvent) => void) | null = null;
  const registryLink = fromCallback<LinkCommand, unknown>(({ receive, sendBack }) => {
    linkBack = sendBack;
    receive((command) => {
      if ((command as AnyEventObject).type === "test.break") throw new Error("registry link broke");
      commands.push(command);
    });
  });
  let samplerBack: ((event: WorkerEvent) => void) | null = null;
  const loadSampler = fromCallback(({ sendBack }) => {
    samplerBack = sendBack;
  });
  const clock = new SimulatedClock();
  const machine = workerMachine.provide({
    actors: { slot: slotMachine.provide({ actors: { process: fakes.logic } }), registryLink, loadSampler },
  });
  const actor = createTracedActor(machine, { clock, input });
  const errors: unknown[] = [];
  const emitted: WorkerEmitted[] = [];
  actor.subscribe({ error: (error) => errors.push(error) });
  actor.on("*", (event) => emitted.push(event as WorkerEmitted));
  actor.start();
  systems.push(actor);
  /** Jobs the registry offered or assigned to this worker. */
  const announced = new Set<string>();

  let nextJob = 0;
  const snapshot = () => actor.getSnapshot();
  const registry = (event: WorkerEvent) => {
    if (!linkBack) throw new Error("link not started");
    linkBack(event);
  };
  const jobsIn = (phase: string) => Object.entries(snapshot().context.jobs).filter(([, j]) => j.phase === phase);
  const sut = {
    actor,
    fakes,
    commands,
    errors,
    announced,
    snapshot,
    finished: () => emitted.flatMap((e) => (e.type === "job.finished" ? [e.output] : [])),
    lifecycle: () => (snapshot().value as { active: { lifecycle: unknown } }).active.lifecycle,
    idle: () => Object.values(snapshot().context.slots).filter((s) => s.phase === "idle").length,
    jobsIn,
    updates: () => commands.flatMap((c) => (c.type === "link.job_update" ? [c.update] : [])),
    lastStatus: () => commands.filter((c) => c.type === "link.status").at(-1),
    warm: () => {
      warm = true;
      for (const p of fakes.live) p.emit({ type: "proc.ready" });
    },
    offer: async () => {
      const jobId = `j${++nextJob}`;
      announced.add(jobId);
      registry({ type: "worker.offer", spec: { jobId } });
      await flush();
    },
    /** Assigns the accepted offer, or, with none, a job the registry never offered. */
    assign: (extra: Partial<JobSpec> = {}) => {
      const jobId = jobsIn("reserved")[0]?.[0] ?? `j${++nextJob}`;
      announced.add(jobId);
      registry({ type: "worker.assignment", spec: { jobId, roomId: "room", ...extra } });
      return jobId;
    },
    /** The registry renews the leases of these jobs (as the link forwards a pong). */
    renew: (jobIds: string[], validForMs: number) => registry({ type: "worker.lease_renewed", jobIds, validForMs }),
    now: () => clock.now(),
    /** The state and validity of a job's lease actor. */
    lease: (jobId: string) => {
      const job = snapshot().children[`job.${jobId}`] as AnyActorRef | undefined;
      const lease = job?.getSnapshot().children.lease as AnyActorRef | undefined;
      const s = lease?.getSnapshot();
      return s ? { value: s.value, validForMs: s.context.validForMs } : undefined;
    },
    load: (value: number) => {
      if (!samplerBack) throw new Error("sampler not started");
      samplerBack({ type: "worker.load", value });
    },
    jobDone: () => {
      const slotId = jobsIn("placed")[0]?.[1].slotId;
      if (!slotId) throw new Error("no placed job");
      const p = fakes.bySlot(slotId);
      p.emit({ type: "proc.job_ending" });
      p.emit({ type: "proc.done", result: { ok: true } });
      p.emit({ type: "proc.exit", code: 0, signal: null });
    },
    tick: (ms: number) => {
      for (let t = 0; t < ms; t++) clock.increment(1);
    },
    breakLink: () => (snapshot().children.registryLink as AnyActorRef).send({ type: "test.break" }),
    /** Holds in every state: no error, at most maxProcesses slots and processes, no finished job actor kept. */
    invariants: () => {
      expect(errors).toEqual([]);
      expect(snapshot().status).not.toBe("error");
      expect(Object.keys(snapshot().context.slots).length).toBeLessThanOrEqual(input.maxProcesses);
      expect(fakes.live.length).toBeLessThanOrEqual(input.maxProcesses);
      for (const [id, child] of Object.entries(snapshot().children)) {
        if (id.startsWith("job.")) expect((child as AnyActorRef).getSnapshot().status).toBe("active");
      }
    },
  };
  return sut;
}

/**
 * Each job the link heard of is reported running at most once and final at most once; exactly once
 * while the link is still there to hear it (a failed link hears nothing more).
 */
function expectReportedOnce(updates: JobUpdate[], linkAlive: boolean) {
  const byJob = new Map<string, JobUpdate[]>();
  for (const u of updates) byJob.set(u.jobId, [...(byJob.get(u.jobId) ?? []), u]);
  for (const [jobId, list] of byJob) {
    expect(list.filter((u) => u.status === "running").length, jobId).toBeLessThanOrEqual(1);
    const finals = list.filter((u) => u.status !== "running").length;
    if (linkAlive) expect(finals, jobId).toBe(1);
    else expect(finals, jobId).toBeLessThanOrEqual(1);
  }
}

describe("worker machine (model-based)", () => {
  // Only events the model takes in a state: no renewal or lapse of a lease no job holds.
  const paths = createTestModel(workerModel).getShortestPaths({ filterEvents: (state, event) => state.can(event) });

  it("the paths cover every state and every transition of the model", () => {
    const reached = new Set(paths.flatMap((p) => p.steps.map((s) => s.state.value as string)));
    expect([...reached].sort()).toEqual(Object.keys(workerModel.states).sort());
    const edges = new Set<string>();
    for (const path of paths) {
      for (let i = 1; i < path.steps.length; i++) {
        const from = path.steps[i - 1]?.state.value as string;
        const step = path.steps[i];
        if (step) edges.add(`${from} -${step.event.type}-> ${step.state.value as string}`);
      }
    }
    const modelEdges = Object.values(workerModel.root.states).flatMap((node) =>
      [...node.transitions].flatMap(([eventType, list]) =>
        list.map((t) => `${node.key} -${eventType}-> ${t.target?.[0]?.key ?? node.key}`),
      ),
    );
    expect([...edges].sort()).toEqual(modelEdges.sort());
    const exitCodes = new Set(
      paths.flatMap((p) => p.steps.filter((s) => s.state.value === "stopped").map((s) => s.state.context.exitCode)),
    );
    expect([...exitCodes].sort()).toEqual([EXIT_CLEAN, EXIT_LINK_FAILED, EXIT_FORCED]);
  });

  for (const path of paths) {
    it(path.description, async () => {
      const sut = createSut();
      const full = () => expect(sut.lifecycle()).toEqual({ running: "full" });
      /** The leased job and when its lease must lapse; null while no job holds one. */
      let lease: { jobId: string; deadline: number } | null = null;
      const renewLease = (validForMs: number) => {
        if (!lease) throw new Error("no leased job");
        sut.renew([lease.jobId, "ghost"], validForMs);
        lease.deadline = sut.now() + validForMs;
      };
      /** Lets time pass 1 ms at a time; a held lease is renewed before it could lapse, as a live link does. */
      const advance = (ms: number) => {
        for (let t = 0; t < ms; t++) {
          if (lease && lease.deadline - sut.now() <= 1) renewLease(LEASE);
          sut.tick(1);
        }
      };
      /** The running job's lease, as the model says it must be. */
      const expectLease = (model: { context: ModelContext }) => {
        const [jobId] = sut.jobsIn("placed")[0] ?? [];
        expect(jobId).toBeDefined();
        if (model.context.leased) {
          expect(lease?.jobId).toBe(jobId);
          expect(sut.lease(jobId as string)).toEqual({
            value: "held",
            validForMs: model.context.renewed ? RENEWED : LEASE,
          });
        } else {
          expect(sut.lease(jobId as string)).toEqual({ value: "none", validForMs: null });
        }
      };
      /** The lease ran out unrenewed: the job's process was SIGKILLed at once and the job failed lease_lapsed. */
      const lapse = () => {
        if (!lease) throw new Error("no leased job");
        const { jobId, deadline } = lease;
        const slotId = sut.snapshot().context.jobs[jobId]?.slotId as string;
        const signals = () => sut.fakes.bySlot(slotId).commands.filter((c) => c.type !== "ping");
        sut.tick(deadline - sut.now() - 1);
        expect(signals().map((c) => c.type)).toEqual(["start_job"]);
        sut.tick(1);
        lease = null;
        expect(signals()).toEqual([
          { type: "start_job", job: expect.objectContaining({ jobId }) },
          { type: "signal", signal: "SIGKILL" },
        ]);
        expect(sut.updates().filter((u) => u.jobId === jobId)).toEqual([
          { jobId, status: "running" },
          { jobId, status: "failed", reason: "lease_lapsed", exitCode: null, signal: "SIGKILL" },
        ]);
      };
      await path.test({
        states: {
          starting: () => {
            sut.invariants();
            expect(sut.lifecycle()).toBe("starting");
            expect(sut.lastStatus()).toMatchObject({ status: { status: "starting" } });
          },
          available: () => {
            sut.invariants();
            expect(sut.lifecycle()).toEqual({ running: "available" });
            expect(sut.snapshot().context.jobs).toEqual({});
            expect(sut.idle()).toBe(1);
            expect(sut.lastStatus()).toMatchObject({ status: { status: "available", jobCount: 0 } });
          },
          reserved: () => {
            sut.invariants();
            full();
            const [jobId] = sut.jobsIn("reserved")[0] ?? [];
            expect(jobId).toBeDefined();
            expect(sut.commands).toContainEqual({ type: "link.offer_answer", jobId, accept: true });
            expect(sut.lastStatus()).toMatchObject({ status: { status: "full", jobCount: 1 } });
          },
          running: (state) => {
            sut.invariants();
            full();
            expectLease(state);
            const [jobId, job] = sut.jobsIn("placed")[0] ?? [];
            expect(job?.slotId).toBeTruthy();
            expect(sut.fakes.bySlot(job?.slotId as string).last("start_job")).toMatchObject({
              job: { jobId, roomId: "room" },
            });
            expect(sut.updates().filter((u) => u.jobId === jobId)).toEqual([{ jobId, status: "running" }]);
          },
          loaded: () => {
            sut.invariants();
            full();
            expect(sut.snapshot().context.jobs).toEqual({});
            expect(sut.snapshot().context.externalLoad).toBeGreaterThanOrEqual(input.loadThreshold);
          },
          drainingReserved: () => {
            sut.invariants();
            expect(sut.lifecycle()).toBe("draining");
            expect(sut.jobsIn("reserved")).toHaveLength(1);
            expect(sut.idle()).toBe(0);
            expect(sut.lastStatus()).toMatchObject({ status: { status: "draining" } });
          },
          drainingRunning: (state) => {
            sut.invariants();
            expect(sut.lifecycle()).toBe("draining");
            expectLease(state);
            const [jobId] = sut.jobsIn("placed")[0] ?? [];
            expect(sut.updates().filter((u) => u.jobId === jobId)).toEqual([{ jobId, status: "running" }]);
          },
          stopped: (state) => {
            expect(sut.errors).toEqual([]);
            expect(sut.snapshot().status).toBe("done");
            expect(sut.snapshot().output).toEqual({ exitCode: (state.context as { exitCode: number }).exitCode });
            expect(sut.fakes.all.filter((p) => !p.disposed && !p.exited)).toEqual([]);
            expect(Object.keys(sut.snapshot().children).filter((id) => id.startsWith("job."))).toEqual([]);
            const exitCode = (state.context as { exitCode: number }).exitCode;
            expectReportedOnce(sut.updates(), exitCode !== EXIT_LINK_FAILED);
            // Every job the worker took on ended exactly once, link or no link.
            const finished = sut.finished().map((o) => o.jobId);
            expect(new Set(finished).size).toBe(finished.length);
            expect(finished.sort()).toEqual([...sut.announced].sort());
          },
        },
        events: {
          WARM: () => sut.warm(),
          OFFER: () => sut.offer(),
          ASSIGN: () => {
            sut.assign();
          },
          ASSIGN_LEASED: () => {
            const jobId = sut.assign({ leaseValidForMs: LEASE });
            lease = { jobId, deadline: sut.now() + LEASE };
          },
          RENEW: () => renewLease(RENEWED),
          LEASE_LAPSED: () => lapse(),
          JOB_DONE: () => {
            sut.jobDone();
            lease = null;
          },
          FILL: () => sut.load(0.9),
          UNLOAD: () => sut.load(0.1),
          DRAIN: () => sut.actor.send({ type: "worker.drain" }),
          DRAIN_TIMEOUT: () => advance(input.timing.drainTimeoutMs),
          STOP: () => sut.actor.send({ type: "worker.stop" }),
          LINK_FAILED: () => sut.breakLink(),
        },
      });
    });
  }
});
