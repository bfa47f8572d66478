import { assign, emit, not, setup } from "xstate";

export interface SessionTiming {
  registrationTimeoutMs: number;
  pongTimeoutMs: number;
  /** A worker whose connection dropped keeps its jobs this long, waiting for it to reconnect. */
  reconnectGraceMs: number;
}

export interface SessionInput {
  /** The connection's id until the worker registers and names itself. */
  workerId: string;
  timing: SessionTiming;
  /**
   * The first availability epoch: above every epoch the registry has seen, so a worker that comes
   * back under its old id is never mistaken for one that already said no (epochs never go backwards).
   */
  epochFloor: number;
}

export type WorkerReportedStatus = "starting" | "available" | "full" | "draining" | "offline";

export type SessionEvent =
  | { type: "registered"; workerId: string; agentName: string; maxProcesses: number; loadThreshold: number }
  /** The connection belongs to a worker whose session already exists: that session takes it over. */
  | { type: "merged" }
  /** An offer to this worker is out (counted against its capacity until it is answered or moot). */
  | { type: "offer_reserved" }
  | { type: "offer_released" }
  | { type: "status"; status: WorkerReportedStatus; load: number; jobCount: number }
  /** The registry pinged the worker (it had been quiet for a ping interval). */
  | { type: "ping_sent" }
  /** Any frame from the worker after a ping: it is alive. */
  | { type: "pong" }
  /** `departed`: a draining worker closed its connection normally; it is not coming back. */
  | { type: "socket_closed"; departed?: boolean }
  | { type: "reattached" }
  | { type: "close" };

export type SessionEmitted =
  | { type: "availability_changed"; workerId: string; epoch: number }
  | { type: "gone"; workerId: string; reason: string };

export interface SessionContext {
  workerId: string;
  timing: SessionTiming;
  agentName: string;
  maxProcesses: number;
  loadThreshold: number;
  reportedStatus: WorkerReportedStatus;
  load: number;
  jobCount: number;
  /** Offers picked or sent to this worker and not yet answered. */
  inflight: number;
  /** Bumped whenever the worker may say yes where it said no: available again, or fewer jobs. */
  epoch: number;
  goneReason: string;
}

/**
 * One connected worker, on the registry: registering → live{capacity: available ⇄ full | draining,
 * liveness: quiet ⇄ awaitingPong} → disconnected (grace for a reconnect) → gone. The registry pings a
 * worker it has not heard from for a ping interval and tells the session (`ping_sent`). A worker that stops
 * answering pings, or does not come back within the grace, is gone; its jobs are then settled.
 */
