import { assign, emit, setup } from "xstate";
import type { ErrorInfo } from "../shared.ts";

export interface DispatchTiming {
  /** How long one worker has to answer an availability request. */
  offerTimeoutMs: number;
  /** How long an assigned worker has to report the job running. */
  runningTimeoutMs: number;
  /** How long a dispatch may wait for a worker before it ends `rejected`. */
  dispatchTimeoutMs: number;
  /** How long a cancelled job waits for its worker's final report. */
  cancelTimeoutMs: number;
}

export interface DispatchInput {
  jobId: string;
  redispatch: boolean;
  timing: DispatchTiming;
  /** A job adopted from a worker's inventory after a registry restart starts as running there. */
  adoptedBy?: string;
}

export type DispatchEvent =
  | { type: "candidate"; workerId: string }
  | { type: "no_candidate" }
  | { type: "capacity_changed" }
  | { type: "answer"; workerId: string; available: boolean; error?: string }
  | {
      type: "job_update";
      workerId: string;
      status: "running" | "completed" | "failed" | "cancelled";
      reason?: string;
      error?: ErrorInfo;
    }
  | { type: "worker_gone"; workerId: string }
  | { type: "cancel"; reason?: string };

/** What the registry does for the dispatch: emitted, so the machine stays pure. */
export type DispatchEmitted =
  | { type: "need_candidate"; jobId: string; exclude: string[] }
  | { type: "offer"; jobId: string; workerId: string }
  | { type: "assign"; jobId: string; workerId: string }
  | { type: "terminate"; jobId: string; workerId: string; reason: string }
  | { type: "status"; jobId: string; status: DispatchStatus; workerId: string | null; attempts: number }
  | { type: "finished"; jobId: string; output: DispatchOutput };

export type DispatchStatus = "pending" | "offering" | "assigned" | "running";
export type DispatchFinal = "completed" | "failed" | "cancelled" | "lost" | "rejected";

export interface DispatchOutput {
  jobId: string;
  status: DispatchFinal;
  workerId: string | null;
  reason?: string;
  error?: ErrorInfo;
  attempts: number;
}

export interface DispatchContext {
  jobId: string;
  redispatch: boolean;
  timing: DispatchTiming;
  /** Workers that said no, timed out or were lost for this job; asked last. */
  tried: string[];
  candidate: string | null;
  workerId: string | null;
  attempts: number;
  final: { status: DispatchFinal; reason?: string; error?: ErrorInfo } | null;
}

/**
 * One dispatch request on the registry: unassigned{pending → offering | waiting} → assigned →
 * running → completed | failed | cancelled | lost | rejected. One worker at a time is asked; a no, a
 * timeout or a lost worker moves on to the next; a worker that never reports running is told to
 * terminate before the job moves on, so at most one worker ever runs it.
 */
