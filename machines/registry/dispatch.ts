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
  /**
   * How long a worker told to let go of a job that never started (its running deadline passed) has
   * to confirm its end before the job may be offered elsewhere: the worker liveness deadline, after
   * which a silent worker is declared gone anyway.
   */
  releaseTimeoutMs: number;
  /**
   * How long a job may still run on its worker after the registry last renewed its lease there
   * (the lease plus the time the worker needs to kill it): a job is offered elsewhere only once this
   * has passed, counted from the last renewal.
   */
  leaseFenceMs: number;
}

/** Workers tried for this dispatch, each with its availability epoch when it was tried. */
export type TriedWorkers = Record<string, number>;

export interface DispatchInput {
  jobId: string;
  redispatch: boolean;
  timing: DispatchTiming;
  /** A job adopted from a worker's inventory (a registry restart, a dead node) starts as running there. */
  adoptedBy?: string;
  /**
   * `assigned`: the adopted job's record says assigned and its worker has not said it runs it (it
   * may be starting it, or never have got the assignment): it must report running within the
   * running deadline like a job just assigned, but nothing is sent to it. Default `running`.
   */
  adoptedAs?: "running" | "assigned";
  /** A worker to ask first: the one another node picked before it handed the dispatch here. */
  prefer?: string;
  /** How often the dispatch has moved between registry nodes. */
  hops?: number;
  tried?: TriedWorkers;
  /**
   * Taken over from a dead node with `redispatch`: its worker is nowhere, but may still run the job
   * under a lease the dead node renewed. The dispatch waits `ms` (see `fencing`) before offering it.
   */
  fence?: { workerId: string; ms: number };
}

export type DispatchEvent =
  /** The worker to offer the job to, with its availability epoch now; `remote` = connected to another node. */
  | { type: "candidate"; workerId: string; epoch: number; remote?: boolean }
  /** No worker can take it now, and why (no worker serves the agent, all full, all declined). */
  | { type: "no_candidate"; cause: string }
  | { type: "capacity_changed" }
  | { type: "answer"; workerId: string; available: boolean; error?: string }
  | {
      type: "job_update";
      workerId: string;
      status: "running" | "completed" | "failed" | "cancelled";
      reason?: string;
      error?: ErrorInfo;
      /** How the job's process ended, when the worker says (a failed job). */
      exitCode?: number | null;
      signal?: string | null;
    }
  /** `fenceMs`: how long the job may still run there under its lease (default leaseFenceMs). */
  | { type: "worker_gone"; workerId: string; fenceMs?: number }
  | { type: "cancel"; reason?: string }
  /**
   * The store confirmed the record says `assigned` to this worker (see `assign`): the assignment may
   * go out now, if the dispatch still wants it.
   */
  | { type: "assignment_fenced"; workerId: string }
  /** Another registry node took the job over: this node's dispatch lets go without recording anything. */
  | { type: "taken_over" };

/** What the registry does for the dispatch: emitted, so the machine stays pure. */
export type DispatchEmitted =
  | { type: "need_candidate"; jobId: string; tried: TriedWorkers; prefer: string | null; hops: number }
  /** The offer counts against the worker's capacity from entering `offering`... */
  | { type: "reserve"; jobId: string; workerId: string }
  /** ...until leaving it, whichever way. */
  | { type: "release"; jobId: string; workerId: string }
  | { type: "offer"; jobId: string; workerId: string }
  /** The best worker is on another node: the job goes there with what was learnt here. */
  | { type: "forward"; jobId: string; workerId: string; tried: TriedWorkers; hops: number }
  /** The dispatch waits for capacity from entering `waiting`... */
  | { type: "waiting"; jobId: string }
  /** ...until leaving it, whichever way. */
  | { type: "waiting_over"; jobId: string }
  /** The job is the worker's from entering `bound`... */
  | { type: "bind"; jobId: string; workerId: string }
  /** ...until leaving it, whichever way. */
  | { type: "unbind"; jobId: string; workerId: string }
  /** Make the assignment safe (record it as this node's, assigned to the worker); answered by `assignment_fenced`. */
  | { type: "assign"; jobId: string; workerId: string }
  /** Send the job to the worker. */
  | { type: "send_assignment"; jobId: string; workerId: string }
  | { type: "terminate"; jobId: string; workerId: string; reason: string }
  | { type: "status"; jobId: string; status: DispatchStatus; workerId: string | null; attempts: number }
  | { type: "finished"; jobId: string; output: DispatchOutput }
  /** The dispatch stopped here without an outcome: the job is another node's now. */
  | { type: "handed_over"; jobId: string };

