import { stateText } from "../observability/state-text.ts";
import type { DashboardSnapshot } from "../web/routes.ts";
import type { RegistryCore } from "./core/registry-core.ts";

/** How many job records the registry's dashboard shows (newest first). */
const DASHBOARD_JOBS = 100;

/**
 * The registry's view for the dashboard: every worker with its session machine's state, and the
 * processes each reported with its latest status update (slot machine state, pid, memory), and the
 * newest job records, each live one with its dispatch machine's state.
 */
export async function registryDashboard(core: RegistryCore): Promise<DashboardSnapshot> {
  const workers = [...core.directory.workers()].map((link) => ({
    id: link.workerId,
    agentName: link.context.agentName,
    machine: "session",
    state: stateText(link.session.getSnapshot().value),
    status: link.connected ? link.context.reportedStatus : "disconnected",
    load: link.context.load,
    jobCount: link.context.jobCount,
    maxProcesses: link.context.maxProcesses,
  }));
  const slots = [...core.directory.workers()].flatMap((link) =>
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
    const live = core.dispatcher.get(record.id);
    return {
      id: record.id,
      agentName: record.agentName,
      roomId: record.roomId,
      status: record.status,
      reason: record.reason,
      workerId: record.workerId,
      ...(live ? { machine: "dispatch", state: stateText(live.actor.getSnapshot().value) } : {}),
    };
  });
  return { workers, slots, jobs };
}
