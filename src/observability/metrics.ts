import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type { FailureReason } from "../../machines/shared.ts";
import type { SlotView } from "../../machines/worker.ts";

/** Every failure reason a job machine can record (a Record, so a new reason fails to compile until added). */
const FAILURE_REASONS: Record<FailureReason, true> = {
  entrypoint_error: true,
  crashed: true,
  memory_limit: true,
  unresponsive: true,
  launch_failed: true,
  max_duration: true,
  worker_shutdown: true,
  close_timeout: true,
  lease_lapsed: true,
};

/** The reasons the machines themselves give, which are the only ones a `reason` label carries as they are. */
export const MACHINE_REASONS: readonly string[] = [...Object.keys(FAILURE_REASONS), "cancelled"];

/**
 * A reason as a label value from a small fixed set: the reason itself when it is one of `known`, ""
 * when there is none, and "other" for free text (a completion reason a job gave, a decline's
 * message, a reason a worker sent), which would otherwise make one series per message.
 */
export function reasonLabel(reason: string | undefined, known: readonly string[] = MACHINE_REASONS): string {
  if (!reason) return "";
  return known.includes(reason) ? reason : "other";
}

export const SLOT_PHASES = ["warming", "idle", "busy", "closing"] as const satisfies readonly SlotView["phase"][];

/**
 * Node's default process metrics under `prefix`, without prom-client's `*_total` gauges (a gauge must
 * not end in `_total`; their per-type gauges, summed, give the same numbers).
 */
export function collectProcessMetrics(registry: Registry, prefix: string): void {
  collectDefaultMetrics({ register: registry, prefix });
  for (const metric of registry.getMetricsAsArray()) {
    if (metric.name.endsWith("_total") && !(metric instanceof Counter)) registry.removeSingleMetric(metric.name);
  }
}

/** The worker's Prometheus metrics, on a registry of its own (several workers can share a process in tests). */
export function createWorkerMetrics() {
  const registry = new Registry();
  collectProcessMetrics(registry, "troupe_worker_");
  const metrics = {
    registry,
    jobsStarted: new Counter({
      name: "troupe_jobs_started_total",
      help: "Jobs whose entrypoint started in a job process",
      registers: [registry],
    }),
    jobsEnded: new Counter({
      name: "troupe_jobs_ended_total",
      help: "Jobs that reached a final state, by status and reason (other: free text)",
      labelNames: ["status", "reason"] as const,
      registers: [registry],
    }),
    kills: new Counter({
      name: "troupe_process_kills_total",
      help: "Job processes the worker stopped or killed, by reason",
      labelNames: ["reason"] as const,
      registers: [registry],
    }),
    processExits: new Counter({
      name: "troupe_process_exits_total",
      help: "Job process exits, by how they ended",
      labelNames: ["kind"] as const,
      registers: [registry],
    }),
    slots: new Gauge({
      name: "troupe_slots",
      help: "Job process slots by phase (warming, idle, busy, closing)",
      labelNames: ["phase"] as const,
      registers: [registry],
    }),
    spawnDuration: new Histogram({
      name: "troupe_process_spawn_duration_seconds",
      help: "fork() to the job process reporting ready (module loaded, prewarm done)",
      buckets: [0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2, 5, 10],
      registers: [registry],
    }),
    jobStartLatency: new Histogram({
      name: "troupe_job_start_latency_seconds",
      help: "start_job sent to a warm process to the entrypoint running",
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1],
      registers: [registry],
    }),
    jobMemory: new Gauge({
      name: "troupe_job_memory_bytes",
      help: "Memory (PSS where available) of each live job process and its descendants; job_id empty while idle",
      labelNames: ["slot", "job_id"] as const,
      registers: [registry],
    }),
  };
  return metrics;
}

export type WorkerMetrics = ReturnType<typeof createWorkerMetrics>;

/** Sets `troupe_slots` from the worker's slot views: every phase, zero included, so none goes stale. */
export function countSlotPhases(metrics: WorkerMetrics, slots: Iterable<SlotView>): void {
  const counts = new Map<string, number>(SLOT_PHASES.map((phase) => [phase, 0]));
  for (const slot of slots) counts.set(slot.phase, (counts.get(slot.phase) ?? 0) + 1);
  for (const [phase, count] of counts) metrics.slots.set({ phase }, count);
}
