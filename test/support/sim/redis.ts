import { MemoryJobStore } from "../../../src/registry/store.ts";
import type { SimClock } from "./clock.ts";
import type { Rng } from "./random.ts";

/** Why Redis does not answer a client: `fail` rejects its calls, `hang` holds them until it is back. */
export interface Outage {
  until: number;
  mode: "fail" | "hang";
}

/** How the pub/sub channels misbehave while faults are on (probabilities per delivery, and a delay). */
export interface BusFaults {
  lose: number;
  duplicate: number;
  /** Up to this much more delay for a delivery (so messages may overtake each other). */
  maxDelayMs: number;
}

/** A message in a node's inbox stream. */
export interface InboxEntry {
  id: number;
  text: string;
  /** When the reader can see it: the bus's delay (entries of one stream stay in order). */
  visibleAt: number;
  /** When it was last read (it is then in the consumer group's pending list until acknowledged). */
  deliveredAt: number | undefined;
}

/** A node's inbox: a Redis Stream with one consumer group, as src/registry/cluster/inbox.ts reads it. */
class SimInbox {
  entries: InboxEntry[] = [];
  nextId = 1;
  lastVisibleAt = Number.NEGATIVE_INFINITY;
  waiters: (() => void)[] = [];

  wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const waiter of waiters) waiter();
  }
}

/** One registry node's connection to Redis; a crashed node's client is dead and hears no replies. */
export class RedisClient {
  dead = false;
  /**
   * Its process died loudly (the kernel reset its connections): Redis drops its blocked reads at
   * once. A client that died silently keeps them until TCP notices, and they take what arrives.
   */
  reset = false;
  /** When its last command runs: one connection, so its commands run in the order sent. */
  lastAt = Number.NEGATIVE_INFINITY;
  constructor(
    /** The node's place in the cluster: a Redis outage of one node's link is by slot. */
    readonly slot: number,
    readonly name: string,
  ) {}
}

type Subscriber = {
  client: RedisClient;
  onMessage: (channel: string, text: string) => void;
  /** When its last message arrives: a subscription delivers in publish order. */
  lastAt: number;
};

/**
 * The shared Redis of a simulated cluster: the job records (the in-memory store, whose claims and
 * conditional updates are atomic like the Redis store's Lua scripts), the shared worker views,
 * node presence keys with expiry, locks, and pub/sub. Every call travels to it and back with a
 * latency, runs atomically when it arrives, and meets the outages in force: Redis down for all, or
 * one node's link to it down; calls then fail or hang until it is back. Pub/sub is at most once (a
 * node not subscribed when a message is published never gets it) and, while faults are on, loses,
 * duplicates and delays messages (in order: a subscription is one connection).
 */
export class SimRedis {
  records = new MemoryJobStore({ retainRecords: Number.POSITIVE_INFINITY });
  readonly views = new Map<string, string>();
  readonly alive = new Map<string, number>();
  readonly nodes = new Set<string>();
  readonly diedAt = new Map<string, number>();
  readonly locks = new Map<string, { value: string; expiresAt: number }>();
  readonly inboxes = new Map<string, SimInbox>();
  /** The cluster's epoch key (SETNX by the first node to renew): gone with the data. */
  epoch: string | undefined;
  readonly #clients = new Set<RedisClient>();
  readonly #subscribers = new Map<string, Subscriber[]>();
  outage: Outage | undefined;
  readonly linkOutages = new Map<number, Outage>();
  busFaults: BusFaults | undefined;
  /** While faults are on, the chance that a command is slow (up to 3 s; the client's later commands wait behind it). */
  slowCommandChance = 0;
  /** Counted for the report: messages the bus lost or doubled. */
  readonly faultCounts = { lost: 0, duplicated: 0 };

  constructor(
    private readonly clock: SimClock,
    private readonly rng: Rng,
  ) {}

