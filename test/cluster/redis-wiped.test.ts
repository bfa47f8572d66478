import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
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
const files = tempDir();

afterAll(async () => {
  await stopInProcessWorkers();
  await closeRegistries();
  if (hasRedis) await dropPrefix(prefix);
  files.remove();
});

/**
 * Redis restarted without its data while a job runs: the node still runs the job's dispatch, so it
 * writes the record back from what it knows when it next changes it, and the job's outcome is not lost.
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
    expect(await node.registry.job(job.id)).toBeUndefined();

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
