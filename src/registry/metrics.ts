import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";

export function createRegistryMetrics() {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: "troupe_registry_process_" });
  return {
    registry,
    workers: new Gauge({
      name: "troupe_registry_workers",
      help: "Workers known to the registry",
      registers: [registry],
    }),
    dispatches: new Counter({
      name: "troupe_registry_dispatches_total",
      help: "Dispatches created",
      registers: [registry],
    }),
    finished: new Counter({
      name: "troupe_registry_jobs_finished_total",
      help: "Dispatches that reached a final state, by status and reason",
      labelNames: ["status", "reason"] as const,
      registers: [registry],
    }),
    offers: new Counter({
      name: "troupe_registry_offers_total",
      help: "Availability answers from workers",
      labelNames: ["answer"] as const,
      registers: [registry],
    }),
    protocolErrors: new Counter({
      name: "troupe_registry_protocol_errors_total",
      help: "Frames from workers answered with an error frame, by code",
      labelNames: ["code"] as const,
      registers: [registry],
    }),
    dispatchDuration: new Histogram({
      name: "troupe_registry_job_duration_seconds",
      help: "Dispatch created to its final state",
      buckets: [0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 1800, 3600],
      registers: [registry],
    }),
  };
}

export type RegistryMetrics = ReturnType<typeof createRegistryMetrics>;
