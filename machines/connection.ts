import { assign, type DoneActorEvent, emit, enqueueActions, fromCallback, sendParent, sendTo, setup } from "xstate";
import type { JobInventoryEntry, JobSpec, JobUpdate, WorkerStatus } from "./shared.ts";

export interface ConnectionTiming {
  registrationTimeoutMs: number;
  pingIntervalMs: number;
  pongTimeoutMs: number;
  backoffBaseMs: number;
  backoffMaxMs: number;
}

export interface ConnectionInput {
  agentName: string;
  maxProcesses: number;
  loadThreshold: number;
  maxRetry: number;
  timing: ConnectionTiming;
  /** Jitter source in [0, 1). */
  random: () => number;
}

/**
 * What the worker tells the registry, in the machine's terms; the socket actor puts it on the wire
 * (src/worker/registry-wire.ts). Timestamps are the socket's business: machines read no clock.
 */
export type SocketCommand =
  | {
      type: "send.register";
      workerId: string;
      agentName: string;
      capabilities: string[];
      loadThreshold: number;
      maxProcesses: number;
      inventory: JobInventoryEntry[];
    }
  | { type: "send.status"; workerId: string; agentName: string; status: WorkerStatus }
  | { type: "send.job_update"; update: JobUpdate }
  | { type: "send.offer_answer"; jobId: string; accept: boolean; error?: string }
  | { type: "send.ping" }
  | { type: "send.pong"; timestamp: number };

export type SocketEvent =
  | { type: "socket.open" }
  /** An open socket closed. */
  | { type: "socket.closed"; code: number; reason: string }
  /** The attempt ended before the socket opened (refused, unreachable, timed out, no token); `error` says why. */
  | { type: "socket.failed"; error: string }
  /** The registry refused this worker's credentials (HTTP 401/403 on the upgrade): retrying cannot help. */
  | { type: "socket.unauthorized"; status: number; error: string }
  /** A frame from the registry that is not a valid message; `error` says what is wrong with it. */
  | { type: "socket.invalid"; error: string }
  /**
   * The registry accepted the registration; it may name the worker. `leaseMs`: the registry leases
   * the jobs it may run elsewhere for that long per round trip, so the link pings at least three
   * times per lease.
   */
  | { type: "registry.registered"; workerId?: string; leaseMs?: number }
  | { type: "registry.refused"; message?: string }
  /** The registry asks whether this worker would take the job. */
  | { type: "registry.offer"; spec: JobSpec }
  | { type: "registry.assigned"; spec: JobSpec }
  | { type: "registry.terminate"; jobId: string; reason?: string }
  | { type: "registry.ping"; timestamp: number }
  /** `lease`: the jobs the registry vouched for in this pong, and how long from now (the socket measured it). */
  | { type: "registry.pong"; timestamp: number; lease?: { jobIds: string[]; validForMs: number } }
  | { type: "registry.error"; message: string; code?: string };

/** From the worker root. */
export type LinkEvent =
  | { type: "link.status"; status: WorkerStatus }
  | { type: "link.job_update"; update: JobUpdate }
  | { type: "link.offer_answer"; jobId: string; accept: boolean; error?: string };

export type ConnectionEvent = SocketEvent | LinkEvent;

export interface ConnectionContext {
  agentName: string;
  maxProcesses: number;
  loadThreshold: number;
  maxRetry: number;
  timing: ConnectionTiming;
  random: () => number;
  workerId: string;
  /** Consecutive failed attempts; reset when a registration succeeds. */
  retries: number;
  /** Job updates that could not be sent yet, in order. */
  buffer: JobUpdate[];
  /** Running jobs and the most recent final ones, for the registry to reconcile on register. */
  inventory: JobInventoryEntry[];
  lastStatus: WorkerStatus | null;
  lastProblem: string | null;
  /** The wait before the next attempt, drawn when the link enters backoff. */
  retryDelayMs: number;
  /** Why the link ends in `failed`. */
  failure: ConnectionOutput["reason"];
  /** The registry's lease length, from its last registration answer; null: it leases nothing. */
  leaseMs: number | null;
}

export interface ConnectionOutput {
  /** max_retry: maxRetry consecutive failures; unauthorized: the registry refused the credentials. */
  reason: "max_retry" | "unauthorized";
  retries: number;
  lastProblem: string | null;
}

