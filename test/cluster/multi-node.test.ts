import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import type { JobRecord } from "../../src/registry/store.ts";
import { ProcessGuard, readRunLog, spawnWorker, stopWorker, tempDir } from "../registry/helpers.ts";
import { Balancer } from "../support/balancer.ts";
import { dropPrefix, REDIS_URL, redisAvailable, testPrefix } from "../support/redis.ts";
import { until } from "../support/wait.ts";
import { CLUSTER_TIMING, dispatchTo, listJobs, listWorkers, spawnNode, untilAllFinal } from "./helpers.ts";

const hasRedis = await redisAvailable();
const guard = new ProcessGuard();
const temp = tempDir();
const prefix = testPrefix("multi-node");
const balancers: Balancer[] = [];

afterAll(async () => {
  await guard.killAll();
  for (const balancer of balancers) await balancer.close();
  if (hasRedis) await dropPrefix(prefix);
  temp.remove();
});

const count = <T>(items: T[]) => {
  const counts = new Map<T, number>();
  for (const item of items) counts.set(item, (counts.get(item) ?? 0) + 1);
  return counts;
};

describe.runIf(hasRedis)("two registry nodes on one Redis", () => {
  it("spread 200 dispatches sent to both nodes over four workers, exactly once; then survive a node SIGKILLed mid-run", {
    timeout: 400_000,
  }, async () => {
    const nodeSettings = { redisUrl: REDIS_URL, prefix, timing: CLUSTER_TIMING, heartbeatMs: 500 };
    const [nodeA, nodeB] = await Promise.all([
      spawnNode(guard, { ...nodeSettings, name: "node-a" }),
      spawnNode(guard, { ...nodeSettings, name: "node-b" }),
    ]);
    const balancer = await new Balancer([nodeA.port, nodeB.port]).listen();
    balancers.push(balancer);
    const runLog = join(temp.dir, "runs.jsonl");
    const workers = [1, 2, 3, 4].map((n) =>
      spawnWorker(guard, {
        registryUrl: balancer.url,
        name: `w${n}`,
        maxProcesses: 3,
        idleProcesses: 1,
        loadThreshold: 0.99,
        env: { FIXTURE_AGENT: "multi", FIXTURE_RUN_LOG: runLog, FIXTURE_JOB_MS: "30" },
      }),
    );
    // Both nodes see all four workers, two connected to each.
    for (const node of [nodeA, nodeB]) {
      await until(
        async () => {
          const listed = await listWorkers(node);
          return listed.length === 4 && listed.every((w) => w.state === "live.available");
        },
        { label: `${node.name} to see four available workers`, timeoutMs: 30_000, intervalMs: 100 },
      );
    }
    const split = count((await listWorkers(nodeA)).map((w) => w.node));
    expect(Object.fromEntries(split)).toEqual({ "node-a": 2, "node-b": 2 });

    // ---- 200 dispatches, alternating between the nodes, a window of them open at a time.
    const TOTAL = Number(process.env.MULTI_NODE_JOBS ?? 200);
    const WINDOW = 16;
    const ids: string[] = [];
    const open = new Set<string>();
    const t0 = Date.now();
    for (let i = 0; i < TOTAL; i++) {
      while (open.size >= WINDOW) {
        const jobs = await listJobs(nodeB, "multi");
        for (const job of jobs) if (job.status === "completed" || job.status === "failed") open.delete(job.id);
        if (open.size >= WINDOW) await new Promise((resolve) => setTimeout(resolve, 50));
      }
      const job = await dispatchTo(i % 2 === 0 ? nodeA : nodeB, { agent_name: "multi", metadata: { n: i } });
      ids.push(job.id);
      open.add(job.id);
    }
    const records = await untilAllFinal(nodeA, "multi", ids, 240_000);
    console.log(`multi-node: ${TOTAL} jobs in ${Date.now() - t0} ms`);
    expect(records.filter((r) => r.status !== "completed").map((r) => [r.id, r.status, r.reason])).toEqual([]);
    const runs = readRunLog(runLog);
    const runsPerJob = count(runs.map((run) => run.jobId));
    for (const [jobId, n] of runsPerJob) {
      // A job that ran twice is the bug this test exists for: print everything known about it.
      if (n !== 1) explainDuplicate(jobId, { runs, records, nodes: [nodeA, nodeB], workers });
    }
    expect([...runsPerJob].filter(([, n]) => n !== 1)).toEqual([]);
    expect(runsPerJob.size).toBe(TOTAL);
    const perWorker = count(runs.map((run) => run.worker));
    console.log("multi-node per worker:", Object.fromEntries(perWorker));
    expect([...perWorker.keys()].sort()).toEqual(["w1", "w2", "w3", "w4"]);
    expect(Math.min(...perWorker.values())).toBeGreaterThanOrEqual(TOTAL / 4 / 3);
    // Jobs sent to one node ran on workers of the other: dispatch crosses nodes.
    const ownerNodes = count(records.map((r) => r.node));
    expect(ownerNodes.get("node-a")).toBeGreaterThan(0);
    expect(ownerNodes.get("node-b")).toBeGreaterThan(0);

    // ---- Jobs that take a while, sent to both nodes; node A dies with them running.
    const HELD = 16;
    const held: JobRecord[] = [];
    for (let i = 0; i < HELD; i++) {
      held.push(await dispatchTo(i % 2 === 0 ? nodeA : nodeB, { agent_name: "multi", metadata: { holdMs: 2_500 } }));
    }
    const heldIds = held.map((job) => job.id);
    await until(
      async () => {
        const running = (await listJobs(nodeB, "multi")).filter(
          (j) => heldIds.includes(j.id) && j.status === "running",
        );
        return running.some((j) => j.node === "node-a") && running.some((j) => j.node === "node-b");
      },
      { label: "held jobs running on workers of both nodes", timeoutMs: 30_000, intervalMs: 50 },
    );
    nodeA.child.kill("SIGKILL");
    await nodeA.exited;

    // Its workers reconnect through the balancer to node B, with their running jobs.
    await until(
      async () => {
        const listed = await listWorkers(nodeB);
        return listed.length === 4 && listed.every((w) => w.node === "node-b" && w.state.startsWith("live"));
      },
      { label: "all four workers on node B", timeoutMs: 30_000, intervalMs: 100 },
    );
    const heldRecords = await untilAllFinal(nodeB, "multi", heldIds, 60_000);
    expect(heldRecords.filter((r) => r.status !== "completed").map((r) => [r.id, r.status, r.reason])).toEqual([]);
    const heldRuns = count(readRunLog(runLog).map((run) => run.jobId));
    expect(heldIds.filter((id) => heldRuns.get(id) !== 1)).toEqual([]);
    // No record of the dead node is left open: node B took every one over.
    const active = (await listJobs(nodeB, "multi")).filter(
      (j) => !["completed", "failed", "cancelled", "lost", "rejected"].includes(j.status),
    );
    expect(active).toEqual([]);

    const exits = await Promise.all(workers.map((w) => stopWorker(w, "SIGTERM")));
    expect(exits.map((e) => e.code)).toEqual([0, 0, 0, 0]);
    nodeB.child.kill("SIGTERM");
    expect((await nodeB.exited).code).toBe(0);
    expect(await guard.leftoversAfterExit()).toEqual([]);
  });
});

function explainDuplicate(
  jobId: string,
  seen: {
    runs: ReturnType<typeof readRunLog>;
    records: JobRecord[];
    nodes: { name: string; logs: Record<string, unknown>[] }[];
    workers: { name: string; logs: Record<string, unknown>[] }[];
  },
): void {
  const mentions = (logs: Record<string, unknown>[]) => logs.filter((entry) => JSON.stringify(entry).includes(jobId));
  console.log(`job ${jobId} ran more than once`, {
    runs: seen.runs.filter((run) => run.jobId === jobId),
    record: seen.records.find((record) => record.id === jobId),
  });
  for (const { name, logs } of [...seen.nodes, ...seen.workers]) console.log(name, JSON.stringify(mentions(logs)));
}
