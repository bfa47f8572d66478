import { type Actor, createActor } from "xstate";
import {
  type DispatchEmitted,
  type DispatchEvent,
  type DispatchInput,
  type DispatchOutput,
  dispatchMachine,
} from "../../../machines/registry/dispatch.ts";
import { DispatchTrace } from "../../observability/tracing/dispatch-trace.ts";
import { type DispatchOrigin, dispatchReasonLabel, OFFER_ANSWER_LABELS } from "../metrics.ts";
import { isFinal, type JobRecord, writeBack } from "../store.ts";
import { LEASE_MARGIN_MS } from "../timing.ts";
import type { NodeStrategy } from "./node-strategy.ts";
import { place } from "./placement.ts";
import type { RegistryDeps, RoomAssignment } from "./ports.ts";
import { retryWrite } from "./retry-write.ts";
import type { WorkerDirectory } from "./worker-directory.ts";

export interface LiveDispatch {
  actor: Actor<typeof dispatchMachine>;
  record: JobRecord;
  /** The agent's token for the job's room, sent with the assignment (never stored in the record). */
  room: RoomAssignment | undefined;
  /** Its OpenTelemetry spans, derived from what its machine emits. */
  trace: DispatchTrace;
  /** clock.now() when this node started it: no lease this node renewed for the job is older. */
  startedAt: number;
  /** clock.now() when its latest assignment left for its worker, which counts the job's lease from before then. */
  assignedAt: number;
  /**
   * When this node last sent a write that the store took only because the record named this node
   * (−∞ before one). It vouches for the job's lease only if it has surely been alive since
   * (NodeStrategy.vouchesSince), so no reaper can have claimed the job in between.
   */
  ownedAt: number;
  /** A write confirming ownedAt is on its way (one at a time). */
  confirming: boolean;
  /** Its first start is this node's (not adopted, not fenced): the dispatch latency is observed then. */
  measuresLatency: boolean;
}

export interface DispatchStart {
  /** For troupe_registry_dispatches_total; default "adopted" with adoptedBy, else "created". */
  origin?: DispatchOrigin;
  adoptedBy?: string;
  /** How the adopted job starts: running (its worker said so), or assigned and unconfirmed. */
  adoptedAs?: "running" | "assigned";
  room?: RoomAssignment;
  prefer?: string;
  hops?: number;
  tried?: Record<string, number>;
  /** The dispatch span opened with the request; absent: this node takes the job over (a child span). */
  trace?: DispatchTrace;
  /** Taken from a dead node: its worker is nowhere, but may still run it under the dead node's lease. */
  fencedFrom?: string;
}

/**
 * The dispatches this node runs: one dispatch machine each, and what their machines emit carried
 * out (asking placement, offers, assignments, terminations, records). Which dispatches wait for a
 * worker, which offers are out and which jobs a worker holds are the machines' states, read from
 * them or kept only by their reserve/release and bind/unbind events.
 */
export class Dispatcher {
  readonly #live = new Map<string, LiveDispatch>();
  /** Dispatches in `waiting`, by agent: kept by the machines' waiting/waiting_over events only. */
  readonly #waiting = new Map<string, Set<LiveDispatch>>();
  /**
   * Jobs this node is handing on to another node, with the hand-off's hop count: kept from the
   * `forward` until the hand-off settles, so a dispatch message this node already acted on and the
   * at-least-once inbox delivers again cannot start the job here while it goes elsewhere.
   */
  readonly #handingOn = new Map<string, number>();
  #closing = false;

  constructor(
    private readonly deps: RegistryDeps,
    private readonly directory: WorkerDirectory,
    private readonly node: NodeStrategy,
    private readonly persist: (work: Promise<unknown>) => void,
  ) {}

  get size(): number {
    return this.#live.size;
  }

  get(jobId: string): LiveDispatch | undefined {
    return this.#live.get(jobId);
  }

  has(jobId: string): boolean {
    return this.#live.has(jobId);
  }

  /**
   * True when a dispatch message with these hops is one this node already acted on: it is handing
   * the job on with more hops. A message that came back from another node carries more hops still.
   */
  handingOn(jobId: string, hops: number): boolean {
    const handOffHops = this.#handingOn.get(jobId);
    return handOffHops !== undefined && hops < handOffHops;
  }

  values(): IterableIterator<LiveDispatch> {
    return this.#live.values();
  }

  send(jobId: string, event: DispatchEvent): boolean {
    const live = this.#live.get(jobId);
    live?.trace.received(event);
    live?.actor.send(event);
    return live !== undefined;
  }

