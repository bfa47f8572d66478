import { assign, type DoneActorEvent, enqueueActions, fromPromise, sendParent, sendTo, setup } from "xstate";
import { leaseMachine } from "./lease.ts";
import type { ErrorInfo, FailureReason, JobOutcome, JobSpec } from "./shared.ts";

export interface JobTiming {
  /** How long an accepted offer holds its reservation waiting for the assignment. */
  offerTtlMs: number;
  /** How long an assigned job may wait for a slot, and a launched job for its `running` report. */
  launchTimeoutMs: number;
  /** 0 = unlimited */
  maxDurationMs: number;
}

export interface JobInput {
  spec: JobSpec;
  /** Local mode and unsolicited assignments skip the offer: the job is already ours. */
  preassigned: boolean;
  timing: JobTiming;
}

export type JobEvent =
  | { type: "job.assigned"; spec: JobSpec }
  | { type: "job.launching"; slotId: string }
  | { type: "job.running" }
  | { type: "job.unplaced" }
  | { type: "job.ended"; outcome: JobOutcome }
  | { type: "job.cancel"; reason?: string }
  | { type: "job.shutdown" }
  /** The registry vouched for this (leased) job again: it may run this long from now. */
  | { type: "job.lease_renewed"; validForMs: number };

/** Sent to the parent (the worker root). */
export type JobNotification =
  | { type: "job.answer"; jobId: string; accept: boolean; error?: string }
  | { type: "job.needs_slot"; jobId: string }
  | {
      type: "job.stop";
      jobId: string;
      slotId: string;
      reason: "cancelled" | "max_duration" | "worker_shutdown" | "launch_failed" | "lease_lapsed";
    };

export type JobFinalStatus = "completed" | "failed" | "cancelled" | "declined" | "expired";

export interface JobOutput {
  jobId: string;
  status: JobFinalStatus;
  reason?: string;
  error?: ErrorInfo;
  exitCode?: number | null;
  signal?: string | null;
}

export interface JobMachineContext {
  spec: JobSpec;
  preassigned: boolean;
  timing: JobTiming;
  slotId: string | null;
  outcome: JobOutcome | null;
  declineReason: string | null;
  /** Why a stop was requested, once one was. */
  stopReason: StopRequestReason | null;
  finalStatus: JobFinalStatus | null;
}

type StopRequestReason = Extract<JobNotification, { type: "job.stop" }>["reason"];

/**
 * One job on the worker: deciding (requestFn) → offered (slot capacity reserved, TTL) → assigned
 * (waiting for a slot) → launching → running → ending → completed | failed | cancelled, plus
 * declined and expired for offers that never became jobs. The slot's process does the work; this
 * machine is the job's record and its clock (launch deadline, maximum duration). A job dispatched
 * with `redispatch` holds a lease (the invoked `lease` actor) from its assignment on: when the lease
 * runs out unrenewed, the job is stopped at once, because the registry may run it elsewhere then.
 */
