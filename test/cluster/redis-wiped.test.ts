import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Redis } from "ioredis";
import { afterAll, describe, expect, it } from "vitest";
import { INBOX_LENGTH } from "../../src/registry/cluster/inbox.ts";
import { RedisJobStore } from "../../src/registry/cluster/redis-store.ts";
import type { JobRecord } from "../../src/registry/store.ts";
import {
  closeRegistries,
  dispatch,
  startInProcessWorker,
  startRegistry,
  stopInProcessWorkers,
  tempDir,
  waitAvailableAgent,
} from "../registry/helpers.ts";
import { dropPrefix, REDIS_URL, redisAvailable, testPrefix } from "../support/redis.ts";
import { until } from "../support/wait.ts";

const hasRedis = await redisAvailable();
const prefix = testPrefix("redis-wiped");
/** Every prefix a test of this file used, dropped at the end. */
const prefixes = [prefix];
const files = tempDir();
const stores: RedisJobStore[] = [];
let raw: Redis | undefined;

/** A prefix of its own for one test. */
function freshPrefix(name: string): string {
  const fresh = testPrefix(`redis-wiped-${name}`);
  prefixes.push(fresh);
  return fresh;
}

/** A plain client, for reading and wiping what the nodes wrote. */
function redis(): Redis {
  raw ??= new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
  return raw;
}

/**
 * Every key under the prefix deleted in one command, as a Redis restarted empty loses them: all at
 * once. (Deleting them batch by batch, as dropPrefix does, could let a node's renewal set a new epoch
 * while its records are still there, and lose them only after its recovery found nothing missing.)
 * Returns the keys deleted.
 */
async function wipe(keyPrefix: string): Promise<string[]> {
  const keys: string[] = [];
  let cursor = "0";
  do {
    const [next, found] = await redis().scan(cursor, "MATCH", `${keyPrefix}*`, "COUNT", 1_000);
    keys.push(...found);
    cursor = next;
  } while (cursor !== "0");
  if (keys.length > 0) await redis().del(...keys);
  return keys;
}

afterAll(async () => {
  await stopInProcessWorkers();
  await closeRegistries();
  await Promise.all(stores.map((store) => store.close()));
  raw?.disconnect();
  if (hasRedis) for (const used of prefixes) await dropPrefix(used);
  files.remove();
});

/**
 * Redis restarted without its data while a job runs: the node still runs the job's dispatch, so it
 * writes the record back from what it knows (at once, or when it next changes it), and the job's
 * outcome is not lost.
 */
describe.runIf(hasRedis)("a registry node whose Redis lost every key", () => {
  it("writes a running job's record back with its outcome", { timeout: 120_000 }, async () => {
    const node = await startRegistry(
      { dispatchTimeoutMs: 60_000, pingIntervalMs: 1_000, pongTimeoutMs: 4_000 },
      { redis: { url: REDIS_URL, prefix, heartbeatMs: 200 } },
    );
    await startInProcessWorker(node.url, { agentId: "wiped", maxProcesses: 1, numIdleProcesses: 1, launchTimeout: 60 });
    await waitAvailableAgent(node, "wiped", 30_000);
    const release = join(files.dir, "release");
    const job = await dispatch(node, { agent_name: "wiped", metadata: { releaseFile: release } });
    await until(async () => (await node.registry.job(job.id))?.status === "running", {
      label: "the job to run",
      timeoutMs: 60_000,
    });

    await dropPrefix(prefix);
    writeFileSync(release, "");
    const record = await until(
      async () => {
        const found = await node.registry.job(job.id);
        return found?.status === "completed" ? found : undefined;
      },
      { label: "the job's record back, completed", timeoutMs: 60_000 },
    );
    expect(record).toMatchObject({ id: job.id, agentName: "wiped", status: "completed", attempts: 1 });
    expect(record.workerId).toBeTruthy();
  });
});

/**
 * The same loss while the job runs and nothing about it changes: the node does not wait for the
 * job's next change (for a long job, hours away) but notices the loss itself, by the epoch key its
 * presence renewals read, and writes the record back as its dispatch stands.
 */
