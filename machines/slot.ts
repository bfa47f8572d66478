import { assign, fromCallback, sendParent, sendTo, setup } from "xstate";
import type { ErrorInfo, JobOutcome, JobSpec, ProcessExit, StopReason } from "./shared.ts";

/** Every duration a slot waits for, in milliseconds. Comes from Options. */
export interface SlotTiming {
  initializeTimeoutMs: number;
  closeTimeoutMs: number;
  killGraceMs: number;
  pingIntervalMs: number;
  pongTimeoutMs: number;
  memorySampleIntervalMs: number;
  memoryWarnIntervalMs: number;
}

export interface SlotInput {
  slotId: string;
  timing: SlotTiming;
  memoryWarnMb: number;
  /** 0 = unlimited */
  memoryLimitMb: number;
}

/** Commands the slot sends to its process actor. */
export type ProcessCommand =
  | { type: "start_job"; job: JobSpec }
  | { type: "shutdown"; reason: StopReason }
  | { type: "ping" }
  | { type: "sample_memory" }
  | { type: "signal"; signal: "SIGTERM" | "SIGKILL" };

export interface ProcessInput {
  slotId: string;
}

/** What the process actor reports back. */
export type ProcessEvent =
  | { type: "proc.spawned"; pid: number }
  | { type: "proc.spawn_failed"; error: ErrorInfo }
  | { type: "proc.ready" }
  | { type: "proc.pong" }
  | { type: "proc.job_running" }
  | { type: "proc.job_ending" }
  | { type: "proc.done"; result: { ok: true; reason?: string } | { ok: false; error: ErrorInfo } }
  | { type: "proc.memory"; mb: number }
  | { type: "proc.exit"; code: number | null; signal: string | null };

export type SlotEvent =
  | ProcessEvent
  | { type: "slot.assign"; job: JobSpec }
  | { type: "slot.stop"; reason: StopReason };

/** Sent to the parent (the worker root). */
export type SlotNotification =
  | { type: "slot.ready"; slotId: string }
  | { type: "slot.job_running"; slotId: string; jobId: string }
  | { type: "slot.memory_warning"; slotId: string; mb: number; jobId: string | null }
  | { type: "slot.assign_refused"; slotId: string; job: JobSpec };

export interface SlotContext {
  slotId: string;
  timing: SlotTiming;
  memoryWarnMb: number;
  memoryLimitMb: number;
  pid: number | null;
  job: JobSpec | null;
  becameReady: boolean;
  stopReason: StopReason | null;
  jobResult: { ok: true; reason?: string } | { ok: false; error: ErrorInfo } | null;
  spawnError: ErrorInfo | null;
  exit: ProcessExit | null;
  exitConfirmed: boolean;
  memoryMb: number | null;
}

export interface SlotOutput {
  slotId: string;
  pid: number | null;
  jobId: string | null;
  /** The process reached idle at least once: a warm process, not a launch failure. */
  becameReady: boolean;
  stopReason: StopReason | null;
  spawnError: ErrorInfo | null;
  exit: ProcessExit | null;
  /** False when the process never reported its exit, even after SIGKILL. */
  exitConfirmed: boolean;
  jobOutcome: JobOutcome | null;
}

/** Maps everything a slot saw to the one outcome its job gets. A crash is never a success. */
export function jobOutcomeOf(context: SlotContext): JobOutcome | null {
  if (!context.job) return null;
  const exit = context.exit ?? { code: null, signal: null };
  const stop = context.stopReason;
  if (stop === "cancelled") return { status: "cancelled", reason: "cancelled" };
  if (stop !== null && stop !== "idle_shutdown" && stop !== "initialize_timeout") {
    const reason = stop === "close_timeout" ? "close_timeout" : stop;
    const error = context.jobResult && !context.jobResult.ok ? context.jobResult.error : undefined;
    return { status: "failed", reason, ...(error ? { error } : {}), exitCode: exit.code, signal: exit.signal };
  }
  if (context.jobResult && !context.jobResult.ok) {
    return {
      status: "failed",
      reason: "entrypoint_error",
      error: context.jobResult.error,
      exitCode: exit.code,
      signal: exit.signal,
    };
  }
  if (context.jobResult?.ok && context.exitConfirmed && exit.code === 0 && exit.signal === null) {
    const { reason } = context.jobResult;
    return reason ? { status: "completed", reason } : { status: "completed" };
  }
  return { status: "failed", reason: "crashed", exitCode: exit.code, signal: exit.signal };
}

