/** Dispatch throughput against one or more registry nodes, with simulated workers and short jobs. */
import { mintToken } from "../src/auth/tokens.ts";
import { BENCH_CREDENTIALS } from "./registry-process.ts";
import { SimWorker } from "./sim-worker.ts";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export async function postJob(url: string, token: string): Promise<string> {
  const response = await fetch(`${url}/v1/jobs`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ agent_name: "Agent" }),
  });
  if (response.status !== 201) throw new Error(`dispatch answered ${response.status}: ${await response.text()}`);
  return ((await response.json()) as { job: { id: string } }).job.id;
}

/** Waits until the node lists this many available workers (a remote worker shows up through Redis). */
export async function untilWorkersSeen(url: string, count: number): Promise<void> {
  const token = await mintToken(BENCH_CREDENTIALS, { role: "dispatcher" });
  for (;;) {
    const response = await fetch(`${url}/v1/workers`, { headers: { authorization: `Bearer ${token}` } });
    const { workers } = (await response.json()) as { workers: { state: string }[] };
    if (workers.filter((w) => w.state === "live.available").length >= count) return;
    await sleep(20);
  }
}

/**
 * `workers` simulated workers spread evenly over the nodes, `concurrency` HTTP clients posting
 * `dispatches` jobs of 5 ms round the nodes; dispatches per second until every job completed.
 */
export async function measureThroughput(urls: string[], workers: number, dispatches: number, concurrency: number) {
  const workerToken = await mintToken(BENCH_CREDENTIALS, { role: "worker" });
  const sims = Array.from(
    { length: workers },
    (_, i) =>
      new SimWorker({
        url: urls[i % urls.length] as string,
        token: workerToken,
        agentName: "Agent",
        maxProcesses: 50,
        jobMs: 5,
      }),
  );
  await Promise.all(sims.map((s) => s.ready));
  for (const url of urls) await untilWorkersSeen(url, workers);
  const token = await mintToken(BENCH_CREDENTIALS, { role: "dispatcher" });
  let next = 0;
  const started = performance.now();
  const poster = async () => {
    while (next < dispatches) {
      const url = urls[next % urls.length] as string;
      next++;
      await postJob(url, token);
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
    nodes: urls.length,
    workers,
    dispatches,
    completed,
    http_concurrency: concurrency,
    dispatches_per_second: Math.round((completed / (finished - started)) * 1000),
    per_worker_min: Math.min(...perWorker),
    per_worker_max: Math.max(...perWorker),
  };
}
