import type { JobRecord, JobStore } from "../store.ts";
import type { ClusterHost } from "./cluster.ts";
import type { NodeMessage, WorkerView } from "./messages.ts";

/**
 * What housekeeping needs from Redis beyond the job store, each a command or two. RegistryCluster
 * implements it with ioredis; the cluster simulation with its simulated Redis, so that both run the
 * decisions below.
 */
export interface HousekeepingRedis {
  /** Every node that joined (SMEMBERS nodes), with whether its presence key is set (MGET). */
  nodes(): Promise<{ id: string; alive: boolean }[]>;
  /** SET reaping:<node> <this node> PX ttl NX: true when this node took the lock. */
  lockReaping(deadNode: string, ttlMs: number): Promise<boolean>;
  /** SET diedAt:<node> now NX, then GET: when the node was first found dead. */
  diedAt(deadNode: string, now: number): Promise<number>;
  /** Deletes the shared worker views the dead node still holds. */
  dropViewsOf(deadNode: string): Promise<void>;
  /** Every job of the dead node is settled: it leaves the member set, and its inbox goes. */
  forget(deadNode: string): Promise<void>;
  /**
   * Claims a job of a node found dead for this one (as JobStore.claim), in one step with checking
   * that node's presence key is still gone: a node that was only slow and has renewed keeps its jobs.
   */
  claimFromDead(jobId: string, deadNode: string): Promise<JobRecord | undefined>;
}

export interface HousekeepingSettings {
  nodeId: string;
  heartbeatMs: number;
  /** After a node dies, how long its workers have to turn up elsewhere before their jobs are settled. */
  workerDeadlineMs: number;
  sweepMs: number;
  /** Milliseconds since the epoch. */
  now: () => number;
}

export interface HousekeepingLogger {
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
}

export type Settlement = "dispatched_again" | "resumed_here" | "sent_to_worker_node" | "lost";

/**
 * One registry node's round of cluster housekeeping, without timers or I/O of its own: which nodes
 * are alive, the reaper that settles the jobs of dead nodes (once, by atomic claims), and the sweep
 * for jobs recorded as this node's that it runs no dispatch for.
 */
export class ClusterHousekeeping {
  #liveNodes = new Set<string>();
  /** Jobs recorded as this node's that it ran no dispatch for at the last sweep, by when first seen so. */
  #unattended = new Map<string, number>();
  #lastSweep: number;
  #host: ClusterHost | undefined;

  constructor(
    private readonly settings: HousekeepingSettings,
    private readonly redis: HousekeepingRedis,
    private readonly store: JobStore,
    /** Workers connected to other nodes, as they last published them (the cluster's map). */
    private readonly remote: Map<string, WorkerView>,
    private readonly send: (nodeId: string, message: NodeMessage) => void,
    private readonly logger: HousekeepingLogger,
    /** This node is about to settle the jobs of a node it found dead (the simulation checks it was). */
    private readonly onReap: (deadNode: string) => void = () => {},
  ) {
    this.#lastSweep = settings.now();
  }

  attach(host: ClusterHost): void {
    this.#host = host;
  }

  isLive(nodeId: string): boolean {
    return this.#liveNodes.has(nodeId);
  }

  /** Learns which nodes are alive; returns the others that ever joined (this one aside). */
  async refreshNodes(): Promise<string[]> {
    const live = new Set<string>();
    const dead: string[] = [];
    for (const { id, alive } of await this.redis.nodes()) {
      if (alive) live.add(id);
      else if (id !== this.settings.nodeId) dead.push(id);
    }
    this.#liveNodes = live;
    return dead;
  }

  /** One round: node liveness, the reaper for each dead node, the sweep when it is due, the hand-offs taken. */
  async round(): Promise<void> {
    const dead = await this.refreshNodes();
    for (const nodeId of dead) await this.#reapIfFirst(nodeId);
    if (this.settings.now() - this.#lastSweep >= this.settings.sweepMs) {
      this.#lastSweep = this.settings.now();
      await this.#sweepOwn();
    }
    // Last: a backlog of hand-offs to check never delays finding a dead node.
    await this.#host?.pruneHandOffs();
  }

