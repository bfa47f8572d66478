import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RedisJobStore } from "../../src/registry/cluster/redis-store.ts";
import { type JobRecord, type RetentionOptions, recordBytes } from "../../src/registry/store.ts";
import { dropPrefix, REDIS_URL, redisAvailable, testPrefix } from "../support/redis.ts";

// What byte retention keeps in Redis, and how it copes with keys it did not write: an emptied Redis,
// a lost total, records made final by a store without byte retention, several nodes at once.
// The behaviour both stores share is in store-contract.test.ts.

const hasRedis = await redisAvailable();

let seq = 0;
/** A record whose JSON is exactly `bytes` long once `finish` has made it final at `endedAt`. */
function sized(bytes: number, endedAt: number, over: Partial<JobRecord> = {}): JobRecord {
  seq++;
  const base: JobRecord = {
    id: `ret-${seq}-${Math.random().toString(36).slice(2, 8)}`,
    agentName: "retention",
    metadata: { pad: "" },
    roomOptions: {},
    redispatch: false,
    status: "pending",
    attempts: 0,
    createdAt: 1_000 + seq,
    updatedAt: 1_000 + seq,
    ...over,
  };
  const pad = bytes - recordBytes({ ...base, status: "completed", updatedAt: endedAt, endedAt });
  if (pad < 0) throw new Error(`a record cannot be as small as ${bytes} bytes`);
  return { ...base, metadata: { pad: "x".repeat(pad) } };
}

async function finish(store: RedisJobStore, r: JobRecord, endedAt: number): Promise<void> {
  await store.create(r);
  expect(await store.update(r.id, { status: "completed", updatedAt: endedAt })).toMatchObject({ endedAt });
}

async function kept(store: RedisJobStore, records: JobRecord[]): Promise<string[]> {
  const out: string[] = [];
  for (const r of records) if (await store.get(r.id)) out.push(r.id);
  return out;
}