  /** When the last command already sent by a live client runs (a slow one holds up those behind it). */
  backlogClearsAt(): number {
    let at = this.clock.now();
    for (const client of this.#clients) if (!client.dead) at = Math.max(at, client.lastAt);
    return at;
  }

  /** The outage this client meets now, if any. */
  downFor(client: RedisClient): Outage | undefined {
    const now = this.clock.now();
    const link = this.linkOutages.get(client.slot);
    if (this.outage && this.outage.until > now) return this.outage;
    if (link && link.until > now) return link;
    return undefined;
  }

  #latency(): number {
    return this.rng.chance(0.05) ? this.rng.int(5, 40) : this.rng.int(0, 2);
  }

  /** One command: sent now, run atomically when it arrives, answered there (a dead client hears nothing). */
  call<T>(client: RedisClient, label: string, op: () => T | Promise<T>): Promise<T> {
    this.#clients.add(client);
    return new Promise<T>((resolve, reject) => {
      const attempt = () => {
        // Still in the client's queue when its process died: never sent.
        if (client.dead) return;
        const down = this.downFor(client);
        if (down?.mode === "fail") {
          // ioredis retries a few times before it gives up on a command.
          this.clock.after(this.rng.int(20, 300), () => {
            if (!client.dead) reject(new Error(`redis unavailable: ${label}`));
          });
          return;
        }
        if (down) {
          this.clock.at(down.until, attempt);
          return;
        }
        const slow =
          this.slowCommandChance > 0 && this.rng.chance(this.slowCommandChance) ? this.rng.int(100, 3_000) : 0;
        const at = Math.max(this.clock.now() + this.#latency() + slow, client.lastAt);
        client.lastAt = at;
        this.clock.at(at, () => {
          const late = this.downFor(client);
          if (late) {
            if (late.mode === "hang") this.clock.at(late.until, attempt);
            else if (!client.dead) reject(new Error(`redis unavailable: ${label}`));
            return;
          }
          Promise.resolve()
            .then(op)
            .then(
              (value) => {
                if (!client.dead) resolve(value);
              },
              (error: unknown) => {
                if (!client.dead) reject(error);
              },
            );
        });
      };
      attempt();
    });
  }

  /** Subscribes when the command arrives: messages published before then are not this client's. */
  subscribe(client: RedisClient, channels: string[], onMessage: Subscriber["onMessage"]): Promise<void> {
    return this.call(client, "subscribe", () => {
      for (const channel of channels) {
        const list = this.#subscribers.get(channel) ?? [];
        list.push({ client, onMessage, lastAt: Number.NEGATIVE_INFINITY });
        this.#subscribers.set(channel, list);
      }
    });
  }

  /** Takes a client's subscriptions away at once (its process died or closed). */
  unsubscribeAll(client: RedisClient): void {
    for (const [channel, list] of this.#subscribers) {
      this.#subscribers.set(
        channel,
        list.filter((s) => s.client !== client),
      );
    }
  }

  publish(client: RedisClient, channel: string, text: string): Promise<number> {
    return this.call(client, `publish ${channel}`, () => {
      const list = this.#subscribers.get(channel) ?? [];
      for (const subscriber of list) this.#deliver(subscriber, channel, text);
      return list.length;
    });
  }

