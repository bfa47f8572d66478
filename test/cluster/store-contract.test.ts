import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RedisJobStore } from "../../src/registry/cluster/redis-store.ts";
import { type JobRecord, type JobStore, MemoryJobStore } from "../../src/registry/store.ts";
import { dropPrefix, REDIS_URL, redisAvailable, testPrefix } from "../support/redis.ts";

const hasRedis = await redisAvailable();

let seq = 0;
function record(over: Partial<JobRecord> = {}): JobRecord {
  seq++;
  return {
    id: `job-${seq}-${Math.random().toString(36).slice(2, 8)}`,
    agentName: "contract",
    metadata: { list: [], nested: { a: [1, "two"] }, empty: {} },
    roomOptions: {},
    redispatch: false,
    status: "pending",
    attempts: 0,
    createdAt: 1_000 + seq,
    updatedAt: 1_000 + seq,
    ...over,
  };
}

interface StoreFactory {
  name: string;
  enabled: boolean;
  make(retain?: number): Promise<JobStore>;
  cleanup(): Promise<void>;
}

const prefixes: string[] = [];
const factories: StoreFactory[] = [
  {
    name: "MemoryJobStore",
    enabled: true,
    make: async (retain) => new MemoryJobStore(retain),
    cleanup: async () => {},
  },
  {
    name: "RedisJobStore",
    enabled: hasRedis,
    make: async (retain) => {
      const prefix = testPrefix("contract");
      prefixes.push(prefix);
      return new RedisJobStore(REDIS_URL, { prefix, ...(retain ? { retain } : {}) });
    },
    cleanup: async () => {
      for (const prefix of prefixes.splice(0)) await dropPrefix(prefix);
    },
  },
];

