import type { RegistryTiming } from "../../../src/registry/timing.ts";
import type { ClusterTiming } from "./cluster.ts";
import { SIM_WORKER_TIMING } from "./worker.ts";

/** The registry's durations, scaled down from the defaults so that one seed lives through many deadlines. */
export const SIM_REGISTRY_TIMING: RegistryTiming = {
  offerTimeoutMs: 500,
  runningTimeoutMs: 2_000,
  dispatchTimeoutMs: 6_000,
  cancelTimeoutMs: 2_000,
  registrationTimeoutMs: 2_000,
  pingIntervalMs: 2_000,
  pongTimeoutMs: 2_000,
  reconnectGraceMs: 2_000,
  leaseMs: 3_000,
};

/** The liveness sweep's period, as the gateway sets it: a fifth of the ping interval, at most 1 s. */
export const SWEEP_MS = Math.max(10, Math.min(1_000, SIM_REGISTRY_TIMING.pingIntervalMs / 5));

/** A silent worker is declared gone within this (ping interval + a sweep + pong timeout). */
export const WORKER_LIVENESS_MS = SIM_REGISTRY_TIMING.pingIntervalMs + SWEEP_MS + SIM_REGISTRY_TIMING.pongTimeoutMs;

/** The cluster's production defaults (a heartbeat a second, dead after three missed), a shorter sweep. */
export const SIM_CLUSTER_TIMING: ClusterTiming = {
  heartbeatMs: 1_000,
  nodeTtlMs: 3_000,
  // As server.ts sets it: the worker liveness deadline.
  workerDeadlineMs: SIM_REGISTRY_TIMING.pingIntervalMs + SIM_REGISTRY_TIMING.pongTimeoutMs,
  sweepMs: 3_000,
};

/**
 * Liveness: once the faults stop (partitions healed, Redis back, crashed nodes and workers
 * restarted), every dispatch has a final record, every worker is registered and its pool is back to
 * its idle size within this bound. The longest chain it covers: a dead node noticed (node TTL plus a
 * heartbeat) and its jobs reaped past the worker deadline or found by two sweeps, a worker declared
 * gone twice over (a bound job released, then lost), the dispatch deadline for the job offered
 * again, the running deadline, the longest job, a reconnect grace, and two seconds for the messages
 * in between.
 */
export const LIVENESS_BOUND_MS =
  SIM_CLUSTER_TIMING.nodeTtlMs +
  2 * SIM_CLUSTER_TIMING.heartbeatMs +
  SIM_CLUSTER_TIMING.workerDeadlineMs +
  2 * SIM_CLUSTER_TIMING.sweepMs +
  2 * WORKER_LIVENESS_MS +
  SIM_REGISTRY_TIMING.dispatchTimeoutMs +
  SIM_REGISTRY_TIMING.runningTimeoutMs +
  SIM_WORKER_TIMING.job.maxDurationMs +
  SIM_REGISTRY_TIMING.reconnectGraceMs +
  2_000;
