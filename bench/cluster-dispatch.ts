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
import { fork } from "node:child_process";
import { randomUUID } from "node:crypto";
import { createRequire } from "node:module";
import { createInterface } from "node:readline";
import { fileURLToPath, pathToFileURL } from "node:url";
import { Redis } from "ioredis";
import { mintToken } from "../src/registry/auth.ts";
import { SimWorker } from "./sim-worker.ts";
import { summarize } from "./stats.ts";

const credentials = { apiKey: "bench", apiSecret: "bench-secret-bench-secret" };
const redisUrl = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const tsxLoader = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const children = new Set<ReturnType<typeof fork>>();

interface Node {
  url: string;
  stop(): Promise<void>;
}

async function startNode(cluster?: { prefix: string; nodeId: string }): Promise<Node> {
  const child = fork(fileURLToPath(new URL("./registry-server.ts", import.meta.url)), [], {
    stdio: ["ignore", "pipe", "inherit", "ipc"],
    execArgv: ["--import", tsxLoader],
    env: {
      ...process.env,
      BENCH_KEY: credentials.apiKey,
      BENCH_SECRET: credentials.apiSecret,
      ...(cluster ? { BENCH_REDIS_URL: redisUrl, BENCH_PREFIX: cluster.prefix, BENCH_NODE_ID: cluster.nodeId } : {}),
    },
  });
  children.add(child);
  const { url } = await new Promise<{ url: string }>((resolve) => {
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).once("line", (line) => resolve(JSON.parse(line)));
  });
  return {
    url,
    stop: async () => {
      if (child.exitCode === null) {
        child.kill("SIGTERM");
        await new Promise((resolve) => child.once("exit", resolve));
      }
      children.delete(child);
    },
  };
}

async function dropPrefix(prefix: string) {
  const redis = new Redis(redisUrl);
  let cursor = "0";
  do {
    const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 500);
    if (keys.length) await redis.del(...keys);
    cursor = next;
  } while (cursor !== "0");
  redis.disconnect();
}

async function post(url: string, token: string): Promise<string> {
  const response = await fetch(`${url}/v1/jobs`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ agent_name: "Agent" }),
  });
  if (response.status !== 201) throw new Error(`dispatch answered ${response.status}: ${await response.text()}`);
  return ((await response.json()) as { job: { id: string } }).job.id;
}

/** Waits until the node lists this many available workers (a remote worker shows up through Redis). */
async function untilWorkersSeen(url: string, count: number) {
  const token = await mintToken(credentials, { role: "dispatcher" });
  for (;;) {
    const response = await fetch(`${url}/v1/workers`, { headers: { authorization: `Bearer ${token}` } });
    const { workers } = (await response.json()) as { workers: { state: string }[] };
    if (workers.filter((w) => w.state === "live.available").length >= count) return;
    await sleep(20);
  }
}

/** One dispatch at a time: POST to `postTo`, the single worker connected to `workerOn`. */
async function latency(postTo: Node, workerOn: Node, allNodes: Node[], jobs: number) {
  const assignedAt = new Map<string, number>();
  const waiting = new Map<string, () => void>();
  const worker = new SimWorker({
    url: workerOn.url,
    token: await mintToken(credentials, { role: "worker" }),
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
  const token = await mintToken(credentials, { role: "dispatcher" });
  const samples: number[] = [];
  for (let i = 0; i < jobs + 20; i++) {
    const started = performance.now();
    const id = await post(postTo.url, token);
    if (!assignedAt.has(id)) await new Promise<void>((resolve) => waiting.set(id, resolve));
    if (i >= 20) samples.push((assignedAt.get(id) as number) - started);
    waiting.delete(id);
  }
  worker.close();
  return summarize(samples);
}

async function throughput(nodes: Node[], workers: number, dispatches: number, concurrency: number) {
  const workerToken = await mintToken(credentials, { role: "worker" });
  const sims = Array.from(
    { length: workers },
    (_, i) =>
      new SimWorker({
        url: (nodes[i % nodes.length] as Node).url,
        token: workerToken,
        agentName: "Agent",
        maxProcesses: 50,
        jobMs: 5,
      }),
  );
  await Promise.all(sims.map((s) => s.ready));
  for (const node of nodes) await untilWorkersSeen(node.url, workers);
  const token = await mintToken(credentials, { role: "dispatcher" });
  let next = 0;
  const started = performance.now();
  const poster = async () => {
    while (next < dispatches) {
      const node = nodes[next % nodes.length] as Node;
      next++;
      await post(node.url, token);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, poster));
  const accepted = performance.now();
  while (sims.reduce((sum, s) => sum + s.completed, 0) < dispatches) {
    if (performance.now() - accepted > 120_000) break;
    await sleep(5);
  }
  const finished = performance.now();
  const completed = sims.reduce((sum, s) => sum + s.completed, 0);
  const perWorker = sims.map((s) => s.completed);
  for (const s of sims) s.close();
  return {
    nodes: nodes.length,
    workers,
    dispatches,
    completed,
    http_concurrency: concurrency,
    dispatches_per_second: Math.round((completed / (finished - started)) * 1000),
    per_worker_min: Math.min(...perWorker),
    per_worker_max: Math.max(...perWorker),
  };
}

const jobs = Number(process.env.BENCH_JOBS ?? 500);
const dispatches = Number(process.env.BENCH_DISPATCHES ?? 5_000);
const result: Record<string, unknown> = { bench: "cluster-dispatch", node: process.version, redis: redisUrl };
const prefix = `troupe-bench:${randomUUID().slice(0, 8)}:`;
try {
  const single = await startNode();
  result.latency_one_node_memory = await latency(single, single, [single], jobs);
  result.throughput_one_node_memory = await throughput([single], 20, dispatches, 64);
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
  result.throughput_two_nodes_redis = await throughput(pair, 20, dispatches, 64);
  await Promise.all(pair.map((node) => node.stop()));
} finally {
  for (const child of children) child.kill("SIGKILL");
  await dropPrefix(prefix);
}
console.log(JSON.stringify(result, null, 2));
