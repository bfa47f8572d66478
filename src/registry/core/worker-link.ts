import { type Actor, createActor } from "xstate";
import { sessionMachine } from "../../../machines/registry/session.ts";
import type { InspectionObserver } from "../../observability/inspect.ts";
import { type JobInventoryEntry, MAX_INVENTORY_ENTRIES, type SlotSummary } from "../../protocol/registry.ts";
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
  /** clock.now() of the last pong that renewed the worker's leases (−∞: none yet). */
  lastLeaseAt = Number.NEGATIVE_INFINITY;
  /** Jobs bound to this worker: kept by the dispatch machines' bind/unbind, and only there. */
  readonly jobs = new Set<string>();
  /**
   * What the worker itself said of its jobs, on this connection's registration (its inventory) and
   * in its reports since: a job taken on without its dispatch (from a dead node, or in a race of
   * reports) is resumed as running here only if the worker said it runs it. Bounded like an
   * inventory: the oldest ended entries go first.
   */
  readonly #reported = new Map<string, JobInventoryEntry>();

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

  /** A registration (a new connection, maybe after a reconnect) says afresh what the worker has. */
  takeInventory(inventory: JobInventoryEntry[]): void {
    this.#reported.clear();
    for (const entry of inventory) this.heardOfJob(entry);
  }

  /** The worker said this of a job (an inventory entry, or a job_update without its error details). */
  heardOfJob(report: JobInventoryEntry): void {
    const { job_id: jobId, status, reason, exit_code, signal } = report;
    this.#reported.delete(jobId);
    if (this.#reported.size >= MAX_INVENTORY_ENTRIES) {
      const oldestEnded = [...this.#reported].find(([, said]) => said.status !== "running");
      if (!oldestEnded) return;
      this.#reported.delete(oldestEnded[0]);
    }
    this.#reported.set(jobId, {
      job_id: jobId,
      status,
      ...(reason !== undefined ? { reason } : {}),
      ...(exit_code !== undefined ? { exit_code } : {}),
      ...(signal !== undefined ? { signal } : {}),
    });
  }

  /** What the worker last said of the job on this connection, if anything. */
  reported(jobId: string): JobInventoryEntry | undefined {
    return this.#reported.get(jobId);
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
