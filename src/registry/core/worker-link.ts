import { type Actor, createActor } from "xstate";
import { sessionMachine } from "../../../machines/registry/session.ts";
import type { InspectionObserver } from "../../observability/inspect.ts";
import type { SlotSummary } from "../../protocol/registry.ts";
import type { RegistryTiming } from "../timing.ts";
import type { RegistryClock } from "./ports.ts";

/**
 * One worker known to the registry: its session actor (registration, liveness, capacity, offers out,
 * availability epoch) and the connection it speaks on now. The session decides every lifecycle
 * question; the link only remembers what the machine does not model (the latest connection id, the
 * time of the last frame, the jobs bound to it, the slots it reported for dashboards).
 */
export class WorkerLink {
  readonly session: Actor<typeof sessionMachine>;
  /** The connection the worker speaks on now (the session's state says whether it is open). */
  connectionId: string;
  /** The worker's processes as of its latest status update (for dashboards only). */
  slots: SlotSummary[] = [];
  /** clock.now() of the last frame: any frame shows the worker is alive. */
  lastHeardAt: number;
  /** Jobs bound to this worker: kept by the dispatch machines' bind/unbind, and only there. */
  readonly jobs = new Set<string>();

  constructor(
    connectionId: string,
    timing: RegistryTiming,
    clock: RegistryClock,
    epochFloor: number,
    inspect?: InspectionObserver,
  ) {
    this.connectionId = connectionId;
    this.lastHeardAt = clock.now();
    this.session = createActor(sessionMachine, {
      id: `session.${connectionId}`,
      clock,
      input: { workerId: connectionId, timing, epochFloor },
      ...(inspect ? { inspect } : {}),
    });
  }

  get context() {
    return this.session.getSnapshot().context;
  }

  get workerId(): string {
    return this.context.workerId;
  }

  // These read the state value directly: they run for every frame and, in the liveness sweep and
  // placement, for every worker, where `matches()` (which resolves the value against the machine)
  // was measurable at 10,000 workers.

  get active(): boolean {
    return this.session.getSnapshot().status === "active";
  }

  get registered(): boolean {
    const snapshot = this.session.getSnapshot();
    return snapshot.status === "active" && snapshot.value !== "registering";
  }

  /** Registered and its connection open (not waiting for a reconnect). */
  get connected(): boolean {
    return this.#live() !== undefined;
  }

  get available(): boolean {
    return this.#live()?.capacity === "available";
  }

  /** A ping went out and nothing has been heard since. */
  get awaitingPong(): boolean {
    return this.#live()?.liveness === "awaitingPong";
  }

  /** The `live` region values while the session is live. */
  #live(): { capacity?: string; liveness?: string } | undefined {
    const snapshot = this.session.getSnapshot();
    if (snapshot.status !== "active" || typeof snapshot.value !== "object") return undefined;
    return (snapshot.value as { live?: { capacity?: string; liveness?: string } }).live;
  }

  get state(): string {
    const value = this.session.getSnapshot().value;
    if (typeof value === "string") return value;
    const live = (value as { live?: { capacity?: string } }).live;
    return live?.capacity ? `live.${live.capacity}` : JSON.stringify(value);
  }
}
