/**
 * bench/dispatch: end-to-end dispatch latency (HTTP POST → the job's entrypoint running in a warm
 * child of a real worker) next to the loopback WebSocket round trip measured in the same run;
 * dispatch throughput with 20 simulated workers and short jobs; registry memory and CPU with 1,000,
 * 5,000 and 10,000 simulated workers connected and heartbeating. Prints JSON.
 * Run: npx tsx bench/dispatch.ts   (BENCH_SKIP_CAPACITY=1 skips the connection-count part)
 */
import { Writable } from "node:stream";
import { fileURLToPath } from "node:url";
import pidusage from "pidusage";
import WebSocket, { WebSocketServer } from "ws";
import { mintToken } from "../src/auth/tokens.ts";
import { createLogger } from "../src/observability/logger.ts";
import { Options } from "../src/options.ts";
import { createRegistry, registryInternals } from "../src/registry/server.ts";
import { type JobRecord, MemoryJobStore } from "../src/registry/store.ts";
import { runWorker } from "../src/worker/runtime.ts";
import { BENCH_CREDENTIALS, startRegistryProcess } from "./registry-process.ts";
import { SimWorker } from "./sim-worker.ts";
import { summarize } from "./stats.ts";
import { measureThroughput } from "./throughput.ts";

const credentials = BENCH_CREDENTIALS;
const silent = createLogger("ERROR", new Writable({ write: (_c, _e, done) => done() }));
const agentModule = fileURLToPath(new URL("./agents/noop.ts", import.meta.url));
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function wsRoundTrip() {
  const server = new WebSocketServer({ port: 0, host: "127.0.0.1", perMessageDeflate: false });
  await new Promise((resolve) => server.once("listening", resolve));
  server.on("connection", (ws) => ws.on("message", (data) => ws.send(data)));
  const port = (server.address() as { port: number }).port;
  const ws = new WebSocket(`ws://127.0.0.1:${port}`, { perMessageDeflate: false });
  await new Promise((resolve) => ws.once("open", resolve));
  const samples: number[] = [];
  for (let i = 0; i < 3_000; i++) {
    const started = performance.now();
    ws.send(JSON.stringify({ type: "ping", i, ts: started }));
    await new Promise((resolve) => ws.once("message", resolve));
    if (i >= 300) samples.push(performance.now() - started);
  }
  ws.terminate();
  await new Promise((resolve) => server.close(resolve));
  return summarize(samples);
}

/** Records when each job record first turns running: the entrypoint has started in its child. */
class TimedStore extends MemoryJobStore {
  readonly runningAt = new Map<string, number>();
  readonly waiters = new Map<string, () => void>();
  override async update(id: string, patch: Partial<JobRecord>) {
    if (patch.status === "running" && !this.runningAt.has(id)) {
      this.runningAt.set(id, performance.now());
      this.waiters.get(id)?.();
    }
    return super.update(id, patch);
  }
}

async function endToEnd(jobs: number) {
  const store = new TimedStore();
  const registry = await createRegistry({ ...credentials, port: 0, logger: silent, store });
  const options = new Options(
    {
      register: true,
      registryUrl: registry.url,
      ...credentials,
      maxProcesses: 4,
      numIdleProcesses: 3,
      loadThreshold: 1,
      port: 0,
      host: "127.0.0.1",
      logLevel: "ERROR",
    },
    {},
  );
  const worker = await runWorker(
    { entrypoint: async () => {}, jobctx: undefined, options, agentModule },
    { logger: silent, handleSignals: false },
  );
  const idle = () => Object.values(worker.actor.getSnapshot().context.slots).filter((s) => s.phase === "idle").length;
  const token = await mintToken(credentials, { role: "dispatcher" });
  const samples: number[] = [];
  for (let i = 0; i < jobs; i++) {
    while (idle() < 3 || registryInternals(registry).core.dispatcher.size > 0) await sleep(2);
    const started = performance.now();
    const response = await fetch(`${registry.url}/v1/jobs`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ agent_name: "Agent" }),
    });
    const { job } = (await response.json()) as { job: { id: string } };
    if (!store.runningAt.has(job.id)) {
      await new Promise<void>((resolve) => store.waiters.set(job.id, resolve));
    }
    samples.push((store.runningAt.get(job.id) as number) - started);
  }
  worker.stop();
  await worker.done;
  await registry.close();
  return summarize(samples);
}

async function throughput(workers: number, dispatches: number, concurrency: number) {
  const registry = await startRegistryProcess();
  try {
    return await measureThroughput([registry.url], workers, dispatches, concurrency);
  } finally {
    await registry.stop();
  }
}

async function capacity(counts: number[]) {
  const registry = await startRegistryProcess();
  const { child, url } = registry;
  const token = await mintToken(credentials, { role: "worker" });
  const sims: SimWorker[] = [];
  const results = [];
  for (const count of counts) {
    while (sims.length < count) {
      const batch = Array.from(
        { length: Math.min(250, count - sims.length) },
        () => new SimWorker({ url, token, agentName: "Agent", maxProcesses: 1, jobMs: 10 }),
      );
      await Promise.all(batch.map((s) => s.ready));
      sims.push(...batch);
    }
    await sleep(6_000); // let every session settle and see a full ping round
    const before = await pidusage(child.pid as number);
    const cpuStart = process.hrtime.bigint();
    const usageStart = (before as unknown as { ctime: number }).ctime;
    // Workers heartbeat every 5 s (the default is 30 s): ten seconds covers two registry ping rounds too.
    const heartbeats = setInterval(() => {
      for (const s of sims) s.heartbeat();
    }, 5_000);
    await sleep(10_000);
    clearInterval(heartbeats);
    const after = await pidusage(child.pid as number);
    const elapsedMs = Number(process.hrtime.bigint() - cpuStart) / 1e6;
    const cpuMs = (after as unknown as { ctime: number }).ctime - usageStart;
    results.push({
      connected_workers: count,
      registry_rss_mb: Math.round((after.memory / 1024 / 1024) * 10) / 10,
      registry_cpu_percent_of_one_core: Math.round((cpuMs / elapsedMs) * 1000) / 10,
    });
  }
  for (const s of sims) s.close();
  await registry.stop();
  return results;
}

const result: Record<string, unknown> = { bench: "dispatch", node: process.version };
if (!process.env.BENCH_ONLY_THROUGHPUT) {
  result.ws_round_trip = await wsRoundTrip();
  result.end_to_end_dispatch = await endToEnd(Number(process.env.BENCH_JOBS ?? 200));
}
result.throughput = await throughput(20, Number(process.env.BENCH_DISPATCHES ?? 5_000), 64);
if (!process.env.BENCH_SKIP_CAPACITY) result.capacity = await capacity([1_000, 5_000, 10_000]);
result.targets = {
  dispatch_p50_ms: 10,
  dispatch_p99_ms: 50,
  dispatches_per_second: 1_000,
  rss_mb_at_10k: 1_024,
  cpu_percent_at_10k: 10,
};
console.log(JSON.stringify(result, null, 2));
