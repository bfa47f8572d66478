import type { TriedWorkers } from "../../../machines/registry/dispatch.ts";
import type { WorkerView } from "../cluster/messages.ts";
import { type CandidateView, pickCandidate } from "../picker.ts";
import type { NodeBus } from "./ports.ts";
import type { WorkerLink } from "./worker-link.ts";

/** How many times a dispatch may be handed to another node before it settles for workers here. */
export const MAX_HOPS = 3;

/** Where a dispatch goes next: a worker here, one on another node, or nowhere yet (and why). */
export type Placement =
  | { kind: "local"; link: WorkerLink; epoch: number }
  | { kind: "remote"; view: WorkerView }
  | { kind: "none"; cause: string };

export interface PlacementQuery {
  agentName: string;
  tried: TriedWorkers;
  prefer: string | null;
  hops: number;
}

/** A worker as placement weighs it: the picker's view, its epoch, and what explains a refusal. */
type Candidate = CandidateView & { availabilityEpoch: number; status?: string; loadThreshold?: number };

/** What the picker sees of a worker connected here. */
export function viewOf(link: WorkerLink): Candidate {
  const context = link.context;
  return {
    status: context.reportedStatus,
    loadThreshold: context.loadThreshold,
    workerId: link.workerId,
    agentName: context.agentName,
    available: link.available,
    maxProcesses: context.maxProcesses,
    jobCount: context.jobCount,
    assigned: link.jobs.size,
    inflight: context.inflight,
    load: context.load,
    availabilityEpoch: context.epoch,
  };
}

/**
 * Chooses a worker for a dispatch among the workers here and, in a cluster, those of the other live
 * nodes (one node is a cluster whose bus shows no remote workers). A worker that already said no is
 * skipped until its availability epoch moves past the one it said no at. When nobody fits, the
 * answer says why, in the words a rejection will carry.
 */
export function place(
  links: Iterable<WorkerLink>,
  bus: NodeBus | undefined,
  query: PlacementQuery,
  random: () => number,
): Placement {
  const local = new Map<string, WorkerLink>();
  for (const link of links) if (link.registered) local.set(link.workerId, link);
  const remote = bus && query.hops < MAX_HOPS ? bus.remoteViews().filter((view) => !local.has(view.workerId)) : [];
  const views: Candidate[] = [...[...local.values()].map(viewOf), ...remote];
  const excluded = (view: Candidate) => {
    const epoch = query.tried[view.workerId];
    return epoch !== undefined && epoch >= view.availabilityEpoch;
  };
  const byId = new Map(views.map((view) => [view.workerId, view]));
  const isExcluded = (workerId: string) => excluded(byId.get(workerId) as Candidate);
  const preferred = query.prefer ? local.get(query.prefer) : undefined;
  const chosen =
    (preferred && pickCandidate([viewOf(preferred)], query.agentName, isExcluded, random)) ||
    pickCandidate(views, query.agentName, isExcluded, random);
  if (!chosen) return { kind: "none", cause: whyNone(views, query.agentName, excluded) };
  const link = local.get(chosen.workerId);
  if (link) return { kind: "local", link, epoch: link.context.epoch };
  return { kind: "remote", view: chosen as WorkerView };
}

/** The reason no worker could be picked, as specific as the views allow. */
function whyNone(views: Candidate[], agentName: string, excluded: (view: Candidate) => boolean): string {
  const serving = views.filter((view) => view.agentName === agentName);
  if (serving.length === 0) return `no worker serves ${agentName}`;
  const declined = serving.filter(excluded);
  if (declined.length === serving.length) {
    return `offered to ${plural(declined.length, "worker")}, all declined`;
  }
  const full = serving.filter((view) => !excluded(view));
  const reasons = [...new Set(full.map(whyFull))].slice(0, 3).join("; ");
  return `${plural(full.length, "worker")}, all full (${reasons})`;
}

function whyFull(view: Candidate): string {
  if (view.status === "draining" || view.status === "offline") return view.status;
  if (view.status === "starting") return "starting";
  if (view.loadThreshold !== undefined && view.load >= view.loadThreshold) {
    return `load ${view.load.toFixed(2)} ≥ ${view.loadThreshold}`;
  }
  return `${Math.max(view.jobCount, view.assigned) + view.inflight} of ${view.maxProcesses} jobs`;
}

const plural = (n: number, noun: string) => `${n} ${noun}${n === 1 ? "" : "s"}`;
