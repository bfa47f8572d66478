import { Redis } from "ioredis";
import { afterAll, describe, expect, it } from "vitest";
import { type ClusterHost, RegistryCluster } from "../../src/registry/cluster/cluster.ts";
import { silent } from "../registry/helpers.ts";
import { dropPrefix, REDIS_URL, redisAvailable, testPrefix } from "../support/redis.ts";
import { until } from "../support/wait.ts";

const hasRedis = await redisAvailable();
const prefix = testPrefix("presence");

afterAll(async () => {
  if (hasRedis) await dropPrefix(prefix);
});

const idleHost: ClusterHost = {
  onNodeMessage: async () => {},
  onRemoteView: () => {},
  hasWorker: () => false,
  hasDispatch: () => false,
  resume: () => {},
  recoverLostRecords: async () => {},
  pruneHandOffs: async () => {},
};

describe.runIf(hasRedis)("a registry node's presence", () => {
  it("is renewed while a slow sweep holds up the node's other cluster work", async () => {
    const heartbeatMs = 100;
    const cluster = await RegistryCluster.join(
      { redisUrl: REDIS_URL, prefix, nodeId: "slow-sweeper", heartbeatMs, sweepMs: 1, workerDeadlineMs: 1_000 },
      silent,
    );
    const probe = new Redis(REDIS_URL);
    try {
      // The store answers the sweep's listing only after ten node lifetimes (a long reap, a busy Redis).
      let sweeping = 0;
      cluster.store.listActive = () => {
        sweeping++;
        return new Promise((resolve) => setTimeout(() => resolve([]), 10 * 3 * heartbeatMs));
      };
      cluster.attach(idleHost);
      await until(() => sweeping > 0, { label: "a sweep to be under way" });
      const started = Date.now();
      while (Date.now() - started < 6 * 3 * heartbeatMs) {
        expect(await probe.exists(`${prefix}nodeAlive:slow-sweeper`), "presence key while the sweep hangs").toBe(1);
        await new Promise((resolve) => setTimeout(resolve, heartbeatMs / 2));
      }
      expect(sweeping).toBe(1);
    } finally {
      probe.disconnect();
      await cluster.close();
    }
  });
});