export const jobMachine = setup({
  types: {
    input: {} as JobInput,
    context: {} as JobMachineContext,
    events: {} as JobEvent,
    output: {} as JobOutput,
  },
  actors: {
    // The user's requestFn; provided by src/. The default accepts every offer.
    decideOffer: fromPromise<boolean, JobSpec>(async () => true),
    lease: leaseMachine,
  },
  delays: {
    offerTtl: ({ context }) => context.timing.offerTtlMs,
    launchTimeout: ({ context }) => context.timing.launchTimeoutMs,
    maxDuration: ({ context }) => context.spec.maxDurationMs || context.timing.maxDurationMs,
  },
  guards: {
    isPreassigned: ({ context }) => context.preassigned,
    accepted: ({ event }) => (event as unknown as DoneActorEvent<boolean>).output === true,
    hasMaxDuration: ({ context }) => (context.spec.maxDurationMs || context.timing.maxDurationMs) > 0,
    stoppedToCancel: ({ context }) => context.stopReason === "cancelled",
    outcomeCompleted: ({ event }) => event.type === "job.ended" && event.outcome.status === "completed",
    outcomeCancelled: ({ event }) => event.type === "job.ended" && event.outcome.status === "cancelled",
  },
  actions: {
    answerYes: sendParent(({ context }) => ({ type: "job.answer", jobId: context.spec.jobId, accept: true })),
    answerNo: sendParent(({ context }) => ({
      type: "job.answer",
      jobId: context.spec.jobId,
      accept: false,
      error: context.declineReason ?? "declined",
    })),
    declineBecause: assign({
      declineReason: ({ event }) => {
        const error = (event as { error?: unknown }).error;
        if (error instanceof Error) return `requestFn failed: ${error.message}`;
        if (event.type === "job.cancel") return "cancelled";
        if (event.type === "job.shutdown") return "worker shutting down";
        return "requestFn declined the job";
      },
    }),
    declineOnTimeout: assign({ declineReason: () => "requestFn did not answer in time" }),
    mergeAssignment: assign({
      spec: ({ context, event }) => (event.type === "job.assigned" ? { ...context.spec, ...event.spec } : context.spec),
    }),
    /** An accepted offer becomes a leased job with its assignment, when the assignment carries a lease. */
    takeLease: enqueueActions(({ enqueue, event }) => {
      if (event.type !== "job.assigned" || event.spec.leaseValidForMs === undefined) return;
      enqueue.sendTo("lease", { type: "lease.renewed", validForMs: event.spec.leaseValidForMs });
    }),
    renewLease: sendTo("lease", ({ event }) => ({
      type: "lease.renewed" as const,
      validForMs: event.type === "job.lease_renewed" ? event.validForMs : 0,
    })),
    requestSlot: sendParent(({ context }) => ({ type: "job.needs_slot", jobId: context.spec.jobId })),
    recordSlot: assign({ slotId: ({ event }) => (event.type === "job.launching" ? event.slotId : null) }),
    recordOutcome: assign({ outcome: ({ event }) => (event.type === "job.ended" ? event.outcome : null) }),
    fail: assign({
      outcome: (_, params: { reason: FailureReason; message?: string }): JobOutcome => ({
        status: "failed",
        reason: params.reason,
        ...(params.message ? { error: { name: "Error", message: params.message } } : {}),
      }),
    }),
    finish: assign({ finalStatus: (_, params: { status: JobFinalStatus }) => params.status }),
    requestStop: enqueueActions(({ context, enqueue }, params: { reason: StopRequestReason }) => {
      enqueue.assign({ stopReason: params.reason });
      enqueue.sendParent({
        type: "job.stop",
        jobId: context.spec.jobId,
        slotId: context.slotId ?? "",
        reason: params.reason,
      });
    }),
    /** The process never took the job it was asked to stop: the stop's own reason is the outcome. */
    failWithStopReason: assign({
      outcome: ({ context }): JobOutcome => ({
        status: "failed",
        reason:
          context.stopReason === "cancelled" || context.stopReason === null ? "launch_failed" : context.stopReason,
      }),
    }),
  },
}).createMachine({
  id: "job",
  context: ({ input }) => ({
    spec: input.spec,
    preassigned: input.preassigned,
    timing: input.timing,
    slotId: null,
    outcome: null,
    declineReason: null,
    stopReason: null,
    finalStatus: null,
  }),
  invoke: {
    id: "lease",
    src: "lease",
    // An offer holds no lease: it starts with the assignment (takeLease), or here for a job that comes assigned.
    input: ({ context }) =>
      context.preassigned && context.spec.leaseValidForMs !== undefined
        ? { validForMs: context.spec.leaseValidForMs }
        : {},
  },
  initial: "received",
  on: {
    "job.lease_renewed": { actions: "renewLease" },
    // Late or repeated reports from a slot or the registry change nothing once the job moved on.
    "job.assigned": {},
    "job.launching": {},
    "job.running": {},
    "job.unplaced": {},
    "job.ended": {},
    "job.cancel": {},
    "job.shutdown": {},
  },
  states: {
    received: {
      always: [{ guard: "isPreassigned", target: "assigned" }, { target: "deciding" }],
    },
    deciding: {
      invoke: {
        id: "decideOffer",
        src: "decideOffer",
        input: ({ context }) => context.spec,
        onDone: [
          { guard: "accepted", target: "offered", actions: "answerYes" },
          { target: "declined", actions: ["declineBecause", "answerNo"] },
        ],
        onError: { target: "declined", actions: ["declineBecause", "answerNo"] },
      },
      after: { offerTtl: { target: "declined", actions: ["declineOnTimeout", "answerNo"] } },
      on: {
        // The lease starts with the assignment, which brings its own validity.
        "job.lease_renewed": {},
        "job.cancel": { target: "declined", actions: ["declineBecause", "answerNo"] },
        "job.shutdown": { target: "declined", actions: ["declineBecause", "answerNo"] },
      },
    },
    offered: {
      after: { offerTtl: "expired" },
      on: {
        // The registry may renew a lease as soon as it has the worker's yes, before the assignment:
        // the lease starts with the assignment, which brings its own validity.
        "job.lease_renewed": {},
        "job.assigned": { target: "assigned", actions: ["mergeAssignment", "takeLease"] },
        "job.cancel": "cancelled",
        "job.shutdown": { target: "failed", actions: { type: "fail", params: { reason: "worker_shutdown" } } },
      },
    },
    assigned: {
      entry: "requestSlot",
      after: {
        launchTimeout: {
          target: "failed",
          actions: { type: "fail", params: { reason: "launch_failed", message: "no process became free in time" } },
        },
      },
      on: {
        "xstate.done.actor.lease": {
          target: "failed",
          actions: { type: "fail", params: { reason: "lease_lapsed", message: "lost the registry's lease" } },
        },
        "job.launching": { target: "launching", actions: "recordSlot" },
        "job.cancel": "cancelled",
        "job.shutdown": { target: "failed", actions: { type: "fail", params: { reason: "worker_shutdown" } } },
      },
    },
    launching: {
      after: {
        launchTimeout: { target: "ending", actions: { type: "requestStop", params: { reason: "launch_failed" } } },
      },
      on: {
        "job.running": "running",
        "xstate.done.actor.lease": {
          target: "ending",
          actions: { type: "requestStop", params: { reason: "lease_lapsed" } },
        },
        "job.ended": [
          { guard: "outcomeCompleted", target: "completed", actions: "recordOutcome" },
          { guard: "outcomeCancelled", target: "cancelled", actions: "recordOutcome" },
          { target: "failed", actions: "recordOutcome" },
        ],
        // The slot refused or lost the job before its process took it: wait for another one.
        "job.unplaced": "assigned",
        "job.cancel": { target: "ending", actions: { type: "requestStop", params: { reason: "cancelled" } } },
        "job.shutdown": { target: "ending", actions: { type: "requestStop", params: { reason: "worker_shutdown" } } },
      },
    },
    running: {
      after: {
        maxDuration: {
          guard: "hasMaxDuration",
          target: "ending",
          actions: { type: "requestStop", params: { reason: "max_duration" } },
        },
      },
      on: {
        "xstate.done.actor.lease": {
          target: "ending",
          actions: { type: "requestStop", params: { reason: "lease_lapsed" } },
        },
        "job.ended": [
          { guard: "outcomeCompleted", target: "completed", actions: "recordOutcome" },
          { guard: "outcomeCancelled", target: "cancelled", actions: "recordOutcome" },
          { target: "failed", actions: "recordOutcome" },
        ],
        "job.cancel": { target: "ending", actions: { type: "requestStop", params: { reason: "cancelled" } } },
        "job.shutdown": { target: "ending", actions: { type: "requestStop", params: { reason: "worker_shutdown" } } },
      },
    },
    /** A stop was requested; the slot's exit decides the final outcome. */
    ending: {
      on: {
        // A graceful stop may take the close timeout: the registry may run the job elsewhere now.
        "xstate.done.actor.lease": { actions: { type: "requestStop", params: { reason: "lease_lapsed" } } },
        "job.unplaced": [
          { guard: "stoppedToCancel", target: "cancelled" },
          { target: "failed", actions: "failWithStopReason" },
        ],
        "job.ended": [
          { guard: "outcomeCompleted", target: "completed", actions: "recordOutcome" },
          { guard: "outcomeCancelled", target: "cancelled", actions: "recordOutcome" },
          { target: "failed", actions: "recordOutcome" },
        ],
      },
    },
    completed: { type: "final", entry: { type: "finish", params: { status: "completed" } } },
    failed: { type: "final", entry: { type: "finish", params: { status: "failed" } } },
    cancelled: { type: "final", entry: { type: "finish", params: { status: "cancelled" } } },
    declined: { type: "final", entry: { type: "finish", params: { status: "declined" } } },
    expired: { type: "final", entry: { type: "finish", params: { status: "expired" } } },
  },
  output: ({ context }) => {
    const value = context.finalStatus ?? "failed";
    const outcome = context.outcome;
    if (value === "failed" && outcome?.status === "failed") {
      return {
        jobId: context.spec.jobId,
        status: "failed",
        reason: outcome.reason,
        ...(outcome.error ? { error: outcome.error } : {}),
        ...(outcome.exitCode !== undefined ? { exitCode: outcome.exitCode } : {}),
        ...(outcome.signal !== undefined ? { signal: outcome.signal } : {}),
      };
    }
    if (value === "failed") {
      return { jobId: context.spec.jobId, status: "failed", reason: "crashed" };
    }
    if (value === "cancelled") {
      return { jobId: context.spec.jobId, status: "cancelled", reason: "cancelled" };
    }
    if (value === "declined") {
      return { jobId: context.spec.jobId, status: "declined", reason: context.declineReason ?? "declined" };
    }
    if (value === "completed" && outcome?.status === "completed" && outcome.reason) {
      return { jobId: context.spec.jobId, status: "completed", reason: outcome.reason };
    }
    return { jobId: context.spec.jobId, status: value };
  },
});

export type JobMachine = typeof jobMachine;
