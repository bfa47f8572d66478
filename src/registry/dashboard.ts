import type { IncomingMessage, ServerResponse } from "node:http";
import { z } from "zod";
import { bearerToken } from "../auth/tokens.ts";
import { HttpError, send } from "../http/respond.ts";
import { ACTOR_EVENTS_PATH, type ActorEventLog } from "../observability/actor-events.ts";
import { stateText } from "../observability/state-text.ts";
import type { DashboardSnapshot } from "../web/routes.ts";
import type { RegistryCore } from "./core/registry-core.ts";

/** How many job records the registry's dashboard shows (newest first). */
const DASHBOARD_JOBS = 100;

/** Actor ids are `session.<connection id>` and `dispatch.<job id>`; anything else is not ours. */
const actorQuery = z.object({
  actor: z
    .string({ error: "actor is required" })
    .max(300, "actor is too long")
    .regex(/^(session|dispatch)\.[^\s]+$/, "actor must be session.<id> or dispatch.<id>"),
});

/**
 * The registry's view for the dashboard: every worker with its session machine's state, and the
 * processes each reported with its latest status update (slot machine state, pid, memory), and the
 * newest job records, each live one with its dispatch machine's state. `actor` names the machine's
 * actor for its recent events; a job whose dispatch has ended but whose events are still kept has
 * the state it ended in as `endedState`.
 */
export async function registryDashboard(core: RegistryCore): Promise<DashboardSnapshot> {
  const workers = [...core.directory.workers()].map((link) => ({
    id: link.workerId,
    agentName: link.context.agentName,
    machine: "session",
    actor: link.session.id,
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
    const actor = `dispatch.${record.id}`;
    const endedState = live ? undefined : core.actorEvents.lastState(actor);
    return {
      id: record.id,
      agentName: record.agentName,
      roomId: record.roomId,
      status: record.status,
      reason: record.reason,
      workerId: record.workerId,
      ...(live ? { machine: "dispatch", actor, state: stateText(live.actor.getSnapshot().value) } : {}),
      ...(endedState !== undefined ? { machine: "dispatch", actor, endedState } : {}),
    };
  });
  return { workers, slots, jobs };
}

/**
 * `GET /dashboard/actor-events?actor=<id>`: one session's or dispatch's recent events (event types
 * and states, never payloads) as JSON, for the dashboard's list beside the diagram; `known: false`
 * with no events for an actor this node has not seen or no longer keeps. The same token
 * as the dashboard's stream (a dispatcher's, as `?token=` or a bearer header). Returns false for
 * other paths.
 */
export function createActorEventsRoute(log: ActorEventLog, authorize: (token: string | undefined) => Promise<void>) {
  return async (req: IncomingMessage, res: ServerResponse, url: URL): Promise<boolean> => {
    if (url.pathname !== ACTOR_EVENTS_PATH) return false;
    if (req.method !== "GET" && req.method !== "HEAD") throw new HttpError(405, "use GET");
    try {
      await authorize(url.searchParams.get("token") ?? bearerToken(req.headers.authorization));
    } catch (error) {
      throw new HttpError(401, (error as Error).message);
    }
    const query = actorQuery.safeParse({ actor: url.searchParams.get("actor") ?? undefined });
    if (!query.success) throw new HttpError(400, query.error.issues[0]?.message ?? "bad actor");
    // An actor this node never saw, or has forgotten, has no events: not an error for a page that polls.
    const recent = log.recent(query.data.actor);
    send(
      res,
      200,
      recent ? { ...recent, known: true } : { actor: query.data.actor, known: false, ended: false, events: [] },
    );
    return true;
  };
}