export type DispatchStatus = "pending" | "offering" | "assigned" | "running";
export type DispatchFinal = "completed" | "failed" | "cancelled" | "lost" | "rejected";

export interface DispatchOutput {
  jobId: string;
  status: DispatchFinal;
  workerId: string | null;
  reason?: string;
  error?: ErrorInfo;
  exitCode?: number | null;
  signal?: string | null;
  attempts: number;
}

export interface DispatchContext {
  jobId: string;
  redispatch: boolean;
  timing: DispatchTiming;
  /** Workers that said no, timed out or were lost, with their availability epoch then. */
  tried: TriedWorkers;
  prefer: string | null;
  hops: number;
  candidate: { workerId: string; epoch: number } | null;
  workerId: string | null;
  /** How an adopted job starts (see DispatchInput); null when not adopted. */
  adoptedAs: "running" | "assigned" | null;
  /** The bound worker's availability epoch when it said yes (0 for an adopted job). */
  boundEpoch: number;
  attempts: number;
  /** Why the last search for a worker found none; the rejection's reason if the deadline passes. */
  cause: string | null;
  /** How long `fencing` waits: until the lease of the worker that had the job has surely run out. */
  fenceMs: number;
  /** The bound worker was told to let go of the job (it missed its running deadline). */
  released: boolean;
  final: (Pick<DispatchOutput, "reason" | "error" | "exitCode" | "signal"> & { status: DispatchFinal }) | null;
}

const isFinalReport = (event: DispatchEvent) => event.type === "job_update" && event.status !== "running";

