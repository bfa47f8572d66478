/**
 * bench/cluster-dispatch: dispatch latency and throughput through two registry nodes sharing Redis,
 * against one node with the in-memory store, in the same run. Every registry is its own process;
 * the workers are simulated (bench/sim-worker.ts) so the numbers are the registry's, not a child's.
 *
 * Latency is HTTP POST /v1/jobs → job_assignment arriving at the worker, one dispatch at a time:
 *   - one_node_memory: worker and POST on the one in-memory node;
 *   - two_nodes_same_node: two Redis nodes, worker connected to the node that gets the POST;
 *   - two_nodes_cross_node: two Redis nodes, POST to node A, the only worker on node B (the
 *     offer and assignment travel A → Redis pub/sub → B).
 * Throughput: 20 workers (split evenly over the nodes when there are two), 64 concurrent POSTs
 * (alternating nodes), 5 ms jobs; dispatches per second until every job completed.
 * Run: npx tsx bench/cluster-dispatch.ts   (REDIS_URL overrides redis://127.0.0.1:6379)
 */
import { randomUUID } from "node:crypto";
import { mintToken } from "../src/auth/tokens.ts";
import { dropPrefix, REDIS_URL } from "../test/support/redis.ts";
import { BENCH_CREDENTIALS, type RegistryProcess, startRegistryProcess } from "./registry-process.ts";
import { SimWorker } from "./sim-worker.ts";
import { summarize } from "./stats.ts";
import { measureThroughput, postJob, untilWorkersSeen } from "./throughput.ts";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const nodes = new Set<RegistryProcess>();

async function startNode(cluster?: { prefix: string; nodeId: string }): Promise<RegistryProcess> {
  const node = await startRegistryProcess(
    cluster ? { BENCH_REDIS_URL: REDIS_URL, BENCH_PREFIX: cluster.prefix, BENCH_NODE_ID: cluster.nodeId } : {},
  );
  nodes.add(node);
  return node;
}

/** One dispatch at a time: POST to `postTo`, the single worker connected to `workerOn`. */
async function latency(postTo: RegistryProcess, workerOn: RegistryProcess, allNodes: RegistryProcess[], jobs: number) {
  const assignedAt = new Map<string, number>();
  const waiting = new Map<string, () => void>();
  const worker = new SimWorker({
    url: workerOn.url,
    token: await mintToken(BENCH_CREDENTIALS, { role: "worker" }),
    agentName: "Agent",
    maxProcesses: 50,
    jobMs: 0,
    onAssignment: (jobId) => {
      assignedAt.set(jobId, performance.now());
      waiting.get(jobId)?.();
    },
  });
  await worker.ready;
  for (const node of allNodes) await untilWorkersSeen(node.url, 1);
  const token = await mintToken(BENCH_CREDENTIALS, { role: "dispatcher" });
  const samples: number[] = [];
  for (let i = 0; i < jobs + 20; i++) {
    const started = performance.now();
    const id = await postJob(postTo.url, token);
    if (!assignedAt.has(id)) await new Promise<void>((resolve) => waiting.set(id, resolve));
    if (i >= 20) samples.push((assignedAt.get(id) as number) - started);
    waiting.delete(id);
  }
  worker.close();
  return summarize(samples);
}

const jobs = Number(process.env.BENCH_JOBS ?? 500);
const dispatches = Number(process.env.BENCH_DISPATCHES ?? 5_000);
const result: Record<string, unknown> = { bench: "cluster-dispatch", node: process.version, redis: REDIS_URL };
const prefix = `troupe-bench:${randomUUID().slice(0, 8)}:`;
try {
  const single = await startNode();
  result.latency_one_node_memory = await latency(single, single, [single], jobs);
  result.throughput_one_node_memory = await measureThroughput([single.url], 20, dispatches, 64);
  await single.stop();

  const nodeA = await startNode({ prefix: `${prefix}lat:`, nodeId: "bench-a" });
  const nodeB = await startNode({ prefix: `${prefix}lat:`, nodeId: "bench-b" });
  result.latency_two_nodes_same_node = await latency(nodeA, nodeA, [nodeA, nodeB], jobs);
  await sleep(500); // the closed worker's view leaves both nodes before the next one registers
  result.latency_two_nodes_cross_node = await latency(nodeA, nodeB, [nodeA, nodeB], jobs);
  await Promise.all([nodeA.stop(), nodeB.stop()]);

  const pair = await Promise.all([
    startNode({ prefix: `${prefix}tp:`, nodeId: "bench-a" }),
    startNode({ prefix: `${prefix}tp:`, nodeId: "bench-b" }),
  ]);
  result.throughput_two_nodes_redis = await measureThroughput(
    pair.map((node) => node.url),
    20,
    dispatches,
    64,
  );
  await Promise.all(pair.map((node) => node.stop()));
} finally {
  await Promise.all([...nodes].map((node) => node.stop()));
  await dropPrefix(prefix);
}
console.log(JSON.stringify(result, null, 2));
