import { ActorEventLog } from "../../observability/actor-events.ts";
import { combineInspectors } from "../../observability/inspect.ts";
import { DispatchTrace } from "../../observability/tracing/dispatch-trace.ts";
import type { WorkerMessage } from "../../protocol/registry.ts";
import { PROTOCOL_VERSION } from "../../protocol/registry.ts";
import { rejectionCause } from "../autoscaling-metrics.ts";
import type { ClusterHost } from "../cluster/cluster.ts";
import type { NodeMessage, WorkerView } from "../cluster/messages.ts";
import { spareOf } from "../picker.ts";
import { isFinal, type JobRecord } from "../store.ts";
import { Dispatcher, type DispatchStart } from "./dispatcher.ts";
import { clusterNode, type NodeStrategy, singleNode } from "./node-strategy.ts";
import type { DispatchRequest, RegistryDeps } from "./ports.ts";
import { Reconciler } from "./reconcile.ts";
import { retryWrite } from "./retry-write.ts";
import { WorkerDirectory } from "./worker-directory.ts";
import type { WorkerLink } from "./worker-link.ts";

/** A worker as GET /v1/workers and the CLI list it. */
export interface WorkerSummary {
  id: string;
  agentName: string;
  state: string;
  connected: boolean;
  status: string;
  load: number;
  jobCount: number;
  maxProcesses: number;
  jobs: string[];
  node?: string;
}

/**
 * The registry's core, without I/O of its own: connections and frames come in from the WebSocket
 * gateway, dispatches and cancels from the HTTP API, node messages from the cluster bus; what it
 * does goes out through the transport, the store and the bus in `deps`. The worker directory holds
 * the sessions, the dispatcher the dispatch machines, reconcile what workers report, and the node
 * strategy what differs between one node and a cluster.
 */
export class RegistryCore implements ClusterHost {
  readonly directory: WorkerDirectory;
  readonly dispatcher: Dispatcher;
  /** Recent events of every session and dispatch actor, for the dashboard. */
  readonly actorEvents: ActorEventLog;
  readonly #reconciler: Reconciler;
  readonly #node: NodeStrategy;
  readonly #dirtyViews = new Set<WorkerLink>();
  #closing = false;

