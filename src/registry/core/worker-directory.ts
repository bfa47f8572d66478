import type { SessionEmitted, WorkerReportedStatus } from "../../../machines/registry/session.ts";
import type { RegisterRequest } from "../../protocol/registry.ts";
import { viewOf } from "./placement.ts";
import type { RegistryDeps } from "./ports.ts";
import { WorkerLink } from "./worker-link.ts";

export interface DirectoryHooks {
  /** The worker may take more work than before (available again, an offer or a job let go). */
  capacityGrew(link: WorkerLink): void;
  /** The worker is gone for good: its jobs settle. */
  gone(link: WorkerLink, reason: string): void;
  /** The worker registered, or came back on a new connection: what it reports it runs. */
  registered(link: WorkerLink, message: RegisterRequest): void;
}

/**
 * Every connection and every worker: a session per connection from the moment it is accepted (so the
 * registration deadline is the session's), merged into the worker's existing session when a worker
 * comes back under its id. Also the liveness sweep, and the floor that keeps availability epochs
 * rising for a worker id across its sessions.
 */
export class WorkerDirectory {
  readonly #byConnection = new Map<string, WorkerLink>();
  readonly #byWorker = new Map<string, WorkerLink>();
  /** Above every availability epoch seen here or on other nodes. */
  #epochFloor = 0;
  #closing = false;

  constructor(
    private readonly deps: RegistryDeps,
    private readonly hooks: DirectoryHooks,
  ) {}

  /** Registered workers, connected or waiting for a reconnect. */
  workers(): IterableIterator<WorkerLink> {
    return this.#byWorker.values();
  }

  get size(): number {
    return this.#byWorker.size;
  }

  get(workerId: string): WorkerLink | undefined {
    return this.#byWorker.get(workerId);
  }

  byConnection(connectionId: string): WorkerLink | undefined {
    return this.#byConnection.get(connectionId);
  }

  /** An epoch seen elsewhere (another node's view of a worker): new sessions start above it. */
  observeEpoch(epoch: number): void {
    if (epoch > this.#epochFloor) this.#epochFloor = epoch;
  }

  accepted(connectionId: string): void {
    if (this.#closing) return;
    const link = new WorkerLink(connectionId, this.deps.timing, this.deps.clock, this.#nextFloor(), this.deps.inspect);
    this.#byConnection.set(connectionId, link);
    this.#wire(link);
    link.session.start();
  }

  /**
   * A `register` frame on a connection not registered yet. The same worker coming back (its session
   * still waits for it) keeps its session and jobs on the new connection; otherwise this
   * connection's session becomes the worker's, under the id it asked for when that id is free.
   */
  register(connectionId: string, message: RegisterRequest): WorkerLink | undefined {
    const pending = this.#byConnection.get(connectionId);
    if (!pending) return undefined;
    const existing = message.worker_id ? this.#byWorker.get(message.worker_id) : undefined;
    let link: WorkerLink;
    if (existing?.active) {
      pending.session.send({ type: "merged" });
      const old = existing.connectionId;
      existing.connectionId = connectionId;
      existing.lastHeardAt = this.deps.clock.now();
      this.#byConnection.set(connectionId, existing);
      if (old !== connectionId && this.#byConnection.get(old) === existing) {
        this.#byConnection.delete(old);
        this.deps.transport.close(old, 4000, "replaced by a new connection");
      }
      existing.session.send({ type: "reattached" });
      link = existing;
      this.deps.logger.info({ workerId: link.workerId }, "worker reconnected");
    } else {
      const requested = message.worker_id;
      const workerId = requested && !this.#byWorker.has(requested) ? requested : this.deps.newId("worker");
      pending.session.send({
        type: "registered",
        workerId,
        agentName: message.agent_name,
        maxProcesses: message.max_processes,
        loadThreshold: message.load_threshold,
      });
      this.#byWorker.set(workerId, pending);
      link = pending;
      this.deps.logger.info(
        { workerId, agentName: message.agent_name, maxProcesses: message.max_processes },
        "worker registered",
      );
    }
    this.hooks.registered(link, message);
    return link;
  }

  /** Any frame from a registered worker: it is alive. */
  heard(link: WorkerLink): void {
    link.lastHeardAt = this.deps.clock.now();
    if (link.awaitingPong) link.session.send({ type: "pong" });
  }

  closed(connectionId: string, departed: boolean): void {
    const link = this.#byConnection.get(connectionId);
    this.#byConnection.delete(connectionId);
    if (link && link.connectionId === connectionId) link.session.send({ type: "socket_closed", departed });
  }

  /**
   * Pings every connected worker not heard from for a ping interval: one loop over all workers
   * instead of a timer per session, and a worker whose frames keep coming costs a comparison.
   */
  sweep(): void {
    if (this.#closing) return;
    const now = this.deps.clock.now();
    for (const link of this.#byWorker.values()) {
      // The time first: for a worker that talks, this comparison is all the sweep costs.
      if (now - link.lastHeardAt < this.deps.timing.pingIntervalMs || !link.connected || link.awaitingPong) continue;
      if (this.deps.transport.send(link.connectionId, { type: "ping", timestamp: now })) {
        link.session.send({ type: "ping_sent" });
      }
    }
  }

  /** Stops every session quietly: nothing is settled, records keep their last status. */
  close(): void {
    this.#closing = true;
    for (const link of new Set([...this.#byConnection.values(), ...this.#byWorker.values()])) link.session.stop();
    this.#byConnection.clear();
    this.#byWorker.clear();
  }

  /** Every epoch a session reaches is observed (availability_changed, or `status` below), so no scan. */
  #nextFloor(): number {
    return ++this.#epochFloor;
  }

  /** A status report from a registered worker; its session may move its epoch on (fewer jobs). */
  status(link: WorkerLink, report: { status: WorkerReportedStatus; load: number; jobCount: number }): void {
    link.session.send({ type: "status", ...report });
    this.observeEpoch(link.context.epoch);
  }

  #wire(link: WorkerLink): void {
    link.session.on("availability_changed", (event: Extract<SessionEmitted, { type: "availability_changed" }>) => {
      this.observeEpoch(event.epoch);
      this.hooks.capacityGrew(link);
    });
    link.session.on("gone", ({ reason }) => {
      if (this.#byWorker.get(link.workerId) === link) {
        this.#byWorker.delete(link.workerId);
        if (this.#byConnection.get(link.connectionId) === link) this.#byConnection.delete(link.connectionId);
        this.deps.transport.close(link.connectionId, 4001, `session ended: ${reason}`);
        this.hooks.gone(link, reason);
        return;
      }
      // A connection that never registered: nothing to settle.
      if (this.#byConnection.get(link.connectionId) === link) this.#byConnection.delete(link.connectionId);
      this.deps.transport.close(link.connectionId, 4008, reason);
    });
  }

  /** What another node needs to pick this worker. */
  view(link: WorkerLink, nodeId: string) {
    return {
      ...viewOf(link),
      nodeId,
      state: link.state,
      status: link.context.reportedStatus,
      jobs: [...link.jobs],
      at: this.deps.clock.now(),
    };
  }
}