describe.runIf(hasRedis)("a registry node that finds Redis emptied by the epoch key", () => {
  it("writes a running job's record back on its own, before the job changes", { timeout: 120_000 }, async () => {
    const keyPrefix = freshPrefix("self-heal");
    const nodeId = "node-self-heal";
    const node = await startRegistry(
      { dispatchTimeoutMs: 60_000, pingIntervalMs: 1_000, pongTimeoutMs: 4_000 },
      { redis: { url: REDIS_URL, prefix: keyPrefix, heartbeatMs: 200, nodeId } },
    );
    await startInProcessWorker(node.url, {
      agentId: "self-heal",
      maxProcesses: 1,
      numIdleProcesses: 1,
      launchTimeout: 60,
    });
    await waitAvailableAgent(node, "self-heal", 30_000);
    const release = join(files.dir, "release-self-heal");
    const job = await dispatch(node, { agent_name: "self-heal", metadata: { releaseFile: release } });
    const running = await until(
      async () => {
        const found = await node.registry.job(job.id);
        return found?.status === "running" ? found : undefined;
      },
      { label: "the job to run", timeoutMs: 60_000 },
    );
    const epochBefore = await redis().get(`${keyPrefix}epoch`);
    expect(epochBefore).toBeTruthy();

    const lost = await wipe(keyPrefix);
    expect(lost).toContain(`${keyPrefix}job:${job.id}`);
    expect(lost).toContain(`${keyPrefix}epoch`);

    // Nothing about the job changes from here on: it waits for the release file the test has not written.
    const back = await until(
      async () => {
        const found = await node.registry.job(job.id);
        return found?.status === "running" ? found : undefined;
      },
      { label: "the running job's record written back", timeoutMs: 15_000, intervalMs: 50 },
    );
    expect(existsSync(release)).toBe(false);
    expect(back).toMatchObject({
      id: job.id,
      agentName: "self-heal",
      status: "running",
      attempts: 1,
      node: nodeId,
      workerId: running.workerId,
      createdAt: running.createdAt,
      metadata: { releaseFile: release },
    });
    expect(back.endedAt).toBeUndefined();
    // Filed as a live record again, as a record created and then changed would be.
    expect(await redis().sismember(`${keyPrefix}active`, job.id)).toBe(1);
    expect(await redis().zscore(`${keyPrefix}jobs`, job.id)).not.toBeNull();
    // A new epoch, set by the renewal that found the old one gone.
    const epochAfter = await redis().get(`${keyPrefix}epoch`);
    expect(epochAfter).toBeTruthy();
    expect(epochAfter).not.toBe(epochBefore);

    // And the job goes on to its outcome, run once.
    writeFileSync(release, "");
    const done = await until(
      async () => {
        const found = await node.registry.job(job.id);
        return found?.status === "completed" ? found : undefined;
      },
      { label: "the job's record completed", timeoutMs: 60_000 },
    );
    expect(done).toMatchObject({ id: job.id, status: "completed", attempts: 1, node: nodeId });
    expect(await redis().sismember(`${keyPrefix}active`, job.id)).toBe(0);
  });

  it("sets the epoch key when it joins, keeps it for nodes that join later, and sets a new one after a wipe", {
    timeout: 60_000,
  }, async () => {
    const keyPrefix = freshPrefix("epoch");
    const epochKey = `${keyPrefix}epoch`;
    expect(await redis().get(epochKey)).toBeNull();

    await startRegistry({}, { redis: { url: REDIS_URL, prefix: keyPrefix, heartbeatMs: 200, nodeId: "node-e1" } });
    const first = await redis().get(epochKey);
    expect(first).toBeTruthy();

    await startRegistry({}, { redis: { url: REDIS_URL, prefix: keyPrefix, heartbeatMs: 200, nodeId: "node-e2" } });
    expect(await redis().get(epochKey)).toBe(first);
    expect((await redis().smembers(`${keyPrefix}nodes`)).sort()).toEqual(["node-e1", "node-e2"]);

    const lost = await wipe(keyPrefix);
    expect(lost).toContain(epochKey);

    const second = await until(() => redis().get(epochKey), {
      label: "a renewal to set the epoch again",
      timeoutMs: 10_000,
    });
    expect(second).not.toBe(first);
    // Both nodes renewed since: the second to do so found the new epoch there and kept it.
    await until(
      async () =>
        (await redis().exists(`${keyPrefix}nodeAlive:node-e1`, `${keyPrefix}nodeAlive:node-e2`)) === 2 &&
        (await redis().smembers(`${keyPrefix}nodes`)).length === 2,
      { label: "both nodes to renew their presence after the wipe", timeoutMs: 10_000 },
    );
    expect(await redis().get(epochKey)).toBe(second);
    expect((await redis().smembers(`${keyPrefix}nodes`)).sort()).toEqual(["node-e1", "node-e2"]);
  });
});

