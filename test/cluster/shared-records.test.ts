import { Writable } from "node:stream";
import { afterAll, describe, expect, it } from "vitest";
import { mintToken } from "../../src/auth/tokens.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { createRegistry, type Registry, registryInternals } from "../../src/registry/server.ts";
import type { JobRecord } from "../../src/registry/store.ts";
import { api, CREDS } from "../registry/helpers.ts";
import { dropPrefix, REDIS_URL, redisAvailable, testPrefix } from "../support/redis.ts";
import { until } from "../support/wait.ts";

const hasRedis = await redisAvailable();
const prefixes = [testPrefix("shared-records"), testPrefix("unattended")];
const registries: Registry[] = [];
const silent = createLogger("ERROR", new Writable({ write: (_c, _e, done) => done() }));

afterAll(async () => {
  await Promise.all(registries.map((registry) => registry.close()));
  if (hasRedis) for (const prefix of prefixes) await dropPrefix(prefix);
});

async function startNode(nodeId: string, prefix = prefixes[0] as string): Promise<Registry> {
  const registry = await createRegistry({
    ...CREDS,
    port: 0,
    logger: silent,
    timing: { pingIntervalMs: 500, pongTimeoutMs: 500 },
    redis: { url: REDIS_URL, prefix, nodeId, heartbeatMs: 250, sweepMs: 300 },
  });
  registries.push(registry);
  return registry;
}

describe.runIf(hasRedis)("job records shared by registry nodes through Redis", () => {
  it("answer an idempotency key with one job whichever nodes it reaches, and serve every record from any node", async () => {
    const [nodeA, nodeB] = await Promise.all([startNode("node-a"), startNode("node-b")]);
    const token = await mintToken(CREDS, { role: "dispatcher" });
    const ready = await api(nodeA.url, undefined, "GET", "/readyz");
    expect(ready).toMatchObject({ status: 200, body: { ready: true, redis: "connected" } });
    const body = { agent_name: "nobody-serves-this", idempotency_key: "order-42", metadata: { n: 1 } };
    const responses = await Promise.all(
      Array.from({ length: 20 }, (_, i) => api((i % 2 ? nodeA : nodeB).url, token, "POST", "/v1/jobs", body)),
    );
    const jobs = responses.map((response) => (response.body as { job: JobRecord }).job);
    expect(new Set(jobs.map((job) => job.id)).size).toBe(1);
    expect(responses.filter((response) => response.status === 201)).toHaveLength(1);
    const job = jobs[0] as JobRecord;
    const owner = job.node === "node-a" ? nodeA : nodeB;
    const other = owner === nodeA ? nodeB : nodeA;

    const fromOther = await api(other.url, token, "GET", `/v1/jobs/${job.id}`);
    expect(fromOther.status).toBe(200);
    expect((fromOther.body as { job: JobRecord }).job).toMatchObject({
      id: job.id,
      status: "pending",
      metadata: { n: 1 },
    });

    // A cancel that reaches the node not running the dispatch is carried out by the one that is.
    const cancel = await api(other.url, token, "DELETE", `/v1/jobs/${job.id}`);
    expect(cancel.status).toBe(202);
    await until(
      async () => {
        const read = await api(owner.url, token, "GET", `/v1/jobs/${job.id}`);
        return (
          (read.body as { job: JobRecord }).job.status === "cancelled" &&
          !registryInternals(owner).core.dispatcher.has(job.id)
        );
      },
      { label: "the owner to cancel the job" },
    );

    // Records outlive every node: a fresh node on the same Redis serves them.
    await Promise.all(registries.splice(0).map((registry) => registry.close()));
    const nodeC = await startNode("node-c");
    const after = await api(nodeC.url, token, "GET", `/v1/jobs/${job.id}`);
    expect((after.body as { job: JobRecord }).job).toMatchObject({ id: job.id, status: "cancelled" });
    const again = await api(nodeC.url, token, "POST", "/v1/jobs", body);
    expect(again.status).toBe(200);
    expect((again.body as { job: JobRecord }).job.id).toBe(job.id);
  });

  it("picks up jobs recorded as a live node's that it runs no dispatch for (a lost hand-off)", async () => {
    const node = await startNode("node-lost-handoff", prefixes[1]);
    const now = Date.now();
    const base = {
      agentName: "nobody-serves-this",
      metadata: {},
      roomOptions: {},
      redispatch: false,
      attempts: 0,
      createdAt: now,
      updatedAt: now,
    };
    // As if another node had moved these to this one and the pub/sub message never arrived.
    await registryInternals(node).core.store.create({
      ...base,
      id: "job-handoff-pending",
      status: "pending",
      node: "node-lost-handoff",
    });
    await registryInternals(node).core.store.create({
      ...base,
      id: "job-handoff-running",
      status: "running",
      workerId: "worker-that-never-returns",
      node: "node-lost-handoff",
    });
    await until(() => registryInternals(node).core.dispatcher.has("job-handoff-pending"), {
      label: "the pending job to be dispatched by its node",
    });
    await until(
      async () => {
        const record = await registryInternals(node).core.store.get("job-handoff-running");
        return record?.status === "lost" && record.reason === "its worker did not come back";
      },
      { label: "the job of a worker that never returns to end lost" },
    );
    expect(await registryInternals(node).core.store.get("job-handoff-pending")).toMatchObject({ status: "pending" });
  });
});
