import { randomUUID } from "node:crypto";
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { type RawData, type WebSocket, WebSocketServer } from "ws";
import { type Actor, createActor } from "xstate";
import { type DispatchEmitted, dispatchMachine } from "../../machines/registry/dispatch.ts";
import type { Logger } from "../observability/logger.ts";
import {
  type JobInventoryEntry,
  MAX_FRAME_BYTES,
  PROTOCOL_VERSION,
  type RegisterRequest,
  type RegistryMessage,
  workerMessage,
} from "../protocol/registry.ts";
import { AuthError, bearerToken, type Credentials, verifyToken } from "./auth.ts";
import type { RegistryCluster } from "./cluster/cluster.ts";
import type { NodeMessage, WorkerView } from "./cluster/messages.ts";
import type { RegistryMetrics } from "./metrics.ts";
import { type CandidateView, pickCandidate, spareOf } from "./picker.ts";
import { isFinal, type JobRecord, type JobStore } from "./store.ts";
import type { RegistryTiming } from "./timing.ts";
import { WorkerLink } from "./worker-link.ts";

/** How long a closing registry waits for each worker socket to answer its close frame. */
const CLOSE_GRACE_MS = 1_000;
/** How many times a dispatch may be handed to another node before it settles for workers here. */
const MAX_HOPS = 3;

export interface DispatchRequest {
  agentName: string;
  roomId?: string;
  metadata?: Record<string, unknown>;
  roomOptions?: Record<string, unknown>;
  maxDuration?: number;
  idempotencyKey?: string;
  redispatch?: boolean;
}

interface LiveDispatch {
  actor: Actor<typeof dispatchMachine>;
  record: JobRecord;
  /** workerId → availability epoch when that worker was tried */
  tried: Map<string, number>;
  /** The worker picked for, or holding, an unanswered offer of this job; counted in its inflight. */
  offeredTo: WorkerLink | undefined;
  /** The agent's token for the job's room, sent with the assignment (never stored in the record). */
  room: RoomAssignment | undefined;
  /** A worker to offer first: the one another node picked before handing the dispatch here. */
  prefer: string | undefined;
  /** How often the dispatch has moved between nodes. */
  hops: number;
}

interface DispatchStart {
  adoptedBy?: string;
  room?: RoomAssignment;
  prefer?: string;
  hops?: number;
  tried?: [string, number][];
}

/** The worker a dispatch goes to next: connected here, or to another node of the cluster. */
type Pick = { local: WorkerLink; remote?: undefined } | { local?: undefined; remote: WorkerView };

/** What a worker needs to put its job into a room: the hub's URL and the agent's token. */
export interface RoomAssignment {
  url: string;
  token: string;
}

/**
 * Rooms for dispatched jobs: a job without a room id gets a new room, and its assignment carries the
 * agent's token and the hub's URL. Absent = jobs carry only the room id they were dispatched with.
 */
export interface RoomAccess {
  newRoomId(jobId: string): string;
  forAgent(roomId: string, jobId: string, agentName: string): Promise<RoomAssignment>;
}

/**
 * The registry's core: worker links (one session actor each) and dispatches (one root actor each,
 * indexed here, not children of one parent), wired to sockets and the job store. Machines decide;
 * this class performs what they emit.
 */
export class RegistryCore {
  readonly workers = new Map<string, WorkerLink>();
  readonly dispatches = new Map<string, LiveDispatch>();
  /** Dispatches that found no worker and wait for capacity. */
  readonly #waiting = new Set<LiveDispatch>();
  readonly wss: WebSocketServer;
  #closing = false;
  #closed: Promise<void> = Promise.resolve();
  /** Set by the server that mounts a room hub next to the registry. */
  roomAccess: RoomAccess | undefined;
  /** Set when this registry is one node of several sharing a Redis. */
  cluster: RegistryCluster | undefined;
  readonly #dirtyViews = new Set<WorkerLink>();

  constructor(
    private readonly credentials: Credentials,
    readonly store: JobStore,
    private readonly timing: RegistryTiming,
    private readonly logger: Logger,
    private readonly metrics: RegistryMetrics,
    maxFrameBytes = MAX_FRAME_BYTES,
    private readonly random: () => number = Math.random,
  ) {
    this.wss = new WebSocketServer({ noServer: true, maxPayload: maxFrameBytes, perMessageDeflate: false });
    // A quiet worker is pinged within a fifth of a ping interval (at most 1 s) of going quiet.
    const sweepMs = Math.max(10, Math.min(1_000, timing.pingIntervalMs / 5));
    this.#livenessSweep = setInterval(() => this.#pingQuietWorkers(), sweepMs);
    this.#livenessSweep.unref();
  }

