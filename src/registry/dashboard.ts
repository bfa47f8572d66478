import type { DashboardSnapshot } from "../web/routes.ts";
import type { RegistryCore } from "./registry.ts";

/** How many job records the registry's dashboard shows (newest first). */
const DASHBOARD_JOBS = 100;

/** A state value as one string of dotted paths ("a.b | c"), as the dashboard marks diagrams with. */
function statePaths(value: unknown, prefix = ""): string[] {
  if (typeof value === "string") return [prefix ? `${prefix}.${value}` : value];
  if (value && typeof value === "object") {
    return Object.entries(value).flatMap(([key, child]) => statePaths(child, prefix ? `${prefix}.${key}` : key));
  }
  return [];
}

/**
 * The registry's view for the dashboard: every worker with its session machine's state, and the
 * processes each reported with its latest status update (slot machine state, pid, memory), and the
 * newest job records, each live one with its dispatch machine's state.
 */
export async function registryDashboard(core: RegistryCore): Promise<DashboardSnapshot> {
  const workers = [...core.workers.values()].map((link) => ({
    id: link.workerId,
    agentName: link.context.agentName,
    machine: "session",
    state: statePaths(link.session.getSnapshot().value).join(" | "),
    status: link.socket ? (link.context.reportedStatus ?? "available") : "disconnected",
    load: link.context.load,
    jobCount: link.context.jobCount,
    maxProcesses: link.context.maxProcesses,
  }));
  const slots = [...core.workers.values()].flatMap((link) =>
    link.slots.map((slot) => ({
      workerId: link.workerId,
      id: slot.id,
      state: slot.state,
      pid: slot.pid ?? null,
      memoryMb: slot.memory_mb ?? null,
      jobId: slot.job_id ?? null,
    })),
  );
  const records = await core.store.list({ limit: DASHBOARD_JOBS });
  const jobs = records.map((record) => {
    const live = core.dispatches.get(record.id);
    return {
      id: record.id,
      agentName: record.agentName,
      roomId: record.roomId,
      status: record.status,
      reason: record.reason,
      workerId: record.workerId,
      ...(live ? { machine: "dispatch", state: statePaths(live.actor.getSnapshot().value).join(" | ") } : {}),
    };
  });
  return { workers, slots, jobs };
}