describe.runIf(hasRedis)("RedisJobStore byte retention", () => {
  const prefixes: string[] = [];
  const stores: RedisJobStore[] = [];
  let redis: Redis;

  const open = (options: RetentionOptions, prefix = testPrefix("retention")) => {
    if (!prefixes.includes(prefix)) prefixes.push(prefix);
    const store = new RedisJobStore(REDIS_URL, { prefix, ...options });
    stores.push(store);
    return store;
  };
  const key = (store: RedisJobStore, name: string) => `${store.prefix}${name}`;

  beforeAll(() => {
    redis = new Redis(REDIS_URL);
  });
  afterAll(async () => {
    for (const store of stores) await store.close();
    redis.disconnect();
    for (const prefix of prefixes) await dropPrefix(prefix);
  });

  it("keeps each final record's size and their total, and deletes them with the record", async () => {
    const store = open({ retainBytes: 2_000 });
    const a = sized(1_000, 100, { idempotencyKey: `ret-a-${seq}` });
    const b = sized(1_000, 200);
    const live = sized(1_000, 0);
    await store.create(live);
    await finish(store, a, 100);
    await finish(store, b, 200);
    expect(await redis.hgetall(key(store, "finals:bytes"))).toEqual({ [a.id]: "1000", [b.id]: "1000" });
    expect(await redis.get(key(store, "finals:total"))).toBe("2000");

    await finish(store, sized(500, 300), 300);
    expect(await redis.hexists(key(store, "finals:bytes"), a.id)).toBe(0);
    expect(await redis.exists(key(store, `job:${a.id}`), key(store, `idem:${a.idempotencyKey}`))).toBe(0);
    expect(await redis.zscore(key(store, "jobs"), a.id)).toBeNull();
    expect(await redis.zscore(key(store, "finals"), a.id)).toBeNull();
    expect(await redis.get(key(store, "finals:total"))).toBe("1500");
    // Live records have no size entry: they are not counted.
    expect(await redis.hexists(key(store, "finals:bytes"), live.id)).toBe(0);
  });

  it("leaves an idempotency key alone once it names another job", async () => {
    const store = open({ retainRecords: 1 });
    const a = sized(500, 100, { idempotencyKey: `ret-moved-${seq}` });
    await finish(store, a, 100);
    // As after keys were lost one by one (an evicting maxmemory policy): the key now names another job.
    await redis.set(key(store, `idem:${a.idempotencyKey}`), "job-other");
    await finish(store, sized(500, 200), 200);
    expect(await store.get(a.id)).toBeUndefined();
    expect(await redis.get(key(store, `idem:${a.idempotencyKey}`))).toBe("job-other");
  });

  it("starts counting from zero on a Redis restarted empty", async () => {
    const store = open({ retainBytes: 2_000 });
    await finish(store, sized(1_500, 100), 100);
    await dropPrefix(store.prefix);
    const [b, c] = [sized(1_000, 200), sized(1_000, 300)];
    await finish(store, b, 200);
    await finish(store, c, 300);
    // Nothing of the 1,500 bytes from before is remembered anywhere: both fit.
    expect(await kept(store, [b, c])).toEqual([b.id, c.id]);
    expect(await store.retained()).toEqual({ records: 2, bytes: 2_000 });
    expect(await redis.get(key(store, "finals:total"))).toBe("2000");
  });

  it("rebuilds a lost total from the sizes instead of starting it at zero", async () => {
    const store = open({ retainBytes: 2_500 });
    const [a, b, c] = [sized(1_000, 100), sized(1_000, 200), sized(1_000, 300)];
    await finish(store, a, 100);
    await finish(store, b, 200);
    await redis.del(key(store, "finals:total"));
    expect(await store.retained()).toEqual({ records: 2, bytes: 2_000 });
    // Started at zero, the total would be 1,000 after c and a would stay.
    await finish(store, c, 300);
    expect(await kept(store, [a, b, c])).toEqual([b.id, c.id]);
    expect(await redis.get(key(store, "finals:total"))).toBe("2000");
  });

  it("replaces the size of a record made final a second time instead of adding to it", async () => {
    const store = open({ retainBytes: 3_000 });
    const a = sized(1_000, 100);
    await finish(store, a, 100);
    // No JobStore call reopens a final record; done by hand, as an operator's repair would.
    await redis.hset(key(store, `job:${a.id}`), "status", JSON.stringify("running"));
    await redis.hdel(key(store, `job:${a.id}`), "endedAt");
    await redis.sadd(key(store, "active"), a.id);
    const bigger = { ...a.metadata, pad: `${(a.metadata as { pad: string }).pad}${"y".repeat(500)}` };
    await store.update(a.id, { status: "completed", metadata: bigger, updatedAt: 150 });
    expect(await store.retained()).toEqual({ records: 1, bytes: 1_500 });
    expect(await redis.zscore(key(store, "finals"), a.id)).toBe("150");
    // Counted twice, a would make 3,500 bytes here and be evicted.
    const b = sized(1_000, 200);
    await finish(store, b, 200);
    expect(await kept(store, [a, b])).toEqual([a.id, b.id]);
    expect(await store.retained()).toEqual({ records: 2, bytes: 2_500 });
  });

  it("counts records made final without byte retention as nothing, and evicts them first", async () => {
    const store = open({ retainBytes: 2_500 });
    const old = [sized(1_000, 10, { idempotencyKey: `ret-old-${seq}` }), sized(1_000, 20)];
    for (const [i, r] of old.entries()) await finish(store, r, 10 * (i + 1));
    // The layout a store without byte retention left: the records in `finals`, no sizes, no total.
    await redis.del(key(store, "finals:bytes"), key(store, "finals:total"));
    const fresh = [sized(1_000, 100), sized(1_000, 200), sized(1_000, 300)];
    await finish(store, fresh[0] as JobRecord, 100);
    await finish(store, fresh[1] as JobRecord, 200);
    expect(await kept(store, [...old, ...fresh])).toHaveLength(4);
    expect(await store.retained()).toEqual({ records: 4, bytes: 2_000 });
    // Over the budget: the uncounted old records go first (freeing nothing), then the oldest counted one.
    await finish(store, fresh[2] as JobRecord, 300);
    expect(await kept(store, [...old, ...fresh])).toEqual([fresh[1]?.id, fresh[2]?.id]);
    expect(await redis.exists(key(store, `idem:${old[0]?.idempotencyKey}`))).toBe(0);
    expect(await store.retained()).toEqual({ records: 2, bytes: 2_000 });
  });

  it("holds both limits exactly with two nodes making records final at once", async () => {
    const prefix = testPrefix("retention-race");
    const limits = { retainRecords: 12, retainBytes: 10_000 };
    const nodes = [open(limits, prefix), open(limits, prefix)];
    // Distinct end times, so the records that must stay are known: the 10 that ended last.
    const records = Array.from({ length: 60 }, (_, i) => sized(1_000, 1_000 + ((i * 37) % 60)));
    await Promise.all(records.map((r, i) => (nodes[i % 2] as RedisJobStore).create(r)));
    await Promise.all(
      records.map((r, i) =>
        (nodes[(i + 1) % 2] as RedisJobStore).update(r.id, { status: "completed", updatedAt: 1_000 + ((i * 37) % 60) }),
      ),
    );
    const last = records.filter((_, i) => (i * 37) % 60 >= 50).map((r) => r.id);
    expect((await kept(nodes[0] as RedisJobStore, records)).sort()).toEqual(last.sort());
    expect(await nodes[1]?.retained()).toEqual({ records: 10, bytes: 10_000 });
    const sizes = Object.values(await redis.hgetall(`${prefix}finals:bytes`)).map(Number);
    expect(sizes.reduce((sum, size) => sum + size, 0)).toBe(10_000);
    expect(await redis.zcard(`${prefix}jobs`)).toBe(10);
  });
});
