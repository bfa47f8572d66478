import type { ClusterHost } from "../../../src/registry/cluster/cluster.ts";
import { READ_BLOCK_MS, RECLAIM_EVERY_MS, RECLAIM_IDLE_MS, RETRY_MS } from "../../../src/registry/cluster/inbox.ts";
import {
  type NodeMessage,
  nodeMessage,
  type ViewMessage,
  viewMessage,
  type WorkerView,
} from "../../../src/registry/cluster/messages.ts";
import type { NodeBus } from "../../../src/registry/core/ports.ts";
import type { JobRecord } from "../../../src/registry/store.ts";
import type { SimClock } from "./clock.ts";
import { RedisClient, type SimRedis } from "./redis.ts";
import type { SimStore } from "./store.ts";

export interface ClusterTiming {
  heartbeatMs: number;
  nodeTtlMs: number;
  workerDeadlineMs: number;
  sweepMs: number;
}

/**
 * One node's membership in the simulated cluster: the NodeBus the registry core uses, and the
 * housekeeping of src/registry/cluster/cluster.ts (presence, the reaper of dead nodes, the sweep for
 * jobs a node holds without running their dispatch), carried over line for line onto the simulated
 * Redis. RegistryCluster itself talks to ioredis and its Lua scripts, so it cannot run here: this is
 * a port, kept in step with it by hand (same order of Redis calls, same decisions), and the one part
 * of a simulated node that is not the production code.
 */
export class SimCluster implements NodeBus {
  readonly remote = new Map<string, WorkerView>();
  #liveNodes = new Set<string>();
  #unattended = new Map<string, number>();
  #lastSweep: number;
  #host: ClusterHost | undefined;
  #presenceTimer: number | undefined;
  #housekeepingTimer: number | undefined;
  #closed = false;
  /** Blocking reads of the inbox hold a connection of their own, as in NodeInbox. */
  readonly #reader: RedisClient;

  constructor(
    readonly nodeId: string,
    private readonly redis: SimRedis,
    private readonly client: RedisClient,
    readonly store: SimStore,
    private readonly clock: SimClock,
    private readonly timing: ClusterTiming,
    private readonly log: (message: string) => void,
    /** Parse worker views with their schema (node messages always are). */
    private readonly validateViews: boolean,
    /** This node is about to settle the jobs of a node it found dead (for the checks: was it?). */
    private readonly onReap: (deadNode: string) => void = () => {},
  ) {
    this.#lastSweep = clock.now();
    this.#reader = new RedisClient(client.slot, `${client.name} inbox`);
  }

  /** RegistryCluster.join: subscribe, announce, learn the nodes and the workers other nodes hold. */
  async join(): Promise<void> {
    await this.redis.subscribe(this.client, ["workers"], (channel, text) => this.#onMessage(channel, text));
    await this.#renew();
    await this.#refreshNodes();
    const views = await this.redis.call(this.client, "hgetall workers", () => [...this.redis.views.values()]);
    for (const text of views) {
      const parsed = viewMessage.safeParse({ type: "view", view: JSON.parse(text) });
      if (!parsed.success || parsed.data.type !== "view") continue;
      const view = parsed.data.view;
      if (view.nodeId === this.nodeId) await this.#forgetEarlierLife(view.workerId);
      else this.#takeView(view);
    }
  }

  async #forgetEarlierLife(workerId: string): Promise<void> {
    await this.#dropView(workerId, this.nodeId);
    this.#publish("workers", { type: "gone", nodeId: this.nodeId, workerId });
  }

