import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RedisJobStore } from "../../src/registry/cluster/redis-store.ts";
import {
  type JobRecord,
  type JobStore,
  MemoryJobStore,
  type RetainedStats,
  type RetentionOptions,
  recordBytes,
} from "../../src/registry/store.ts";
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

/**
 * A record whose JSON is exactly `bytes` long once `finish` has made it final at `endedAt`: the
 * metadata is padded with ASCII, one byte a character, so the retention tests can set budgets to the byte.
 */
function sized(bytes: number, endedAt: number, over: Partial<JobRecord> = {}): JobRecord {
  const base = record({ ...over, metadata: { pad: "" } });
  const pad = bytes - finalBytes(base, endedAt);
  if (pad < 0) throw new Error(`a record cannot be as small as ${bytes} bytes`);
  return { ...base, metadata: { pad: "x".repeat(pad) } };
}

/** The size retention counts for `r` once `finish` has made it final. */
function finalBytes(r: JobRecord, endedAt: number): number {
  return recordBytes({ ...r, status: "completed", updatedAt: endedAt, endedAt });
}

async function finish(store: JobStore, r: JobRecord, endedAt: number): Promise<void> {
  await store.create(r);
  const after = await store.update(r.id, { status: "completed", updatedAt: endedAt });
  expect(after).toMatchObject({ status: "completed", endedAt });
}

/** Which of `records` the store still holds. */
async function kept(store: JobStore, records: JobRecord[]): Promise<string[]> {
  const out: string[] = [];
  for (const r of records) if (await store.get(r.id)) out.push(r.id);
  return out;
}

function retained(store: JobStore): Promise<RetainedStats> {
  if (!store.retained) throw new Error("the store reports no retained records");
  return store.retained();
}

interface StoreFactory {
  name: string;
  enabled: boolean;
  /** A number is the older form (a count: positional for memory, `retain` for Redis), kept working. */
  make(retention?: number | RetentionOptions): Promise<JobStore>;
  cleanup(): Promise<void>;
}

