import type { JobFilter, JobRecord, JobStore } from "../../../src/registry/store.ts";
import type { SimClock } from "./clock.ts";
import type { RedisClient, SimRedis } from "./redis.ts";

/** A write that reached the shared records: which node, which operation, the record after it. */
export interface RecordWrite {
  /** `handOff`: a claim that put a dispatch message into the new owner's inbox in the same step. */
  op: "create" | "update" | "correctLost" | "claim" | "handOff";
  by: string;
  record: JobRecord;
}

/**
 * One node's job store: the shared records in the simulated Redis, reached through the node's own
 * client (latency, outages, nothing heard once the node is dead). As the Redis store's scripts do,
 * a record's creation or claim makes the node it names a member of the cluster. Writes are reported to the
 * invariants as they happen. The in-memory store stamps `updatedAt` with Date.now(): the simulated
 * time is passed in instead, so records carry the simulation's time.
 */
export class SimStore implements JobStore {
  constructor(
    private readonly redis: SimRedis,
    private readonly client: RedisClient,
    private readonly clock: SimClock,
    private readonly onWrite: (write: RecordWrite) => void,
  ) {}

  create(record: JobRecord) {
    return this.redis.call(this.client, "create", async () => {
      const result = await this.redis.records.create(record);
      if (result.created && record.node) this.redis.nodes.add(record.node);
      if (result.created) this.onWrite({ op: "create", by: this.client.name, record: result.record });
      return result;
    });
  }

  get(id: string) {
    return this.redis.call(this.client, "get", () => this.redis.records.get(id));
  }

  update(id: string, patch: Partial<JobRecord>, ifNode?: string, ifWorker?: string) {
    return this.redis.call(this.client, "update", async () => {
      const after = await this.redis.records.update(id, { updatedAt: this.clock.now(), ...patch }, ifNode, ifWorker);
      if (after) this.onWrite({ op: "update", by: this.client.name, record: after });
      return after;
    });
  }

  correctLost(id: string, patch: Pick<JobRecord, "status" | "history"> & Partial<JobRecord>) {
    return this.redis.call(this.client, "correctLost", async () => {
      const after = await this.redis.records.correctLost(id, { updatedAt: this.clock.now(), ...patch });
      if (after) this.onWrite({ op: "correctLost", by: this.client.name, record: after });
      return after;
    });
  }

  list(filter?: JobFilter) {
    return this.redis.call(this.client, "list", () => this.redis.records.list(filter));
  }

  listActive() {
    return this.redis.call(this.client, "listActive", () => this.redis.records.listActive());
  }

  claim(id: string, from: string | undefined, to: string) {
    return this.redis.call(this.client, "claim", async () => {
      const claimed = await this.redis.records.claim(id, from, to);
      if (claimed) this.redis.nodes.add(to);
      if (claimed) this.onWrite({ op: "claim", by: this.client.name, record: claimed });
      return claimed;
    });
  }

  /** RedisJobStore.claimFromDead: the claim, only while the node it is taken from has no presence key. */
  claimFromDead(id: string, from: string, to: string) {
    return this.redis.call(this.client, "claimFromDead", async () => {
      if (this.redis.isAlive(from)) return undefined;
      const claimed = await this.redis.records.claim(id, from, to);
      if (claimed) this.redis.nodes.add(to);
      if (claimed) this.onWrite({ op: "claim", by: this.client.name, record: claimed });
      return claimed;
    });
  }

  /** RedisJobStore.claimAndSend: the claim and, if it wins, the message into `to`'s inbox, atomically. */
  claimAndSend(id: string, from: string | undefined, to: string, message: string) {
    return this.redis.call(this.client, "claimAndSend", async () => {
      const claimed = await this.redis.records.claim(id, from, to);
      if (claimed) {
        this.redis.nodes.add(to);
        this.redis.xadd(to, message);
        this.onWrite({ op: "handOff", by: this.client.name, record: claimed });
      }
      return claimed;
    });
  }

  async close() {}
}
