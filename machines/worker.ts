import {
  type AnyActorRef,
  and,
  assign,
  type DoneActorEvent,
  type ErrorActorEvent,
  emit,
  enqueueActions,
  fromCallback,
  not,
  raise,
  setup,
  stateIn,
} from "xstate";
import { type JobOutput, type JobTiming, jobMachine } from "./job.ts";
import type { JobSpec, JobUpdate, WorkerStatus } from "./shared.ts";
import { type SlotInput, type SlotOutput, slotMachine } from "./slot.ts";

export interface WorkerTiming {
  drainTimeoutMs: number;
  spawnBackoffBaseMs: number;
  spawnBackoffMaxMs: number;
}

export interface WorkerInput {
  maxProcesses: number;
  numIdleProcesses: number;
  loadThreshold: number;
  timing: WorkerTiming;
  job: JobTiming;
  slot: Omit<SlotInput, "slotId">;
  /** Passed through to the registry link actor. */
  link?: unknown;
  /** Jitter source in [0, 1). Math.random in production, a seeded PRNG in tests. */
  random: () => number;
}

/** The root's view of one slot; only what pool policy needs. The slot actor holds the rest. */
export interface SlotView {
  phase: "warming" | "idle" | "busy" | "closing";
  jobId: string | null;
}

/** reserved: offer accepted, no slot needed yet; waiting: needs a slot; placed: has one. */
export interface JobView {
  spec: JobSpec;
  phase: "reserved" | "waiting" | "placed";
  slotId: string | null;
  /** Set once `running` went to the registry, so a repeated report is not forwarded twice. */
  reportedRunning?: true;
}

export interface WorkerContext {
  maxProcesses: number;
  numIdleProcesses: number;
  loadThreshold: number;
  timing: WorkerTiming;
  jobTiming: JobTiming;
  slotConfig: Omit<SlotInput, "slotId">;
  linkInput: unknown;
  random: () => number;
  slots: Record<string, SlotView>;
  jobs: Record<string, JobView>;
  waiting: string[];
  nextSlotNumber: number;
  spawnFailures: number;
  /** The last final reports, so a job that already ran here is never started again. */
  finishedJobs: JobUpdate[];
  /** Processes that failed to warm since the pool last looked; the pool backs off on the next step. */
  unseenSpawnFailures: number;
  /** The last measured load sample in 0..1 (CPU or loadFn); compared with loadThreshold. */
  externalLoad: number;
  exitCode: number;
}

/** Commands the root sends to its registry link. */
export type LinkCommand =
  | { type: "link.status"; status: WorkerStatus }
  | { type: "link.job_update"; update: JobUpdate }
  | { type: "link.offer_answer"; jobId: string; accept: boolean; error?: string };

export type WorkerEvent =
  | { type: "worker.offer"; spec: JobSpec }
  | { type: "worker.assignment"; spec: JobSpec }
  | { type: "worker.run"; spec: JobSpec }
  | { type: "worker.terminate"; jobId: string; reason?: string }
  /** A round trip to the registry renewed the leases of these jobs: each may run this long from now. */
  | { type: "worker.lease_renewed"; jobIds: string[]; validForMs: number }
  | { type: "worker.load"; value: number }
  | { type: "worker.drain" }
  | { type: "worker.stop" }
  | { type: "worker.capacity_changed" }
  | { type: "slot.ready"; slotId: string }
  | { type: "slot.job_running"; slotId: string; jobId: string }
  | { type: "slot.assign_refused"; slotId: string; job: JobSpec }
  | { type: "slot.memory_warning"; slotId: string; mb: number; jobId: string | null }
  | { type: "job.answer"; jobId: string; accept: boolean; error?: string }
  | { type: "job.needs_slot"; jobId: string }
  | {
      type: "job.stop";
      jobId: string;
      slotId: string;
      reason: "cancelled" | "max_duration" | "worker_shutdown" | "launch_failed" | "lease_lapsed";
    };

/** Emitted to listeners on the root actor (`actor.on(...)`): logs, metrics, local mode. */
export type WorkerEmitted =
  | { type: "job.finished"; output: JobOutput }
  | { type: "slot.exited"; output: SlotOutput }
  | { type: "memory.warning"; slotId: string; mb: number; jobId: string | null }
  | { type: "job.rejected"; jobId: string; reason: string };

