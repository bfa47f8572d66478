import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";

/** The worker's Prometheus metrics, on a registry of its own (several workers can share a process in tests). */
export function createWorkerMetrics() {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: "troupe_worker_process_" });
  const metrics = {
    registry,
    jobsStarted: new Counter({
      name: "troupe_jobs_started_total",
      help: "Jobs whose entrypoint started in a job process",
      registers: [registry],
    }),
    jobsEnded: new Counter({
      name: "troupe_jobs_ended_total",
      help: "Jobs that reached a final state, by status and reason",
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
      help: "Process slots by machine state",
      labelNames: ["state"] as const,
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
      help: "Memory (PSS where available) of each job process and its descendants",
      labelNames: ["slot", "job_id"] as const,
      registers: [registry],
    }),
  };
  return metrics;
}

export type WorkerMetrics = ReturnType<typeof createWorkerMetrics>;