const prefixes: string[] = [];
const factories: StoreFactory[] = [
  {
    name: "MemoryJobStore",
    enabled: true,
    make: async (retention) => new MemoryJobStore(retention),
    cleanup: async () => {},
  },
  {
    name: "RedisJobStore",
    enabled: hasRedis,
    make: async (retention) => {
      const prefix = testPrefix("contract");
      prefixes.push(prefix);
      const limits = typeof retention === "number" ? { retain: retention } : retention;
      return new RedisJobStore(REDIS_URL, { prefix, ...limits });
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

    it("keeps a record's W3C trace context", async () => {
      const traced = {
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        tracestate: "vendor=abc",
      };
      const r = record(traced);
      await store.create(r);
      await store.update(r.id, { status: "running", workerId: "w-1" });
      expect(await store.get(r.id)).toMatchObject(traced);
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

    it("keeps a failed job's exit code and signal, null included", async () => {
      const exited = record();
      await store.create(exited);
      await store.update(exited.id, { status: "failed", reason: "crashed", exitCode: 3, signal: null });
      expect(await store.get(exited.id)).toMatchObject({ status: "failed", exitCode: 3, signal: null });
      const killed = record();
      await store.create(killed);
      const after = await store.update(killed.id, {
        status: "failed",
        reason: "crashed",
        exitCode: null,
        signal: "SIGSEGV",
      });
      expect(after).toMatchObject({ exitCode: null, signal: "SIGSEGV" });
      expect(await store.get(killed.id)).toMatchObject({ status: "failed", exitCode: null, signal: "SIGSEGV" });
      expect((await store.list({ status: "failed" })).find((r) => r.id === killed.id)).toMatchObject({
        exitCode: null,
        signal: "SIGSEGV",
      });
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

    it("applies an update with ifWorker only while the job is still bound to that worker", async () => {
      const r = record({ node: "node-a", workerId: "w-1", status: "running" });
      await store.create(r);
      expect(await store.update(r.id, { status: "completed" }, undefined, "w-2")).toMatchObject({ status: "running" });
      await store.update(r.id, { status: "assigned", workerId: "w-2" });
      expect(await store.update(r.id, { status: "completed" }, undefined, "w-1")).toMatchObject({
        status: "assigned",
        workerId: "w-2",
      });
      expect(await store.update(r.id, { status: "completed" }, "node-a", "w-2")).toMatchObject({ status: "completed" });
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

    it("keeps final records within a byte budget, evicting those that ended first, with their keys", async () => {
      // Made final in an order other than their end times, so eviction must go by end time.
      const a = sized(2_000, 300);
      const b = sized(2_000, 100, { idempotencyKey: `bytes-b-${seq}` });
      const c = sized(2_000, 200);
      // Bigger than b, not bigger than b and c together: both must go, and a must stay.
      const d = sized(3_900, 400);
      const own = await factory.make({ retainBytes: 6_000 });
      try {
        await finish(own, a, 300);
        await finish(own, b, 100);
        await finish(own, c, 200);
        // Exactly at the budget is within it.
        expect(await kept(own, [a, b, c])).toEqual([a.id, b.id, c.id]);
        expect(await retained(own)).toEqual({ records: 3, bytes: 6_000 });
        // The size counted is the record's JSON as stored and read back.
        let stored = 0;
        for (const r of [a, b, c]) stored += recordBytes((await own.get(r.id)) as JobRecord);
        expect(stored).toBe(6_000);

        await finish(own, d, 400);
        expect(await kept(own, [a, b, c, d])).toEqual([a.id, d.id]);
        expect(await retained(own)).toEqual({ records: 2, bytes: 5_900 });
        expect((await own.create(record({ idempotencyKey: b.idempotencyKey as string }))).created).toBe(true);
      } finally {
        await own.close();
      }
    });

    it("never evicts live records, however far over the byte budget they are", async () => {
      const pending = sized(5_000, 0);
      const running = sized(5_000, 0);
      const first = sized(800, 100);
      const second = sized(800, 200);
      const own = await factory.make({ retainBytes: 1_000 });
      try {
        await own.create(pending);
        await own.create(running);
        await own.update(running.id, { status: "running", workerId: "w-1" });
        await finish(own, first, 100);
        expect(await kept(own, [first])).toEqual([first.id]);
        // 1,600 bytes of final records: the older one goes, and nothing live does.
        await finish(own, second, 200);
        expect(await kept(own, [pending, running, first, second])).toEqual([pending.id, running.id, second.id]);
        expect((await own.listActive()).map((r) => r.id)).toEqual([pending.id, running.id]);
        expect(await retained(own)).toEqual({ records: 1, bytes: 800 });
      } finally {
        await own.close();
      }
    });

    it("evicts a record larger than the whole byte budget once final, and only it", async () => {
      // The choice documented on RetentionOptions: evicting oldest first would delete every older
      // record before reaching the outsize one, so it alone goes.
      const small = [sized(400, 100), sized(400, 200)];
      const big = sized(1_500, 300, { idempotencyKey: `big-${seq}` });
      const own = await factory.make({ retainBytes: 1_000 });
      try {
        for (const [i, r] of small.entries()) await finish(own, r, 100 * (i + 1));
        await own.create(big);
        expect(await own.update(big.id, { status: "running" })).toMatchObject({ status: "running" });
        expect(await own.get(big.id)).toBeDefined();
        // The update still answers with the record as it was made final, then it is gone.
        await finish(own, big, 300);
        expect(await own.get(big.id)).toBeUndefined();
        expect(await kept(own, small)).toEqual(small.map((r) => r.id));
        expect(await retained(own)).toEqual({ records: 2, bytes: 800 });
        expect((await own.create(record({ idempotencyKey: big.idempotencyKey as string }))).created).toBe(true);
      } finally {
        await own.close();
      }
    });

    it("counts a final record once, however often it is written to again", async () => {
      const a = sized(1_000, 100, { idempotencyKey: `once-${seq}` });
      const b = sized(1_000, 200);
      const c = sized(1_000, 300);
      const own = await factory.make({ retainBytes: 2_000 });
      try {
        await finish(own, a, 100);
        // A late correction, a second final status, the same create again: all refused, none counted.
        expect(await own.update(a.id, { status: "lost", reason: "late", updatedAt: 150 })).toMatchObject({
          status: "completed",
        });
        await own.update(a.id, { status: "completed", metadata: { pad: "y".repeat(500) }, updatedAt: 160 });
        expect((await own.create(a)).created).toBe(false);
        expect((await own.create({ ...a, id: `${a.id}-again` })).created).toBe(false);
        expect(await retained(own)).toEqual({ records: 1, bytes: 1_000 });
        // Counted twice, a would make 3,000 bytes here and be evicted.
        await finish(own, b, 200);
        expect(await kept(own, [a, b])).toEqual([a.id, b.id]);
        await finish(own, c, 300);
        expect(await kept(own, [a, b, c])).toEqual([b.id, c.id]);
        expect(await retained(own)).toEqual({ records: 2, bytes: 2_000 });
      } finally {
        await own.close();
      }
    });

    it("holds the count and the byte limit together, whichever is reached first", async () => {
      const small = [sized(500, 100), sized(500, 200), sized(500, 300)];
      const large = sized(1_400, 400);
      const own = await factory.make({ retainRecords: 2, retainBytes: 1_500 });
      try {
        for (const [i, r] of small.entries()) await finish(own, r, 100 * (i + 1));
        // 1,500 bytes would fit all three: the count evicts the oldest.
        expect(await kept(own, small)).toEqual([small[1]?.id, small[2]?.id]);
        expect(await retained(own)).toEqual({ records: 2, bytes: 1_000 });
        // The count would keep one of the small ones beside the large one: the bytes do not.
        await finish(own, large, 400);
        expect(await kept(own, [...small, large])).toEqual([large.id]);
        expect(await retained(own)).toEqual({ records: 1, bytes: 1_400 });
      } finally {
        await own.close();
      }
    });
  });
}

describe.runIf(hasRedis)("RedisJobStore trace context", () => {
  it("drops trace context fields in Redis that are not valid W3C trace context, and keeps the record", async () => {
    const prefix = testPrefix("trace");
    const store = new RedisJobStore(REDIS_URL, { prefix });
    const redis = new Redis(REDIS_URL);
    const r = record();
    try {
      await store.create(r);
      for (const [traceparent, tracestate] of [
        [JSON.stringify("00-xyz"), JSON.stringify("a=1")],
        ["42", JSON.stringify("a=1")],
        [JSON.stringify({ nested: true }), "null"],
        [JSON.stringify(`00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`), JSON.stringify("A=1")],
      ] as const) {
        await redis.hset(`${prefix}job:${r.id}`, { traceparent, tracestate });
        const read = await store.get(r.id);
        expect(read?.id).toBe(r.id);
        expect(read?.tracestate).toBeUndefined();
        if (!traceparent.includes("4bf92f")) expect(read?.traceparent).toBeUndefined();
      }
    } finally {
      redis.disconnect();
      await store.close();
      await dropPrefix(prefix);
    }
  });
});

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
