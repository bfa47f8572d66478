import type { InspectionEvent } from "xstate";
import type { SimContext } from "./context.ts";

/**
 * For a traced run: an XState inspector that writes each actor's state when it changes, with the
 * event that changed it, so the trace shows the machines' states step by step.
 */
export function traceTransitions(sim: SimContext, owner: string, skip: (actorId: string) => boolean = () => false) {
  const last = new WeakMap<object, string>();
  return (event: InspectionEvent) => {
    if (event.type !== "@xstate.snapshot") return;
    const id = (event.actorRef as { id?: string }).id ?? "actor";
    if (skip(id)) return;
    const value = (event.snapshot as { value?: unknown; status?: string }).value;
    if (value === undefined) return;
    const text = JSON.stringify(value);
    if (last.get(event.actorRef) === text) return;
    last.set(event.actorRef, text);
    sim.trace(owner, `  ${id}: ${text} ← ${event.event.type}`);
  };
}

/**
 * Watches the dispatch machines of a node for the moment one gives up on its worker and goes back to
 * `unassigned` (to be offered again), and reports the worker and the event that made it.
 */
export function watchGiveUps(onGiveUp: (jobId: string, workerId: string, cause: string) => void) {
  const boundTo = new WeakMap<object, string>();
  return (event: InspectionEvent) => {
    if (event.type !== "@xstate.snapshot") return;
    const id = (event.actorRef as { id?: string }).id;
    if (!id?.startsWith("dispatch.")) return;
    const snapshot = event.snapshot as { value?: unknown; context?: { workerId?: string | null } };
    const value = snapshot.value;
    if (typeof value === "object" && value !== null && "bound" in value) {
      if (snapshot.context?.workerId) boundTo.set(event.actorRef, snapshot.context.workerId);
      return;
    }
    const workerId = boundTo.get(event.actorRef);
    if (workerId === undefined) return;
    boundTo.delete(event.actorRef);
    if (typeof value === "object" && value !== null && "unassigned" in value) {
      onGiveUp(id.slice("dispatch.".length), workerId, event.event.type);
    }
  };
}