for (const factory of factories) {
  describe.skipIf(!factory.enabled)(`JobStore contract: ${factory.name}`, () => {
    let store: JobStore;
    beforeAll(async () => {
      store = await factory.make();
    });
    afterAll(async () => {
      await store.close();
      await factory.cleanup();
    });

    it("creates a record and reads back exactly what was stored, metadata included", async () => {
      const r = record({ roomId: "room-1", maxDuration: 30 });
      const result = await store.create(r);
      expect(result.created).toBe(true);
      expect(result.record).toEqual(r);
      expect(await store.get(r.id)).toEqual(r);
    });

    it("returns undefined for an unknown id, on get, update and claim", async () => {
      expect(await store.get("job-nope")).toBeUndefined();
      expect(await store.update("job-nope", { status: "running" })).toBeUndefined();
      expect(await store.claim("job-nope", undefined, "node-a")).toBeUndefined();
    });

    it("returns the existing record for a repeated idempotency key, and for a repeated id", async () => {
      const first = record({ idempotencyKey: `key-${seq}` });
      const again = record({ idempotencyKey: first.idempotencyKey as string });
      expect((await store.create(first)).created).toBe(true);
      const second = await store.create(again);
      expect(second.created).toBe(false);
      expect(second.record.id).toBe(first.id);
      expect(await store.get(again.id)).toBeUndefined();
      const sameId = await store.create({ ...first, idempotencyKey: undefined, agentName: "other" });
      expect(sameId.created).toBe(false);
      expect(sameId.record.agentName).toBe("contract");
    });

    it("lets exactly one of many racing creates with one idempotency key win", async () => {
      const key = `race-${seq}`;
      const results = await Promise.all(
        Array.from({ length: 20 }, () => store.create(record({ idempotencyKey: key }))),
      );
      expect(results.filter((r) => r.created)).toHaveLength(1);
      expect(new Set(results.map((r) => r.record.id)).size).toBe(1);
    });

    it("applies patches, stamps updatedAt, and sets endedAt once on the first final status", async () => {
      const r = record();
      await store.create(r);
      const running = await store.update(r.id, { status: "running", workerId: "w-1", attempts: 1, updatedAt: 5_000 });
      expect(running).toMatchObject({ status: "running", workerId: "w-1", attempts: 1, updatedAt: 5_000 });
      expect(running?.endedAt).toBeUndefined();
      const done = await store.update(r.id, { status: "completed", reason: "session_ended", updatedAt: 6_000 });
      expect(done).toMatchObject({ status: "completed", reason: "session_ended", endedAt: 6_000 });
      const before = Date.now();
      const stamped = await store.update(record().id, {});
      expect(stamped).toBeUndefined();
      const other = record();
      await store.create(other);
      const now = await store.update(other.id, { status: "offering" });
      expect(now?.updatedAt).toBeGreaterThanOrEqual(before);
    });

    it("never overwrites a final record", async () => {
      const r = record();
      await store.create(r);
      await store.update(r.id, { status: "failed", reason: "crashed", error: { name: "Error", message: "boom" } });
      const after = await store.update(r.id, { status: "completed", reason: "late" });
      expect(after).toMatchObject({ status: "failed", reason: "crashed", error: { message: "boom" } });
      expect(await store.get(r.id)).toMatchObject({ status: "failed", reason: "crashed" });
    });

    it("lists newest first, filtered by status and agent, up to a limit", async () => {
      const own = await factory.make();
      try {
        const a = record({ agentName: "alpha", createdAt: 10 });
        const b = record({ agentName: "beta", createdAt: 20 });
        const c = record({ agentName: "alpha", createdAt: 30 });
        for (const r of [a, b, c]) await own.create(r);
        await own.update(c.id, { status: "running" });
        expect((await own.list()).map((r) => r.id)).toEqual([c.id, b.id, a.id]);
        expect((await own.list({ agentName: "alpha" })).map((r) => r.id)).toEqual([c.id, a.id]);
        expect((await own.list({ status: "running" })).map((r) => r.id)).toEqual([c.id]);
        expect((await own.list({ limit: 2 })).map((r) => r.id)).toEqual([c.id, b.id]);
      } finally {
        await own.close();
      }
    });

    it("lists active records oldest first and drops them once final", async () => {
      const own = await factory.make();
      try {
        const a = record({ createdAt: 5 });
        const b = record({ createdAt: 1 });
        await own.create(a);
        await own.create(b);
        expect((await own.listActive()).map((r) => r.id)).toEqual([b.id, a.id]);
        await own.update(b.id, { status: "lost" });
        expect((await own.listActive()).map((r) => r.id)).toEqual([a.id]);
      } finally {
        await own.close();
      }
    });

    it("hands a job over only from its current owner, once, and never a final one", async () => {
      const r = record();
      await store.create(r);
      expect(await store.claim(r.id, "node-x", "node-a")).toBeUndefined();
      expect((await store.claim(r.id, undefined, "node-a"))?.node).toBe("node-a");
      const race = await Promise.all([store.claim(r.id, "node-a", "node-b"), store.claim(r.id, "node-a", "node-c")]);
      expect(race.filter(Boolean)).toHaveLength(1);
      const owner = (await store.get(r.id))?.node;
      expect(["node-b", "node-c"]).toContain(owner);
      await store.update(r.id, { status: "completed" });
      expect(await store.claim(r.id, owner, "node-a")).toBeUndefined();
    });

    it("applies an update with ifNode only while the job still belongs to that node", async () => {
      const r = record({ node: "node-a" });
      await store.create(r);
      expect(await store.update(r.id, { status: "running" }, "node-b")).toMatchObject({ status: "pending" });
      expect(await store.update(r.id, { status: "running" }, "node-a")).toMatchObject({ status: "running" });
      await store.claim(r.id, "node-a", "node-b");
      expect(await store.update(r.id, { status: "lost" }, "node-a")).toMatchObject({ status: "running" });
      expect(await store.update(r.id, { status: "completed" }, "node-b")).toMatchObject({ status: "completed" });
    });

    it("keeps at most `retain` final records, forgetting their idempotency keys with them", async () => {
      const own = await factory.make(2);
      try {
        const old = record({ idempotencyKey: `old-${seq}` });
        await own.create(old);
        await own.update(old.id, { status: "completed", updatedAt: 1 });
        const others = [record(), record()];
        for (const [i, r] of others.entries()) {
          await own.create(r);
          await own.update(r.id, { status: "completed", updatedAt: 10 + i });
        }
        expect(await own.get(old.id)).toBeUndefined();
        for (const r of others) expect(await own.get(r.id)).toBeDefined();
        const reuse = await own.create(record({ idempotencyKey: old.idempotencyKey as string }));
        expect(reuse.created).toBe(true);
      } finally {
        await own.close();
      }
    });
  });
}

describe.runIf(hasRedis)("RedisJobStore durability", () => {
  it("keeps records across a new connection (a registry restart)", async () => {
    const prefix = testPrefix("durable");
    const first = new RedisJobStore(REDIS_URL, { prefix });
    const r = record({ idempotencyKey: "durable" });
    try {
      await first.create(r);
      await first.update(r.id, { status: "running", workerId: "w-9" });
    } finally {
      await first.close();
    }
    const second = new RedisJobStore(REDIS_URL, { prefix });
    try {
      expect(await second.get(r.id)).toMatchObject({ status: "running", workerId: "w-9" });
      expect((await second.create(record({ idempotencyKey: "durable" }))).record.id).toBe(r.id);
    } finally {
      await second.close();
      await dropPrefix(prefix);
    }
  });
});
