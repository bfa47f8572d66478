import type { WebSocket } from "ws";
import { type Actor, createActor } from "xstate";
import { sessionMachine } from "../../machines/registry/session.ts";
import type { Logger } from "../observability/logger.ts";
import type { RegistryMessage, SlotSummary } from "../protocol/registry.ts";
import type { RegistryTiming } from "./timing.ts";

/**
 * One worker known to the registry: its session actor (liveness, capacity) and its current socket.
 * The socket changes when the worker reconnects; the session and its jobs stay.
 */
export class WorkerLink {
  readonly session: Actor<typeof sessionMachine>;
  socket: WebSocket | undefined;
  inflight = 0;
  /** The worker's processes as of its latest status update (for dashboards only). */
  slots: SlotSummary[] = [];
  /** performance.now() of the last frame from this worker: any frame shows it is alive. */
  lastHeardAt = performance.now();
  /** Bumped each time the worker becomes available again, so a worker that once said no gets asked again. */
  availabilityEpoch = 0;
  readonly jobs = new Set<string>();

  constructor(
    readonly workerId: string,
    socket: WebSocket,
    timing: RegistryTiming,
    private readonly logger: Logger,
  ) {
    this.socket = socket;
    this.session = createActor(sessionMachine, { id: `session.${workerId}`, input: { workerId, timing } });
  }

  get context() {
    return this.session.getSnapshot().context;
  }

  get available(): boolean {
    const snapshot = this.session.getSnapshot();
    return snapshot.status === "active" && snapshot.matches({ live: { capacity: "available" } });
  }

  /** A ping went out and nothing has been heard since (the session's liveness says so). */
  get awaitingPong(): boolean {
    const snapshot = this.session.getSnapshot();
    return snapshot.status === "active" && snapshot.matches({ live: { liveness: "awaitingPong" } });
  }

  get state(): string {
    const value = this.session.getSnapshot().value;
    if (typeof value === "string") return value;
    const live = (value as { live?: { capacity?: string } }).live;
    return live?.capacity ? `live.${live.capacity}` : JSON.stringify(value);
  }

  send(message: RegistryMessage): boolean {
    const socket = this.socket;
    if (!socket || socket.readyState !== socket.OPEN) return false;
    socket.send(JSON.stringify(message), (error) => {
      if (error) this.logger.debug({ workerId: this.workerId, err: error.message }, "send to worker failed");
    });
    return true;
  }
}