/**
 * After Redis lost its data a node may write records before its next renewal adds it to the members
 * set again; the records must name a member all the same, or should that node die, no reaper would
 * look for its jobs.
 */
describe.runIf(hasRedis)("the cluster's members set after Redis lost its data", () => {
  it("has a node that creates a record among the members, before its next renewal", {
    timeout: 60_000,
  }, async () => {
    const keyPrefix = freshPrefix("members");
    const nodesKey = `${keyPrefix}nodes`;
    const nodeId = "node-members";
    // Renewals a minute apart: between the wipe and the end of this test no renewal adds it back.
    const node = await startRegistry(
      { dispatchTimeoutMs: 60_000 },
      { redis: { url: REDIS_URL, prefix: keyPrefix, heartbeatMs: 60_000, nodeId } },
    );
    expect(await redis().smembers(nodesKey)).toEqual([nodeId]);

    await wipe(keyPrefix);
    expect(await redis().smembers(nodesKey)).toEqual([]);

    const job = await dispatch(node, { agent_name: "nobody-serves-this" });
    expect(job.node).toBe(nodeId);
    expect(await redis().exists(`${keyPrefix}job:${job.id}`)).toBe(1);
    expect(await redis().smembers(nodesKey)).toEqual([nodeId]);
    // No renewal ran: the record, not the presence, made it a member.
    expect(await redis().exists(`${keyPrefix}nodeAlive:${nodeId}`)).toBe(0);
  });

  it("is joined by the node a created or claimed record names, and only then", async () => {
    const keyPrefix = freshPrefix("members-store");
    const nodesKey = `${keyPrefix}nodes`;
    const store = new RedisJobStore(new Redis(REDIS_URL, { maxRetriesPerRequest: 1 }), { prefix: keyPrefix });
    stores.push(store);
    const members = async () => (await redis().smembers(nodesKey)).sort();
    let seq = 0;
    const record = (over: Partial<JobRecord> = {}): JobRecord => ({
      id: `job-${++seq}`,
      agentName: "members",
      metadata: {},
      roomOptions: {},
      redispatch: false,
      status: "pending",
      attempts: 0,
      createdAt: 1_000 + seq,
      updatedAt: 1_000 + seq,
      ...over,
    });

    // A record with no owner names no node.
    await store.create(record());
    expect(await members()).toEqual([]);

    const owned = record({ node: "node-a" });
    expect((await store.create(owned)).created).toBe(true);
    expect(await members()).toEqual(["node-a"]);

    // A create that finds the record there writes nothing, the member included.
    expect((await store.create({ ...owned, node: "node-z" })).created).toBe(false);
    expect(await members()).toEqual(["node-a"]);

    // Claims: the new owner becomes a member; a claim that lost adds no one.
    expect(await store.claim(owned.id, "node-a", "node-b")).toMatchObject({ node: "node-b" });
    expect(await members()).toEqual(["node-a", "node-b"]);
    expect(await store.claim(owned.id, "node-a", "node-y")).toBeUndefined();
    expect(await members()).toEqual(["node-a", "node-b"]);

    const inbox = `${keyPrefix}inbox:node-c`;
    expect(await store.claimAndSend(owned.id, "node-b", "node-c", inbox, "{}", INBOX_LENGTH)).toMatchObject({
      node: "node-c",
    });
    expect(await members()).toEqual(["node-a", "node-b", "node-c"]);
    expect(await redis().xlen(inbox)).toBe(1);

    expect(await store.claimFromDead(owned.id, "node-c", "node-d", `${keyPrefix}nodeAlive:node-c`)).toMatchObject({
      node: "node-d",
    });
    expect(await members()).toEqual(["node-a", "node-b", "node-c", "node-d"]);

    // A record with no owner claimed for a node.
    const unowned = record();
    await store.create(unowned);
    expect(await store.claim(unowned.id, undefined, "node-e")).toMatchObject({ node: "node-e" });
    expect(await members()).toEqual(["node-a", "node-b", "node-c", "node-d", "node-e"]);

    // A final record is never claimed, so its claimant is no member.
    const ended = record({ node: "node-a" });
    await store.create(ended);
    await store.update(ended.id, { status: "completed" });
    expect(await store.claim(ended.id, "node-a", "node-f")).toBeUndefined();
    expect(await members()).not.toContain("node-f");
  });
});
