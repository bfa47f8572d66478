import type { ClusterHost } from "../../../src/registry/cluster/cluster.ts";
import { DataEpoch } from "../../../src/registry/cluster/data-epoch.ts";
import { ClusterHousekeeping, type HousekeepingRedis } from "../../../src/registry/cluster/housekeeping.ts";
import { READ_BLOCK_MS, RECLAIM_EVERY_MS, RECLAIM_IDLE_MS, RETRY_MS } from "../../../src/registry/cluster/inbox.ts";
import {
  type NodeMessage,
  nodeMessage,
  type ViewMessage,
  viewMessage,
  type WorkerView,
} from "../../../src/registry/cluster/messages.ts";
import { Presence } from "../../../src/registry/cluster/presence.ts";
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
 * One node's membership in the simulated cluster: the NodeBus the registry core uses. The decisions
 * of housekeeping (node liveness, the reaper of dead nodes, the sweep for jobs a node holds without
 * running their dispatch) are production code, `ClusterHousekeeping`, here on the simulated Redis.
 * What is carried over from src/registry/cluster/cluster.ts by hand (same Redis calls in the same
 * order, as RegistryCluster talks to ioredis and Lua scripts and cannot run here): joining, presence,
 * worker views, and the inbox loop of src/registry/cluster/inbox.ts.
 */
export class SimCluster implements NodeBus {
  readonly remote = new Map<string, WorkerView>();
  readonly #housekeeping: ClusterHousekeeping;
  readonly #presence: Presence;
  #host: ClusterHost | undefined;
  #presenceTimer: number | undefined;
  #housekeepingTimer: number | undefined;
  #closed = false;
  readonly #epoch: DataEpoch;
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
    onReap: (deadNode: string) => void = () => {},
  ) {
    this.#reader = new RedisClient(client.slot, `${client.name} inbox`);
    this.#presence = new Presence(timing.nodeTtlMs, () => clock.now());
    this.#epoch = new DataEpoch(
      async () => this.#host?.recoverLostRecords(),
      this.#warn("writing back records Redis lost"),
    );
    const line = (fields: object, message: string) => this.log(`${message} ${JSON.stringify(fields)}`);
    this.#housekeeping = new ClusterHousekeeping(
      {
        nodeId,
        heartbeatMs: timing.heartbeatMs,
        workerDeadlineMs: timing.workerDeadlineMs,
        sweepMs: timing.sweepMs,
        now: () => clock.now(),
      },
      this.#housekeepingRedis(),
      store,
      this.remote,
      (to, message) => this.send(to, message),
      { info: line, warn: line },
      onReap,
    );
  }

  /** RegistryCluster.join: subscribe, announce, learn the nodes and the workers other nodes hold. */
  async join(): Promise<void> {
    await this.redis.subscribe(this.client, ["workers"], (channel, text) => this.#onMessage(channel, text));
    await this.#renew();
    await this.#housekeeping.refreshNodes();
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
    this.#housekeeping.attach(host);
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
    return [...this.remote.values()].filter((view) => this.#housekeeping.isLive(view.nodeId));
  }

  get heartbeatMs(): number {
    return this.timing.heartbeatMs;
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
    return nodeId === this.nodeId || this.#housekeeping.isLive(nodeId);
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
    let epoch: string | undefined;
    await this.#presence.renew(() =>
      this.redis.call(this.client, "renew", () => {
        this.redis.alive.set(this.nodeId, this.clock.now() + this.timing.nodeTtlMs);
        this.redis.nodes.add(this.nodeId);
        this.redis.diedAt.delete(this.nodeId);
        this.redis.epoch ??= `epoch-${this.nodeId}-${this.clock.now()}`;
        epoch = this.redis.epoch;
      }),
    );
    if (epoch !== undefined) this.#epoch.observe(epoch);
  }

  presenceHeldSince(): number {
    return this.#closed ? Number.POSITIVE_INFINITY : this.#presence.heldSince();
  }

  #scheduleHousekeeping(): void {
    if (this.#closed) return;
    this.#housekeepingTimer = this.clock.after(this.timing.heartbeatMs, () => {
      this.#housekeeping
        .round()
        .catch(this.#warn("cluster housekeeping"))
        .finally(() => this.#scheduleHousekeeping());
    });
  }

  /** RegistryCluster's housekeeping commands, on the simulated Redis (same calls, same order). */
  #housekeepingRedis(): HousekeepingRedis {
    const { redis, client } = this;
    return {
      nodes: async () => {
        const ids = await redis.call(client, "smembers nodes", () => [...redis.nodes]);
        const alive =
          ids.length === 0 ? [] : await redis.call(client, "mget nodeAlive", () => ids.map((id) => redis.isAlive(id)));
        return ids.map((id, i) => ({ id, alive: alive[i] === true }));
      },
      lockReaping: (deadNode, ttlMs) =>
        redis.call(client, "lock reaping", () => redis.lock(`reaping:${deadNode}`, this.nodeId, ttlMs)),
      diedAt: async (deadNode, now) => {
        await redis.call(client, "setnx diedAt", () => {
          if (!redis.diedAt.has(deadNode)) redis.diedAt.set(deadNode, now);
        });
        return redis.call(client, "get diedAt", () => redis.diedAt.get(deadNode) ?? 0);
      },
      dropViewsOf: async (deadNode) => {
        const views = await redis.call(client, "hgetall workers", () => [...redis.views]);
        for (const [workerId, text] of views) {
          if ((JSON.parse(text) as { nodeId?: string }).nodeId === deadNode) await this.#dropView(workerId, deadNode);
        }
      },
      claimFromDead: (jobId, deadNode) => this.store.claimFromDead(jobId, deadNode, this.nodeId),
      forget: (deadNode) =>
        redis.call(client, "forget node", () => {
          redis.nodes.delete(deadNode);
          redis.diedAt.delete(deadNode);
          redis.dropInbox(deadNode);
        }),
    };
  }
}