export const dispatchMachine = setup({
  types: {
    input: {} as DispatchInput,
    context: {} as DispatchContext,
    events: {} as DispatchEvent,
    emitted: {} as DispatchEmitted,
    output: {} as DispatchOutput,
  },
  delays: {
    offerTimeout: ({ context }) => context.timing.offerTimeoutMs,
    runningTimeout: ({ context }) => context.timing.runningTimeoutMs,
    dispatchTimeout: ({ context }) => context.timing.dispatchTimeoutMs,
    cancelTimeout: ({ context }) => context.timing.cancelTimeoutMs,
  },
  guards: {
    isAdopted: ({ context }) => context.workerId !== null,
    fromCandidate: ({ context, event }) => "workerId" in event && event.workerId === context.candidate,
    candidateSaidYes: ({ context, event }) =>
      event.type === "answer" && event.workerId === context.candidate && event.available,
    fromAssigned: ({ context, event }) => "workerId" in event && event.workerId === context.workerId,
    reportsRunning: ({ context, event }) =>
      event.type === "job_update" && event.workerId === context.workerId && event.status === "running",
    reportsFinal: ({ context, event }) =>
      event.type === "job_update" && event.workerId === context.workerId && event.status !== "running",
    assignedLostAndRedispatch: ({ context, event }) =>
      event.type === "worker_gone" && event.workerId === context.workerId && context.redispatch,
    assignedLost: ({ context, event }) => event.type === "worker_gone" && event.workerId === context.workerId,
    finalCompleted: ({ context }) => context.final?.status === "completed",
    finalCancelled: ({ context }) => context.final?.status === "cancelled",
  },
  actions: {
    askForCandidate: emit(({ context }) => ({
      type: "need_candidate" as const,
      jobId: context.jobId,
      exclude: context.tried,
    })),
    takeCandidate: assign({ candidate: ({ event }) => (event.type === "candidate" ? event.workerId : null) }),
    offer: emit(({ context }) => ({ type: "offer" as const, jobId: context.jobId, workerId: context.candidate ?? "" })),
    rememberTried: assign({
      tried: ({ context }) => (context.candidate ? [...context.tried, context.candidate] : context.tried),
      candidate: () => null,
    }),
    bindWorker: assign({
      workerId: ({ context }) => context.candidate,
      candidate: () => null,
      attempts: ({ context }) => context.attempts + 1,
    }),
    assign: emit(({ context }) => ({
      type: "assign" as const,
      jobId: context.jobId,
      workerId: context.workerId ?? "",
    })),
    terminateAssigned: emit(({ context }, params: { reason: string }) => ({
      type: "terminate" as const,
      jobId: context.jobId,
      workerId: context.workerId ?? "",
      reason: params.reason,
    })),
    releaseWorker: assign({
      tried: ({ context }) => (context.workerId ? [...context.tried, context.workerId] : context.tried),
      workerId: () => null,
    }),
    recordFinal: assign({
      final: ({ event }) => {
        if (event.type !== "job_update" || event.status === "running") return null;
        return {
          status: event.status,
          ...(event.reason ? { reason: event.reason } : {}),
          ...(event.error ? { error: event.error } : {}),
        };
      },
    }),
    finishAs: assign({
      final: ({ context }, params: { status: DispatchFinal; reason: string }) =>
        context.final?.status === params.status ? context.final : { status: params.status, reason: params.reason },
    }),
    publish: emit(({ context }, params: { status: DispatchStatus }) => ({
      type: "status" as const,
      jobId: context.jobId,
      status: params.status,
      workerId: context.workerId ?? context.candidate,
      attempts: context.attempts,
    })),
    announceFinal: emit(({ context }) => ({
      type: "finished" as const,
      jobId: context.jobId,
      output: outputOf(context),
    })),
  },
}).createMachine({
  id: "dispatch",
  context: ({ input }) => ({
    jobId: input.jobId,
    redispatch: input.redispatch,
    timing: input.timing,
    tried: [],
    candidate: null,
    workerId: input.adoptedBy ?? null,
    attempts: input.adoptedBy ? 1 : 0,
    final: null,
  }),
  initial: "start",
  on: {
    // Reports from workers this dispatch no longer deals with change nothing.
    candidate: {},
    no_candidate: {},
    capacity_changed: {},
    answer: {},
    job_update: {},
    worker_gone: {},
    cancel: {},
  },
  states: {
    start: {
      always: [{ guard: "isAdopted", target: "running" }, { target: "unassigned" }],
    },
    unassigned: {
      after: {
        dispatchTimeout: {
          target: "rejected",
          actions: { type: "finishAs", params: { status: "rejected", reason: "no worker accepted the job in time" } },
        },
      },
      on: {
        cancel: {
          target: "cancelled",
          actions: { type: "finishAs", params: { status: "cancelled", reason: "cancelled before assignment" } },
        },
      },
      initial: "pending",
      states: {
        pending: {
          entry: [{ type: "publish", params: { status: "pending" } }, "askForCandidate"],
          on: {
            candidate: { target: "offering", actions: "takeCandidate" },
            no_candidate: "waiting",
          },
        },
        /** No worker can take it now; any capacity change tries again. */
        waiting: {
          on: { capacity_changed: "pending" },
        },
        offering: {
          entry: [{ type: "publish", params: { status: "offering" } }, "offer"],
          after: { offerTimeout: { target: "pending", actions: "rememberTried" } },
          on: {
            answer: [
              { guard: "candidateSaidYes", target: "#dispatch.assigned", actions: "bindWorker" },
              { guard: "fromCandidate", target: "pending", actions: "rememberTried" },
            ],
            worker_gone: { guard: "fromCandidate", target: "pending", actions: "rememberTried" },
          },
        },
      },
    },
    assigned: {
      entry: [{ type: "publish", params: { status: "assigned" } }, "assign"],
      after: {
        // Never reported running: make sure it never will, then move on.
        runningTimeout: {
          target: "unassigned",
          actions: [{ type: "terminateAssigned", params: { reason: "did not start in time" } }, "releaseWorker"],
        },
      },
      on: {
        job_update: [
          { guard: "reportsRunning", target: "running" },
          { guard: "reportsFinal", target: "settling", actions: "recordFinal" },
        ],
        worker_gone: [
          { guard: "assignedLostAndRedispatch", target: "unassigned", actions: "releaseWorker" },
          {
            guard: "assignedLost",
            target: "lost",
            actions: { type: "finishAs", params: { status: "lost", reason: "worker lost" } },
          },
        ],
        cancel: { target: "cancelling", actions: { type: "terminateAssigned", params: { reason: "cancelled" } } },
      },
    },
    running: {
      entry: { type: "publish", params: { status: "running" } },
      on: {
        job_update: { guard: "reportsFinal", target: "settling", actions: "recordFinal" },
        worker_gone: [
          { guard: "assignedLostAndRedispatch", target: "unassigned", actions: "releaseWorker" },
          {
            guard: "assignedLost",
            target: "lost",
            actions: { type: "finishAs", params: { status: "lost", reason: "worker lost" } },
          },
        ],
        cancel: { target: "cancelling", actions: { type: "terminateAssigned", params: { reason: "cancelled" } } },
      },
    },
    /** Termination sent; the worker's final report (or its loss, or a timeout) ends it as cancelled. */
    cancelling: {
      after: {
        cancelTimeout: {
          target: "cancelled",
          actions: {
            type: "finishAs",
            params: { status: "cancelled", reason: "cancelled; the worker did not confirm" },
          },
        },
      },
      on: {
        job_update: { guard: "reportsFinal", target: "settling", actions: "recordFinal" },
        worker_gone: {
          guard: "assignedLost",
          target: "cancelled",
          actions: { type: "finishAs", params: { status: "cancelled", reason: "cancelled; the worker was lost" } },
        },
      },
    },
    /** Routes the worker's final report to the matching final state. */
    settling: {
      always: [
        { guard: "finalCompleted", target: "completed" },
        { guard: "finalCancelled", target: "cancelled" },
        { target: "failed" },
      ],
    },
    completed: { type: "final", entry: "announceFinal" },
    failed: { type: "final", entry: "announceFinal" },
    cancelled: { type: "final", entry: "announceFinal" },
    lost: { type: "final", entry: "announceFinal" },
    rejected: { type: "final", entry: "announceFinal" },
  },
  output: ({ context }) => outputOf(context),
});

function outputOf(context: DispatchContext): DispatchOutput {
  const final = context.final ?? { status: "failed" as const, reason: "unknown" };
  return {
    jobId: context.jobId,
    status: final.status,
    workerId: context.workerId,
    ...(final.reason ? { reason: final.reason } : {}),
    ...(final.error ? { error: final.error } : {}),
    attempts: context.attempts,
  };
}

export type DispatchMachine = typeof dispatchMachine;