  #deliver(subscriber: Subscriber, channel: string, text: string): void {
    const faults = this.busFaults;
    let copies = 1;
    if (faults && this.rng.chance(faults.lose)) {
      this.faultCounts.lost++;
      copies = 0;
    } else if (faults && this.rng.chance(faults.duplicate)) {
      this.faultCounts.duplicated++;
      copies = 2;
    }
    for (let i = 0; i < copies; i++) {
      const delay = this.#latency() + (faults ? this.rng.int(0, faults.maxDelayMs) : 0);
      const at = Math.max(this.clock.now() + delay, subscriber.lastAt);
      subscriber.lastAt = at;
      this.clock.at(at, () => {
        // A subscriber whose link to Redis is down misses what is published meanwhile.
        if (subscriber.client.dead || this.downFor(subscriber.client)) return;
        subscriber.onMessage(channel, text);
      });
    }
  }

  #inbox(nodeId: string): SimInbox {
    let inbox = this.inboxes.get(nodeId);
    if (!inbox) {
      inbox = new SimInbox();
      this.inboxes.set(nodeId, inbox);
    }
    return inbox;
  }

  /**
   * XADD to a node's inbox (run inside a call). A stream keeps what it is given: the bus's faults
   * delay it (in order) and, as a sender retrying an XADD whose reply it missed would, add it twice;
   * they never lose it.
   */
  xadd(nodeId: string, text: string): void {
    const inbox = this.#inbox(nodeId);
    const faults = this.busFaults;
    const copies = faults && this.rng.chance(faults.duplicate) ? 2 : 1;
    if (copies === 2) this.faultCounts.duplicated++;
    for (let i = 0; i < copies; i++) {
      const delay = faults ? this.rng.int(0, faults.maxDelayMs) : 0;
      const visibleAt = Math.max(this.clock.now() + delay, inbox.lastVisibleAt);
      inbox.lastVisibleAt = visibleAt;
      inbox.entries.push({ id: inbox.nextId++, text, visibleAt, deliveredAt: undefined });
      this.clock.at(visibleAt, () => inbox.wake());
    }
  }

  /** XREADGROUP ... > (run inside a call): new visible entries, waiting up to `blockMs` for one. */
  readInbox(nodeId: string, blockMs: number, reader: RedisClient): Promise<InboxEntry[]> {
    const inbox = this.#inbox(nodeId);
    const take = () => {
      const now = this.clock.now();
      const fresh = inbox.entries
        .filter((entry) => entry.deliveredAt === undefined && entry.visibleAt <= now)
        .slice(0, 100);
      for (const entry of fresh) entry.deliveredAt = now;
      return fresh;
    };
    const ready = take();
    if (ready.length > 0) return Promise.resolve(ready);
    return new Promise((resolve) => {
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        inbox.waiters = inbox.waiters.filter((waiter) => waiter !== finish);
        resolve(reader.reset ? [] : take());
      };
      inbox.waiters.push(finish);
      this.clock.after(blockMs, finish);
    });
  }

  /** XAUTOCLAIM (run inside a call): entries read at least `minIdleMs` ago and not acknowledged. */
  reclaimInbox(nodeId: string, minIdleMs: number): InboxEntry[] {
    const now = this.clock.now();
    const idle = this.#inbox(nodeId)
      .entries.filter((entry) => entry.deliveredAt !== undefined && now - entry.deliveredAt >= minIdleMs)
      .slice(0, 100);
    for (const entry of idle) entry.deliveredAt = now;
    return idle;
  }

  /** XACK + XDEL. */
  ack(nodeId: string, ids: number[]): void {
    const inbox = this.#inbox(nodeId);
    const acked = new Set(ids);
    inbox.entries = inbox.entries.filter((entry) => !acked.has(entry.id));
  }

  /** DEL of a forgotten node's inbox. */
  dropInbox(nodeId: string): void {
    this.inboxes.delete(nodeId);
  }

  /** SET key PX ttl NX for locks: true when this client took it. */
  lock(key: string, value: string, ttlMs: number): boolean {
    const now = this.clock.now();
    const held = this.locks.get(key);
    if (held && held.expiresAt > now) return false;
    this.locks.set(key, { value, expiresAt: now + ttlMs });
    return true;
  }

  /**
   * Redis restarted without its data: records, views, presence, members, locks and inboxes are
   * gone (a reader blocked on an inbox stays blocked, as ioredis reconnects it and the loop
   * recreates its group). Subscriptions stay: ioredis subscribes again on reconnecting.
   */
  wipe(): void {
    this.records = new MemoryJobStore({ retainRecords: Number.POSITIVE_INFINITY });
    this.views.clear();
    this.alive.clear();
    this.nodes.clear();
    this.diedAt.clear();
    this.locks.clear();
    this.epoch = undefined;
    for (const inbox of this.inboxes.values()) inbox.entries = [];
  }

  isAlive(nodeId: string): boolean {
    return (this.alive.get(nodeId) ?? Number.NEGATIVE_INFINITY) > this.clock.now();
  }
}
