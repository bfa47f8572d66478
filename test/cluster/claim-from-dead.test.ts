import { Redis } from "ioredis";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { RedisJobStore } from "../../src/registry/cluster/redis-store.ts";
import { FINAL_STATUSES, type JobRecord } from "../../src/registry/store.ts";
import { dropPrefix, REDIS_URL, redisAvailable, testPrefix } from "../support/redis.ts";
import { until } from "../support/wait.ts";

/**
 * RedisJobStore.claimFromDead against a real Redis: a reaper takes a job from a node it found dead
 * only while that node's presence key is absent, in one script with the ownership check.
 */

const hasRedis = await redisAvailable();

const DEAD = "node-dead";
const REAPER = "node-reaper";

let seq = 0;
function record(over: Partial<JobRecord> = {}): JobRecord {
  seq++;
  return {
    id: `job-${seq}-${Math.random().toString(36).slice(2, 8)}`,
    agentName: "claim",
    metadata: { n: seq },
    roomOptions: {},
    redispatch: true,
    status: "running",
    workerId: "worker-1",
    attempts: 1,
    node: DEAD,
    createdAt: 1_000 + seq,
    updatedAt: 1_000 + seq,
    ...over,
  };
}

describe.runIf(hasRedis)("RedisJobStore.claimFromDead", () => {
  let prefix: string;
  let store: RedisJobStore;
  let probe: Redis;
  /** The dead node's presence key, as the cluster names it. */
  const aliveKey = (node = DEAD) => `${prefix}nodeAlive:${node}`;

  beforeAll(() => {
    probe = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
  });

  afterAll(() => {
    probe?.disconnect();
  });

  // A fresh prefix (and store) per test, dropped after it.
  const setUp = () => {
    prefix = testPrefix("claim-from-dead");
    store = new RedisJobStore(REDIS_URL, { prefix });
  };

  afterEach(async () => {
    await store.close();
    await dropPrefix(prefix);
  });

  it("refuses while the dead node's presence key exists, and claims once it is gone", async () => {
    setUp();
    const job = record();
    await store.create(job);
    await probe.set(aliveKey(), String(Date.now()), "PX", 60_000);

    expect(await store.claimFromDead(job.id, DEAD, REAPER, aliveKey())).toBeUndefined();
    expect(await store.get(job.id)).toMatchObject({ node: DEAD, status: "running", workerId: "worker-1" });

    await probe.del(aliveKey());
    const claimed = await store.claimFromDead(job.id, DEAD, REAPER, aliveKey());
    expect(claimed).toMatchObject({ id: job.id, node: REAPER, status: "running", workerId: "worker-1", attempts: 1 });
    // Only the owner changed: everything else is as it was.
    expect(await store.get(job.id)).toEqual({ ...job, node: REAPER });
    // And it is the reaper's now: a second claim from the dead node finds nothing to take.
    expect(await store.claimFromDead(job.id, DEAD, "node-other", aliveKey())).toBeUndefined();
    expect((await store.get(job.id))?.node).toBe(REAPER);
  });

  it("claims once the presence key expires by its TTL (a node that stopped renewing)", async () => {
    setUp();
    const job = record();
    await store.create(job);
    await probe.set(aliveKey(), "1", "PX", 300);
    expect(await store.claimFromDead(job.id, DEAD, REAPER, aliveKey())).toBeUndefined();
    await until(async () => (await probe.exists(aliveKey())) === 0, {
      label: "the presence key to expire",
      timeoutMs: 5_000,
    });
    expect(await store.claimFromDead(job.id, DEAD, REAPER, aliveKey())).toMatchObject({ node: REAPER });
  });

  it("a node that renewed its presence after it was found dead keeps its jobs", async () => {
    setUp();
    const job = record();
    await store.create(job);
    // Found dead (no key), but it was only slow: its renewal lands before the claim.
    await probe.set(aliveKey(), "1", "PX", 60_000);
    expect(await store.claimFromDead(job.id, DEAD, REAPER, aliveKey())).toBeUndefined();
    expect((await store.get(job.id))?.node).toBe(DEAD);
  });

  it("only the named presence key counts: another node's key does not block the claim", async () => {
    setUp();
    const job = record();
    await store.create(job);
    await probe.set(aliveKey(REAPER), "1", "PX", 60_000);
    await probe.set(aliveKey("node-unrelated"), "1", "PX", 60_000);
    expect(await store.claimFromDead(job.id, DEAD, REAPER, aliveKey())).toMatchObject({ node: REAPER });
  });

  it("refuses a final record, whatever its status, and leaves it as it was", async () => {
    setUp();
    for (const status of FINAL_STATUSES) {
      const job = record({ status, endedAt: 5_000 });
      await store.create(job);
      expect(await store.claimFromDead(job.id, DEAD, REAPER, aliveKey()), status).toBeUndefined();
      expect(await store.get(job.id), status).toMatchObject({ status, node: DEAD });
    }
  });

  it("refuses a record that became final through an update", async () => {
    setUp();
    const job = record();
    await store.create(job);
    await store.update(job.id, { status: "completed", updatedAt: 9_000 }, DEAD);
    expect(await store.claimFromDead(job.id, DEAD, REAPER, aliveKey())).toBeUndefined();
    expect(await store.get(job.id)).toMatchObject({ status: "completed", node: DEAD });
  });

  it("refuses a record owned by another node, or by none", async () => {
    setUp();
    const other = record({ node: "node-other" });
    const unowned = record({ node: undefined });
    await store.create(other);
    await store.create(unowned);
    expect(await store.claimFromDead(other.id, DEAD, REAPER, aliveKey())).toBeUndefined();
    expect(await store.claimFromDead(unowned.id, DEAD, REAPER, aliveKey())).toBeUndefined();
    expect((await store.get(other.id))?.node).toBe("node-other");
    expect((await store.get(unowned.id))?.node).toBeUndefined();
  });

  it("refuses a record that does not exist, and creates none", async () => {
    setUp();
    expect(await store.claimFromDead("job-missing", DEAD, REAPER, aliveKey())).toBeUndefined();
    expect(await store.get("job-missing")).toBeUndefined();
    expect(await probe.exists(`${prefix}job:job-missing`)).toBe(0);
  });

  it("of reapers racing for one job, exactly one wins", async () => {
    setUp();
    const job = record();
    await store.create(job);
    const reapers = Array.from({ length: 8 }, (_, i) => `node-reaper-${i}`);
    const results = await Promise.all(reapers.map((to) => store.claimFromDead(job.id, DEAD, to, aliveKey())));
    const winners = results.flatMap((result, i) => (result ? [reapers[i]] : []));
    expect(winners).toHaveLength(1);
    expect((await store.get(job.id))?.node).toBe(winners[0]);
  });

  it("node names are matched exactly (JSON-encoded), not by prefix or pattern", async () => {
    setUp();
    const job = record({ node: "node-dead-2" });
    await store.create(job);
    expect(await store.claimFromDead(job.id, DEAD, REAPER, aliveKey())).toBeUndefined();
    const quoted = record({ node: `it's "quoted"\\` });
    await store.create(quoted);
    expect(await store.claimFromDead(quoted.id, `it's "quoted"\\`, REAPER, aliveKey(`it's "quoted"\\`))).toMatchObject({
      node: REAPER,
    });
  });
});