  constructor(readonly deps: RegistryDeps) {
    this.#node = deps.bus ? clusterNode(deps.bus, deps) : singleNode();
    const persist = (work: Promise<unknown>) => this.#persist(work);
    this.actorEvents = new ActorEventLog(() => deps.clock.now());
    // The actors' makers get the dashboard's recorder and the caller's observer as one `inspect`.
    const inspect = combineInspectors(deps.logger, this.actorEvents.observer, deps.inspect);
    const actorDeps: RegistryDeps = { ...deps, ...(inspect ? { inspect } : {}) };
    this.directory = new WorkerDirectory(actorDeps, {
      capacityGrew: (link) => this.#capacityGrew(link),
      gone: (link, reason) => this.#workerGone(link, reason),
      registered: (link, message) => {
        deps.transport.send(link.connectionId, {
          type: "register",
          success: true,
          worker_id: link.workerId,
          protocol_version: PROTOCOL_VERSION,
          lease_ms: deps.timing.leaseMs,
        });
        this.#reconciler.inventory(link, message.jobs);
        this.#viewChanged(link);
      },
    });
    this.dispatcher = new Dispatcher(actorDeps, this.directory, this.#node, persist);
    this.dispatcher.onCapacity = (workerId) => {
      const link = this.directory.get(workerId);
      if (link) this.#capacityGrew(link);
    };
    this.dispatcher.onViewChanged = (workerId) => {
      const link = this.directory.get(workerId);
      if (link) this.#viewChanged(link);
    };
    this.#reconciler = new Reconciler(deps, this.dispatcher, this.#node, persist);
  }

  get store() {
    return this.deps.store;
  }

  // ---------------------------------------------------------------- from the gateway

  connectionOpened(connectionId: string): void {
    if (this.#closing) {
      this.deps.transport.close(connectionId, 1001, "registry shutting down");
      return;
    }
    this.directory.accepted(connectionId);
  }

  /** The connection closed; `departed` when the worker closed it normally (it drained and left). */
  connectionClosed(connectionId: string, departed: boolean): void {
    if (!this.#closing) this.directory.closed(connectionId, departed);
  }

  /** A frame from a worker, already parsed against the protocol. */
  frame(connectionId: string, message: WorkerMessage): void {
    // A closing registry has stopped its sessions: nothing a worker says can be acted on any more.
    if (this.#closing) return;
    const link = this.directory.byConnection(connectionId);
    if (message.type === "register") {
      if (link?.registered) {
        this.#sendError(connectionId, "already registered on this connection", "already_registered");
        return;
      }
      this.directory.register(connectionId, message);
      return;
    }
    if (!link?.registered) {
      this.#sendError(connectionId, "register first", "not_registered");
      return;
    }
    // A connection the worker has since replaced speaks for nobody.
    if (link.connectionId !== connectionId) return;
    this.directory.heard(link);
    this.#onWorkerMessage(link, message);
  }

  /** Pings quiet workers; the gateway calls it on a schedule (a fifth of the ping interval, at most 1 s). */
  sweep(): void {
    this.directory.sweep();
  }

  #sendError(connectionId: string, message: string, code: string): void {
    this.deps.metrics.protocolErrors.inc({ code });
    this.deps.transport.send(connectionId, { type: "error", message, code });
  }

  #onWorkerMessage(link: WorkerLink, message: WorkerMessage): void {
    switch (message.type) {
      case "status_update": {
        if (message.slots) link.slots = message.slots;
        const before = link.context.jobCount;
        this.directory.status(link, { status: message.status, load: message.load, jobCount: message.job_count });
        // Fewer jobs than it had: a process is free (the session moved the worker's epoch on).
        if (message.job_count < before) this.#capacityGrew(link);
        break;
      }
      case "availability_response":
        // Counted by the dispatcher when the offer ends (troupe_registry_offers_total), answered or not.
        if (!this.dispatcher.has(message.job_id)) break;
        this.dispatcher.send(message.job_id, {
          type: "answer",
          workerId: link.workerId,
          available: message.available,
          ...(message.error ? { error: message.error } : {}),
        });
        break;
      case "job_update": {
        link.heardOfJob(message);
        const update = {
          type: "job_update" as const,
          workerId: link.workerId,
          status: message.status,
          ...(message.reason ? { reason: message.reason } : {}),
          ...(message.error ? { error: message.error } : {}),
          ...(message.exit_code !== undefined ? { exitCode: message.exit_code } : {}),
          ...(message.signal !== undefined ? { signal: message.signal } : {}),
        };
        if (!this.dispatcher.send(message.job_id, update)) this.#reconciler.unknownJobUpdate(link, message);
        break;
      }
      case "ping":
        this.deps.transport.send(link.connectionId, {
          type: "pong",
          timestamp: message.timestamp,
          ...this.#leasesFor(link),
        });
        break;
      case "pong":
      case "register":
        // Any frame counts as the pong (see `heard`); a second register was refused above.
        break;
    }
  }

  // ---------------------------------------------------------------- dispatches

  async dispatch(request: DispatchRequest): Promise<{ record: JobRecord; created: boolean }> {
    const now = this.deps.clock.now();
    const id = this.deps.newId("job");
    const roomId = request.roomId ?? this.deps.rooms?.newRoomId(id);
    const room = roomId ? await this.deps.rooms?.forAgent(roomId, id, request.agentName) : undefined;
    // The record keeps the dispatch span's context: a node that takes the job over continues the trace.
    const trace = DispatchTrace.open(id, request.agentName, request);
    const record: JobRecord = {
      id,
      agentName: request.agentName,
      metadata: request.metadata ?? {},
      roomOptions: request.roomOptions ?? {},
      redispatch: request.redispatch ?? false,
      status: "pending",
      attempts: 0,
      createdAt: now,
      updatedAt: now,
      ...(roomId ? { roomId } : {}),
      ...(request.maxDuration !== undefined ? { maxDuration: request.maxDuration } : {}),
      ...(request.idempotencyKey ? { idempotencyKey: request.idempotencyKey } : {}),
      ...(this.#node.nodeId ? { node: this.#node.nodeId } : {}),
      ...trace.carrier,
    };
    const result = await this.deps.store.create(record);
    // A repeated idempotency key: the span opened here is dropped unended, so it is never exported.
    if (result.created) {
      this.#start(result.record, room ? { room, trace } : { trace });
    }
    return result;
  }

  /**
   * Starts a dispatch on this node and counts its rejection, should it come to that, by agent and
   * cause: the autoscaling signal of demand no worker met. (The reconciler's adopted jobs start
   * running on their worker and are never redispatched, so they cannot be rejected.)
   */
  #start(record: JobRecord, start: DispatchStart = {}): void {
    const live = this.dispatcher.start(record, start);
    live?.actor.on("finished", ({ output }) => {
      if (output.status !== "rejected") return;
      const agent = this.deps.metrics.agentLabels.of(record.agentName, this.servesAgent(record.agentName));
      this.deps.metrics.rejections.inc({ agent, cause: rejectionCause(output.reason) });
    });
  }

  /** Some worker, here or on another live node, serves this agent. */
  servesAgent(agentName: string): boolean {
    for (const link of this.directory.workers()) if (link.context.agentName === agentName) return true;
    return this.deps.bus?.remoteViews().some((view) => view.agentName === agentName) ?? false;
  }

  async cancel(jobId: string, reason = "cancelled by request"): Promise<JobRecord | undefined> {
    const record = await this.deps.store.get(jobId);
    const live = this.dispatcher.get(jobId);
    if (live && (!record || this.#node.owns(record))) {
      live.actor.send({ type: "cancel", reason });
      return this.deps.store.get(jobId);
    }
    // The job moved to another node and the hand-over has not reached this one yet: that node cancels.
    if (live) live.actor.send({ type: "taken_over" });
    if (!record || isFinal(record.status)) return record;
    if (this.#node.cancelElsewhere(record, reason)) return record;
    // Nobody runs a dispatch for it (its node is gone, or it was never started): cancelled here.
    if (!record.workerId) return this.deps.store.update(jobId, { status: "cancelled", reason }, record.node);
    return record;
  }

  // ---------------------------------------------------------------- the cluster

  /** Resolves once the message is handled; rejects when the store failed it (it is read again). */
  async onNodeMessage(message: NodeMessage): Promise<void> {
    if (this.#closing) return;
    switch (message.type) {
      case "dispatch": {
        const record = await this.deps.store.get(message.jobId);
        const mine = record && !isFinal(record.status) && record.node === this.#node.nodeId;
        if (!mine || this.#closing || this.dispatcher.handingOn(record.id, message.hops)) return;
        this.#start(record, {
          origin: "forwarded",
          ...(message.prefer ? { prefer: message.prefer } : {}),
          ...(message.room ? { room: message.room } : {}),
          hops: message.hops,
          tried: Object.fromEntries(message.tried),
        });
        return;
      }
      case "cancel":
        await this.cancel(message.jobId, message.reason);
        return;
      case "handover":
        this.dispatcher.send(message.jobId, { type: "taken_over" });
        return;
      case "adopt": {
        const nodeId = this.#node.nodeId;
        if (!this.directory.get(message.workerId) || !nodeId || this.dispatcher.has(message.jobId)) return;
        const claimed = await this.deps.store.claim(message.jobId, message.from, nodeId);
        if (!claimed || this.#closing) return;
        this.#node.tookOver(message.from, message.jobId);
        this.resume(claimed, message.workerId);
        return;
      }
    }
  }

  /** Runs this node's dispatch for a record it has just claimed from a dead node. */
  resume(record: JobRecord, runningOn?: string, fencedFrom?: string): void {
    if (this.#closing || this.dispatcher.has(record.id)) return;
    if (runningOn) {
      this.#resumeOnWorker(record, runningOn);
      return;
    }
    this.deps.logger.info({ jobId: record.id }, "dispatching a job again that a dead node had not placed");
    const rooms = this.deps.rooms;
    if (record.roomId && rooms) {
      this.#persist(
        rooms.forAgent(record.roomId, record.id, record.agentName).then((room) => {
          if (!this.#closing) {
            this.#start(record, {
              origin: "resumed",
              room,
              ...(fencedFrom ? { fencedFrom } : {}),
            } satisfies DispatchStart);
          }
        }),
      );
      return;
    }
    this.#start(record, { origin: "resumed", ...(fencedFrom ? { fencedFrom } : {}) });
  }

  /**
   * A job recorded as bound to a worker connected here, taken on without its dispatch (a dead
   * node's), checked against what the worker said of it since it registered: its inventory lists
   * its running and last 100 ended jobs, but not one it is still starting.
   */
  #resumeOnWorker(record: JobRecord, workerId: string): void {
    const said = this.directory.get(workerId)?.reported(record.id);
    if (said && said.status !== "running") {
      // It reported the job's end here, and that report did not reach the record (the dispatch that
      // heard it lost the record to another node): the worker's word is written now.
      const { status, reason, exit_code: exitCode, signal } = said;
      const end = {
        status,
        ...(reason !== undefined ? { reason } : {}),
        ...(exitCode !== undefined ? { exitCode } : {}),
        ...(signal !== undefined ? { signal } : {}),
      };
      this.#persist(this.deps.store.update(record.id, end, this.#node.nodeId, workerId));
      return;
    }
    if (said?.status === "running") {
      this.deps.logger.info({ jobId: record.id, workerId }, "took over a running job from a dead node");
      this.#start(record, { adoptedBy: workerId });
      return;
    }
    if (record.status === "assigned") {
      // It may be starting the job, or never have got the assignment: the running deadline decides.
      this.deps.logger.info({ jobId: record.id, workerId }, "took over an assigned job from a dead node");
      this.#start(record, { adoptedBy: workerId, adoptedAs: "assigned" });
      return;
    }
    // It said it ran the job (the record says running) and no longer does: it ended unseen.
    const reason = "its worker no longer runs it and its end was not heard";
    this.deps.logger.warn({ jobId: record.id, workerId, reason }, "job not on the worker its record names");
    const patch = record.redispatch
      ? { status: "pending" as const, reason: `${reason}; dispatched again` }
      : { status: "lost" as const, reason };
    this.#persist(
      this.deps.store.update(record.id, patch, this.#node.nodeId).then((after) => {
        if (after?.status === "pending" && this.#node.owns(after)) this.resume(after);
      }),
    );
  }

