import type { ConnectionInput } from "../../machines/connection.ts";
import type { WorkerInput } from "../../machines/worker.ts";
import type { Options } from "../options.ts";

const ms = (seconds: number) => Math.round(seconds * 1000);

/** Options (seconds, megabytes) → the worker root's input (milliseconds). Every delay comes from here. */
export function workerInputFrom(options: Options, random: () => number = Math.random, link?: unknown): WorkerInput {
  return {
    maxProcesses: options.maxProcesses,
    numIdleProcesses: options.numIdleProcesses,
    loadThreshold: options.loadThreshold,
    timing: {
      drainTimeoutMs: ms(options.drainTimeout),
      spawnBackoffBaseMs: ms(options.spawnBackoffBase),
      spawnBackoffMaxMs: ms(options.spawnBackoffMax),
    },
    job: {
      offerTtlMs: ms(options.assignmentTimeout),
      launchTimeoutMs: ms(options.launchTimeout),
      maxDurationMs: ms(options.maxJobDuration),
    },
    slot: {
      timing: {
        initializeTimeoutMs: ms(options.initializeTimeout),
        closeTimeoutMs: ms(options.closeTimeout),
        killGraceMs: ms(options.killTimeout),
        pingIntervalMs: ms(options.ipcPingInterval),
        pongTimeoutMs: ms(options.ipcPongTimeout),
        memorySampleIntervalMs: ms(options.memorySampleInterval),
        memoryWarnIntervalMs: ms(options.memoryWarnInterval),
      },
      memoryWarnMb: options.memoryWarnMb,
      memoryLimitMb: options.memoryLimitMb,
    },
    link,
    random,
  };
}

/** Options → the registry link's input. */
export function connectionInputFrom(options: Options, random: () => number = Math.random): ConnectionInput {
  return {
    agentName: options.agentId,
    maxProcesses: options.maxProcesses,
    loadThreshold: options.loadThreshold,
    maxRetry: options.maxRetry,
    timing: {
      registrationTimeoutMs: ms(options.registrationTimeout),
      pingIntervalMs: ms(options.pingInterval),
      pongTimeoutMs: ms(options.pingTimeout),
      backoffBaseMs: ms(options.reconnectBackoffBase),
      backoffMaxMs: ms(options.reconnectBackoffMax),
    },
    random,
  };
}