  readonly #livenessSweep: NodeJS.Timeout;

  /**
   * Pings every connected worker not heard from for a ping interval: one loop over all workers
   * instead of a timer per session, and a worker whose frames keep coming (any frame counts as the
   * pong) costs a comparison, not a ping and two state transitions.
   */
  #pingQuietWorkers(): void {
    if (this.#closing) return;
    const now = performance.now();
    for (const link of this.workers.values()) {
      if (now - link.lastHeardAt < this.timing.pingIntervalMs || link.awaitingPong) continue;
      if (link.send({ type: "ping", timestamp: Date.now() })) link.session.send({ type: "ping_sent" });
    }
  }

  // ---------------------------------------------------------------- worker connections

  /** Authenticates the upgrade (worker role) before any WebSocket exists; refusals are plain 401s. */
  async handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const refuse = (status: number, message: string) => {
      socket.write(
        `HTTP/1.1 ${status} ${status === 401 ? "Unauthorized" : "Forbidden"}\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: ${Buffer.byteLength(message)}\r\n\r\n${message}`,
      );
      socket.destroy();
    };
    const token = bearerToken(req.headers.authorization);
    if (!token) return refuse(401, "missing bearer token");
    try {
      await verifyToken(this.credentials, token, ["worker"]);
    } catch (error) {
      const message = error instanceof AuthError ? error.message : "invalid token";
      return refuse(message.includes("cannot") ? 403 : 401, message);
    }
    if (this.#closing) return refuse(403, "registry is shutting down");
    this.wss.handleUpgrade(req, socket, head, (ws) => this.#accept(ws));
  }

  #accept(ws: WebSocket): void {
    let link: WorkerLink | undefined;
    const registrationTimer = setTimeout(() => {
      if (!link) ws.close(4008, "no register message in time");
    }, this.timing.registrationTimeoutMs);
    ws.on("message", (data: RawData, isBinary: boolean) => {
      // A closing registry has stopped its sessions: nothing a worker says can be acted on any more.
      if (this.#closing) return;
      if (isBinary) return this.#sendError(ws, "binary frames are not part of the protocol", "bad_frame");
      let raw: unknown;
      try {
        raw = JSON.parse(data.toString());
      } catch {
        return this.#sendError(ws, "frame is not valid JSON", "bad_json");
      }
      const parsed = workerMessage.safeParse(raw);
      if (!parsed.success) {
        const type = (raw as { type?: unknown } | null)?.type;
        const known = ["register", "status_update", "availability_response", "job_update", "ping", "pong"];
        if (typeof type !== "string" || !known.includes(type)) {
          return this.#sendError(ws, `unknown message type ${JSON.stringify(type ?? null)}`, "unknown_type");
        }
        const fields = parsed.error.issues.map((i) => i.path.join(".") || "(message)").join(", ");
        return this.#sendError(ws, `invalid ${type}: bad fields ${fields}`, "invalid_message");
      }
      const message = parsed.data;
      if (message.type === "register") {
        if (link) return this.#sendError(ws, "already registered on this connection", "already_registered");
        clearTimeout(registrationTimer);
        link = this.#register(ws, message);
        return;
      }
      if (!link) return this.#sendError(ws, "register first", "not_registered");
      // A socket the worker has since replaced (or whose session is gone) speaks for nobody.
      if (link.socket !== ws) return;
      link.lastHeardAt = performance.now();
      if (link.awaitingPong) link.session.send({ type: "pong" });
      this.#onWorkerMessage(link, message);
    });
    ws.on("close", () => {
      clearTimeout(registrationTimer);
      if (link && link.socket === ws) {
        link.socket = undefined;
        link.session.send({ type: "socket_closed" });
      }
    });
    ws.on("error", (error) => this.logger.debug({ err: error.message }, "worker socket error"));
  }

  #sendError(ws: WebSocket, message: string, code: string): void {
    this.metrics.protocolErrors.inc({ code });
    if (ws.readyState === ws.OPEN) ws.send(JSON.stringify({ type: "error", message, code }));
  }

