import { randomUUID } from "node:crypto";
import { Redis } from "ioredis";
import type { Logger } from "../../observability/logger.ts";
import type { JobRecord, RetentionOptions } from "../store.ts";
import { DataEpoch } from "./data-epoch.ts";
import { ClusterHousekeeping, type HousekeepingRedis } from "./housekeeping.ts";
import { INBOX_LENGTH, NodeInbox } from "./inbox.ts";
import { type NodeMessage, nodeMessage, type ViewMessage, viewMessage, type WorkerView } from "./messages.ts";
import { Presence } from "./presence.ts";
import { RedisJobStore } from "./redis-store.ts";

export interface ClusterSettings {
  redisUrl: string;
  /** Key and channel prefix; nodes of one cluster share it. Default "troupe:". */
  prefix?: string;
  nodeId?: string;
  /** How often a node renews its presence and looks for dead nodes. Default 1 s. */
  heartbeatMs?: number;
  /** A node silent this long is dead. Default three heartbeats. */
  nodeTtlMs?: number;
  /**
   * After a node dies, how long its workers have to re-register elsewhere before their running jobs
   * end `lost` (or go out again): the registry's worker liveness deadline.
   */
  workerDeadlineMs: number;
  /** Final job records kept in Redis, by count and by bytes (see RetentionOptions). */
  retention?: RetentionOptions;
  /** How often a node looks for jobs recorded as its own that it runs no dispatch for. Default 10 s. */
  sweepMs?: number;
}

/** What the cluster needs from the registry core on its node. */
export interface ClusterHost {
  /** Resolves once handled; a rejection (the store failed) leaves the message to be read again. */
  onNodeMessage(message: NodeMessage): Promise<void>;
  /** A worker elsewhere changed: dispatches waiting for capacity may try it. */
  onRemoteView(view: WorkerView): void;
  hasWorker(workerId: string): boolean;
  /** This node runs a dispatch (offering, waiting, or watching a running job) for the job. */
  hasDispatch(jobId: string): boolean;
  /**
   * Run this node's dispatch for a record it has just claimed; adopted when `runningOn` is given.
   * `fencedFrom`: the worker that had it is nowhere, but may still run it under a lease another node
   * renewed; it is offered elsewhere once that has surely run out.
   */
  resume(record: JobRecord, runningOn?: string, fencedFrom?: string): void;
  /** Redis lost its data: what this node holds in memory is written back. */
  recoverLostRecords(): Promise<void>;
  /** Each housekeeping round: the hand-offs this node made that their node has taken are forgotten. */
  pruneHandOffs(): Promise<void>;
}

// KEYS: workers hash. ARGV: workerId, nodeId. Deletes the view only while that node still holds it.
const DROP_VIEW = `
local value = redis.call('HGET', KEYS[1], ARGV[1])
if value and cjson.decode(value).nodeId == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) return 1 end
return 0
`;

/**
 * One registry node's membership in a cluster sharing a Redis: its presence key, the shared view of
 * every worker (a hash, plus pub/sub so each node's copy stays current), an inbox per node for
 * hand-offs, cancels and adoptions (a Redis Stream: acknowledged, so nothing sent is lost), and the
 * reaper that settles the jobs of dead nodes, once, by atomic claims.
 */
export class RegistryCluster {
  readonly nodeId: string;
  readonly store: RedisJobStore;
  /** Workers connected to other nodes, as they last published them. */
  readonly remote = new Map<string, WorkerView>();
  readonly #redis: Redis;
  readonly #sub: Redis;
  /** Blocking reads of this node's inbox hold a connection of their own. */
  readonly #reader: Redis;
  readonly #inbox: NodeInbox;
  readonly #prefix: string;
  readonly #heartbeatMs: number;
  readonly #nodeTtlMs: number;
  readonly #housekeeping: ClusterHousekeeping;
  readonly #presence: Presence;
  #host: ClusterHost | undefined;
  /** Presence renewal, on its own schedule: slow reaping or sweeping must never make this node look dead. */
  #presenceTimer: NodeJS.Timeout | undefined;
  /** The next round of node-liveness, reaping and sweeping work, scheduled when the last one ends. */
  #housekeepingTimer: NodeJS.Timeout | undefined;
  #closed = false;
  readonly #epoch: DataEpoch;