/**
 * One dispatch request on the registry: unassigned{pending → offering | waiting} → bound{assigned →
 * running | cancelling | releasing} → completed | failed | cancelled | lost | rejected. One worker at
 * a time is asked; a no, a timeout or a lost candidate moves on to the next. A job is offered
 * elsewhere only when the dispatch asked for `redispatch`, and only once the worker that had it has
 * confirmed its end, or its lease there has run out (`fencing`): at most one worker runs it at once.
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
    releaseTimeout: ({ context }) => context.timing.releaseTimeoutMs,
    fence: ({ context }) => context.fenceMs,
  },
  guards: {
    isAdopted: ({ context }) => context.workerId !== null,
    isAdoptedUnconfirmed: ({ context }) => context.adoptedAs === "assigned",
    isFenced: ({ context }) => context.workerId !== null && context.adoptedAs === null,
    isRemote: ({ event }) => event.type === "candidate" && event.remote === true,
    fromCandidate: ({ context, event }) => "workerId" in event && event.workerId === context.candidate?.workerId,
    candidateSaidYes: ({ context, event }) =>
      event.type === "answer" && event.workerId === context.candidate?.workerId && event.available,
    fromBound: ({ context, event }) => "workerId" in event && event.workerId === context.workerId,
    reportsRunning: ({ context, event }) =>
      event.type === "job_update" && event.workerId === context.workerId && event.status === "running",
    reportsRunningWhenReleased: ({ context, event }) =>
      event.type === "job_update" &&
      event.workerId === context.workerId &&
      event.status === "running" &&
      context.released,
    reportsFinal: ({ context, event }) =>
      isFinalReport(event) && "workerId" in event && event.workerId === context.workerId,
    reportsFinalAndRedispatch: ({ context, event }) =>
      isFinalReport(event) && "workerId" in event && event.workerId === context.workerId && context.redispatch,
    reportsCompleted: ({ context, event }) =>
      event.type === "job_update" && event.workerId === context.workerId && event.status === "completed",
    /** The worker stopped the job because its lease ran out: it runs nowhere now, and may run again. */
    reportsLeaseLapsedAndRedispatch: ({ context, event }) =>
      event.type === "job_update" &&
      event.workerId === context.workerId &&
      event.status === "failed" &&
      event.reason === "lease_lapsed" &&
      context.redispatch,
    boundLostAndRedispatch: ({ context, event }) =>
      event.type === "worker_gone" && event.workerId === context.workerId && context.redispatch,
    boundLost: ({ context, event }) => event.type === "worker_gone" && event.workerId === context.workerId,
    mayRedispatch: ({ context }) => context.redispatch,
    finalCompleted: ({ context }) => context.final?.status === "completed",
    finalCancelled: ({ context }) => context.final?.status === "cancelled",
  },
  actions: {
    askForCandidate: emit(({ context }) => ({
      type: "need_candidate" as const,
      jobId: context.jobId,
      tried: context.tried,
      prefer: context.prefer,
      hops: context.hops,
    })),
    takeCandidate: assign({
      candidate: ({ event }) => (event.type === "candidate" ? { workerId: event.workerId, epoch: event.epoch } : null),
      // The preferred worker is asked once; after that it competes like any other.
      prefer: () => null,
      // A worker was found: if the deadline passes now, it is not for the reason of an earlier search.
      cause: () => null,
    }),
    recordCause: assign({ cause: ({ event }) => (event.type === "no_candidate" ? event.cause : null) }),
    reserve: emit(({ context }) => ({
      type: "reserve" as const,
      jobId: context.jobId,
      workerId: context.candidate?.workerId ?? "",
    })),
    release: emit(({ context, event }) => ({
      type: "release" as const,
      jobId: context.jobId,
      // On a yes the candidate has just become the bound worker.
      workerId: context.candidate?.workerId ?? (event.type === "answer" ? event.workerId : (context.workerId ?? "")),
    })),
    offer: emit(({ context }) => ({
      type: "offer" as const,
      jobId: context.jobId,
      workerId: context.candidate?.workerId ?? "",
    })),
    forward: emit(({ context, event }) => ({
      type: "forward" as const,
      jobId: context.jobId,
      workerId: event.type === "candidate" ? event.workerId : "",
      tried: context.tried,
      hops: context.hops + 1,
    })),
    rememberTried: assign({
      tried: ({ context }) =>
        context.candidate ? { ...context.tried, [context.candidate.workerId]: context.candidate.epoch } : context.tried,
      candidate: () => null,
    }),
    bindWorker: assign({
      workerId: ({ context }) => context.candidate?.workerId ?? null,
      boundEpoch: ({ context }) => context.candidate?.epoch ?? 0,
      candidate: () => null,
      attempts: ({ context }) => context.attempts + 1,
    }),
    bind: emit(({ context }) => ({ type: "bind" as const, jobId: context.jobId, workerId: context.workerId ?? "" })),
    unbind: emit(({ context }) => ({
      type: "unbind" as const,
      jobId: context.jobId,
      workerId: context.workerId ?? "",
    })),
    assign: emit(({ context }) => ({
      type: "assign" as const,
      jobId: context.jobId,
      workerId: context.workerId ?? "",
    })),
    sendAssignment: emit(({ context }) => ({
      type: "send_assignment" as const,
      jobId: context.jobId,
      workerId: context.workerId ?? "",
    })),
    terminateBound: emit(({ context }, params: { reason: string }) => ({
      type: "terminate" as const,
      jobId: context.jobId,
      workerId: context.workerId ?? "",
      reason: params.reason,
    })),
    // A worker that let the job go is asked again only once its availability moved on since the offer.
    fenceFromEvent: assign({
      fenceMs: ({ context, event }) =>
        event.type === "worker_gone" && event.fenceMs !== undefined ? event.fenceMs : context.timing.leaseFenceMs,
    }),
    fenceWholeLease: assign({ fenceMs: ({ context }) => context.timing.leaseFenceMs }),
    releaseWorker: assign({
      tried: ({ context }) =>
        context.workerId ? { ...context.tried, [context.workerId]: context.boundEpoch } : context.tried,
      workerId: () => null,
      released: () => false,
    }),
    markReleased: assign({ released: () => true }),
    recordFinal: assign({
      final: ({ event }) => {
        if (event.type !== "job_update" || event.status === "running") return null;
        return {
          status: event.status,
          ...(event.reason ? { reason: event.reason } : {}),
          ...(event.error ? { error: event.error } : {}),
          ...(event.exitCode !== undefined ? { exitCode: event.exitCode } : {}),
          ...(event.signal !== undefined ? { signal: event.signal } : {}),
        };
      },
    }),
    finishAs: assign({
      final: ({ context }, params: { status: DispatchFinal; reason: string }) =>
        context.final?.status === params.status ? context.final : { status: params.status, reason: params.reason },
    }),
    rejectWithCause: assign({
      final: ({ context }) => ({ status: "rejected" as const, reason: context.cause ?? "timed out" }),
    }),
    publish: emit(({ context }, params: { status: DispatchStatus }) => ({
      type: "status" as const,
      jobId: context.jobId,
      status: params.status,
      workerId: context.workerId ?? context.candidate?.workerId ?? null,
      attempts: context.attempts,
    })),
    announceFinal: emit(({ context }) => ({
      type: "finished" as const,
      jobId: context.jobId,
      output: outputOf(context),
    })),
    announceWaiting: emit(({ context }) => ({ type: "waiting" as const, jobId: context.jobId })),
    announceWaitingOver: emit(({ context }) => ({ type: "waiting_over" as const, jobId: context.jobId })),
    announceHandedOver: emit(({ context }) => ({ type: "handed_over" as const, jobId: context.jobId })),
  },
}).createMachine({
  id: "dispatch",
  context: ({ input }) => ({
    jobId: input.jobId,
    redispatch: input.redispatch,
    timing: input.timing,
    tried: input.tried ?? {},
    prefer: input.prefer ?? null,
    hops: input.hops ?? 0,
    candidate: null,
    workerId: input.adoptedBy ?? input.fence?.workerId ?? null,
    adoptedAs: input.adoptedBy ? (input.adoptedAs ?? "running") : null,
    boundEpoch: 0,
    attempts: input.adoptedBy || input.fence ? 1 : 0,
    cause: null,
    fenceMs: input.adoptedBy ? 0 : (input.fence?.ms ?? 0),
    released: false,
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
    // A fencing write that came back too late: the running deadline passed, or the job was cancelled.
    assignment_fenced: {},
    taken_over: ".handedOver",
  },
  states: {
    start: {
      always: [
        { guard: "isAdoptedUnconfirmed", target: "bound.unconfirmed" },
        { guard: "isFenced", target: "fencing" },
        { guard: "isAdopted", target: "bound.running" },
        { target: "unassigned" },
      ],
    },
    unassigned: {
      after: { dispatchTimeout: { target: "rejected", actions: "rejectWithCause" } },
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
            candidate: [
              { guard: "isRemote", target: "#dispatch.handedOver", actions: "forward" },
              { target: "offering", actions: "takeCandidate" },
            ],
            no_candidate: { target: "waiting", actions: "recordCause" },
          },
        },
        /** No worker can take it now; any capacity change tries again. */
        waiting: {
          entry: "announceWaiting",
          exit: "announceWaitingOver",
          on: { capacity_changed: "pending" },
        },
        offering: {
          entry: ["reserve", { type: "publish", params: { status: "offering" } }, "offer"],
          exit: "release",
          after: { offerTimeout: { target: "pending", actions: "rememberTried" } },
          on: {
            answer: [
              { guard: "candidateSaidYes", target: "#dispatch.bound", actions: "bindWorker" },
              { guard: "fromCandidate", target: "pending", actions: "rememberTried" },
            ],
            worker_gone: { guard: "fromCandidate", target: "pending", actions: "rememberTried" },
          },
        },
      },
    },
    /** The job is one worker's: assigned to it, running there, or being ended there. */
    bound: {
      entry: "bind",
      exit: "unbind",
      initial: "assigned",
      on: {
        worker_gone: [
          { guard: "boundLostAndRedispatch", target: "fencing", actions: "fenceFromEvent" },
          {
            guard: "boundLost",
            target: "lost",
            actions: { type: "finishAs", params: { status: "lost", reason: "worker lost" } },
          },
        ],
        cancel: { target: ".cancelling", actions: { type: "terminateBound", params: { reason: "cancelled" } } },
        job_update: [
          { guard: "reportsLeaseLapsedAndRedispatch", target: "unassigned", actions: "releaseWorker" },
          { guard: "reportsFinal", target: "settling", actions: "recordFinal" },
        ],
      },
      states: {
        assigned: {
          entry: [{ type: "publish", params: { status: "assigned" } }, "assign"],
          after: {
            // Never reported running: it must let go before the job may go anywhere else.
            runningTimeout: {
              target: "releasing",
              actions: [{ type: "terminateBound", params: { reason: "did not start in time" } }, "markReleased"],
            },
          },
          on: {
            job_update: { guard: "reportsRunning", target: "running" },
            // Only from here: once the deadline passed and the worker was told to let go, an
            // assignment arriving after that termination would start the job behind its back.
            assignment_fenced: { guard: "fromBound", actions: "sendAssignment" },
          },
        },
        /**
         * Adopted from a node that died while the job was assigned, before its worker said it runs
         * it: the worker may be starting it, or may never have got the assignment. Nothing is sent;
         * the running deadline decides as for a job just assigned.
         */
        unconfirmed: {
          after: {
            runningTimeout: {
              target: "releasing",
              actions: [{ type: "terminateBound", params: { reason: "did not start in time" } }, "markReleased"],
            },
          },
          on: { job_update: { guard: "reportsRunning", target: "running" } },
        },
        running: {
          entry: { type: "publish", params: { status: "running" } },
        },
        /** Termination sent; the worker's final report (or its loss, or a timeout) ends it as cancelled. */
        cancelling: {
          after: {
            cancelTimeout: {
              target: "#dispatch.cancelled",
              actions: {
                type: "finishAs",
                params: { status: "cancelled", reason: "cancelled; the worker did not confirm" },
              },
            },
          },
          on: {
            cancel: {},
            // Whatever ended it (a lapsed lease too), the job was cancelled: never offered again.
            job_update: { guard: "reportsFinal", target: "#dispatch.settling", actions: "recordFinal" },
            worker_gone: {
              guard: "boundLost",
              target: "#dispatch.cancelled",
              actions: { type: "finishAs", params: { status: "cancelled", reason: "cancelled; the worker was lost" } },
            },
          },
        },
        /**
         * The worker missed its running deadline and was told to let go. Only once it confirms (or is
         * gone, or the liveness deadline passes) may the job move on, and only with `redispatch`.
         * If it ran the job after all and says it completed, that is what happened.
         */
        releasing: {
          after: {
            releaseTimeout: [
              { guard: "mayRedispatch", target: "#dispatch.fencing", actions: "fenceWholeLease" },
              {
                target: "#dispatch.failed",
                actions: { type: "finishAs", params: { status: "failed", reason: "did not start in time" } },
              },
            ],
          },
          on: {
            cancel: "cancelling",
            job_update: [
              { guard: "reportsCompleted", target: "#dispatch.settling", actions: "recordFinal" },
              { guard: "reportsRunning" },
              { guard: "reportsFinalAndRedispatch", target: "#dispatch.unassigned", actions: "releaseWorker" },
              {
                guard: "reportsFinal",
                target: "#dispatch.failed",
                actions: { type: "finishAs", params: { status: "failed", reason: "did not start in time" } },
              },
            ],
            worker_gone: [
              { guard: "boundLostAndRedispatch", target: "#dispatch.fencing", actions: "fenceFromEvent" },
              {
                guard: "boundLost",
                target: "#dispatch.failed",
                actions: { type: "finishAs", params: { status: "failed", reason: "did not start in time" } },
              },
            ],
          },
        },
      },
    },
    /**
     * With `redispatch`, the job's worker is gone or did not let go, but may still run the job under
     * the lease this registry last renewed (a worker cut off keeps running its jobs). The job is
     * offered elsewhere only once that lease has surely run out, so it never runs twice at once. The
     * worker coming back and saying it runs the job keeps it there.
     */
    fencing: {
      after: { fence: { target: "unassigned", actions: "releaseWorker" } },
      on: {
        job_update: [
          // Told to let go before it went quiet (its termination may have gone with its connection).
          {
            guard: "reportsRunningWhenReleased",
            target: "bound.releasing",
            actions: { type: "terminateBound", params: { reason: "did not start in time" } },
          },
          { guard: "reportsRunning", target: "bound.running" },
          { guard: "reportsCompleted", target: "settling", actions: "recordFinal" },
          { guard: "reportsFinal", target: "unassigned", actions: "releaseWorker" },
        ],
        cancel: {
          target: "cancelled",
          actions: {
            type: "finishAs",
            params: { status: "cancelled", reason: "cancelled while its worker was unreachable" },
          },
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
    /** The job went to another node (forwarded, or taken over): nothing is recorded from here. */
    handedOver: { type: "final", entry: "announceHandedOver" },
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
    ...(final.exitCode !== undefined ? { exitCode: final.exitCode } : {}),
    ...(final.signal !== undefined ? { signal: final.signal } : {}),
    attempts: context.attempts,
  };
}

export type DispatchMachine = typeof dispatchMachine;