export const sessionMachine = setup({
  types: {
    input: {} as SessionInput,
    context: {} as SessionContext,
    events: {} as SessionEvent,
    emitted: {} as SessionEmitted,
  },
  delays: {
    registrationTimeout: ({ context }) => context.timing.registrationTimeoutMs,
    pongTimeout: ({ context }) => context.timing.pongTimeoutMs,
    reconnectGrace: ({ context }) => context.timing.reconnectGraceMs,
  },
  guards: {
    departed: ({ context, event }) =>
      event.type === "socket_closed" &&
      event.departed === true &&
      (context.reportedStatus === "draining" || context.reportedStatus === "offline"),
    isDraining: ({ context }) => context.reportedStatus === "draining" || context.reportedStatus === "offline",
    isFull: ({ context }) =>
      context.reportedStatus === "full" ||
      context.reportedStatus === "starting" ||
      context.load >= context.loadThreshold ||
      context.jobCount >= context.maxProcesses,
  },
  actions: {
    recordRegistration: assign(({ event }) =>
      event.type === "registered"
        ? {
            workerId: event.workerId,
            agentName: event.agentName,
            maxProcesses: event.maxProcesses,
            loadThreshold: event.loadThreshold,
          }
        : {},
    ),
    recordStatus: assign(({ context, event }) =>
      event.type === "status"
        ? {
            reportedStatus: event.status,
            load: event.load,
            jobCount: event.jobCount,
            epoch: event.jobCount < context.jobCount ? context.epoch + 1 : context.epoch,
          }
        : {},
    ),
    reserveOffer: assign({ inflight: ({ context }) => context.inflight + 1 }),
    releaseOffer: assign({ inflight: ({ context }) => Math.max(0, context.inflight - 1) }),
    nextEpoch: assign({ epoch: ({ context }) => context.epoch + 1 }),
    announceAvailable: emit(({ context }) => ({
      type: "availability_changed" as const,
      workerId: context.workerId,
      epoch: context.epoch,
    })),
    goneBecause: assign({ goneReason: (_, params: { reason: string }) => params.reason }),
    announceGone: emit(({ context }) => ({
      type: "gone" as const,
      workerId: context.workerId,
      reason: context.goneReason,
    })),
  },
}).createMachine({
  id: "session",
  context: ({ input }) => ({
    workerId: input.workerId,
    timing: input.timing,
    agentName: "",
    maxProcesses: 1,
    loadThreshold: 1,
    reportedStatus: "starting",
    load: 0,
    jobCount: 0,
    inflight: 0,
    epoch: input.epochFloor,
    goneReason: "",
  }),
  initial: "registering",
  on: {
    registered: {},
    merged: {},
    offer_reserved: { actions: "reserveOffer" },
    offer_released: { actions: "releaseOffer" },
    status: { actions: "recordStatus" },
    ping_sent: {},
    pong: {},
    reattached: {},
    socket_closed: {},
    close: { target: ".gone", actions: { type: "goneBecause", params: { reason: "registry closing" } } },
  },
  states: {
    registering: {
      after: {
        registrationTimeout: {
          target: "gone",
          actions: { type: "goneBecause", params: { reason: "never registered" } },
        },
      },
      on: {
        registered: { target: "live", actions: "recordRegistration" },
        merged: "merged",
        socket_closed: {
          target: "gone",
          actions: { type: "goneBecause", params: { reason: "closed before registering" } },
        },
      },
    },
    live: {
      type: "parallel",
      on: {
        socket_closed: [
          {
            guard: "departed",
            target: "gone",
            actions: { type: "goneBecause", params: { reason: "drained and left" } },
          },
          { target: "disconnected" },
        ],
        reattached: { target: "live", reenter: true },
      },
      states: {
        capacity: {
          initial: "full",
          states: {
            available: {
              entry: ["nextEpoch", "announceAvailable"],
              always: [
                { guard: "isDraining", target: "draining" },
                { guard: "isFull", target: "full" },
              ],
            },
            full: {
              always: [
                { guard: "isDraining", target: "draining" },
                { guard: not("isFull"), target: "available" },
              ],
            },
            /** A draining worker gets no offers; its running jobs finish. */
            draining: {},
          },
        },
        liveness: {
          initial: "quiet",
          states: {
            // When to ping is the registry's call, from one sweep over all workers: a per-session
            // timer costs two transitions every interval even for a worker that talks all the time.
            quiet: { on: { ping_sent: "awaitingPong" } },
            awaitingPong: {
              on: { pong: "quiet" },
              after: {
                pongTimeout: {
                  target: "#session.gone",
                  actions: { type: "goneBecause", params: { reason: "stopped answering pings" } },
                },
              },
            },
          },
        },
      },
    },
    /** The connection dropped; the worker keeps its jobs if it comes back in time. */
    disconnected: {
      after: {
        reconnectGrace: {
          target: "gone",
          actions: { type: "goneBecause", params: { reason: "did not reconnect in time" } },
        },
      },
      on: { reattached: "live" },
    },
    gone: { type: "final", entry: "announceGone" },
    /** The connection was a reconnect: the worker's existing session carries on with it. */
    merged: { type: "final" },
  },
});

export type SessionMachine = typeof sessionMachine;