  private constructor(
    settings: ClusterSettings,
    private readonly logger: Logger,
  ) {
    this.nodeId = settings.nodeId ?? `node-${randomUUID().slice(0, 8)}`;
    this.#prefix = settings.prefix ?? "troupe:";
    this.#heartbeatMs = settings.heartbeatMs ?? 1_000;
    this.#nodeTtlMs = settings.nodeTtlMs ?? 3 * this.#heartbeatMs;
    this.#presence = new Presence(this.#nodeTtlMs, () => Date.now());
    this.#epoch = new DataEpoch(
      async () => this.#host?.recoverLostRecords(),
      this.#warn("writing back records Redis lost"),
    );
    const connect = (enableAutoPipelining = true) => {
      const client = new Redis(settings.redisUrl, { maxRetriesPerRequest: 3, enableAutoPipelining });
      client.on("error", (error) => this.logger.warn({ err: error.message }, "redis connection error"));
      return client;
    };
    this.#redis = connect();
    this.#redis.defineCommand("troupeDropView", { numberOfKeys: 1, lua: DROP_VIEW });
    this.#sub = connect();
    this.#reader = connect(false);
    this.store = new RedisJobStore(this.#redis, { prefix: this.#prefix, ...settings.retention });
    this.#housekeeping = new ClusterHousekeeping(
      {
        nodeId: this.nodeId,
        heartbeatMs: this.#heartbeatMs,
        workerDeadlineMs: settings.workerDeadlineMs,
        sweepMs: settings.sweepMs ?? 10_000,
        now: () => Date.now(),
      },
      this.#housekeepingRedis(),
      this.store,
      this.remote,
      (nodeId, message) => this.send(nodeId, message),
      logger,
    );
    this.#inbox = new NodeInbox({
      key: this.#inboxKey(this.nodeId),
      nodeId: this.nodeId,
      reader: this.#reader,
      commands: this.#redis,
      onMessage: (text) => this.#onNodeMessage(text),
      warn: (what) => this.#warn(what),
    });
  }

  /** Connects, announces the node and loads the workers other nodes hold. */
  static async join(settings: ClusterSettings, logger: Logger): Promise<RegistryCluster> {
    const cluster = new RegistryCluster(settings, logger);
    try {
      await cluster.#start();
    } catch (error) {
      await cluster.close();
      throw new Error(`cannot join the registry cluster at ${settings.redisUrl}: ${(error as Error).message}`);
    }
    return cluster;
  }

  #key(name: string) {
    return `${this.#prefix}${name}`;
  }

  #inboxKey(nodeId: string) {
    return this.#key(`inbox:${nodeId}`);
  }

  async #start(): Promise<void> {
    this.#sub.on("message", (channel: string, text: string) => this.#onMessage(channel, text));
    await this.#sub.subscribe(this.#key("workers"));
    await this.#inbox.open();
    await this.#renew();
    await this.#housekeeping.refreshNodes();
    const views = await this.#redis.hgetall(this.#key("workers"));
    for (const text of Object.values(views)) {
      const parsed = viewMessage.safeParse({ type: "view", view: safeJson(text) });
      if (!parsed.success || parsed.data.type !== "view") continue;
      const view = parsed.data.view;
      if (view.nodeId === this.nodeId) await this.#forgetEarlierLife(view.workerId);
      else this.#takeView(view);
    }
    this.logger.info({ nodeId: this.nodeId }, "joined the registry cluster");
  }

  attach(host: ClusterHost): void {
    this.#host = host;
    this.#housekeeping.attach(host);
    this.#presenceTimer = setInterval(() => this.#renew().catch(this.#warn("presence renewal")), this.#heartbeatMs);
    this.#presenceTimer.unref();
    this.#inbox.run();
    this.#scheduleHousekeeping();
  }

  /** Workers of live nodes other than this one. */
  remoteViews(): WorkerView[] {
    return [...this.remote.values()].filter((view) => this.#housekeeping.isLive(view.nodeId));
  }

  get heartbeatMs(): number {
    return this.#heartbeatMs;
  }

  /** Both Redis connections (commands and subscriptions) are up: the node can serve the cluster. */
  get connected(): boolean {
    return (
      this.#redis.status === "ready" && this.#sub.status === "ready" && this.#reader.status === "ready" && !this.#closed
    );
  }

  publishView(view: WorkerView): void {
    const text = JSON.stringify(view);
    this.#redis.hset(this.#key("workers"), view.workerId, text).catch(this.#warn("publish worker view"));
    this.#publish(this.#key("workers"), { type: "view", view });
  }

  publishGone(workerId: string): void {
    this.#dropView(workerId, this.nodeId).catch(this.#warn("drop worker view"));
    this.#publish(this.#key("workers"), { type: "gone", nodeId: this.nodeId, workerId });
  }

  /**
   * A worker view under this node's id, left by an earlier process that restarted under the same id
   * before the others took it for dead: this process has no workers yet, so that worker is not
   * here, and the other nodes must stop sending its jobs here.
   */
  async #forgetEarlierLife(workerId: string): Promise<void> {
    await this.#dropView(workerId, this.nodeId);
    this.#publish(this.#key("workers"), { type: "gone", nodeId: this.nodeId, workerId });
  }

  /** Deletes the worker's shared view, but only while the given node still holds it. */
  #dropView(workerId: string, nodeId: string): Promise<number> {
    const redis = this.#redis as Redis & { troupeDropView(...args: string[]): Promise<number> };
    return redis.troupeDropView(this.#key("workers"), workerId, nodeId);
  }

  /** Into the node's inbox: kept in Redis until that node has handled it (see NodeInbox). */
  send(nodeId: string, message: NodeMessage): void {
    this.#redis
      .xadd(this.#inboxKey(nodeId), "MAXLEN", "~", INBOX_LENGTH, "*", "message", JSON.stringify(message))
      .catch(this.#warn(`send to node ${nodeId}`));
  }

  /** Claims the job for `to` and puts the message in its inbox, in one step (see claimAndSend). */
  async handOff(jobId: string, to: string, message: NodeMessage): Promise<JobRecord | undefined> {
    return this.store.claimAndSend(jobId, this.nodeId, to, this.#inboxKey(to), JSON.stringify(message), INBOX_LENGTH);
  }

  isLive(nodeId: string): boolean {
    return nodeId === this.nodeId || this.#housekeeping.isLive(nodeId);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#presenceTimer);
    clearTimeout(this.#housekeepingTimer);
    this.#inbox.close();
    // Gone at once rather than after its TTL, so the other nodes start settling its jobs now.
    await this.#redis.del(this.#key(`nodeAlive:${this.nodeId}`)).catch(() => {});
    this.#sub.disconnect();
    this.#reader.disconnect();
    await this.store.close();
  }

  #publish(channel: string, message: ViewMessage): void {
    this.#redis.publish(channel, JSON.stringify(message)).catch(this.#warn(`publish to ${channel}`));
  }

  #warn(what: string) {
    return (error: Error) => {
      if (!this.#closed) this.logger.warn({ err: error.message }, `redis: ${what} failed`);
    };
  }

  #onMessage(channel: string, text: string): void {
    if (this.#closed || channel !== this.#key("workers")) return;
    const parsed = viewMessage.safeParse(safeJson(text));
    if (!parsed.success) {
      this.logger.warn({ channel }, "ignored a malformed worker view");
      return;
    }
    const message = parsed.data;
    if (message.type === "view") {
      if (message.view.nodeId !== this.nodeId) this.#takeView(message.view);
      // The worker moved here: whatever another node said of it is out of date.
      else this.remote.delete(message.view.workerId);
    } else if (this.remote.get(message.workerId)?.nodeId === message.nodeId) {
      this.remote.delete(message.workerId);
    }
  }

  async #onNodeMessage(text: string): Promise<void> {
    const parsed = nodeMessage.safeParse(safeJson(text));
    if (!parsed.success) {
      this.logger.warn({ inbox: this.#inboxKey(this.nodeId) }, "ignored a malformed node message");
      return;
    }
    await this.#host?.onNodeMessage(parsed.data);
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
      this.#redis
        .multi()
        .set(this.#key(`nodeAlive:${this.nodeId}`), String(Date.now()), "PX", this.#nodeTtlMs)
        .sadd(this.#key("nodes"), this.nodeId)
        // Alive after all (it was only slow): the clock of a death that did not happen starts over.
        .del(this.#key(`diedAt:${this.nodeId}`))
        .setnx(this.#key("epoch"), randomUUID())
        .get(this.#key("epoch"))
        .exec()
        .then((replies) => {
          const failed = replies?.find(([error]) => error);
          if (!replies || failed) throw failed?.[0] ?? new Error("presence renewal discarded");
          epoch = String(replies[4]?.[1]);
        }),
    );
    if (epoch !== undefined) this.#epoch.observe(epoch);
  }

  presenceHeldSince(): number {
    return this.#closed ? Number.POSITIVE_INFINITY : this.#presence.heldSince();
  }

  /** One round at a time: the next is scheduled only when this one has finished, however long it took. */
  #scheduleHousekeeping(): void {
    if (this.#closed) return;
    this.#housekeepingTimer = setTimeout(() => {
      this.#housekeeping
        .round()
        .catch(this.#warn("cluster housekeeping"))
        .finally(() => this.#scheduleHousekeeping());
    }, this.#heartbeatMs);
    this.#housekeepingTimer.unref();
  }

  /** The Redis commands of housekeeping (see HousekeepingRedis). */
  #housekeepingRedis(): HousekeepingRedis {
    const redis = this.#redis;
    return {
      nodes: async () => {
        const ids = await redis.smembers(this.#key("nodes"));
        const alive = ids.length === 0 ? [] : await redis.mget(...ids.map((id) => this.#key(`nodeAlive:${id}`)));
        return ids.map((id, i) => ({ id, alive: alive[i] !== null }));
      },
      lockReaping: async (deadNode, ttlMs) =>
        (await redis.set(this.#key(`reaping:${deadNode}`), this.nodeId, "PX", ttlMs, "NX")) === "OK",
      diedAt: async (deadNode, now) => {
        await redis.set(this.#key(`diedAt:${deadNode}`), String(now), "NX");
        return Number(await redis.get(this.#key(`diedAt:${deadNode}`)));
      },
      dropViewsOf: async (deadNode) => {
        const views = await redis.hgetall(this.#key("workers"));
        for (const [workerId, text] of Object.entries(views)) {
          if ((safeJson(text) as { nodeId?: string } | undefined)?.nodeId === deadNode) {
            await this.#dropView(workerId, deadNode);
          }
        }
      },
      claimFromDead: (jobId, deadNode) =>
        this.store.claimFromDead(jobId, deadNode, this.nodeId, this.#key(`nodeAlive:${deadNode}`)),
      forget: async (deadNode) => {
        await redis
          .multi()
          .srem(this.#key("nodes"), deadNode)
          .del(this.#key(`diedAt:${deadNode}`))
          // What was still on its way to it: every job of it is settled, so nothing there is needed.
          .del(this.#inboxKey(deadNode))
          .exec();
      },
    };
  }
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