  #register(ws: WebSocket, message: RegisterRequest): WorkerLink {
    const requested = message.worker_id;
    const existing = requested ? this.workers.get(requested) : undefined;
    let link: WorkerLink;
    if (existing && existing.session.getSnapshot().status === "active") {
      // The same worker, reconnected: keep its session and jobs, swap the socket.
      const old = existing.socket;
      existing.socket = ws;
      if (old && old !== ws) old.terminate();
      existing.session.send({ type: "reattached" });
      link = existing;
      this.logger.info({ workerId: link.workerId }, "worker reconnected");
    } else {
      const workerId = requested && !this.workers.has(requested) ? requested : `w-${randomUUID()}`;
      link = new WorkerLink(workerId, ws, this.timing, this.logger);
      this.workers.set(workerId, link);
      this.#wireSession(link);
      link.session.start();
      link.session.send({
        type: "registered",
        agentName: message.agent_name,
        maxProcesses: message.max_processes,
        loadThreshold: message.load_threshold,
      });
      this.logger.info(
        { workerId, agentName: message.agent_name, maxProcesses: message.max_processes },
        "worker registered",
      );
    }
    link.send({ type: "register", success: true, worker_id: link.workerId, protocol_version: PROTOCOL_VERSION });
    this.#reconcile(link, message.agent_name, message.jobs);
    this.metrics.workers.set(this.workers.size);
    this.#viewChanged(link);
    return link;
  }

  #wireSession(link: WorkerLink): void {
    link.session.subscribe(() => this.#viewChanged(link));
    link.session.on("availability_changed", () => this.#capacityGrew(link, { newEpoch: true }));
    link.session.on("gone", ({ reason }) => {
      this.logger.warn({ workerId: link.workerId, reason, jobs: [...link.jobs] }, "worker gone");
      link.socket?.terminate();
      link.socket = undefined;
      this.workers.delete(link.workerId);
      this.metrics.workers.set(this.workers.size);
      this.cluster?.publishGone(link.workerId);
      for (const dispatch of this.dispatches.values()) {
        dispatch.actor.send({ type: "worker_gone", workerId: link.workerId });
      }
      link.session.stop();
    });
  }

  /**
   * A (re)registering worker reports what it runs and what it finished recently. Records catch up,
   * jobs the registry no longer knows are adopted, and a job that is someone else's is terminated
   * here, so nothing runs twice.
   */
  #reconcile(link: WorkerLink, agentName: string, inventory: JobInventoryEntry[]): void {
    for (const entry of inventory) {
      const live = this.dispatches.get(entry.job_id);
      if (entry.status !== "running") {
        if (live) {
          live.actor.send({
            type: "job_update",
            workerId: link.workerId,
            status: entry.status,
            ...(entry.reason ? { reason: entry.reason } : {}),
          });
        } else {
          this.#persist(
            this.store.get(entry.job_id).then(async (record) => {
              if (record && !isFinal(record.status) && record.workerId === link.workerId) {
                await this.store.update(entry.job_id, {
                  status: entry.status,
                  ...(entry.reason ? { reason: entry.reason } : {}),
                });
                this.#takenOver(record, entry.job_id);
              }
            }),
          );
        }
        continue;
      }
      if (live) {
        if (live.actor.getSnapshot().context.workerId === link.workerId) {
          link.jobs.add(entry.job_id);
        } else {
          link.send({ type: "job_termination", job_id: entry.job_id, reason: "job belongs to another worker" });
        }
        continue;
      }
      this.#persist(this.#adopt(link, agentName, entry.job_id));
    }
  }

  /**
   * A worker reports running a job this node runs no dispatch for. Only a job recorded as assigned
   * to that worker is taken back (its dispatch was lost with a node); anything else is refused and
   * changes nothing, so a worker token cannot create job records by naming new ids. (Jobs unknown to
   * the store come back only through a `register` inventory, bounded by max_processes.)
   */
  async #adoptAssigned(link: WorkerLink, jobId: string): Promise<void> {
    const record = await this.store.get(jobId);
    if (!record || record.workerId !== link.workerId) {
      this.metrics.protocolErrors.inc({ code: "unknown_job" });
      link.send({ type: "error", code: "unknown_job", message: `job ${jobId} was not assigned to this worker` });
      return;
    }
    await this.#adopt(link, link.context.agentName, jobId);
  }

  async #adopt(link: WorkerLink, agentName: string, jobId: string): Promise<void> {
    const record = await this.store.get(jobId);
    if (this.#closing) return;
    if (record && isFinal(record.status)) {
      link.send({ type: "job_termination", job_id: jobId, reason: `job already ${record.status}` });
      return;
    }
    if (this.dispatches.has(jobId)) return;
    const now = Date.now();
    const nodeId = this.cluster?.nodeId;
    let claimed = record;
    // The job belonged to another node (its worker moved here): it is this node's now, and only if
    // this claim wins, so two nodes never both run its dispatch.
    if (record && nodeId && record.node !== nodeId) {
      claimed = await this.store.claim(jobId, record.node, nodeId);
      if (!claimed) return;
      this.#takenOver(record, jobId);
    }
    const base: JobRecord = claimed ?? {
      id: jobId,
      agentName,
      metadata: {},
      roomOptions: {},
      redispatch: false,
      status: "running",
      workerId: link.workerId,
      attempts: 1,
      createdAt: now,
      updatedAt: now,
      ...(nodeId ? { node: nodeId } : {}),
    };
    if (!record) await this.store.create(base);
    // Another report of the same job may have adopted it while the store answered.
    if (this.#closing || this.dispatches.has(jobId)) return;
    this.logger.info({ jobId, workerId: link.workerId }, "adopted a running job from a worker's inventory");
    const live = this.#startDispatch(base, { adoptedBy: link.workerId });
    // Its worker went away while the store answered: the job settles as if it had been known all along.
    if (!this.workers.has(link.workerId)) live.actor.send({ type: "worker_gone", workerId: link.workerId });
  }

  #onWorkerMessage(link: WorkerLink, message: ReturnType<typeof workerMessage.parse>): void {
    switch (message.type) {
      case "status_update": {
        const before = link.context;
        if (message.slots) link.slots = message.slots;
        link.session.send({
          type: "status",
          status: message.status,
          load: message.load,
          jobCount: message.job_count,
        });
        // Fewer jobs than it had: a process is free, and a worker that said no may say yes now. (A
        // worker that turns available again announces that itself, through its session.)
        if (message.job_count < before.jobCount) this.#capacityGrew(link, { newEpoch: true });
        break;
      }
      case "availability_response": {
        const dispatch = this.dispatches.get(message.job_id);
        if (!dispatch) break;
        this.metrics.offers.inc({ answer: message.available ? "yes" : "no" });
        dispatch.actor.send({
          type: "answer",
          workerId: link.workerId,
          available: message.available,
          ...(message.error ? { error: message.error } : {}),
        });
        break;
      }
      case "job_update": {
        const dispatch = this.dispatches.get(message.job_id);
        if (!dispatch) {
          if (message.status === "running") this.#persist(this.#adoptAssigned(link, message.job_id));
          else
            this.#reconcile(link, link.context.agentName, [
              { job_id: message.job_id, status: message.status, ...(message.reason ? { reason: message.reason } : {}) },
            ]);
          break;
        }
        dispatch.actor.send({
          type: "job_update",
          workerId: link.workerId,
          status: message.status,
          ...(message.reason ? { reason: message.reason } : {}),
          ...(message.error ? { error: message.error } : {}),
        });
        break;
      }
      case "ping":
        link.send({ type: "pong", timestamp: message.timestamp });
        break;
      case "pong":
        // Any frame counts as the pong (see #accept).
        break;
      case "register":
        break;
    }
  }

  // ---------------------------------------------------------------- dispatches

  async dispatch(request: DispatchRequest): Promise<{ record: JobRecord; created: boolean }> {
    const now = Date.now();
    const id = `job-${randomUUID()}`;
    const roomId = request.roomId ?? this.roomAccess?.newRoomId(id);
    const room = roomId ? await this.roomAccess?.forAgent(roomId, id, request.agentName) : undefined;
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
      ...(this.cluster ? { node: this.cluster.nodeId } : {}),
    };
    const result = await this.store.create(record);
    if (result.created) {
      this.metrics.dispatches.inc();
      this.#startDispatch(result.record, { ...(room ? { room } : {}) });
    }
    return result;
  }

  async cancel(jobId: string, reason = "cancelled by request"): Promise<JobRecord | undefined> {
    const record = await this.store.get(jobId);
    const owner = record?.node;
    const live = this.dispatches.get(jobId);
    if (live && (!owner || owner === this.cluster?.nodeId)) {
      live.actor.send({ type: "cancel", reason });
      return this.store.get(jobId);
    }
    // The job moved to another node and the hand-over has not reached this one yet: that node cancels.
    if (live) this.#dropDispatch(jobId);
    if (!record || isFinal(record.status)) return record;
    const cluster = this.cluster;
    if (cluster && owner && owner !== cluster.nodeId) {
      // Told even when believed dead: a node that was only slow (or that this one has not seen renew
      // yet) stops its dispatch instead of waiting out the deadline.
      cluster.send(owner, { type: "cancel", jobId, reason });
      if (cluster.isLive(owner)) return record;
    }
    // Nobody runs a dispatch for it (its node is gone, or it was never started): cancelled here.
    if (!record.workerId) return this.store.update(jobId, { status: "cancelled", reason }, owner);
    return record;
  }

  #startDispatch(record: JobRecord, start: DispatchStart = {}): LiveDispatch {
    const { adoptedBy } = start;
    const actor = createActor(dispatchMachine, {
      id: `dispatch.${record.id}`,
      input: {
        jobId: record.id,
        redispatch: record.redispatch,
        timing: this.timing,
        ...(adoptedBy ? { adoptedBy } : {}),
      },
    });
    const live: LiveDispatch = {
      actor,
      record,
      tried: new Map(start.tried ?? []),
      offeredTo: undefined,
      room: start.room,
      prefer: start.prefer,
      hops: start.hops ?? 0,
    };
    this.dispatches.set(record.id, live);
    if (adoptedBy) this.workers.get(adoptedBy)?.jobs.add(record.id);
    actor.on("*", (event) => this.#onDispatchEmitted(live, event as DispatchEmitted));
    actor.start();
    return live;
  }

  #onDispatchEmitted(live: LiveDispatch, event: DispatchEmitted): void {
    const { record } = live;
    switch (event.type) {
      case "need_candidate": {
        // Decided now, against the registry as it is now: the machine's mailbox delivers the answer
        // right after this transition, and a dispatch that waits is in #waiting before anything
        // else can free capacity, so no wake-up is lost.
        const pick = this.#pick(live);
        if (pick?.remote) {
          this.#forward(live, pick.remote);
        } else if (pick) {
          this.#waiting.delete(live);
          // Reserved at once, so a burst of dispatches spreads instead of piling onto one worker.
          this.#reserveOffer(live, pick.local);
          live.actor.send({ type: "candidate", workerId: pick.local.workerId });
        } else {
          this.#waiting.add(live);
          live.actor.send({ type: "no_candidate" });
        }
        break;
      }
      case "offer": {
        const link = this.workers.get(event.workerId);
        live.tried.set(event.workerId, link?.availabilityEpoch ?? 0);
        if (!link) {
          live.actor.send({ type: "worker_gone", workerId: event.workerId });
          break;
        }
        if (live.offeredTo !== link) this.#reserveOffer(live, link);
        const sent = link.send({
          type: "availability_request",
          job_id: record.id,
          agent_name: record.agentName,
          ...(record.roomId ? { room_id: record.roomId } : {}),
          ...(Object.keys(record.metadata).length ? { metadata: record.metadata } : {}),
        });
        if (!sent) live.actor.send({ type: "answer", workerId: event.workerId, available: false });
        break;
      }
      case "assign": {
        const link = this.workers.get(event.workerId);
        link?.jobs.add(record.id);
        if (link) this.#viewChanged(link);
        if (this.cluster) {
          this.#assignIfStillOwner(live, event.workerId);
          break;
        }
        this.#sendAssignment(live, link);
        break;
      }
      case "terminate": {
        const link = this.workers.get(event.workerId);
        link?.send({ type: "job_termination", job_id: record.id, reason: event.reason });
        if (link?.jobs.delete(record.id)) this.#capacityGrew(link);
        break;
      }
      case "status":
        // Bound to its worker before the offer's reservation goes: its capacity never looks free between.
        if (event.workerId && (event.status === "assigned" || event.status === "running")) {
          this.workers.get(event.workerId)?.jobs.add(record.id);
        }
        if (event.status !== "offering") this.#releaseOffer(live);
        this.#persist(
          this.store.update(
            record.id,
            {
              status: event.status,
              attempts: event.attempts,
              ...(event.workerId ? { workerId: event.workerId } : {}),
            },
            this.cluster?.nodeId,
          ),
        );
        break;
      case "finished": {
        const { output } = event;
        this.#waiting.delete(live);
        this.#releaseOffer(live);
        this.dispatches.delete(record.id);
        const link = output.workerId ? this.workers.get(output.workerId) : undefined;
        if (link?.jobs.delete(record.id)) this.#capacityGrew(link);
        this.metrics.finished.inc({ status: output.status, reason: output.reason ?? "" });
        this.metrics.dispatchDuration.observe((Date.now() - record.createdAt) / 1000);
        this.#persist(
          this.store
            .update(
              record.id,
              {
                status: output.status,
                attempts: output.attempts,
                ...(output.workerId ? { workerId: output.workerId } : {}),
                ...(output.reason ? { reason: output.reason } : {}),
                ...(output.error ? { error: output.error } : {}),
              },
              this.cluster?.nodeId,
            )
            .then((after) => this.#forwardRefusedCancel(after, output.status, output.reason)),
        );
        queueMicrotask(() => live.actor.stop());
        break;
      }
    }
  }

  /**
   * A cancel this node carried out but could not record, because the job had moved to another node
   * in between (a reaper that took this node for dead): the new owner carries it out instead.
   */
  #forwardRefusedCancel(after: JobRecord | undefined, status: string, reason: string | undefined): void {
    const cluster = this.cluster;
    if (!cluster || !after || status !== "cancelled" || isFinal(after.status)) return;
    if (after.node && after.node !== cluster.nodeId) {
      cluster.send(after.node, { type: "cancel", jobId: after.id, reason: reason ?? "cancelled by request" });
    }
  }

  #sendAssignment(live: LiveDispatch, link: WorkerLink | undefined): void {
    const { record } = live;
    link?.send({
      type: "job_assignment",
      job_id: record.id,
      agent_name: record.agentName,
      ...(record.roomId ? { room_id: record.roomId } : {}),
      ...(live.room ? { token: live.room.token, url: live.room.url } : {}),
      room_options: record.roomOptions,
      metadata: record.metadata,
      ...(record.maxDuration ? { max_duration: record.maxDuration } : {}),
    });
  }

  /**
   * In a cluster the assignment is fenced: it goes out only if the record still names this node
   * once it says "assigned". A node that another took for dead (it was only slow) has lost its
   * pending jobs to that node's claim, and must not start them a second time.
   */
  #assignIfStillOwner(live: LiveDispatch, workerId: string): void {
    const nodeId = (this.cluster as RegistryCluster).nodeId;
    const { record } = live;
    this.#persist(
      this.store.update(record.id, { status: "assigned", workerId }, nodeId).then((after) => {
        if (this.dispatches.get(record.id) !== live) return;
        if (after && after.node === nodeId && after.status === "assigned" && after.workerId === workerId) {
          this.#sendAssignment(live, this.workers.get(workerId));
          return;
        }
        this.logger.warn({ jobId: record.id, owner: after?.node }, "job taken over by another node: not assigned here");
        this.#dropDispatch(record.id);
      }),
    );
  }

  /** What the picker sees of a worker. */
  #viewOf(link: WorkerLink): CandidateView {
    return {
      workerId: link.workerId,
      agentName: link.context.agentName,
      available: link.available && link.socket !== undefined,
      maxProcesses: link.context.maxProcesses,
      jobCount: link.context.jobCount,
      assigned: link.jobs.size,
      inflight: link.inflight,
      load: link.context.load,
    };
  }

  /**
   * A worker for the dispatch, skipping those that already said no at their current availability:
   * the worker another node handed it over for first, then the best of every worker in the cluster.
   */
  #pick(live: LiveDispatch): Pick | undefined {
    const remote = live.hops < MAX_HOPS ? (this.cluster?.remoteViews() ?? []) : [];
    const epochOf = (workerId: string) =>
      this.workers.get(workerId)?.availabilityEpoch ??
      remote.find((view) => view.workerId === workerId)?.availabilityEpoch ??
      0;
    const excluded = (workerId: string) => {
      const epoch = live.tried.get(workerId);
      return epoch !== undefined && epoch >= epochOf(workerId);
    };
    const agentName = live.record.agentName;
    const preferred = live.prefer ? this.workers.get(live.prefer) : undefined;
    live.prefer = undefined;
    if (preferred && pickCandidate([this.#viewOf(preferred)], agentName, excluded, this.random)) {
      return { local: preferred };
    }
    const views: CandidateView[] = [...this.workers.values()].map((link) => this.#viewOf(link));
    for (const view of remote) if (!this.workers.has(view.workerId)) views.push(view);
    const pick = pickCandidate(views, agentName, excluded, this.random);
    if (!pick) return undefined;
    const local = this.workers.get(pick.workerId);
    return local ? { local } : { remote: pick as WorkerView };
  }

  /**
   * The best worker is connected to another node: the job becomes that node's (an atomic claim, so
   * a cancel or a dead-node reaper racing it leaves one owner) and it runs the dispatch from here on.
   */
  #forward(live: LiveDispatch, target: WorkerView): void {
    const cluster = this.cluster as RegistryCluster;
    const { record } = live;
    this.dispatches.delete(record.id);
    this.#waiting.delete(live);
    this.#releaseOffer(live);
    queueMicrotask(() => live.actor.stop());
    // Counted against it here until its node publishes its own count, so a burst spreads out.
    target.inflight++;
    this.#persist(
      this.store.claim(record.id, cluster.nodeId, target.nodeId).then((claimed) => {
        if (!claimed) return;
        cluster.send(target.nodeId, {
          type: "dispatch",
          jobId: record.id,
          from: cluster.nodeId,
          prefer: target.workerId,
          tried: [...live.tried],
          hops: live.hops + 1,
          ...(live.room ? { room: live.room } : {}),
        });
      }),
    );
  }

  /** What another node of the cluster asks of this one. */
  onNodeMessage(message: NodeMessage): void {
    if (this.#closing) return;
    switch (message.type) {
      case "dispatch":
        this.#persist(
          this.store.get(message.jobId).then((record) => {
            const mine = record && !isFinal(record.status) && record.node === this.cluster?.nodeId;
            if (!mine || this.#closing || this.dispatches.has(message.jobId)) return;
            this.#startDispatch(record, {
              ...(message.prefer ? { prefer: message.prefer } : {}),
              ...(message.room ? { room: message.room } : {}),
              hops: message.hops,
              tried: message.tried,
            });
          }),
        );
        break;
      case "cancel":
        this.#persist(this.cancel(message.jobId, message.reason));
        break;
      case "handover":
        this.#dropDispatch(message.jobId);
        break;
      case "adopt": {
        const link = this.workers.get(message.workerId);
        const nodeId = this.cluster?.nodeId;
        if (!link || !nodeId || this.dispatches.has(message.jobId)) break;
        this.#persist(
          this.store.claim(message.jobId, message.from, nodeId).then((claimed) => {
            if (!claimed) return;
            this.cluster?.send(message.from, { type: "handover", jobId: message.jobId, to: nodeId });
            this.resume(claimed, message.workerId);
          }),
        );
        break;
      }
    }
  }

  /** Runs this node's dispatch for a record it has just claimed from a dead node. */
  resume(record: JobRecord, runningOn?: string): void {
    if (this.#closing || this.dispatches.has(record.id)) return;
    if (runningOn) {
      this.logger.info({ jobId: record.id, workerId: runningOn }, "took over a running job from a dead node");
      const live = this.#startDispatch(record, { adoptedBy: runningOn });
      if (!this.workers.has(runningOn)) live.actor.send({ type: "worker_gone", workerId: runningOn });
      return;
    }
    this.logger.info({ jobId: record.id }, "dispatching a job again that a dead node had not placed");
    const access = this.roomAccess;
    if (record.roomId && access) {
      this.#persist(
        access.forAgent(record.roomId, record.id, record.agentName).then((room) => {
          if (!this.#closing && !this.dispatches.has(record.id)) this.#startDispatch(record, { room });
        }),
      );
      return;
    }
    this.#startDispatch(record);
  }

  hasWorker(workerId: string): boolean {
    return this.workers.has(workerId);
  }

  hasDispatch(jobId: string): boolean {
    return this.dispatches.has(jobId);
  }

  /** A worker on another node changed: if it has room, dispatches waiting for its agent try again. */
  onRemoteView(view: WorkerView): void {
    if (this.#closing || this.#waiting.size === 0 || !view.available || spareOf(view) <= 0) return;
    this.#wakeWaitingDispatches(view.agentName);
  }

  /** Another node took the job over: its dispatch here stops without writing anything. */
  #dropDispatch(jobId: string): void {
    const live = this.dispatches.get(jobId);
    if (!live) return;
    this.dispatches.delete(jobId);
    this.#waiting.delete(live);
    this.#releaseOffer(live);
    const workerId = live.actor.getSnapshot().context.workerId;
    const link = workerId ? this.workers.get(workerId) : undefined;
    if (link?.jobs.delete(jobId)) this.#capacityGrew(link);
    live.actor.stop();
    this.logger.info({ jobId }, "job handed over to another node");
  }

  /** This node claimed a job another live node held: that node lets go of it. */
  #takenOver(before: JobRecord, jobId: string): void {
    const cluster = this.cluster;
    // Sent even to a node believed dead: one that was only slow must learn the job is no longer its.
    if (cluster && before.node && before.node !== cluster.nodeId) {
      cluster.send(before.node, { type: "handover", jobId, to: cluster.nodeId });
    }
  }

  /** Store writes the registry does not wait for: a failing store is logged, never an unhandled rejection. */
  #persist(work: Promise<unknown>): void {
    work.catch((error: Error) => this.logger.error({ err: error.message }, "job store operation failed"));
  }

  /** The worker's capacity or state changed: other nodes hear of it (coalesced to one publish per turn). */
  #viewChanged(link: WorkerLink): void {
    if (!this.cluster || this.#closing) return;
    if (this.#dirtyViews.size === 0) setImmediate(() => this.#publishViews());
    this.#dirtyViews.add(link);
  }

  #publishViews(): void {
    const cluster = this.cluster;
    const links = [...this.#dirtyViews];
    this.#dirtyViews.clear();
    if (!cluster || this.#closing) return;
    for (const link of links) {
      if (this.workers.get(link.workerId) !== link || link.session.getSnapshot().status !== "active") continue;
      cluster.publishView({
        ...this.#viewOf(link),
        nodeId: cluster.nodeId,
        availabilityEpoch: link.availabilityEpoch,
        state: link.state,
        status: link.context.reportedStatus,
        jobs: [...link.jobs],
        at: Date.now(),
      });
    }
  }

  /** Counts the offer against the worker's capacity until it is answered, times out or is moot. */
  #reserveOffer(live: LiveDispatch, link: WorkerLink): void {
    this.#releaseOffer(live);
    link.inflight++;
    live.offeredTo = link;
    this.#viewChanged(link);
  }

  /** The offer is answered, timed out or moot: the worker's capacity shows in its own status again. */
  #releaseOffer(live: LiveDispatch): void {
    const link = live.offeredTo;
    if (!link) return;
    live.offeredTo = undefined;
    link.inflight = Math.max(0, link.inflight - 1);
    this.#capacityGrew(link);
  }

  /**
   * The worker may have room it did not have: dispatches waiting for capacity try again. With
   * `newEpoch` (the worker's own report: available again, or fewer jobs) a worker that said no to a
   * dispatch may be asked again.
   */
  #capacityGrew(link: WorkerLink, { newEpoch = false } = {}): void {
    if (newEpoch) link.availabilityEpoch++;
    this.#viewChanged(link);
    if (this.#closing || this.workers.get(link.workerId) !== link) return;
    if (this.#waiting.size === 0 || spareOf(this.#viewOf(link)) <= 0 || !link.available) return;
    this.#wakeWaitingDispatches(link.context.agentName);
  }

  /** Every dispatch waiting for a worker of this agent tries again. */
  #wakeWaitingDispatches(agentName: string): void {
    const waking = [...this.#waiting].filter((live) => live.record.agentName === agentName);
    for (const live of waking) this.#waiting.delete(live);
    for (const live of waking) live.actor.send({ type: "capacity_changed" });
  }

  /** Workers for GET /v1/workers: this node's, and in a cluster every other live node's too. */
  describeWorkers() {
    const local = [...this.workers.values()].map((w) => ({
      id: w.workerId,
      agentName: w.context.agentName,
      state: w.state,
      connected: w.socket !== undefined,
      status: w.context.reportedStatus,
      load: w.context.load,
      jobCount: w.context.jobCount,
      maxProcesses: w.context.maxProcesses,
      jobs: [...w.jobs],
      ...(this.cluster ? { node: this.cluster.nodeId } : {}),
    }));
    const remote = (this.cluster?.remoteViews() ?? [])
      .filter((view) => !this.workers.has(view.workerId))
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
   * Stops in order, quietly: no new connections; dispatches stop (their records keep their last
   * status, for the workers' inventories to reconcile with the next registry); each session is
   * detached from its socket and stopped, so a closing socket has nobody left to tell; then every
   * socket gets a close frame (1001) and the time to answer it, and whatever did not is cut.
   */
  async close(): Promise<void> {
    if (this.#closing) return this.#closed;
    this.#closing = true;
    this.#closed = this.#close();
    return this.#closed;
  }

  async #close(): Promise<void> {
    clearInterval(this.#livenessSweep);
    this.#waiting.clear();
    for (const live of this.dispatches.values()) live.actor.stop();
    this.dispatches.clear();
    for (const link of this.workers.values()) {
      link.socket = undefined;
      link.session.stop();
    }
    this.workers.clear();
    this.metrics.workers.set(0);
    const sockets = [...this.wss.clients];
    await Promise.all(
      sockets.map(
        (ws) =>
          new Promise<void>((resolve) => {
            if (ws.readyState === ws.CLOSED) return resolve();
            const timer = setTimeout(() => {
              ws.terminate();
              resolve();
            }, CLOSE_GRACE_MS);
            ws.once("close", () => {
              clearTimeout(timer);
              resolve();
            });
            ws.close(1001, "registry shutting down");
          }),
      ),
    );
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
  }
}

export type { RegistryMessage };