  start(record: JobRecord, start: DispatchStart = {}): LiveDispatch | undefined {
    if (this.#closing || this.#live.has(record.id)) return undefined;
    const input: DispatchInput = {
      jobId: record.id,
      redispatch: record.redispatch,
      timing: {
        ...this.deps.timing,
        releaseTimeoutMs: this.deps.timing.pingIntervalMs + this.deps.timing.pongTimeoutMs,
        leaseFenceMs: this.#leaseFenceMs,
      },
      ...(start.fencedFrom ? { fence: { workerId: start.fencedFrom, ms: this.#leaseFenceMs } } : {}),
      ...(start.adoptedBy ? { adoptedBy: start.adoptedBy } : {}),
      ...(start.adoptedAs ? { adoptedAs: start.adoptedAs } : {}),
      ...(start.prefer ? { prefer: start.prefer } : {}),
      ...(start.hops ? { hops: start.hops } : {}),
      ...(start.tried ? { tried: start.tried } : {}),
    };
    const actor = createActor(dispatchMachine, {
      id: `dispatch.${record.id}`,
      clock: this.deps.clock,
      input,
      ...(this.deps.inspect ? { inspect: this.deps.inspect } : {}),
    });
    const trace =
      start.trace ?? DispatchTrace.resume(record, start.origin ?? (start.adoptedBy ? "adopted" : "created"));
    const now = this.deps.clock.now();
    const live: LiveDispatch = {
      actor,
      record,
      room: start.room,
      trace,
      startedAt: now,
      assignedAt: now,
      ownedAt: Number.NEGATIVE_INFINITY,
      confirming: false,
      measuresLatency: !start.adoptedBy && !start.fencedFrom,
    };
    this.#live.set(record.id, live);
    this.deps.metrics.dispatches.inc({ origin: start.origin ?? (start.adoptedBy ? "adopted" : "created") });
    actor.on("*", (event) => this.#perform(live, event as DispatchEmitted));
    actor.start();
    // Its worker went away while the store answered: the job settles as if it had been known all along.
    if (start.adoptedBy && !this.directory.get(start.adoptedBy)?.active) {
      actor.send({ type: "worker_gone", workerId: start.adoptedBy });
    }
    return live;
  }

  /**
   * Every dispatch involving the worker learns it is gone, and how long each job may still run
   * there: until the lease this node last renewed for it (`lastLeaseAt`, or its assignment, or its
   * start here) has surely run out.
   */
  workerGone(workerId: string, lastLeaseAt = Number.NEGATIVE_INFINITY): void {
    const now = this.deps.clock.now();
    for (const live of [...this.#live.values()]) {
      const leasedFrom = Math.max(lastLeaseAt, live.startedAt, live.assignedAt);
      const fenceMs = Math.max(0, leasedFrom + this.#leaseFenceMs - now);
      live.actor.send({ type: "worker_gone", workerId, fenceMs });
    }
  }

  /**
   * This node may renew the job's lease now. When it cannot only because it may have been taken for
   * dead since it last knew the job was its, a write fenced on this node finds out, for the next time.
   */
  vouchesFor(live: LiveDispatch): boolean {
    const since = this.node.vouchesSince();
    if (live.ownedAt >= since) return true;
    if (since !== Number.POSITIVE_INFINITY && !live.confirming) {
      live.confirming = true;
      const sentAt = this.deps.clock.now();
      this.persist(
        this.deps.store
          .update(live.record.id, {}, this.node.nodeId)
          .then((after) => {
            if (after?.node === this.node.nodeId) live.ownedAt = Math.max(live.ownedAt, sentAt);
          })
          .finally(() => {
            live.confirming = false;
          }),
      );
    }
    return false;
  }

  get #leaseFenceMs(): number {
    return this.deps.timing.leaseMs + LEASE_MARGIN_MS;
  }

  /** Dispatches of this agent waiting for a worker try again. */
  wakeWaiting(agentName: string): void {
    const waiting = this.#waiting.get(agentName);
    if (!waiting) return;
    for (const live of [...waiting]) live.actor.send({ type: "capacity_changed" });
  }

  anyWaiting(): boolean {
    return this.#waiting.size > 0;
  }

  /** How many dispatches wait for a worker, by agent name (read at scrape time by the autoscaling gauges). */
  waitingByAgent(): Map<string, number> {
    return new Map([...this.#waiting].map(([agent, waiting]) => [agent, waiting.size]));
  }

  /**
   * Stops every dispatch quietly: records keep their last status for the next registry to reconcile.
   * Their open spans end here, or the exporter would never get them.
   */
  close(): void {
    this.#closing = true;
    for (const live of this.#live.values()) {
      live.actor.stop();
      live.trace.abandon("registry closing");
    }
    this.#live.clear();
    this.#waiting.clear();
    this.#handingOn.clear();
  }

  #perform(live: LiveDispatch, event: DispatchEmitted): void {
    const { record } = live;
    const { transport } = this.deps;
    const offerEnded = live.trace.observe(event);
    if (offerEnded) {
      // Counted once, as the offer ends: an answer arriving after its timeout was not an answer.
      const agent = this.deps.metrics.agentLabels.of(record.agentName, true);
      this.deps.metrics.offers.inc({ agent, answer: OFFER_ANSWER_LABELS[offerEnded] });
    }
    switch (event.type) {
      case "need_candidate": {
        // Decided now, against the registry as it is now: the answer reaches the machine right after
        // this transition, and a dispatch that waits is in `waiting` before anything can free capacity.
        const placement = place(
          this.directory.workers(),
          this.deps.bus,
          {
            agentName: record.agentName,
            tried: event.tried,
            prefer: event.prefer,
            hops: event.hops,
          },
          this.deps.random,
        );
        if (placement.kind === "local") {
          live.actor.send({ type: "candidate", workerId: placement.link.workerId, epoch: placement.epoch });
        } else if (placement.kind === "remote") {
          live.actor.send({
            type: "candidate",
            workerId: placement.view.workerId,
            epoch: placement.view.availabilityEpoch,
            remote: true,
          });
        } else {
          live.actor.send({ type: "no_candidate", cause: placement.cause });
        }
        break;
      }
      case "waiting": {
        const waiting = this.#waiting.get(record.agentName) ?? new Set();
        waiting.add(live);
        this.#waiting.set(record.agentName, waiting);
        break;
      }
      case "waiting_over": {
        const waiting = this.#waiting.get(record.agentName);
        waiting?.delete(live);
        if (waiting?.size === 0) this.#waiting.delete(record.agentName);
        break;
      }
      case "reserve":
        this.directory.get(event.workerId)?.session.send({ type: "offer_reserved" });
        break;
      case "release": {
        const link = this.directory.get(event.workerId);
        link?.session.send({ type: "offer_released" });
        // After the step that released it, which on a yes also binds the job to the worker (woken in
        // between, a dispatch would see a free process for a moment). A yes frees room too: a worker
        // reports a process busy as soon as it reserves it for an offer, so while the offer was out
        // that process counted twice (the job count and the offer), and a dispatch may wait on it
        // with nothing else to wake it (no status, no epoch change).
        if (link) queueMicrotask(() => this.onCapacity(link.workerId));
        break;
      }
      case "offer": {
        const link = this.directory.get(event.workerId);
        const sent =
          link?.connected &&
          transport.send(link.connectionId, {
            type: "availability_request",
            job_id: record.id,
            agent_name: record.agentName,
            ...(record.roomId ? { room_id: record.roomId } : {}),
            ...(Object.keys(record.metadata).length ? { metadata: record.metadata } : {}),
          });
        // Past the trace (which saw no answer), so the offer is counted and traced as `no_answer`.
        if (!sent) live.actor.send({ type: "answer", workerId: event.workerId, available: false });
        break;
      }
      case "forward": {
        const view = this.deps.bus?.remoteViews().find((v) => v.workerId === event.workerId);
        const forwarded = view
          ? this.node.forward(record, view, event.tried, event.hops, live.room)
          : Promise.reject(new Error(`the node of worker ${event.workerId} is no longer known`));
        this.#handingOn.set(record.id, event.hops);
        const settled = (): void => {
          if (this.#handingOn.get(record.id) === event.hops) this.#handingOn.delete(record.id);
        };
        // Not handed off, so still this node's: dispatched here again (an assignment is fenced on the
        // record's node, so even a hand-off that did happen unseen cannot make it run twice).
        this.persist(
          forwarded.then(settled, (error: Error) => {
            settled();
            this.deps.logger.warn(
              { jobId: record.id, err: error.message },
              "forwarding a job failed: dispatching it here",
            );
            if (this.#closing || this.#live.has(record.id)) return;
            this.start(record, {
              origin: "resumed",
              tried: event.tried,
              hops: event.hops,
              ...(live.room ? { room: live.room } : {}),
            });
          }),
        );
        break;
      }
      case "bind":
        this.directory.get(event.workerId)?.jobs.add(record.id);
        this.onViewChanged(event.workerId);
        break;
      case "unbind":
        if (this.directory.get(event.workerId)?.jobs.delete(record.id)) this.onCapacity(event.workerId);
        break;
      case "assign": {
        const sentAt = this.deps.clock.now();
        this.persist(
          this.node.fenceAssignment(record, event.workerId).then((safe) => {
            if (this.#live.get(record.id) !== live) return;
            if (!safe) {
              this.deps.logger.warn({ jobId: record.id }, "job taken over by another node: not assigned here");
              live.actor.send({ type: "taken_over" });
              return;
            }
            live.ownedAt = Math.max(live.ownedAt, sentAt);
            live.actor.send({ type: "assignment_fenced", workerId: event.workerId });
          }),
        );
        break;
      }
      case "send_assignment":
        this.#sendAssignment(live, event.workerId);
        break;
      case "terminate": {
        const link = this.directory.get(event.workerId);
        if (link)
          transport.send(link.connectionId, { type: "job_termination", job_id: record.id, reason: event.reason });
        break;
      }
      case "status":
        // The first start of a dispatch made here (an adopted one starts running, and a fenced one was
        // started by a node that died: no latency to tell).
        if (event.status === "running" && event.attempts === 1 && live.measuresLatency) {
          // A forwarded record was created by another node, whose clock may be a little ahead.
          this.deps.metrics.dispatchLatency.observe(Math.max(0, this.deps.clock.now() - record.createdAt) / 1000);
        }
        this.persist(
          this.#updateOrWriteBack(live, {
            status: event.status,
            attempts: event.attempts,
            ...(event.workerId ? { workerId: event.workerId } : {}),
          }),
        );
        break;
      case "finished": {
        const { output } = event;
        this.deps.metrics.finished.inc({ status: output.status, reason: dispatchReasonLabel(output.reason) });
        this.deps.metrics.dispatchDuration.observe((this.deps.clock.now() - record.createdAt) / 1000);
        const log = output.status === "completed" ? "debug" : "info";
        this.deps.logger[log](output, `job ${output.status}`);
        this.#recordFinal(live, output);
        break;
      }
      case "handed_over":
        this.#live.delete(record.id);
        this.deps.logger.info({ jobId: record.id }, "job handed over to another node");
        break;
    }
  }

  /**
   * Writes the dispatch's outcome until the store takes it (see retryWrite). Until then the
   * dispatch stays among this node's, so a sweep never takes its job for one nobody runs.
   */
  #recordFinal(live: LiveDispatch, output: DispatchOutput): void {
    const { record } = live;
    const patch: Partial<JobRecord> = {
      status: output.status,
      attempts: output.attempts,
      ...(output.workerId ? { workerId: output.workerId } : {}),
      ...(output.reason ? { reason: output.reason } : {}),
      ...(output.error ? { error: output.error } : {}),
      ...(output.exitCode !== undefined ? { exitCode: output.exitCode } : {}),
      ...(output.signal !== undefined ? { signal: output.signal } : {}),
    };
    const written = retryWrite({
      write: () => this.#updateOrWriteBack(live, patch),
      clock: this.deps.clock,
      stopped: () => this.#closing,
      onRefused: (error, retryInMs) =>
        this.deps.logger.warn(
          { jobId: record.id, status: output.status, err: error.message, retryInMs },
          "recording a job's outcome failed; retrying",
        ),
    });
    this.persist(
      written.then((after) => {
        if (this.#live.get(record.id) === live) this.#live.delete(record.id);
        if (after) this.#forwardRefusedCancel(after, output.status, output.reason);
      }),
    );
  }

  /**
   * Redis lost its data: every dispatch this node runs whose record is gone writes it back now, as
   * its machine stands, rather than at its next change (which for a running job may be hours away,
   * and never if this node dies first). A dispatch that has ended is writing its outcome already.
   */
  async writeBackLost(): Promise<void> {
    for (const live of [...this.#live.values()]) {
      const snapshot = live.actor.getSnapshot();
      if (snapshot.status !== "active" || this.#live.get(live.record.id) !== live) continue;
      if (await this.deps.store.get(live.record.id)) continue;
      const { workerId, attempts } = snapshot.context;
      await this.#updateOrWriteBack(live, {
        status: recordStatusOf(snapshot.value),
        attempts,
        ...(workerId ? { workerId } : {}),
      });
    }
  }

  /**
   * Updates the dispatch's record; when the store no longer has it (Redis restarted without its
   * data), this node, which still runs the dispatch, writes it back from what it knows first.
   */
  async #updateOrWriteBack(live: LiveDispatch, patch: Partial<JobRecord>): Promise<JobRecord | undefined> {
    const { store, clock, logger } = this.deps;
    const { record } = live;
    const after = await store.update(record.id, patch, this.node.nodeId);
    if (after && isFinal(after.status) && patch.status && !isFinal(patch.status)) this.#endedElsewhere(live, after);
    if (after) return after;
    logger.warn({ jobId: record.id, status: patch.status }, "job record missing from the store: written back");
    // Created live and then changed, so the store files it as a live or a final record as it would
    // have; live as the job was last (with its worker, if it had one): a record that said `pending`
    // meanwhile would be dispatched again by a node that took this one for dead.
    const workerId = patch.workerId ?? live.actor.getSnapshot().context.workerId ?? undefined;
    const status = patch.status && !isFinal(patch.status) ? patch.status : workerId ? "running" : "pending";
    await writeBack(store, {
      ...record,
      status,
      ...(workerId ? { workerId } : {}),
      updatedAt: clock.now(),
      ...(this.node.nodeId ? { node: this.node.nodeId } : {}),
    });
    const written = await store.update(record.id, patch, this.node.nodeId);
    // Lost again in between (Redis restarted empty twice): a final outcome is retried until written.
    if (!written) throw new Error("the job record went missing again while it was written back");
    return written;
  }

  /**
   * Another node gave the job its outcome while this dispatch still ran (it took this node for dead
   * and cancelled it, or recorded its worker's end): this dispatch stops, the job cancelled on its
   * worker if that was the outcome, and writes nothing more (the record is final).
   */
  #endedElsewhere(live: LiveDispatch, record: JobRecord): void {
    if (this.#live.get(record.id) !== live) return;
    this.deps.logger.warn({ jobId: record.id, status: record.status }, "job ended by another node: dispatch stopped");
    if (record.status === "cancelled") live.actor.send({ type: "cancel", reason: record.reason ?? "cancelled" });
    else live.actor.send({ type: "taken_over" });
  }

  /** Stopped: a closing node starts and records nothing more. */
  get closed(): boolean {
    return this.#closing;
  }

  /** Set by the core: capacity on this worker may have grown. */
  onCapacity: (workerId: string) => void = () => {};
  /** Set by the core: the worker took on work (other nodes should hear of it). */
  onViewChanged: (workerId: string) => void = () => {};

  /**
   * A cancel this node carried out but could not record, because the job had moved to another node
   * in between (a reaper that took this node for dead): the new owner carries it out instead.
   */
  #forwardRefusedCancel(after: JobRecord | undefined, status: string, reason: string | undefined): void {
    if (!after || status !== "cancelled" || this.node.owns(after)) return;
    this.node.cancelElsewhere(after, reason ?? "cancelled by request");
  }

  #sendAssignment(live: LiveDispatch, workerId: string): void {
    const { record } = live;
    const link = this.directory.get(workerId);
    if (!link) return;
    if (record.redispatch && !this.vouchesFor(live)) {
      // Its lease would count from now, when another node may already count it as a dead node's
      // job: not sent, and the running deadline lets the job go elsewhere, fenced.
      this.deps.logger.warn(
        { jobId: record.id, workerId },
        "not assigning a redispatch job: this node may be taken for dead",
      );
      return;
    }
    live.assignedAt = this.deps.clock.now();
    this.deps.transport.send(link.connectionId, {
      type: "job_assignment",
      job_id: record.id,
      agent_name: record.agentName,
      ...(record.roomId ? { room_id: record.roomId } : {}),
      ...(live.room ? { token: live.room.token, url: live.room.url } : {}),
      room_options: record.roomOptions,
      metadata: record.metadata,
      ...(record.maxDuration ? { max_duration: record.maxDuration } : {}),
      ...(record.redispatch ? { lease_ms: this.deps.timing.leaseMs } : {}),
      ...live.trace.assignmentCarrier(),
    });
  }
}

/** The status a live dispatch's record has in each state of its machine (the one it last wrote). */
function recordStatusOf(value: unknown): "pending" | "offering" | "assigned" | "running" {
  if (typeof value !== "object" || value === null) return "running";
  const { unassigned, bound } = value as { unassigned?: string; bound?: string };
  if (unassigned !== undefined) return unassigned === "offering" ? "offering" : "pending";
  if (bound === "assigned" || bound === "unconfirmed" || bound === "releasing") return "assigned";
  return "running";
}