/**
 * What the link says about itself, for logs (`actor.on(...)` on the link actor). `attempt` is the
 * number of the next connection attempt since the link was last registered (or since it started),
 * of at most `maxRetry`.
 */
export type ConnectionEmitted =
  | { type: "link.connected"; workerId: string }
  | { type: "link.lost"; problem: string | null }
  | { type: "link.retrying"; attempt: number; maxRetry: number; delayMs: number; problem: string | null }
  | { type: "link.gave_up"; reason: ConnectionOutput["reason"]; retries: number; problem: string | null };

export const MAX_BUFFERED_UPDATES = 10_000;
export const MAX_RECENT_FINAL = 100;

/** Keeps every running job and the last MAX_RECENT_FINAL finished ones. */
function updateInventory(inventory: JobInventoryEntry[], update: JobUpdate): JobInventoryEntry[] {
  const others = inventory.filter((entry) => entry.jobId !== update.jobId);
  const entry: JobInventoryEntry = { jobId: update.jobId, status: update.status };
  if (update.reason) entry.reason = update.reason;
  if (update.exitCode !== undefined) entry.exitCode = update.exitCode;
  if (update.signal !== undefined) entry.signal = update.signal;
  const next = [...others, entry];
  const finals = next.filter((e) => e.status !== "running");
  if (finals.length <= MAX_RECENT_FINAL) return next;
  const drop = new Set(finals.slice(0, finals.length - MAX_RECENT_FINAL).map((e) => e.jobId));
  return next.filter((e) => !drop.has(e.jobId));
}

/**
 * The worker's link to the registry: online{connecting → registering → registered{quiet ⇄
 * awaitingPong}} → on any drop backoff (capped exponential, full jitter) → online … → failed after
 * maxRetry consecutive failures, or at once when the registry refuses the credentials (401/403).
 * The socket is the invoked `socket` actor, provided by src/. Emits `link.*` events
 * (ConnectionEmitted) for logs: connected, lost, retrying, gave up.
 */
