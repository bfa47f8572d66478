import { Counter, Histogram, Registry } from "prom-client";
import { collectProcessMetrics, MACHINE_REASONS, reasonLabel } from "../observability/metrics.ts";
import type { OfferEnding } from "../observability/tracing/dispatch-trace.ts";
import { AgentLabels } from "./autoscaling-metrics.ts";

/**
 * How a dispatch came to run on this node. Every dispatch a node runs is counted once under one of
 * these, so on each node `jobs_finished_total` never exceeds `dispatches_total`; summed over a
 * cluster, `origin="created"` counts each job once.
 */
export const DISPATCH_ORIGINS = [
  /** Created by this node's dispatch API. */
  "created",
  /** Placed here by the node that created it (a cluster forward). */
  "forwarded",
  /** A running job taken on from a worker's report or from a node that died. */
  "adopted",
  /** A job a node that died had not placed yet, dispatched again here. */
  "resumed",
] as const;
export type DispatchOrigin = (typeof DISPATCH_ORIGINS)[number];

/** Reasons the dispatch machine gives itself; with the workers' failure reasons, all a label shows as is. */
const DISPATCH_REASONS = [
  ...MACHINE_REASONS,
  "worker lost",
  "did not start in time",
  "cancelled before assignment",
  "cancelled; the worker did not confirm",
  "cancelled; the worker was lost",
  "timed out",
];

/** A final dispatch's reason as a bounded label value (a worker or a placement can say anything). */
export const dispatchReasonLabel = (reason: string | undefined) => reasonLabel(reason, DISPATCH_REASONS);

/** How an offer ended, as the `answer` label of troupe_registry_offers_total. */
export const OFFER_ANSWER_LABELS: Record<OfferEnding, string> = {
  accepted: "yes",
  declined: "no",
  no_answer: "no_answer",
};

/**
 * The registry's counters and histograms, which the core updates as things happen. The gauges of
 * workers, free slots and waiting dispatches are read from the core at scrape time instead
 * (autoscaling-metrics.ts); `agentLabels` bounds the agent label of both.
 */
export function createRegistryMetrics() {
  const registry = new Registry();
  collectProcessMetrics(registry, "troupe_registry_");
  const metrics = {
    registry,
    agentLabels: new AgentLabels(),
    dispatches: new Counter({
      name: "troupe_registry_dispatches_total",
      help: "Dispatches this node started running, by origin (created, forwarded, adopted, resumed)",
      labelNames: ["origin"] as const,
      registers: [registry],
    }),
    finished: new Counter({
      name: "troupe_registry_jobs_finished_total",
      help: "Dispatches of this node that reached a final state, by status and reason (other: free text)",
      labelNames: ["status", "reason"] as const,
      registers: [registry],
    }),
    offers: new Counter({
      name: "troupe_registry_offers_total",
      help: "Offers made to workers, by the worker's agent and how they ended (yes, no, no_answer)",
      labelNames: ["agent", "answer"] as const,
      registers: [registry],
    }),
    rejections: new Counter({
      name: "troupe_registry_dispatches_rejected_total",
      help: "Dispatches of this node rejected (no worker took them in time), by agent and cause",
      labelNames: ["agent", "cause"] as const,
      registers: [registry],
    }),
    protocolErrors: new Counter({
      name: "troupe_registry_protocol_errors_total",
      help: "Frames from workers answered with an error frame, by code",
      labelNames: ["code"] as const,
      registers: [registry],
    }),
    dispatchLatency: new Histogram({
      name: "troupe_registry_dispatch_latency_seconds",
      help: "Dispatch created to its job reported running on a worker, on the node where it runs (adopted jobs not counted)",
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [registry],
    }),
    dispatchDuration: new Histogram({
      name: "troupe_registry_job_duration_seconds",
      help: "Dispatch created to its final state",
      buckets: [0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 1800, 3600],
      registers: [registry],
    }),
  };
  // Every origin from the start, so a rate over any of them has a series to start from.
  for (const origin of DISPATCH_ORIGINS) metrics.dispatches.inc({ origin }, 0);
  return metrics;
}

export type RegistryMetrics = ReturnType<typeof createRegistryMetrics>;
