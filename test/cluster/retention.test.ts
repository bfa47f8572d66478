import { Redis } from "ioredis";
import { afterAll, describe, expect, it } from "vitest";
import { RedisJobStore } from "../../src/registry/cluster/redis-store.ts";
import {
  DEFAULT_RETAIN_BYTES,
  DEFAULT_RETAIN_RECORDS,
  type JobRecord,
  type JobStore,
  MemoryJobStore,
  type RetentionOptions,
} from "../../src/registry/store.ts";
import { dropPrefix, REDIS_URL, redisAvailable, testPrefix } from "../support/redis.ts";

// Retention options as both stores read them: defaults, the older count-only forms, limits refused,
// Infinity as no limit. What the limits do is in store-contract.test.ts.

const hasRedis = await redisAvailable();
const prefixes: string[] = [];

afterAll(async () => {
  for (const prefix of prefixes) await dropPrefix(prefix);
});

function redisStore(options: ConstructorParameters<typeof RedisJobStore>[1]): RedisJobStore {
  const prefix = testPrefix("retention");
  prefixes.push(prefix);
  return new RedisJobStore(REDIS_URL, { prefix, ...options });
}

/** The retention a Redis store reads from its options, without connecting: the options tests need no Redis. */
function redisRetention(options: ConstructorParameters<typeof RedisJobStore>[1]) {
  const client = new Redis(REDIS_URL, { lazyConnect: true });
  try {
    return new RedisJobStore(client, options).retention;
  } finally {
    client.disconnect();
  }
}

describe("retention options", () => {
  it("default to 100,000 records and 256 MiB", async () => {
    expect(DEFAULT_RETAIN_RECORDS).toBe(100_000);
    expect(DEFAULT_RETAIN_BYTES).toBe(256 * 1024 * 1024);
    const defaults = { retainRecords: DEFAULT_RETAIN_RECORDS, retainBytes: DEFAULT_RETAIN_BYTES };
    expect(new MemoryJobStore().retention).toEqual(defaults);
    expect(redisRetention({})).toEqual(defaults);
  });

  it("still take a count alone: a number for memory, `retain` for Redis (retainRecords wins)", () => {
    expect(new MemoryJobStore(5).retention).toEqual({ retainRecords: 5, retainBytes: DEFAULT_RETAIN_BYTES });
    expect(new MemoryJobStore({ retainBytes: 10 }).retention).toEqual({
      retainRecords: DEFAULT_RETAIN_RECORDS,
      retainBytes: 10,
    });
    expect(redisRetention({ retain: 5 })).toEqual({ retainRecords: 5, retainBytes: DEFAULT_RETAIN_BYTES });
    expect(redisRetention({ retain: 5, retainRecords: 7, retainBytes: 10 })).toEqual({
      retainRecords: 7,
      retainBytes: 10,
    });
  });

  it("refuse negative, fractional and NaN limits instead of keeping everything or nothing", () => {
    for (const bad of [-1, 1.5, Number.NaN]) {
      expect(() => new MemoryJobStore(bad)).toThrow(RangeError);
      expect(() => new MemoryJobStore({ retainBytes: bad })).toThrow(RangeError);
      expect(() => redisRetention({ retain: bad })).toThrow(RangeError);
      expect(() => redisRetention({ retainBytes: bad })).toThrow(RangeError);
    }
  });
});

const factories: { name: string; enabled: boolean; make(options: RetentionOptions): JobStore }[] = [
  { name: "MemoryJobStore", enabled: true, make: (options) => new MemoryJobStore(options) },
  { name: "RedisJobStore", enabled: hasRedis, make: (options) => redisStore(options) },
];

for (const factory of factories) {
  describe.skipIf(!factory.enabled)(`Infinity as no limit: ${factory.name}`, () => {
    let n = 0;
    const finishMany = async (store: JobStore, count: number, pad: number) => {
      const ids: string[] = [];
      for (let i = 0; i < count; i++) {
        const id = `inf-${++n}-${Math.random().toString(36).slice(2, 8)}`;
        const r: JobRecord = {
          id,
          agentName: "retention",
          metadata: { pad: "x".repeat(pad) },
          roomOptions: {},
          redispatch: false,
          status: "pending",
          attempts: 0,
          createdAt: n,
          updatedAt: n,
        };
        await store.create(r);
        await store.update(id, { status: "completed", updatedAt: 100 + n });
        ids.push(id);
      }
      return ids;
    };

    it("keeps any count when retainRecords is Infinity, the bytes still limiting", async () => {
      const store = factory.make({ retainRecords: Number.POSITIVE_INFINITY, retainBytes: 5_000 });
      try {
        const ids = await finishMany(store, 8, 800);
        const left = await store.retained?.();
        expect(left?.records).toBeLessThan(8);
        expect(left?.bytes).toBeLessThanOrEqual(5_000);
        expect(await store.get(ids[7] as string)).toBeDefined();
        expect(await store.get(ids[0] as string)).toBeUndefined();
      } finally {
        await store.close();
      }
    });

    it("keeps any size when retainBytes is Infinity, the count still limiting", async () => {
      const store = factory.make({ retainRecords: 3, retainBytes: Number.POSITIVE_INFINITY });
      try {
        await finishMany(store, 5, 100_000);
        expect((await store.retained?.())?.records).toBe(3);
        expect((await store.retained?.())?.bytes).toBeGreaterThan(300_000);
      } finally {
        await store.close();
      }
    });
  });
}