export interface WorkerOutput {
  exitCode: number;
}

export const slotActorId = (n: number) => `slot.${n}`;
export const jobActorId = (jobId: string) => `job.${jobId}`;
const jobIdOfActor = (actorId: string) => actorId.slice("job.".length);

/** How many finished job ids the worker remembers to refuse a repeated assignment. */
export const REMEMBERED_FINISHED_JOBS = 500;

export const EXIT_CLEAN = 0;
export const EXIT_LINK_FAILED = 1;
export const EXIT_FORCED = 2;

const count = (slots: Record<string, SlotView>, phase: SlotView["phase"]) =>
  Object.values(slots).filter((s) => s.phase === phase).length;
const jobCount = (c: WorkerContext) => Object.keys(c.jobs).length;
/**
 * The measured load (CPU or the user's loadFn), never the job share: `maxProcesses` caps jobs on its
 * own, so a worker with maxProcesses N takes N jobs while the measured load stays below loadThreshold.
 */
export const loadOf = (c: WorkerContext) => c.externalLoad;
const isFull = (c: WorkerContext) => jobCount(c) >= c.maxProcesses || loadOf(c) >= c.loadThreshold;
const reservedCount = (c: WorkerContext) => Object.values(c.jobs).filter((j) => j.phase === "reserved").length;

const DRAINING = "#worker.active.lifecycle.draining";
const STOPPING = "#worker.active.lifecycle.stopping";

function statusOf(c: WorkerContext, status: WorkerStatus["status"]): WorkerStatus {
  return { status, load: loadOf(c), jobCount: jobCount(c), idleProcesses: count(c.slots, "idle") };
}

/**
 * The link is invoked by `active`, so it is a child for as long as anything can be sent; once it is
 * done, events to it are dropped, never thrown.
 */
const sendToLink = (enqueue: { sendTo: (id: "registryLink", event: LinkCommand) => void }, command: LinkCommand) =>
  enqueue.sendTo("registryLink", command);

/**
 * The root of a worker process. Two regions: `lifecycle` (starting → running{available ⇄ full} →
 * draining → stopping) and `pool` (ready ⇄ backingOff), which keeps numIdleProcesses warm without
 * exceeding maxProcesses and backs off when processes fail to warm. Spawns one slot actor per
 * process and one job actor per job, routes between them and reports to the registry link.
 */