  attach(host: ClusterHost): void {
    this.#host = host;
    const renewLoop = () => {
      if (this.#closed) return;
      this.#renew().catch(this.#warn("presence renewal"));
      this.#presenceTimer = this.clock.after(this.timing.heartbeatMs, renewLoop);
    };
    this.#presenceTimer = this.clock.after(this.timing.heartbeatMs, renewLoop);
    this.#readInbox(0, Number.NEGATIVE_INFINITY);
    this.#scheduleHousekeeping();
  }

  /**
   * NodeInbox's loop (src/registry/cluster/inbox.ts) on the simulated stream: every pending message
   * taken at the start, then new ones, and those left pending for RECLAIM_IDLE_MS taken again.
   */
  #readInbox(reclaimIdleMs: number, lastReclaim: number): void {
    if (this.#closed) return;
    const reclaimNow = this.clock.now() - lastReclaim >= RECLAIM_EVERY_MS;
    const read = async () => {
      let entries: { id: number; text: string }[] = [];
      if (reclaimNow) {
        entries = await this.redis.call(this.client, "xautoclaim", () =>
          this.redis.reclaimInbox(this.nodeId, reclaimIdleMs),
        );
      }
      if (entries.length === 0) {
        entries = await this.redis.call(this.#reader, "xreadgroup", () =>
          this.redis.readInbox(this.nodeId, READ_BLOCK_MS, this.#reader),
        );
      }
      return this.#handleAll(entries);
    };
    read().then(
      (allHandled) => {
        if (!allHandled) {
          this.clock.after(RETRY_MS, () => this.#readInbox(0, Number.NEGATIVE_INFINITY));
          return;
        }
        this.#readInbox(reclaimNow ? RECLAIM_IDLE_MS : reclaimIdleMs, reclaimNow ? this.clock.now() : lastReclaim);
      },
      (error: Error) => {
        this.#warn("node inbox read")(error);
        this.clock.after(RETRY_MS, () => this.#readInbox(reclaimIdleMs, lastReclaim));
      },
    );
  }

  async #handleAll(entries: { id: number; text: string }[]): Promise<boolean> {
    if (entries.length === 0) return true;
    const outcomes = await Promise.allSettled(entries.map((entry) => this.#onNodeMessage(entry.text)));
    const handled = entries.filter((_, i) => outcomes[i]?.status === "fulfilled").map((entry) => entry.id);
    for (const outcome of outcomes) {
      if (outcome.status === "rejected") this.#warn("node message (it will be taken again)")(outcome.reason as Error);
    }
    if (handled.length > 0) {
      await this.redis
        .call(this.client, "xack", () => this.redis.ack(this.nodeId, handled))
        .catch(this.#warn("node inbox acknowledgement"));
    }
    return handled.length === entries.length;
  }

  async #onNodeMessage(text: string): Promise<void> {
    if (this.#closed) return;
    const parsed = nodeMessage.safeParse(JSON.parse(text));
    if (!parsed.success) return;
    this.log(`inbox ← ${parsed.data.type} ${parsed.data.jobId}`);
    await this.#host?.onNodeMessage(parsed.data);
  }

  remoteViews(): WorkerView[] {
    return [...this.remote.values()].filter((view) => this.#liveNodes.has(view.nodeId));
  }

  get connected(): boolean {
    return !this.#closed && !this.redis.downFor(this.client);
  }

  publishView(view: WorkerView): void {
    const text = JSON.stringify(view);
    this.redis
      .call(this.client, "hset workers", () => this.redis.views.set(view.workerId, text))
      .catch(this.#warn("publish worker view"));
    this.#publish("workers", { type: "view", view });
  }

  publishGone(workerId: string): void {
    this.#dropView(workerId, this.nodeId).catch(this.#warn("drop worker view"));
    this.#publish("workers", { type: "gone", nodeId: this.nodeId, workerId });
  }

  #dropView(workerId: string, nodeId: string): Promise<number> {
    return this.redis.call(this.client, "dropView", () => {
      const text = this.redis.views.get(workerId);
      if (text && (JSON.parse(text) as WorkerView).nodeId === nodeId) {
        this.redis.views.delete(workerId);
        return 1;
      }
      return 0;
    });
  }

  send(nodeId: string, message: NodeMessage): void {
    this.redis
      .call(this.client, "xadd", () => this.redis.xadd(nodeId, JSON.stringify(message)))
      .catch(this.#warn(`send to node ${nodeId}`));
  }

  handOff(jobId: string, to: string, message: NodeMessage): Promise<JobRecord | undefined> {
    return this.store.claimAndSend(jobId, this.nodeId, to, JSON.stringify(message));
  }

  isLive(nodeId: string): boolean {
    return nodeId === this.nodeId || this.#liveNodes.has(nodeId);
  }

  /** A crash: timers gone, subscriptions gone, nothing more heard or said. */
  crash(loud = true): void {
    this.#closed = true;
    this.#reader.dead = true;
    this.#reader.reset = loud;
    this.clock.clearTimeout(this.#presenceTimer);
    this.clock.clearTimeout(this.#housekeepingTimer);
    this.redis.unsubscribeAll(this.client);
  }

  /** RegistryCluster.close: gone at once rather than after its TTL. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#reader.dead = true;
    this.#reader.reset = true;
    this.clock.clearTimeout(this.#presenceTimer);
    this.clock.clearTimeout(this.#housekeepingTimer);
    await this.redis.call(this.client, "del nodeAlive", () => this.redis.alive.delete(this.nodeId)).catch(() => {});
    this.redis.unsubscribeAll(this.client);
  }

  #publish(channel: string, message: ViewMessage): void {
    this.redis.publish(this.client, channel, JSON.stringify(message)).catch(this.#warn(`publish to ${channel}`));
  }

  #warn(what: string) {
    return (error: Error) => {
      if (!this.#closed) this.log(`redis: ${what} failed: ${error.message}`);
    };
  }

  #onMessage(channel: string, text: string): void {
    if (this.#closed || channel !== "workers") return;
    const raw = JSON.parse(text) as unknown;
    let message = raw as ViewMessage;
    if (this.validateViews) {
      const parsed = viewMessage.safeParse(raw);
      if (!parsed.success) return;
      message = parsed.data;
    }
    if (message.type === "view") {
      if (message.view.nodeId !== this.nodeId) this.#takeView(message.view);
      else this.remote.delete(message.view.workerId);
    } else if (this.remote.get(message.workerId)?.nodeId === message.nodeId) {
      this.remote.delete(message.workerId);
    }
  }

  #takeView(view: WorkerView): void {
    if (view.nodeId === this.nodeId) return;
    const known = this.remote.get(view.workerId);
    if (known && known.at > view.at) return;
    this.remote.set(view.workerId, view);
    this.#host?.onRemoteView(view);
  }

  async #renew(): Promise<void> {
    await this.redis.call(this.client, "renew", () => {
      this.redis.alive.set(this.nodeId, this.clock.now() + this.timing.nodeTtlMs);
      this.redis.nodes.add(this.nodeId);
      this.redis.diedAt.delete(this.nodeId);
    });
  }

  async #refreshNodes(): Promise<string[]> {
    const nodes = await this.redis.call(this.client, "smembers nodes", () => [...this.redis.nodes]);
    const alive =
      nodes.length === 0
        ? []
        : await this.redis.call(this.client, "mget nodeAlive", () => nodes.map((id) => this.redis.isAlive(id)));
    const live = new Set<string>();
    const dead: string[] = [];
    nodes.forEach((id, i) => {
      if (alive[i]) live.add(id);
      else if (id !== this.nodeId) dead.push(id);
    });
    this.#liveNodes = live;
    return dead;
  }

  #scheduleHousekeeping(): void {
    if (this.#closed) return;
    this.#housekeepingTimer = this.clock.after(this.timing.heartbeatMs, () => {
      this.#housekeep()
        .catch(this.#warn("cluster housekeeping"))
        .finally(() => this.#scheduleHousekeeping());
    });
  }

  async #housekeep(): Promise<void> {
    try {
      const dead = await this.#refreshNodes();
      for (const nodeId of dead) await this.#reapIfFirst(nodeId);
      if (this.clock.now() - this.#lastSweep >= this.timing.sweepMs) {
        this.#lastSweep = this.clock.now();
        await this.#sweepOwn();
      }
    } catch (error) {
      this.#warn("cluster housekeeping")(error as Error);
    }
  }

  async #reapIfFirst(deadNode: string): Promise<void> {
    const lock = await this.redis.call(this.client, "lock reaping", () =>
      this.redis.lock(`reaping:${deadNode}`, this.nodeId, 2 * this.timing.heartbeatMs),
    );
    if (!lock) return;
    const now = this.clock.now();
    await this.redis.call(this.client, "setnx diedAt", () => {
      if (!this.redis.diedAt.has(deadNode)) this.redis.diedAt.set(deadNode, now);
    });
    const diedAt = await this.redis.call(this.client, "get diedAt", () => this.redis.diedAt.get(deadNode) ?? 0);
    await this.#reap(deadNode, diedAt);
  }

  async #reap(deadNode: string, diedAt: number): Promise<void> {
    const host = this.#host;
    if (!host) return;
    this.onReap(deadNode);
    for (const [workerId, view] of this.remote) {
      if (view.nodeId === deadNode) this.remote.delete(workerId);
    }
    const views = await this.redis.call(this.client, "hgetall workers", () => [...this.redis.views]);
    for (const [workerId, text] of views) {
      if ((JSON.parse(text) as { nodeId?: string }).nodeId === deadNode) await this.#dropView(workerId, deadNode);
    }
    const orphans = (await this.store.listActive()).filter((record) => record.node === deadNode);
    const pastDeadline = this.clock.now() - diedAt >= this.timing.workerDeadlineMs;
    if (orphans.length === 0 && pastDeadline) {
      await this.redis.call(this.client, "forget node", () => {
        this.redis.nodes.delete(deadNode);
        this.redis.diedAt.delete(deadNode);
        this.redis.dropInbox(deadNode);
      });
      this.log(`settled every job of dead node ${deadNode}`);
      return;
    }
    for (const stale of orphans) {
      const whereNow = (id: string) => (host.hasWorker(id) ? this.nodeId : this.#liveNodeOf(id));
      const workerId = boundWorker(stale);
      if (workerId && !whereNow(workerId) && !pastDeadline) continue;
      const claimed = await this.store.claim(stale.id, deadNode, this.nodeId);
      if (!claimed) continue;
      this.send(deadNode, { type: "handover", jobId: claimed.id, to: this.nodeId });
      const decision = await this.#settle(claimed, whereNow, "worker did not come back after its registry node died");
      this.log(`took over ${claimed.id} of dead node ${deadNode}: ${decision}`);
    }
  }

  async #sweepOwn(): Promise<void> {
    const host = this.#host;
    if (!host) return;
    const now = this.clock.now();
    const unattended = new Map<string, number>();
    const whereNow = (id: string) => (host.hasWorker(id) ? this.nodeId : this.#liveNodeOf(id));
    for (const record of await this.store.listActive()) {
      if (record.node !== this.nodeId || host.hasDispatch(record.id)) continue;
      const since = this.#unattended.get(record.id);
      const workerId = boundWorker(record);
      const waitForWorker = workerId !== undefined && !whereNow(workerId);
      if (since === undefined || (waitForWorker && now - since < this.timing.workerDeadlineMs)) {
        unattended.set(record.id, since ?? now);
        continue;
      }
      if (host.hasDispatch(record.id)) continue;
      const decision = await this.#settle(record, whereNow, "its worker did not come back");
      this.log(`picked up ${record.id}, held without a dispatch: ${decision}`);
    }
    this.#unattended = unattended;
  }

  async #settle(
    claimed: JobRecord,
    whereNow: (workerId: string) => string | undefined,
    lostReason: string,
  ): Promise<"dispatched_again" | "resumed_here" | "sent_to_worker_node" | "lost"> {
    const host = this.#host as ClusterHost;
    const bound = boundWorker(claimed);
    if (!bound) {
      host.resume(claimed);
      return "dispatched_again";
    }
    const node = whereNow(bound);
    if (node === this.nodeId) {
      host.resume(claimed, bound);
      return "resumed_here";
    }
    if (node) {
      this.send(node, { type: "adopt", jobId: claimed.id, workerId: bound, from: this.nodeId });
      return "sent_to_worker_node";
    }
    if (claimed.redispatch) {
      const again = await this.store.update(
        claimed.id,
        { status: "pending", reason: "worker lost with its registry node; dispatched again" },
        this.nodeId,
      );
      if (again) host.resume(again);
      return "dispatched_again";
    }
    await this.store.update(claimed.id, { status: "lost", reason: lostReason }, this.nodeId);
    return "lost";
  }

  #liveNodeOf(workerId: string): string | undefined {
    const view = this.remote.get(workerId);
    return view && this.#liveNodes.has(view.nodeId) ? view.nodeId : undefined;
  }
}

function boundWorker(record: JobRecord): string | undefined {
  return record.workerId && (record.status === "assigned" || record.status === "running") ? record.workerId : undefined;
}