  /**
   * Redis restarted without its data (this node found itself missing from the members it renews):
   * the records of the dispatches it runs, and of the jobs it handed to other nodes that may not
   * have read them yet, are written again.
   */
  async recoverLostRecords(): Promise<void> {
    if (this.#closing) return;
    this.deps.logger.warn({ nodeId: this.#node.nodeId }, "Redis lost its data: writing back the jobs this node holds");
    await this.dispatcher.writeBackLost();
    // After a grace for the nodes they went to, and until it has worked: meanwhile this node goes on.
    this.#persist(
      retryWrite({
        write: () => this.#node.recoverHandOffs(),
        clock: this.deps.clock,
        stopped: () => this.#closing,
        onRefused: (error, retryInMs) =>
          this.deps.logger.warn({ err: error.message, retryInMs }, "settling hand-offs Redis lost failed; retrying"),
      }),
    );
  }

  pruneHandOffs(): Promise<void> {
    return this.#node.pruneHandOffs();
  }

  hasWorker(workerId: string): boolean {
    return this.directory.get(workerId)?.active === true;
  }

  hasDispatch(jobId: string): boolean {
    return this.dispatcher.has(jobId);
  }

  /** A worker on another node changed: if it has room, dispatches waiting for its agent try again. */
  onRemoteView(view: WorkerView): void {
    this.directory.observeEpoch(view.availabilityEpoch);
    if (this.#closing || !view.available || spareOf(view) <= 0) return;
    this.dispatcher.wakeWaiting(view.agentName);
  }

  // ---------------------------------------------------------------- workers

  /** Workers for GET /v1/workers: this node's, and in a cluster every other live node's too. */
  describeWorkers(): WorkerSummary[] {
    const nodeId = this.#node.nodeId;
    const local = [...this.directory.workers()].map((link) => ({
      id: link.workerId,
      agentName: link.context.agentName,
      state: link.state,
      connected: link.connected,
      status: link.context.reportedStatus,
      load: link.context.load,
      jobCount: link.context.jobCount,
      maxProcesses: link.context.maxProcesses,
      jobs: [...link.jobs],
      ...(nodeId ? { node: nodeId } : {}),
    }));
    const remote = (this.deps.bus?.remoteViews() ?? [])
      .filter((view) => !this.directory.get(view.workerId))
      .map((view) => ({
        id: view.workerId,
        agentName: view.agentName,
        state: view.state,
        connected: true,
        status: view.status,
        load: view.load,
        jobCount: view.jobCount,
        maxProcesses: view.maxProcesses,
        jobs: view.jobs,
        node: view.nodeId,
      }));
    return [...local, ...remote];
  }

  /**
   * The leases a pong renews: the `redispatch` jobs bound to the worker that this node vouches for
   * (see NodeStrategy.vouchesSince). Nothing while this node may have been taken for dead.
   */
  #leasesFor(link: WorkerLink): { leased?: string[] } {
    if (this.#node.vouchesSince() === Number.POSITIVE_INFINITY) return {};
    link.lastLeaseAt = this.deps.clock.now();
    const leased: string[] = [];
    for (const jobId of link.jobs) {
      const live = this.dispatcher.get(jobId);
      if (live?.record.redispatch && this.dispatcher.vouchesFor(live)) leased.push(jobId);
    }
    return { leased };
  }

  #workerGone(link: WorkerLink, reason: string): void {
    const fields = { workerId: link.workerId, reason, jobs: [...link.jobs] };
    // A worker that drained and closed its connection left on purpose: not a warning.
    if (reason === "drained and left") this.deps.logger.info(fields, "worker left");
    else this.deps.logger.warn(fields, "worker gone");
    this.#node.publishGone(link.workerId);
    this.dispatcher.workerGone(link.workerId, link.lastLeaseAt);
  }

  /** The worker may have room it did not have: dispatches waiting for capacity try again. */
  #capacityGrew(link: WorkerLink): void {
    this.#viewChanged(link);
    if (this.#closing || this.directory.get(link.workerId) !== link || !link.available) return;
    if (!this.dispatcher.anyWaiting()) return;
    this.dispatcher.wakeWaiting(link.context.agentName);
  }

  /** The worker's capacity or state changed: other nodes hear of it (coalesced to one publish per turn). */
  #viewChanged(link: WorkerLink): void {
    if (!this.deps.bus || this.#closing) return;
    if (this.#dirtyViews.size === 0) queueMicrotask(() => this.#publishViews());
    this.#dirtyViews.add(link);
  }

  #publishViews(): void {
    const nodeId = this.#node.nodeId;
    const links = [...this.#dirtyViews];
    this.#dirtyViews.clear();
    if (!nodeId || this.#closing) return;
    for (const link of links) {
      if (this.directory.get(link.workerId) !== link || !link.active) continue;
      this.#node.publishView(this.directory.view(link, nodeId));
    }
  }

  /** Store writes the core does not wait for: a failing store is logged, never an unhandled rejection. */
  #persist(work: Promise<unknown>): void {
    work.catch((error: Error) => this.deps.logger.error({ err: error.message }, "job store operation failed"));
  }

  /**
   * Stops quietly: dispatches stop (their records keep their last status, for the workers'
   * inventories to reconcile with the next registry) and sessions stop, so nothing is settled by
   * the shutdown itself. The gateway then closes the connections.
   */
  close(): void {
    if (this.#closing) return;
    this.#closing = true;
    this.dispatcher.close();
    this.directory.close();
  }
}
