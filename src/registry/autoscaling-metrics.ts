import { Gauge, type Registry } from "prom-client";
import { viewOf } from "./core/placement.ts";
import type { WorkerLink } from "./core/worker-link.ts";
import { spareOf } from "./picker.ts";

/**
 * The registry's autoscaling signals, per agent: free job slots, dispatches waiting for a worker and
 * workers by status. They are gauges computed at scrape time from the core's own state (the worker
 * sessions and the dispatch machines), so nothing here keeps a copy that could drift from it.
 *
 * Each node reports the workers connected to it and the dispatches it runs, so `sum by (agent)`
 * over the nodes of a cluster counts each worker and each waiting dispatch once.
 */

/** Label of dispatches waiting, or rejected, for an agent that no worker of the cluster serves. */
export const UNSERVED_AGENT = "(unserved)";
/** Label of every agent past the first {@link MAX_AGENT_LABELS} this node gave a label of its own. */
export const OTHER_AGENT = "(other)";
/** How many agent names one node shows as they are: enough for any real fleet, few enough to stay cheap. */
export const MAX_AGENT_LABELS = 100;

/**
 * Agent names as label values from a bounded set. Agent names reach the registry from worker
 * registrations and from dispatch requests, and a dispatch may name any agent: only an agent some
 * worker serves gets a label of its own (the rest are {@link UNSERVED_AGENT}), and only the first
 * {@link MAX_AGENT_LABELS} of those (later ones share {@link OTHER_AGENT}). Counters keep every
 * series they ever had, so the names admitted are remembered: an agent keeps its label once it has
 * one, and the number of series stays bounded for the life of the process.
 */
export class AgentLabels {
  readonly #admitted = new Set<string>();

  /** The label for `agent`; `served` says whether some worker (here or on another node) serves it now. */
  of(agent: string, served: boolean): string {
    if (this.#admitted.has(agent)) return agent;
    if (!served) return UNSERVED_AGENT;
    if (this.#admitted.size >= MAX_AGENT_LABELS) return OTHER_AGENT;
    this.#admitted.add(agent);
    return agent;
  }
}

/** Why a dispatch was rejected, as a label from a small fixed set. */
export const REJECTION_CAUSES = ["no_worker", "all_full", "all_declined", "timed_out", "other"] as const;
export type RejectionCause = (typeof REJECTION_CAUSES)[number];

/**
 * A rejection's reason (the words placement's `whyNone` chose at the dispatch's last search, or
 * "timed out" when offers were still out at the deadline) as a {@link RejectionCause}.
 */
export function rejectionCause(reason: string | undefined): RejectionCause {
  if (!reason) return "other";
  if (reason.startsWith("no worker serves ")) return "no_worker";
  if (/, all declined$/.test(reason)) return "all_declined";
  if (/, all full \(/.test(reason)) return "all_full";
  if (reason === "timed out") return "timed_out";
  return "other";
}

/** A registered worker's status, from its session's state: the capacity region while it is connected. */
export const WORKER_STATUSES = ["available", "full", "draining", "disconnected"] as const;
export type WorkerStatus = (typeof WORKER_STATUSES)[number];

export function workerStatus(link: WorkerLink): WorkerStatus | undefined {
  const state = link.state;
  const status = state.startsWith("live.") ? state.slice("live.".length) : state;
  return (WORKER_STATUSES as readonly string[]).includes(status) ? (status as WorkerStatus) : undefined;
}

/** What the gauges read, at scrape time: the core's workers and dispatch machines. */
export interface AutoscalingSource {
  /** Workers registered with this node, connected or waiting for a reconnect. */
  workers(): Iterable<WorkerLink>;
  /** Agents served by workers of the other live nodes of a cluster (none on a single node). */
  remoteAgents(): Iterable<string>;
  /** Dispatches of this node waiting for a worker, by agent name. */
  waitingByAgent(): Map<string, number>;
}

interface AgentTally {
  /** `maxProcesses` of the workers that take work: connected, not draining and no longer starting. */
  slots: number;
  freeSlots: number;
  waiting: number;
  workers: Record<WorkerStatus, number>;
}

const emptyTally = (): AgentTally => ({
  slots: 0,
  freeSlots: 0,
  waiting: 0,
  workers: Object.fromEntries(WORKER_STATUSES.map((status) => [status, 0])) as Record<WorkerStatus, number>,
});

/**
 * The signals per agent label, now. Slots are those of the workers that take work (available or
 * full); free slots are those placement could use at once: on workers whose session is available,
 * what the picker sees as spare (jobs, assignments and offers out taken off). A full, draining or
 * disconnected worker has none free, so slots less free slots is the demand being served.
 *
 * A worker still starting (warming its pool) shows as full but serves nothing yet: its slots are
 * left out of both, or every pod an autoscaler adds would raise the demand it scales on until the
 * pod is warm, and the autoscaler would add another.
 */
export function tallyByAgent(source: AutoscalingSource, labels: AgentLabels): Map<string, AgentTally> {
  const tally = new Map<string, AgentTally>();
  const entry = (label: string) => {
    const found = tally.get(label) ?? emptyTally();
    tally.set(label, found);
    return found;
  };
  const served = new Set<string>(source.remoteAgents());
  for (const link of source.workers()) {
    const status = workerStatus(link);
    if (!status) continue;
    const agent = link.context.agentName;
    served.add(agent);
    const counts = entry(labels.of(agent, true));
    counts.workers[status]++;
    const takesWork = status === "available" || (status === "full" && link.context.reportedStatus !== "starting");
    if (takesWork) counts.slots += link.context.maxProcesses;
    if (link.available) counts.freeSlots += Math.max(0, spareOf(viewOf(link)));
  }
  for (const [agent, waiting] of source.waitingByAgent()) {
    entry(labels.of(agent, served.has(agent))).waiting += waiting;
  }
  return tally;
}

/**
 * Registers the autoscaling gauges on `registry`, reading `source` at every scrape. Each gauge is
 * reset first, so an agent no worker serves any more and nothing waits for drops out.
 */
export function registerAutoscalingGauges(registry: Registry, source: AutoscalingSource, labels: AgentLabels): void {
  const read = () => tallyByAgent(source, labels);
  new Gauge({
    name: "troupe_registry_slots",
    help: "Job slots (maxProcesses) of the workers connected to this node that take work (not starting, draining or disconnected), by agent",
    labelNames: ["agent"] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const [agent, counts] of read()) this.set({ agent }, counts.slots);
    },
  });
  new Gauge({
    name: "troupe_registry_free_slots",
    help: "Job slots free now on the available workers connected to this node, by agent",
    labelNames: ["agent"] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const [agent, counts] of read()) this.set({ agent }, counts.freeSlots);
    },
  });
  new Gauge({
    name: "troupe_registry_dispatches_waiting",
    help: "Dispatches of this node waiting for a worker with a free slot, by agent",
    labelNames: ["agent"] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const [agent, counts] of read()) this.set({ agent }, counts.waiting);
    },
  });
  new Gauge({
    name: "troupe_registry_workers",
    help: "Workers registered with this node, by agent and status (available, full, draining, disconnected)",
    labelNames: ["agent", "status"] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const [agent, counts] of read()) {
        for (const status of WORKER_STATUSES) this.set({ agent, status }, counts.workers[status]);
      }
    },
  });
}