export const workerMachine = setup({
  types: {
    input: {} as WorkerInput,
    context: {} as WorkerContext,
    events: {} as WorkerEvent,
    output: {} as WorkerOutput,
    emitted: {} as WorkerEmitted,
  },
  actors: {
    slot: slotMachine,
    job: jobMachine,
    // Both provided by src/: the connection machine (or a local link) and a CPU/loadFn sampler.
    registryLink: fromCallback<LinkCommand, unknown>(() => {}),
    loadSampler: fromCallback(() => {}),
  },
  delays: {
    drainTimeout: ({ context }) => context.timing.drainTimeoutMs,
    // Equal jitter: at least half the capped exponential step, so failures per minute stay bounded.
    spawnBackoff: ({ context }) => {
      const step = Math.min(
        context.timing.spawnBackoffMaxMs,
        context.timing.spawnBackoffBaseMs * 2 ** Math.max(0, context.spawnFailures - 1),
      );
      return step / 2 + context.random() * (step / 2);
    },
  },
  guards: {
    isFull: ({ context }) => isFull(context),
    canAcceptOffer: ({ context, event }) =>
      event.type === "worker.offer" &&
      !isFull(context) &&
      !context.jobs[event.spec.jobId] &&
      !context.finishedJobs.some((f) => f.jobId === event.spec.jobId),
    finishedHere: ({ context, event }) =>
      "spec" in event && context.finishedJobs.some((f) => f.jobId === event.spec.jobId),
    hasCapacityFor: ({ context, event }) =>
      "spec" in event && jobCount(context) < context.maxProcesses && !context.jobs[event.spec.jobId],
    knownJob: ({ context, event }) => "spec" in event && Boolean(context.jobs[event.spec.jobId]),
    poolWarm: ({ context }) => count(context.slots, "idle") >= Math.min(context.numIdleProcesses, context.maxProcesses),
    processesFailedToWarm: ({ context }) => context.unseenSpawnFailures > 0,
    noJobs: ({ context }) => jobCount(context) === 0,
    nothingAlive: ({ context }) => jobCount(context) === 0 && Object.keys(context.slots).length === 0,
    belowWarmTarget: ({ context }) => {
      const warming = count(context.slots, "warming");
      const spare = count(context.slots, "idle") + warming;
      const demand = context.numIdleProcesses + context.waiting.length + reservedCount(context);
      const alive = Object.keys(context.slots).length;
      // After a failure, probe with one process at a time.
      return spare < demand && alive < context.maxProcesses && (context.spawnFailures === 0 || warming === 0);
    },
    aboveWarmTarget: ({ context }) => {
      const demand = context.numIdleProcesses + context.waiting.length + reservedCount(context);
      return count(context.slots, "idle") > demand;
    },
    jobsWaitingForSlots: ({ context }) => {
      const spare = count(context.slots, "idle") + count(context.slots, "warming");
      return context.waiting.length > spare && Object.keys(context.slots).length < context.maxProcesses;
    },
  },
  actions: {
    spawnSlot: enqueueActions(({ context, enqueue }) => {
      const id = slotActorId(context.nextSlotNumber);
      enqueue.spawnChild("slot", { id, input: { ...context.slotConfig, slotId: id } });
      enqueue.assign({
        nextSlotNumber: context.nextSlotNumber + 1,
        slots: { ...context.slots, [id]: { phase: "warming", jobId: null } },
      });
    }),
    markSlotIdle: assign({
      slots: ({ context, event }) => {
        if (event.type !== "slot.ready" || !context.slots[event.slotId]) return context.slots;
        return { ...context.slots, [event.slotId]: { phase: "idle" as const, jobId: null } };
      },
      spawnFailures: () => 0,
    }),
    /** Pairs jobs waiting for a process with idle slots, oldest first on both sides. */
    matchSlots: enqueueActions(({ context, enqueue }) => {
      const slots = { ...context.slots };
      const jobs = { ...context.jobs };
      const waiting = [...context.waiting];
      const idle = Object.keys(slots).filter((id) => slots[id]?.phase === "idle");
      while (waiting.length > 0 && idle.length > 0) {
        const jobId = waiting.shift() as string;
        const job = jobs[jobId];
        if (job?.phase !== "waiting") continue;
        const slotId = idle.shift() as string;
        slots[slotId] = { phase: "busy", jobId };
        jobs[jobId] = { ...job, phase: "placed", slotId };
        enqueue.sendTo(slotId, { type: "slot.assign", job: job.spec });
        enqueue.sendTo(jobActorId(jobId), { type: "job.launching", slotId });
      }
      enqueue.assign({ slots, jobs, waiting });
    }),
    /** One idle process more than the pool needs (its job went away before it came): let it go. */
    retireIdleSlot: enqueueActions(({ context, enqueue }) => {
      const id = Object.keys(context.slots)
        .filter((slotId) => context.slots[slotId]?.phase === "idle")
        .at(-1);
      if (!id) return;
      enqueue.assign({ slots: { ...context.slots, [id]: { phase: "closing", jobId: null } } });
      enqueue.sendTo(id, { type: "slot.stop", reason: "idle_shutdown" });
    }),
    /** Stops processes no job will need: every idle one, and warming ones beyond the jobs waiting. */
    stopIdleSlots: enqueueActions(({ context, enqueue }) => {
      const slots = { ...context.slots };
      let keepWarming = context.waiting.length;
      for (const [id, view] of Object.entries(slots)) {
        if (view.phase === "warming" && keepWarming > 0) {
          keepWarming--;
          continue;
        }
        if (view.phase !== "idle" && view.phase !== "warming") continue;
        slots[id] = { ...view, phase: "closing" };
        enqueue.sendTo(id, { type: "slot.stop", reason: "idle_shutdown" });
      }
      enqueue.assign({ slots });
    }),
    stopAllSlots: enqueueActions(({ context, enqueue }) => {
      const slots = { ...context.slots };
      for (const [id, view] of Object.entries(slots)) {
        slots[id] = { ...view, phase: "closing" };
        enqueue.sendTo(id, { type: "slot.stop", reason: view.jobId ? "worker_shutdown" : "idle_shutdown" });
      }
      enqueue.assign({ slots });
    }),
    refuseSlot: enqueueActions(({ context, enqueue, event }) => {
      // A job that already settled has no actor left to tell.
      if (event.type !== "job.needs_slot" || !context.jobs[event.jobId]) return;
      enqueue.sendTo(jobActorId(event.jobId), { type: "job.shutdown" });
    }),
    shutdownJobs: enqueueActions(({ context, enqueue }) => {
      for (const jobId of Object.keys(context.jobs)) enqueue.sendTo(jobActorId(jobId), { type: "job.shutdown" });
    }),
    spawnJob: enqueueActions(({ context, enqueue, event }, params: { preassigned: boolean }) => {
      if (!("spec" in event)) return;
      const spec = event.spec;
      enqueue.spawnChild("job", {
        id: jobActorId(spec.jobId),
        input: { spec, preassigned: params.preassigned, timing: context.jobTiming },
      });
      enqueue.assign({
        jobs: { ...context.jobs, [spec.jobId]: { spec, phase: "reserved", slotId: null } },
      });
      enqueue.raise({ type: "worker.capacity_changed" });
    }),
    declineOffer: enqueueActions(({ context, enqueue, event }) => {
      if (event.type !== "worker.offer") return;
      const jobId = event.spec.jobId;
      const error = context.jobs[jobId]
        ? "job already on this worker"
        : context.finishedJobs.some((f) => f.jobId === jobId)
          ? "job already ran on this worker"
          : "worker not available";
      sendToLink(enqueue, { type: "link.offer_answer", jobId: event.spec.jobId, accept: false, error });
    }),
    /** Reported failed once and remembered: a job refused here is never started here later. */
    rejectJob: enqueueActions(({ context, enqueue, event }, params: { reason: string }) => {
      if (!("spec" in event)) return;
      const jobId = event.spec.jobId;
      const update: JobUpdate = {
        jobId,
        status: "failed",
        reason: "launch_failed",
        error: { name: "Error", message: params.reason },
      };
      sendToLink(enqueue, { type: "link.job_update", update });
      enqueue.assign({ finishedJobs: [...context.finishedJobs, update].slice(-REMEMBERED_FINISHED_JOBS) });
      enqueue.emit({ type: "job.rejected", jobId, reason: params.reason });
    }),
    /** A job that already ran here is reported again, never run again. */
    repeatFinal: enqueueActions(({ context, enqueue, event }) => {
      if (!("spec" in event)) return;
      const update = context.finishedJobs.find((f) => f.jobId === event.spec.jobId);
      if (update) sendToLink(enqueue, { type: "link.job_update", update });
      enqueue.emit({ type: "job.rejected", jobId: event.spec.jobId, reason: "job already ran on this worker" });
    }),
    forwardAssignment: enqueueActions(({ context, enqueue, event }) => {
      if (event.type !== "worker.assignment") return;
      const job = context.jobs[event.spec.jobId];
      if (!job) return;
      enqueue.assign({
        jobs: { ...context.jobs, [event.spec.jobId]: { ...job, spec: { ...job.spec, ...event.spec } } },
      });
      enqueue.sendTo(jobActorId(event.spec.jobId), { type: "job.assigned", spec: event.spec });
    }),
    forwardTermination: enqueueActions(({ context, enqueue, event }) => {
      if (event.type !== "worker.terminate" || !context.jobs[event.jobId]) return;
      enqueue.sendTo(jobActorId(event.jobId), { type: "job.cancel", reason: event.reason });
    }),
    renewLeases: enqueueActions(({ context, enqueue, event }) => {
      if (event.type !== "worker.lease_renewed") return;
      for (const jobId of event.jobIds) {
        if (context.jobs[jobId])
          enqueue.sendTo(jobActorId(jobId), { type: "job.lease_renewed", validForMs: event.validForMs });
      }
    }),
    forwardAnswer: enqueueActions(({ enqueue, event }) => {
      if (event.type !== "job.answer") return;
      sendToLink(enqueue, {
        type: "link.offer_answer",
        jobId: event.jobId,
        accept: event.accept,
        ...(event.error ? { error: event.error } : {}),
      });
    }),
    queueForSlot: assign(({ context, event }) => {
      if (event.type !== "job.needs_slot") return {};
      const job = context.jobs[event.jobId];
      if (!job || context.waiting.includes(event.jobId)) return {};
      return {
        jobs: { ...context.jobs, [event.jobId]: { ...job, phase: "waiting" as const, slotId: null } },
        waiting: [...context.waiting, event.jobId],
      };
    }),
    /** A slot that could not take its job hands it back; the job goes back to waiting for one. */
    unplaceRefused: enqueueActions(({ context, enqueue, event }) => {
      if (event.type !== "slot.assign_refused") return;
      const jobId = event.job.jobId;
      const job = context.jobs[jobId];
      const slot = context.slots[event.slotId];
      const slots = slot
        ? { ...context.slots, [event.slotId]: { phase: "closing" as const, jobId: null } }
        : context.slots;
      enqueue.assign({ slots });
      if (!job || job.slotId !== event.slotId) return;
      enqueue.assign({ jobs: { ...context.jobs, [jobId]: { ...job, phase: "reserved", slotId: null } } });
      enqueue.sendTo(jobActorId(jobId), { type: "job.unplaced" });
    }),
    forwardStop: enqueueActions(({ context, enqueue, event, self }) => {
      if (event.type !== "job.stop") return;
      const slot = context.slots[event.slotId];
      if (!slot || slot.jobId !== event.jobId) return;
      // A slot that already exited has its done event queued; that settles the job.
      const child = self.getSnapshot().children[event.slotId] as AnyActorRef | undefined;
      if (child?.getSnapshot().status !== "active") return;
      enqueue.sendTo(event.slotId, { type: "slot.stop", reason: event.reason });
    }),
    reportRunning: enqueueActions(({ context, enqueue, event }) => {
      if (event.type !== "slot.job_running") return;
      const job = context.jobs[event.jobId];
      if (!job || job.slotId !== event.slotId || job.reportedRunning) return;
      enqueue.assign({ jobs: { ...context.jobs, [event.jobId]: { ...job, reportedRunning: true } } });
      enqueue.sendTo(jobActorId(event.jobId), { type: "job.running" });
      sendToLink(enqueue, { type: "link.job_update", update: { jobId: event.jobId, status: "running" } });
    }),
    emitMemoryWarning: emit(({ event }) => {
      const e = event as Extract<WorkerEvent, { type: "slot.memory_warning" }>;
      return { type: "memory.warning" as const, slotId: e.slotId, mb: e.mb, jobId: e.jobId };
    }),
    /** A slot's process is gone: settle its job, count launch failures, and free the child. */
    settleSlot: enqueueActions(({ context, enqueue, event }) => {
      const { actorId, output } = event as unknown as DoneActorEvent<SlotOutput>;
      const view = context.slots[actorId];
      const slots = { ...context.slots };
      delete slots[actorId];
      let jobs = context.jobs;
      const jobId = output.jobId ?? view?.jobId ?? null;
      const job = jobId ? context.jobs[jobId] : undefined;
      if (jobId && job && job.slotId === actorId) {
        if (output.jobId && output.jobOutcome) {
          enqueue.sendTo(jobActorId(jobId), { type: "job.ended", outcome: output.jobOutcome });
        } else {
          // The slot died before it took the job: the job asks for another process.
          jobs = { ...jobs, [jobId]: { ...job, phase: "reserved", slotId: null } };
          enqueue.sendTo(jobActorId(jobId), { type: "job.unplaced" });
        }
      }
      const requestedStop =
        output.stopReason !== null &&
        output.stopReason !== "initialize_timeout" &&
        output.stopReason !== "unresponsive";
      const diedWithoutJob = output.jobId === null && !requestedStop;
      enqueue.assign({
        slots,
        jobs,
        unseenSpawnFailures: context.unseenSpawnFailures + (diedWithoutJob ? 1 : 0),
      });
      enqueue.stopChild(actorId);
      enqueue.emit({ type: "slot.exited", output });
      enqueue.raise({ type: "worker.capacity_changed" });
    }),
    /** A slot machine itself failed (a bug, not a process exit): its job fails as crashed. */
    settleBrokenSlot: enqueueActions(({ context, enqueue, event }) => {
      const { actorId } = event as unknown as ErrorActorEvent;
      const view = context.slots[actorId];
      const slots = { ...context.slots };
      delete slots[actorId];
      if (view?.jobId && context.jobs[view.jobId]?.slotId === actorId) {
        enqueue.sendTo(jobActorId(view.jobId), {
          type: "job.ended",
          outcome: { status: "failed", reason: "crashed", error: { name: "Error", message: "slot supervisor failed" } },
        });
      }
      enqueue.assign({ slots, unseenSpawnFailures: context.unseenSpawnFailures + 1 });
      // A machine that fails leaves its invocations running (xstate #5153): stop its process actor
      // ourselves, or the process would outlive its supervisor and break the maxProcesses bound.
      enqueue(({ self }) => {
        const broken = self.getSnapshot().children[actorId] as AnyActorRef | undefined;
        const processActor = broken?.getSnapshot().children?.process as { _stop?: () => void } | undefined;
        // Public stop() refuses non-root actors; _stop() is what a parent calls to stop its child.
        processActor?._stop?.();
      });
      enqueue.stopChild(actorId);
    }),
    /** Final job actors are stopped at once and reported exactly once. */
    settleJob: enqueueActions(({ context, enqueue, event, self }) => {
      const { actorId, output } = event as unknown as DoneActorEvent<JobOutput>;
      const jobId = jobIdOfActor(actorId);
      const placedOn = context.jobs[jobId]?.slotId;
      const jobs = { ...context.jobs };
      delete jobs[jobId];
      enqueue.assign({ jobs, waiting: context.waiting.filter((id) => id !== jobId) });
      enqueue.stopChild(actorId);
      // It ended before it heard it was placed (cancelled, or its lease ran out, as the slot took it):
      // the slot must not run it on its own.
      const slot = placedOn ? (self.getSnapshot().children[placedOn] as AnyActorRef | undefined) : undefined;
      if (placedOn && context.slots[placedOn]?.jobId === jobId && slot?.getSnapshot().status === "active") {
        enqueue.sendTo(placedOn, {
          type: "slot.stop",
          reason: output.reason === "lease_lapsed" ? "lease_lapsed" : "cancelled",
        });
      }
      if (output.status === "completed" || output.status === "failed" || output.status === "cancelled") {
        const update: JobUpdate = { jobId, status: output.status };
        if (output.reason) update.reason = output.reason;
        if (output.error) update.error = output.error;
        if (output.exitCode !== undefined) update.exitCode = output.exitCode;
        if (output.signal !== undefined) update.signal = output.signal;
        sendToLink(enqueue, { type: "link.job_update", update });
        enqueue.assign({ finishedJobs: [...context.finishedJobs, update].slice(-REMEMBERED_FINISHED_JOBS) });
      }
      enqueue.emit({ type: "job.finished", output });
      enqueue.raise({ type: "worker.capacity_changed" });
    }),
    settleBrokenJob: enqueueActions(({ context, enqueue, event }) => {
      const { actorId, error } = event as unknown as ErrorActorEvent;
      const jobId = jobIdOfActor(actorId);
      const job = context.jobs[jobId];
      const jobs = { ...context.jobs };
      delete jobs[jobId];
      enqueue.assign({ jobs, waiting: context.waiting.filter((id) => id !== jobId) });
      enqueue.stopChild(actorId);
      if (job?.slotId && context.slots[job.slotId]) {
        enqueue.sendTo(job.slotId, { type: "slot.stop", reason: "worker_shutdown" });
      }
      const message = error instanceof Error ? error.message : String(error);
      const update: JobUpdate = { jobId, status: "failed", reason: "crashed", error: { name: "Error", message } };
      sendToLink(enqueue, { type: "link.job_update", update });
      enqueue.assign({ finishedJobs: [...context.finishedJobs, update].slice(-REMEMBERED_FINISHED_JOBS) });
      enqueue.emit({
        type: "job.finished",
        output: { jobId, status: "failed", reason: "crashed", error: update.error },
      });
      enqueue.raise({ type: "worker.capacity_changed" });
    }),
    publishStatus: enqueueActions(({ context, enqueue }, params: { status: WorkerStatus["status"] }) => {
      sendToLink(enqueue, { type: "link.status", status: statusOf(context, params.status) });
    }),
    recordLoad: assign({
      externalLoad: ({ event }) =>
        event.type === "worker.load" && Number.isFinite(event.value) ? Math.min(1, Math.max(0, event.value)) : 0,
    }),
    countSpawnFailures: assign({
      spawnFailures: ({ context }) => context.spawnFailures + context.unseenSpawnFailures,
      unseenSpawnFailures: () => 0,
    }),
    exitWith: assign({ exitCode: (_, params: { code: number }) => params.code }),
    exitForcedIfJobs: assign({ exitCode: ({ context }) => (jobCount(context) > 0 ? EXIT_FORCED : context.exitCode) }),
  },
}).createMachine({
  id: "worker",
  context: ({ input }) => ({
    maxProcesses: input.maxProcesses,
    numIdleProcesses: input.numIdleProcesses,
    loadThreshold: input.loadThreshold,
    timing: input.timing,
    jobTiming: input.job,
    slotConfig: input.slot,
    linkInput: input.link,
    random: input.random,
    slots: {},
    jobs: {},
    waiting: [],
    nextSlotNumber: 0,
    spawnFailures: 0,
    unseenSpawnFailures: 0,
    finishedJobs: [],
    externalLoad: 0,
    exitCode: EXIT_CLEAN,
  }),
  initial: "active",
  states: {
    active: {
      type: "parallel",
      invoke: [
        {
          id: "registryLink",
          src: "registryLink",
          input: ({ context }: { context: WorkerContext }) => context.linkInput,
          // The link gave up (maxRetry) or broke: exit non-zero so an orchestrator restarts us.
          onDone: { target: ".lifecycle.stopping", actions: { type: "exitWith", params: { code: EXIT_LINK_FAILED } } },
          onError: { target: ".lifecycle.stopping", actions: { type: "exitWith", params: { code: EXIT_LINK_FAILED } } },
        },
        {
          id: "loadSampler",
          src: "loadSampler",
          // Without a sampler the measured load is 0: only maxProcesses caps jobs.
          onError: { actions: assign({ externalLoad: () => 0 }) },
        },
      ],
      on: {
        "worker.offer": { actions: "declineOffer" },
        "worker.assignment": [
          { guard: "knownJob", actions: "forwardAssignment" },
          { guard: "finishedHere", actions: "repeatFinal" },
          { guard: "hasCapacityFor", actions: { type: "spawnJob", params: { preassigned: true } } },
          { actions: { type: "rejectJob", params: { reason: "no capacity for an unannounced assignment" } } },
        ],
        "worker.run": [
          // The same job run twice while it is live: it is already running here.
          { guard: "knownJob" },
          { guard: "finishedHere", actions: "repeatFinal" },
          { guard: "hasCapacityFor", actions: { type: "spawnJob", params: { preassigned: true } } },
          { actions: { type: "rejectJob", params: { reason: "no free process for this job" } } },
        ],
        "worker.terminate": { actions: "forwardTermination" },
        "worker.lease_renewed": { actions: "renewLeases" },
        "worker.load": { actions: ["recordLoad", raise({ type: "worker.capacity_changed" })] },
        "worker.capacity_changed": {},
        "worker.drain": {},
        "worker.stop": {},
        "slot.ready": { actions: ["markSlotIdle", "matchSlots", raise({ type: "worker.capacity_changed" })] },
        "slot.job_running": { actions: "reportRunning" },
        "slot.assign_refused": { actions: "unplaceRefused" },
        "slot.memory_warning": { actions: "emitMemoryWarning" },
        "job.answer": { actions: "forwardAnswer" },
        "job.needs_slot": { actions: ["queueForSlot", "matchSlots"] },
        "job.stop": { actions: "forwardStop" },
        "xstate.done.actor.slot.*": { actions: ["settleSlot", "matchSlots"] },
        "xstate.error.actor.slot.*": { actions: "settleBrokenSlot" },
        "xstate.done.actor.job.*": { actions: "settleJob" },
        "xstate.error.actor.job.*": { actions: "settleBrokenJob" },
      },
      states: {
        lifecycle: {
          initial: "starting",
          states: {
            starting: {
              entry: { type: "publishStatus", params: { status: "starting" } },
              always: { guard: "poolWarm", target: "running" },
              on: {
                "worker.capacity_changed": { actions: { type: "publishStatus", params: { status: "starting" } } },
                "worker.drain": "draining",
                "worker.stop": { target: "stopping", actions: "exitForcedIfJobs" },
              },
            },
            running: {
              initial: "available",
              on: {
                "worker.drain": "draining",
                "worker.stop": { target: "stopping", actions: "exitForcedIfJobs" },
              },
              states: {
                available: {
                  entry: { type: "publishStatus", params: { status: "available" } },
                  always: { guard: "isFull", target: "full" },
                  on: {
                    "worker.offer": [
                      { guard: "canAcceptOffer", actions: { type: "spawnJob", params: { preassigned: false } } },
                      { actions: "declineOffer" },
                    ],
                    "worker.capacity_changed": { actions: { type: "publishStatus", params: { status: "available" } } },
                  },
                },
                full: {
                  entry: { type: "publishStatus", params: { status: "full" } },
                  always: { guard: not("isFull"), target: "available" },
                  on: {
                    "worker.capacity_changed": { actions: { type: "publishStatus", params: { status: "full" } } },
                  },
                },
              },
            },
            /** No new work; running jobs get drainTimeout to finish on their own. */
            draining: {
              entry: [{ type: "publishStatus", params: { status: "draining" } }, "stopIdleSlots"],
              always: { guard: "noJobs", target: "stopping" },
              after: {
                drainTimeout: { target: "stopping", actions: { type: "exitWith", params: { code: EXIT_FORCED } } },
              },
              on: {
                "worker.run": [
                  { guard: "knownJob" },
                  { guard: "finishedHere", actions: "repeatFinal" },
                  { actions: { type: "rejectJob", params: { reason: "worker is draining" } } },
                ],
                "worker.assignment": [
                  { guard: "knownJob", actions: "forwardAssignment" },
                  { guard: "finishedHere", actions: "repeatFinal" },
                  { actions: { type: "rejectJob", params: { reason: "worker is draining" } } },
                ],
                "worker.capacity_changed": { actions: { type: "publishStatus", params: { status: "draining" } } },
                "slot.ready": { actions: ["markSlotIdle", "matchSlots", "stopIdleSlots"] },
                "worker.stop": { target: "stopping", actions: "exitForcedIfJobs" },
              },
            },
            /** Every job is told to stop and every process to exit; ends when nothing is alive. */
            stopping: {
              entry: ["shutdownJobs", "stopAllSlots"],
              always: { guard: "nothingAlive", target: "#worker.stopped" },
              on: {
                // A live job is already being stopped and will report its own end; never a second one.
                "worker.run": [
                  { guard: "knownJob" },
                  { guard: "finishedHere", actions: "repeatFinal" },
                  { actions: { type: "rejectJob", params: { reason: "worker is stopping" } } },
                ],
                "worker.assignment": [
                  { guard: "knownJob" },
                  { guard: "finishedHere", actions: "repeatFinal" },
                  { actions: { type: "rejectJob", params: { reason: "worker is stopping" } } },
                ],
                "slot.ready": { actions: ["markSlotIdle", "stopAllSlots"] },
                "job.needs_slot": { actions: "refuseSlot" },
              },
            },
          },
        },
        pool: {
          initial: "ready",
          states: {
            ready: {
              // Checked before spawning, in the same step the failure was settled: no respawn slips in.
              always: [
                { guard: "processesFailedToWarm", target: "backingOff", actions: "countSpawnFailures" },
                {
                  guard: and([not(stateIn(DRAINING)), not(stateIn(STOPPING)), "belowWarmTarget"]),
                  actions: "spawnSlot",
                },
                { guard: and([stateIn(DRAINING), "jobsWaitingForSlots"]), actions: "spawnSlot" },
                {
                  guard: and([not(stateIn(DRAINING)), not(stateIn(STOPPING)), "aboveWarmTarget"]),
                  actions: "retireIdleSlot",
                },
              ],
            },
            /** Processes failed to warm: no spawns until the backoff elapses (the pool is degraded). */
            backingOff: {
              after: { spawnBackoff: "ready" },
              always: { guard: "processesFailedToWarm", actions: "countSpawnFailures" },
            },
          },
        },
      },
    },
    stopped: { type: "final" },
  },
  output: ({ context }) => ({ exitCode: context.exitCode }),
});

export type WorkerMachine = typeof workerMachine;