  /** One node at a time settles a dead node; the claims inside make even a late second one harmless. */
  async #reapIfFirst(deadNode: string): Promise<void> {
    if (!(await this.redis.lockReaping(deadNode, 2 * this.settings.heartbeatMs))) return;
    const diedAt = await this.redis.diedAt(deadNode, this.settings.now());
    // Found dead for two heartbeats at least: a live node whose presence key Redis lost (it restarted
    // empty) has renewed by then, and is not settled while it still runs its jobs.
    if (this.settings.now() - diedAt < 2 * this.settings.heartbeatMs) return;
    await this.#reap(deadNode, diedAt);
  }

  /**
   * A dead node's jobs: one that had no worker yet is dispatched again here; one whose worker
   * re-registered somewhere goes to that node; one whose worker has not come back by the deadline
   * ends `lost` (or is dispatched again when it asked for that).
   */
  async #reap(deadNode: string, diedAt: number): Promise<void> {
    const host = this.#host;
    if (!host) return;
    const { nodeId } = this.settings;
    this.onReap(deadNode);
    for (const [workerId, view] of this.remote) {
      if (view.nodeId === deadNode) this.remote.delete(workerId);
    }
    await this.redis.dropViewsOf(deadNode);
    const orphans = (await this.store.listActive()).filter((record) => record.node === deadNode);
    const pastDeadline = this.settings.now() - diedAt >= this.settings.workerDeadlineMs;
    if (orphans.length === 0 && pastDeadline) {
      await this.redis.forget(deadNode);
      this.logger.info({ deadNode }, "settled every job of a dead registry node");
      return;
    }
    for (const stale of orphans) {
      // A bound job whose worker has turned up nowhere yet is left alone until the deadline: the
      // worker may still re-register somewhere with it.
      const workerId = boundWorker(stale);
      if (workerId && !this.#whereNow(host, workerId) && !pastDeadline) continue;
      // Claimed first, then decided on the record as the claim found it: the dead node may have
      // bound the job after the listing above (it was only slow, not dead), and then it is running.
      const claimed = await this.redis.claimFromDead(stale.id, deadNode);
      if (!claimed) continue;
      // Told even though it is believed dead: one that was only slow must let go of the job.
      this.send(deadNode, { type: "handover", jobId: claimed.id, to: nodeId });
      const decision = await this.#settle(host, claimed, "worker did not come back after its registry node died");
      this.logger.info({ jobId: claimed.id, deadNode, decision }, "took over a job of a dead registry node");
    }
  }

  /**
   * A job recorded as this node's with no dispatch running for it here: one whose hand-off message
   * is still waiting in this node's inbox (it is seen on two sweeps before anything is done), one
   * whose message handler failed, or a job of an earlier process under the same node id. Seen so on
   * two sweeps in a row, it is settled as a dead node's job is.
   */
  async #sweepOwn(): Promise<void> {
    const host = this.#host;
    if (!host) return;
    const now = this.settings.now();
    const unattended = new Map<string, number>();
    for (const record of await this.store.listActive()) {
      if (record.node !== this.settings.nodeId || host.hasDispatch(record.id)) continue;
      const since = this.#unattended.get(record.id);
      const workerId = boundWorker(record);
      const waitForWorker = workerId !== undefined && !this.#whereNow(host, workerId);
      if (since === undefined || (waitForWorker && now - since < this.settings.workerDeadlineMs)) {
        unattended.set(record.id, since ?? now);
        continue;
      }
      // A hand-off that arrived during the listing started a dispatch after all.
      if (host.hasDispatch(record.id)) continue;
      const decision = await this.#settle(host, record, "its worker did not come back");
      this.logger.warn({ jobId: record.id, decision }, "picked up a job this node held without running its dispatch");
    }
    this.#unattended = unattended;
  }

  /** Decides the fate of one job this node has just taken charge of; says which it was. */
  async #settle(host: ClusterHost, claimed: JobRecord, lostReason: string): Promise<Settlement> {
    const { nodeId } = this.settings;
    const bound = boundWorker(claimed);
    if (!bound) {
      host.resume(claimed);
      return "dispatched_again";
    }
    const node = this.#whereNow(host, bound);
    if (node === nodeId) {
      host.resume(claimed, bound);
      return "resumed_here";
    }
    if (node) {
      this.send(node, { type: "adopt", jobId: claimed.id, workerId: bound, from: nodeId });
      return "sent_to_worker_node";
    }
    if (claimed.redispatch) {
      const again = await this.store.update(
        claimed.id,
        { status: "pending", reason: "worker lost with its registry node; dispatched again" },
        nodeId,
      );
      // Its worker may still run it under the lease the dead node last renewed: offered once that has run out.
      if (again) host.resume(again, undefined, bound);
      return "dispatched_again";
    }
    await this.store.update(claimed.id, { status: "lost", reason: lostReason }, nodeId);
    this.logger.warn({ jobId: claimed.id, workerId: bound, reason: lostReason }, "job lost");
    return "lost";
  }

  /** The node the worker is connected to now: this one, another live one, or none. */
  #whereNow(host: ClusterHost, workerId: string): string | undefined {
    if (host.hasWorker(workerId)) return this.settings.nodeId;
    const view = this.remote.get(workerId);
    return view && this.#liveNodes.has(view.nodeId) ? view.nodeId : undefined;
  }
}

/** The worker a job is bound to: assigned or running there. */
function boundWorker(record: JobRecord): string | undefined {
  return record.workerId && (record.status === "assigned" || record.status === "running") ? record.workerId : undefined;
}
