import { assign, emit, not, setup } from "xstate";

export interface SessionTiming {
  registrationTimeoutMs: number;
  pongTimeoutMs: number;
  /** A worker whose connection dropped keeps its jobs this long, waiting for it to reconnect. */
  reconnectGraceMs: number;
}

export interface SessionInput {
  workerId: string;
  timing: SessionTiming;
}

export type WorkerReportedStatus = "starting" | "available" | "full" | "draining" | "offline";

export type SessionEvent =
  | { type: "registered"; agentName: string; maxProcesses: number; loadThreshold: number }
  | { type: "status"; status: WorkerReportedStatus; load: number; jobCount: number }
  /** The registry pinged the worker (it had been quiet for a ping interval). */
  | { type: "ping_sent" }
  /** Any frame from the worker after a ping: it is alive. */
  | { type: "pong" }
  | { type: "socket_closed" }
  | { type: "reattached" }
  | { type: "close" };

export type SessionEmitted =
  | { type: "availability_changed"; workerId: string }
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
        ? { agentName: event.agentName, maxProcesses: event.maxProcesses, loadThreshold: event.loadThreshold }
        : {},
    ),
    recordStatus: assign(({ event }) =>
      event.type === "status" ? { reportedStatus: event.status, load: event.load, jobCount: event.jobCount } : {},
    ),
    announceAvailable: emit(({ context }) => ({ type: "availability_changed" as const, workerId: context.workerId })),
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
    goneReason: "",
  }),
  initial: "registering",
  on: {
    registered: {},
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
        socket_closed: {
          target: "gone",
          actions: { type: "goneBecause", params: { reason: "closed before registering" } },
        },
      },
    },
    live: {
      type: "parallel",
      on: {
        socket_closed: "disconnected",
        reattached: { target: "live", reenter: true },
      },
      states: {
        capacity: {
          initial: "full",
          states: {
            available: {
              entry: "announceAvailable",
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
  },
});

export type SessionMachine = typeof sessionMachine;