/**
 * One child process: spawning → initializing → ready{idle | busy} → ending/stopping → terminating →
 * killing → exited. While ready, a heartbeat and a memory watch run in parallel. The process itself
 * is the invoked `process` actor, provided by src/ (a fork in production, a fake in tests).
 */
export const slotMachine = setup({
  types: {
    input: {} as SlotInput,
    context: {} as SlotContext,
    events: {} as SlotEvent,
    output: {} as SlotOutput,
  },
  actors: {
    // Replaced with machine.provide(); the default fails so a forgotten provide is loud.
    process: fromCallback<ProcessCommand, ProcessInput, ProcessEvent>(() => {
      throw new Error("slot: the process actor must be provided with machine.provide()");
    }),
  },
  delays: {
    initializeTimeout: ({ context }) => context.timing.initializeTimeoutMs,
    closeTimeout: ({ context }) => context.timing.closeTimeoutMs,
    killGrace: ({ context }) => context.timing.killGraceMs,
    pingInterval: ({ context }) => context.timing.pingIntervalMs,
    pongTimeout: ({ context }) => context.timing.pongTimeoutMs,
    memorySampleInterval: ({ context }) => context.timing.memorySampleIntervalMs,
    memoryWarnInterval: ({ context }) => context.timing.memoryWarnIntervalMs,
  },
  guards: {
    /** A job whose lease lapsed may run on another worker now: no graceful close, no second copy. */
    stopAtOnce: ({ event }) => event.type === "slot.stop" && event.reason === "lease_lapsed",
    overMemoryLimit: ({ context, event }) =>
      event.type === "proc.memory" && context.memoryLimitMb > 0 && event.mb >= context.memoryLimitMb,
    overMemoryWarning: ({ context, event }) =>
      event.type === "proc.memory" && context.memoryWarnMb > 0 && event.mb >= context.memoryWarnMb,
  },
  actions: {
    recordPid: assign({ pid: ({ event }) => (event.type === "proc.spawned" ? event.pid : null) }),
    recordSpawnFailure: assign({
      spawnError: ({ event }) =>
        event.type === "proc.spawn_failed" ? event.error : { name: "Error", message: "process actor failed" },
    }),
    recordActorError: assign({
      spawnError: ({ event }) => {
        const error = (event as unknown as { error?: unknown }).error;
        return error instanceof Error
          ? { name: error.name, message: error.message }
          : { name: "Error", message: String(error) };
      },
    }),
    recordExit: assign({
      exit: ({ event }) => (event.type === "proc.exit" ? { code: event.code, signal: event.signal } : null),
      exitConfirmed: () => true,
    }),
    recordMemory: assign({ memoryMb: ({ event }) => (event.type === "proc.memory" ? event.mb : null) }),
    recordResult: assign({ jobResult: ({ event }) => (event.type === "proc.done" ? event.result : null) }),
    stopBecause: assign({ stopReason: (_, params: { reason: StopReason }) => params.reason }),
    recordStopRequest: assign({ stopReason: ({ event }) => (event.type === "slot.stop" ? event.reason : null) }),
    takeJob: assign({ job: ({ event }) => (event.type === "slot.assign" ? event.job : null) }),
    markReady: assign({ becameReady: () => true }),
    startJob: sendTo("process", ({ context }) => ({ type: "start_job" as const, job: context.job as JobSpec })),
    requestShutdown: sendTo("process", ({ context }) => ({
      type: "shutdown" as const,
      reason: context.stopReason ?? "idle_shutdown",
    })),
    sendPing: sendTo("process", { type: "ping" as const }),
    requestMemorySample: sendTo("process", { type: "sample_memory" as const }),
    sendTerm: sendTo("process", { type: "signal" as const, signal: "SIGTERM" as const }),
    sendKill: sendTo("process", { type: "signal" as const, signal: "SIGKILL" as const }),
    notifyReady: sendParent(({ context }) => ({ type: "slot.ready", slotId: context.slotId })),
    notifyJobRunning: sendParent(({ context }) => ({
      type: "slot.job_running",
      slotId: context.slotId,
      jobId: context.job?.jobId ?? "",
    })),
    refuseAssignment: sendParent(({ context, event }) => ({
      type: "slot.assign_refused",
      slotId: context.slotId,
      job: (event as { job: JobSpec }).job,
    })),
    notifyMemoryWarning: sendParent(({ context, event }) => ({
      type: "slot.memory_warning",
      slotId: context.slotId,
      mb: event.type === "proc.memory" ? event.mb : (context.memoryMb ?? 0),
      jobId: context.job?.jobId ?? null,
    })),
  },
}).createMachine({
  id: "slot",
  context: ({ input }) => ({
    slotId: input.slotId,
    timing: input.timing,
    memoryWarnMb: input.memoryWarnMb,
    memoryLimitMb: input.memoryLimitMb,
    pid: null,
    job: null,
    becameReady: false,
    stopReason: null,
    jobResult: null,
    spawnError: null,
    exit: null,
    exitConfirmed: false,
    memoryMb: null,
  }),
  initial: "alive",
  states: {
    alive: {
      invoke: {
        id: "process",
        src: "process",
        input: ({ context }) => ({ slotId: context.slotId }),
        onError: { target: "exited", actions: "recordActorError" },
      },
      on: {
        "proc.exit": { target: "exited", actions: "recordExit" },
        // A slot that is already going down keeps its first reason.
        "slot.stop": {},
        // Only an idle slot takes a job; any other state hands it straight back to the worker.
        "slot.assign": { actions: "refuseAssignment" },
        "proc.ready": {},
        "proc.pong": {},
        "proc.memory": { actions: "recordMemory" },
        "proc.job_running": {},
        "proc.job_ending": {},
        "proc.done": { actions: "recordResult" },
        "proc.spawned": {},
        "proc.spawn_failed": {},
      },
      initial: "spawning",
      states: {
        spawning: {
          on: {
            "proc.spawned": { target: "initializing", actions: "recordPid" },
            "proc.spawn_failed": { target: "#slot.exited", actions: "recordSpawnFailure" },
            "slot.stop": [
              { guard: "stopAtOnce", target: "killing", actions: "recordStopRequest" },
              { target: "terminating", actions: "recordStopRequest" },
            ],
          },
        },
        initializing: {
          after: {
            initializeTimeout: {
              target: "terminating",
              actions: { type: "stopBecause", params: { reason: "initialize_timeout" } },
            },
          },
          on: {
            "proc.ready": "ready",
            "slot.stop": [
              { guard: "stopAtOnce", target: "killing", actions: "recordStopRequest" },
              { target: "stopping", actions: "recordStopRequest" },
            ],
          },
        },
        ready: {
          type: "parallel",
          on: {
            "slot.stop": [
              { guard: "stopAtOnce", target: "killing", actions: "recordStopRequest" },
              { target: "stopping", actions: "recordStopRequest" },
            ],
          },
          states: {
            work: {
              initial: "idle",
              states: {
                idle: {
                  entry: ["markReady", "notifyReady"],
                  on: {
                    "slot.assign": { target: "busy", actions: "takeJob" },
                    // A finished result without a job is a protocol error by the child: it is dropped.
                    "proc.done": {},
                  },
                },
                busy: {
                  entry: "startJob",
                  on: {
                    "proc.job_running": { actions: "notifyJobRunning" },
                    "proc.job_ending": "#slot.alive.ending",
                    "proc.done": { target: "#slot.alive.ending", actions: "recordResult" },
                  },
                },
              },
            },
            heartbeat: {
              // The first ping goes as soon as the process is ready: besides checking it answers, it
              // pays the cost of a process's first IPC message (about 1 ms of Node's lazy set-up,
              // docs/benchmarks.md) while the process is idle, not on a warm start's `start_job`. A
              // cold start's `start_job` follows the ping at once and still waits for it.
              initial: "awaitingPong",
              states: {
                waiting: { after: { pingInterval: "awaitingPong" } },
                awaitingPong: {
                  entry: "sendPing",
                  on: { "proc.pong": "waiting" },
                  after: {
                    pongTimeout: {
                      target: "#slot.alive.terminating",
                      actions: { type: "stopBecause", params: { reason: "unresponsive" } },
                    },
                  },
                },
              },
            },
            memorySampler: {
              initial: "sampling",
              states: {
                sampling: {
                  after: {
                    memorySampleInterval: { target: "sampling", reenter: true, actions: "requestMemorySample" },
                  },
                },
              },
            },
            memory: {
              initial: "normal",
              states: {
                normal: {
                  on: {
                    "proc.memory": [
                      {
                        guard: "overMemoryLimit",
                        target: "#slot.alive.stopping",
                        actions: ["recordMemory", { type: "stopBecause", params: { reason: "memory_limit" } }],
                      },
                      {
                        guard: "overMemoryWarning",
                        target: "warned",
                        actions: ["recordMemory", "notifyMemoryWarning"],
                      },
                      { actions: "recordMemory" },
                    ],
                  },
                },
                warned: {
                  // One warning per memoryWarnInterval: the state itself is the rate limit.
                  after: { memoryWarnInterval: "normal" },
                  on: {
                    "proc.memory": [
                      {
                        guard: "overMemoryLimit",
                        target: "#slot.alive.stopping",
                        actions: ["recordMemory", { type: "stopBecause", params: { reason: "memory_limit" } }],
                      },
                      { actions: "recordMemory" },
                    ],
                  },
                },
              },
            },
          },
        },
        /** The job ended by itself; the child runs its shutdown callbacks and exits. */
        ending: {
          // The job ended by itself, but its process is still closing: a lapsed lease cuts that short,
          // and is why the job is reported to have ended (it may have run on past its lease).
          on: { "slot.stop": { guard: "stopAtOnce", target: "killing", actions: "recordStopRequest" } },
          after: {
            closeTimeout: {
              target: "terminating",
              actions: { type: "stopBecause", params: { reason: "close_timeout" } },
            },
          },
        },
        /** We asked the child to stop (stopReason says why); it has closeTimeout to exit. */
        stopping: {
          entry: "requestShutdown",
          on: { "slot.stop": { guard: "stopAtOnce", target: "killing" } },
          after: { closeTimeout: "terminating" },
        },
        terminating: {
          entry: "sendTerm",
          on: { "slot.stop": { guard: "stopAtOnce", target: "killing" } },
          after: { killGrace: "killing" },
        },
        killing: {
          entry: "sendKill",
          // A process that outlives SIGKILL by a whole grace is recorded as an unconfirmed exit.
          after: { killGrace: "#slot.exited" },
        },
      },
    },
    exited: { type: "final" },
  },
  output: ({ context }) => ({
    slotId: context.slotId,
    pid: context.pid,
    jobId: context.job?.jobId ?? null,
    becameReady: context.becameReady,
    stopReason: context.stopReason,
    spawnError: context.spawnError,
    exit: context.exit,
    exitConfirmed: context.exitConfirmed,
    jobOutcome: jobOutcomeOf(context),
  }),
});

export type SlotMachine = typeof slotMachine;