export const connectionMachine = setup({
  types: {
    input: {} as ConnectionInput,
    context: {} as ConnectionContext,
    events: {} as ConnectionEvent,
    output: {} as ConnectionOutput,
    emitted: {} as ConnectionEmitted,
  },
  actors: {
    socket: fromCallback<SocketCommand, ConnectionInput, SocketEvent>(() => {
      throw new Error("connection: the socket actor must be provided with machine.provide()");
    }),
  },
  delays: {
    registrationTimeout: ({ context }) => context.timing.registrationTimeoutMs,
    pingInterval: ({ context }) =>
      context.leaseMs === null
        ? context.timing.pingIntervalMs
        : Math.min(context.timing.pingIntervalMs, context.leaseMs / 3),
    pongTimeout: ({ context }) => context.timing.pongTimeoutMs,
    reconnectDelay: ({ context }) => context.retryDelayMs,
  },
  guards: {
    retriesExhausted: ({ context }) => context.retries >= context.maxRetry,
  },
  actions: {
    sendRegister: sendTo("socket", ({ context }) => ({
      type: "send.register" as const,
      workerId: context.workerId,
      agentName: context.agentName,
      capabilities: ["room"],
      loadThreshold: context.loadThreshold,
      maxProcesses: context.maxProcesses,
      inventory: context.inventory,
    })),
    acceptRegistration: assign({
      workerId: ({ context, event }) =>
        event.type === "registry.registered" && event.workerId ? event.workerId : context.workerId,
      retries: () => 0,
      lastProblem: () => null,
      leaseMs: ({ event }) => (event.type === "registry.registered" ? (event.leaseMs ?? null) : null),
    }),
    forwardLease: enqueueActions(({ enqueue, event }) => {
      if (event.type !== "registry.pong" || !event.lease || event.lease.jobIds.length === 0) return;
      enqueue.sendParent({ type: "worker.lease_renewed", ...event.lease });
    }),
    /** Replays, in order, every job update held back while the link was down. */
    flushBuffer: enqueueActions(({ context, enqueue }) => {
      for (const update of context.buffer) enqueue.sendTo("socket", { type: "send.job_update", update });
      enqueue.assign({ buffer: [] });
    }),
    sendLastStatus: sendTo("socket", ({ context }) => statusCommand(context, context.lastStatus)),
    rememberStatus: assign({ lastStatus: ({ event }) => (event.type === "link.status" ? event.status : null) }),
    sendStatus: sendTo("socket", ({ context, event }) =>
      statusCommand(context, event.type === "link.status" ? event.status : context.lastStatus),
    ),
    trackJob: assign({
      inventory: ({ context, event }) =>
        event.type === "link.job_update" ? updateInventory(context.inventory, event.update) : context.inventory,
    }),
    bufferUpdate: assign({
      buffer: ({ context, event }) =>
        event.type === "link.job_update"
          ? [...context.buffer, event.update].slice(-MAX_BUFFERED_UPDATES)
          : context.buffer,
    }),
    sendUpdate: sendTo("socket", ({ event }) => ({
      type: "send.job_update" as const,
      update: (event as Extract<LinkEvent, { type: "link.job_update" }>).update,
    })),
    sendAnswer: sendTo("socket", ({ event }) => {
      const e = event as Extract<LinkEvent, { type: "link.offer_answer" }>;
      return {
        type: "send.offer_answer" as const,
        jobId: e.jobId,
        accept: e.accept,
        ...(e.error ? { error: e.error } : {}),
      };
    }),
    sendPing: sendTo("socket", { type: "send.ping" as const }),
    answerPing: sendTo("socket", ({ event }) => ({
      type: "send.pong" as const,
      timestamp: event.type === "registry.ping" ? event.timestamp : 0,
    })),
    forwardOffer: sendParent(({ event }) => ({
      type: "worker.offer",
      spec: (event as Extract<SocketEvent, { type: "registry.offer" }>).spec,
    })),
    forwardAssignment: sendParent(({ event }) => ({
      type: "worker.assignment",
      spec: (event as Extract<SocketEvent, { type: "registry.assigned" }>).spec,
    })),
    forwardTermination: sendParent(({ event }) => {
      const e = event as Extract<SocketEvent, { type: "registry.terminate" }>;
      return { type: "worker.terminate", jobId: e.jobId, reason: e.reason ?? "terminated by registry" };
    }),
    countFailure: assign({ retries: ({ context }) => context.retries + 1 }),
    noteProblem: assign({
      lastProblem: ({ event }) => {
        switch (event.type) {
          case "socket.closed":
            return `connection closed (${event.code}${event.reason ? `: ${event.reason}` : ""})`;
          case "registry.refused":
            return `registration refused: ${event.message ?? "no reason given"}`;
          case "socket.failed":
            return event.error;
          case "registry.error":
            return `registry error: ${event.message}`;
          case "socket.invalid":
            return `invalid frame from registry: ${event.error}`;
          default:
            return `${event.type}`;
        }
      },
    }),
    noteSocketFailure: assign({
      lastProblem: ({ event }) => {
        const error = (event as { error?: unknown }).error;
        return `socket failed: ${error instanceof Error ? error.message : String(error)}`;
      },
    }),
    noteTimeout: assign({ lastProblem: (_, params: { what: string }) => `${params.what} timed out` }),
    noteUnauthorized: assign({
      failure: () => "unauthorized" as const,
      lastProblem: ({ event }) => (event.type === "socket.unauthorized" ? event.error : "unauthorized"),
    }),
    // Full jitter: uniform in [0, min(max, base·2^(retries−1))]. Drawn on every entry, retry or not.
    planRetry: assign({
      retryDelayMs: ({ context }) =>
        context.random() *
        Math.min(context.timing.backoffMaxMs, context.timing.backoffBaseMs * 2 ** Math.max(0, context.retries - 1)),
    }),
    reportConnected: emit(({ context }) => ({ type: "link.connected" as const, workerId: context.workerId })),
    reportLost: emit(({ context }) => ({ type: "link.lost" as const, problem: context.lastProblem })),
    reportRetrying: enqueueActions(({ context, enqueue }) => {
      if (context.retries >= context.maxRetry) return;
      enqueue.emit({
        type: "link.retrying",
        attempt: context.retries + 1,
        maxRetry: context.maxRetry,
        delayMs: Math.round(context.retryDelayMs),
        problem: context.lastProblem,
      });
    }),
    reportGaveUp: emit(({ context }) => ({
      type: "link.gave_up" as const,
      reason: context.failure,
      retries: context.retries,
      problem: context.lastProblem,
    })),
  },
}).createMachine({
  id: "connection",
  context: ({ input }) => ({
    agentName: input.agentName,
    maxProcesses: input.maxProcesses,
    loadThreshold: input.loadThreshold,
    maxRetry: input.maxRetry,
    timing: input.timing,
    random: input.random,
    workerId: "",
    retries: 0,
    buffer: [],
    inventory: [],
    lastStatus: null,
    lastProblem: null,
    retryDelayMs: 0,
    failure: "max_retry",
    leaseMs: null,
  }),
  initial: "online",
  on: {
    // While not registered: remember, buffer, and drop what only makes sense on a live session.
    "link.status": { actions: "rememberStatus" },
    "link.job_update": { actions: ["trackJob", "bufferUpdate"] },
    "link.offer_answer": {},
    "socket.open": {},
    "socket.closed": {},
    "socket.failed": {},
    "socket.unauthorized": {},
    "socket.invalid": { actions: "noteProblem" },
    "registry.registered": {},
    "registry.refused": {},
    "registry.offer": {},
    "registry.assigned": {},
    "registry.terminate": {},
    "registry.ping": {},
    "registry.pong": {},
    "registry.error": { actions: "noteProblem" },
  },
  states: {
    online: {
      invoke: {
        id: "socket",
        src: "socket",
        input: ({ context }) => ({
          agentName: context.agentName,
          maxProcesses: context.maxProcesses,
          loadThreshold: context.loadThreshold,
          maxRetry: context.maxRetry,
          timing: context.timing,
          random: context.random,
        }),
        onError: { target: "backoff", actions: "noteSocketFailure" },
      },
      on: {
        "socket.closed": { target: "backoff", actions: "noteProblem" },
        "socket.failed": { target: "backoff", actions: "noteProblem" },
        // Retrying with the same credentials cannot help: give up at once.
        "socket.unauthorized": { target: "failed", actions: "noteUnauthorized" },
      },
      initial: "connecting",
      states: {
        connecting: {
          on: { "socket.open": "registering" },
        },
        registering: {
          entry: "sendRegister",
          after: {
            registrationTimeout: {
              target: "#connection.backoff",
              actions: { type: "noteTimeout", params: { what: "registration" } },
            },
          },
          on: {
            "registry.registered": { target: "registered", actions: ["acceptRegistration", "reportConnected"] },
            "registry.refused": { target: "#connection.backoff", actions: "noteProblem" },
          },
        },
        registered: {
          entry: ["sendLastStatus", "flushBuffer"],
          on: {
            // A registered link that drops is lost (an attempt that fails before this only retries).
            "socket.closed": { target: "#connection.backoff", actions: ["noteProblem", "reportLost"] },
            "xstate.error.actor.socket": {
              target: "#connection.backoff",
              actions: ["noteSocketFailure", "reportLost"],
            },
            "link.status": { actions: ["rememberStatus", "sendStatus"] },
            "link.job_update": { actions: ["trackJob", "sendUpdate"] },
            "link.offer_answer": { actions: "sendAnswer" },
            "registry.offer": { actions: "forwardOffer" },
            "registry.assigned": { actions: "forwardAssignment" },
            "registry.terminate": { actions: "forwardTermination" },
            "registry.ping": { actions: "answerPing" },
            // A pong that comes after its ping's deadline still renews what it vouches for.
            "registry.pong": { actions: "forwardLease" },
          },
          initial: "quiet",
          states: {
            quiet: {
              after: { pingInterval: "awaitingPong" },
            },
            awaitingPong: {
              entry: "sendPing",
              on: { "registry.pong": { target: "quiet", actions: "forwardLease" } },
              after: {
                pongTimeout: {
                  target: "#connection.backoff",
                  actions: [{ type: "noteTimeout", params: { what: "pong" } }, "reportLost"],
                },
              },
            },
          },
        },
      },
    },
    backoff: {
      entry: ["countFailure", "planRetry", "reportRetrying"],
      always: { guard: "retriesExhausted", target: "failed" },
      after: { reconnectDelay: "online" },
    },
    failed: { type: "final", entry: "reportGaveUp" },
  },
  output: ({ context }) => ({ reason: context.failure, retries: context.retries, lastProblem: context.lastProblem }),
});

const STARTING: WorkerStatus = { status: "starting", load: 0, jobCount: 0, idleProcesses: 0 };

function statusCommand(context: ConnectionContext, status: WorkerStatus | null): SocketCommand {
  return { type: "send.status", workerId: context.workerId, agentName: context.agentName, status: status ?? STARTING };
}

export type ConnectionMachine = typeof connectionMachine;
export type ConnectionDoneEvent = DoneActorEvent<ConnectionOutput>;
