import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ProcessGuard, readRunLog, spawnWorker, stopWorker, tempDir } from "../registry/helpers.ts";
import { dropPrefix, REDIS_URL, redisAvailable, testPrefix } from "../support/redis.ts";
import { until } from "../support/wait.ts";
import {
  CLUSTER_TIMING,
  dispatchTo,
  listJobs,
  listWorkers,
  type RegistryNode,
  spawnNode,
  untilAllFinal,
} from "./helpers.ts";

const hasRedis = await redisAvailable();
const guard = new ProcessGuard();
const temp = tempDir();
const prefix = testPrefix("node-death");

afterAll(async () => {
  await guard.killAll();
  if (hasRedis) await dropPrefix(prefix);
  temp.remove();
});

const decisionsOf = (nodes: RegistryNode[], jobId: string) =>
  nodes.flatMap((node) =>
    node.logs
      .filter((entry) => entry.msg === "took over a job of a dead registry node" && entry.jobId === jobId)
      .map((entry) => ({ node: node.name, decision: entry.decision })),
  );

describe.runIf(hasRedis)("a registry node that dies with its worker", () => {
  it("has each of its jobs settled by exactly one surviving node: lost, dispatched again, or placed anew", {
    timeout: 120_000,
  }, async () => {
    const settings = { redisUrl: REDIS_URL, prefix, timing: CLUSTER_TIMING, heartbeatMs: 500 };
    const [nodeA, nodeB, nodeC] = (await Promise.all(
      ["node-a", "node-b", "node-c"].map((name) => spawnNode(guard, { ...settings, name })),
    )) as [RegistryNode, RegistryNode, RegistryNode];
    const runLog = join(temp.dir, "runs.jsonl");
    const worker = (name: string, node: RegistryNode) =>
      spawnWorker(guard, {
        registryUrl: node.url,
        name,
        maxProcesses: 2,
        idleProcesses: 2,
        loadThreshold: 0.99,
        env: { FIXTURE_AGENT: "death", FIXTURE_RUN_LOG: runLog },
      });
    const doomedWorker = worker("doomed", nodeA);
    for (const node of [nodeA, nodeB, nodeC]) {
      await until(async () => (await listWorkers(node)).length === 1, {
        label: `${node.name} to see the worker on node A`,
        timeoutMs: 30_000,
        intervalMs: 50,
      });
    }

    // Sent to B and C, both run on A's worker, so both become A's jobs; a third waits on A for room.
    const lostJob = await dispatchTo(nodeB, { agent_name: "death", metadata: { hang: true } });
    // The job to run again holds until released, so it is still running on A's worker however long
    // the other job's process takes to start; released once that worker is dead, it ends at once anywhere.
    const againReleased = join(temp.dir, "again-released");
    const againJob = await dispatchTo(nodeC, {
      agent_name: "death",
      redispatch: true,
      metadata: { releaseFile: againReleased },
    });
    await until(
      async () => {
        const jobs = await listJobs(nodeA, "death");
        return [lostJob.id, againJob.id].every((id) =>
          jobs.some((job) => job.id === id && job.status === "running" && job.node === "node-a"),
        );
      },
      { label: "both jobs running on node A's worker", timeoutMs: 30_000, intervalMs: 50 },
    );
    const waitingJob = await dispatchTo(nodeA, { agent_name: "death", metadata: { holdMs: 10 } });
    expect(waitingJob.node).toBe("node-a");

    doomedWorker.child.kill("SIGKILL");
    nodeA.child.kill("SIGKILL");
    await Promise.all([doomedWorker.exited, nodeA.exited]);
    writeFileSync(againReleased, "");
    const survivors = [nodeB, nodeC];

    // The worker does not come back: after the liveness deadline its job without redispatch is lost.
    const [lost] = await untilAllFinal(nodeB, "death", [lostJob.id], 60_000);
    expect(lost).toMatchObject({ status: "lost", reason: "worker did not come back after its registry node died" });

    // A worker turns up on node B: the job that asked for it runs again there, the waiting one runs too.
    const rescuer = worker("rescuer", nodeB);
    const settled = await untilAllFinal(nodeC, "death", [againJob.id, waitingJob.id], 60_000);
    expect(settled.map((job) => job.status)).toEqual(["completed", "completed"]);
    const runs = readRunLog(runLog);
    expect(runs.filter((run) => run.jobId === againJob.id).map((run) => run.worker)).toEqual(["doomed", "rescuer"]);
    expect(runs.filter((run) => run.jobId === waitingJob.id).map((run) => run.worker)).toEqual(["rescuer"]);

    // Each job was decided once, by one node, however many survivors saw node A die.
    expect(decisionsOf(survivors, lostJob.id).map((d) => d.decision)).toEqual(["lost"]);
    expect(decisionsOf(survivors, againJob.id).map((d) => d.decision)).toEqual(["dispatched_again"]);
    expect(decisionsOf(survivors, waitingJob.id).map((d) => d.decision)).toEqual(["dispatched_again"]);
    const active = (await listJobs(nodeB, "death")).filter((job) => job.node === "node-a");
    expect(active).toEqual([]);

    expect((await stopWorker(rescuer, "SIGTERM")).code).toBe(0);
    for (const node of survivors) node.child.kill("SIGTERM");
    expect((await Promise.all(survivors.map((node) => node.exited))).map((exit) => exit.code)).toEqual([0, 0]);
    expect(await guard.leftoversAfterExit()).toEqual([]);
  });
});
