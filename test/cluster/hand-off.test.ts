import { afterAll, describe, expect, it } from "vitest";
import { ProcessGuard, spawnWorker, stopWorker } from "../registry/helpers.ts";
import { dropPrefix, REDIS_URL, redisAvailable, testPrefix } from "../support/redis.ts";
import { until } from "../support/wait.ts";
import { CLUSTER_TIMING, dispatchTo, listJobs, listWorkers, type RegistryNode, spawnNode } from "./helpers.ts";

const hasRedis = await redisAvailable();
const guard = new ProcessGuard();
const prefix = testPrefix("hand-off");

afterAll(async () => {
  await guard.killAll();
  if (hasRedis) await dropPrefix(prefix);
});

/**
 * The acknowledged hand-off (each node's inbox is a Redis Stream): a dispatch handed to a node that
 * has just died waits in Redis for it. Pub/sub lost such a message, and only the sweep found the job
 * again, after two rounds. The sweep here runs once a minute, so a job placed before that was
 * placed by the inbox.
 */
describe.runIf(hasRedis)("a hand-off to a registry node that dies before reading it", () => {
  it("is placed by the node's next process under the same id, from its inbox", { timeout: 120_000 }, async () => {
    // A node is dead for the others only after 3 heartbeats (9 s): the restart comes well before.
    const settings = { redisUrl: REDIS_URL, prefix, timing: CLUSTER_TIMING, heartbeatMs: 3_000, sweepMs: 60_000 };
    const nodeA = await spawnNode(guard, { ...settings, name: "node-a" });
    const nodeB = await spawnNode(guard, { ...settings, name: "node-b" });
    const worker = spawnWorker(guard, {
      registryUrl: nodeB.url,
      name: "w-b",
      maxProcesses: 2,
      idleProcesses: 1,
      loadThreshold: 0.99,
      // It keeps trying while node B is down, however long its restart takes on a busy machine.
      env: { FIXTURE_AGENT: "hand-off", FIXTURE_MAX_RETRY: "1000" },
    });
    await until(
      async () => (await listWorkers(nodeA)).some((w) => w.node === "node-b" && w.state === "live.available"),
      {
        label: "node A to see the worker on node B, available",
        timeoutMs: 30_000,
        intervalMs: 50,
      },
    );

    nodeB.child.kill("SIGKILL");
    await nodeB.exited;
    // Node A still takes node B for alive: it hands the job to it, into a dead node's inbox.
    const job = await dispatchTo(nodeA, { agent_name: "hand-off", metadata: { holdMs: 200 } });
    await until(async () => (await listJobs(nodeA, "hand-off")).find((j) => j.id === job.id)?.node === "node-b", {
      label: "the job handed to node B",
      timeoutMs: 10_000,
      intervalMs: 20,
    });

    const restarted: RegistryNode = await spawnNode(guard, { ...settings, name: "node-b", port: nodeB.port });
    const backAt = Date.now();
    const records = await until(
      async () => {
        const found = (await listJobs(nodeA, "hand-off")).find((j) => j.id === job.id);
        return found && ["running", "completed"].includes(found.status) ? found : undefined;
      },
      { label: "the handed-off job running", timeoutMs: 30_000, intervalMs: 20 },
    ).catch(async (error: Error) => {
      const mentions = (logs: Record<string, unknown>[]) =>
        logs.filter((entry) => JSON.stringify(entry).includes(job.id));
      console.log("record:", JSON.stringify((await listJobs(nodeA, "hand-off")).find((j) => j.id === job.id)));
      console.log("node A:", JSON.stringify(mentions(nodeA.logs)));
      console.log("node B again:", JSON.stringify(restarted.logs.slice(-30)));
      console.log("worker:", JSON.stringify(worker.logs.slice(-20)));
      throw error;
    });
    console.log(`hand-off: placed ${Date.now() - backAt} ms after node B came back (its worker reconnecting)`);
    expect(records.node).toBe("node-b");
    // Placed by the inbox: neither the sweep nor node A's reaper touched it.
    const byOthers = [...nodeA.logs, ...restarted.logs].filter(
      (entry) =>
        entry.jobId === job.id &&
        (entry.msg === "picked up a job this node held without running its dispatch" ||
          entry.msg === "took over a job of a dead registry node"),
    );
    expect(byOthers).toEqual([]);

    expect((await stopWorker(worker, "SIGTERM")).code).toBe(0);
    for (const node of [nodeA, restarted]) {
      node.child.kill("SIGTERM");
      expect((await node.exited).code).toBe(0);
    }
    expect(await guard.leftoversAfterExit()).toEqual([]);
  });
});
