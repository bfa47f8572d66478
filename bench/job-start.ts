/**
 * bench/job-start: warm and cold job start latency through the real worker (assignment → the job's
 * `running` report, i.e. start_job over IPC, the entrypoint called, and the report back), next to the
 * physical floor measured in the same run (bare fork → first IPC message, IPC round trip), and the
 * parent's RSS per supervised idle slot. Prints JSON. Run: npx tsx --expose-gc bench/job-start.ts
 */
import { fork } from "node:child_process";
import { Writable } from "node:stream";
import { fileURLToPath } from "node:url";
import { fromCallback } from "xstate";
import { createLogger } from "../src/observability/logger.ts";
import { Options } from "../src/options.ts";
import { runWorker, type WorkerHandle } from "../src/worker/runtime.ts";
import { summarize } from "./stats.ts";

const JOBS = Number(process.env.BENCH_JOBS ?? 200);
const COLD_JOBS = Number(process.env.BENCH_COLD_JOBS ?? 30);
const agentModule = fileURLToPath(new URL("./agents/noop.ts", import.meta.url));
const bareChild = fileURLToPath(new URL("./bare-child.mjs", import.meta.url));
const silent = createLogger("ERROR", new Writable({ write: (_c, _e, done) => done() }));
const gc = (globalThis as { gc?: () => void }).gc;

async function floor() {
  const forkMs: number[] = [];
  for (let i = 0; i < 25; i++) {
    const started = performance.now();
    const child = fork(bareChild, [], { stdio: ["ignore", "ignore", "inherit", "ipc"] });
    await new Promise<void>((resolve) => child.once("message", () => resolve()));
    forkMs.push(performance.now() - started);
    child.send({ t: "exit" });
    await new Promise((resolve) => child.once("exit", resolve));
  }
  const child = fork(bareChild, [], { stdio: ["ignore", "ignore", "inherit", "ipc"] });
  await new Promise<void>((resolve) => child.once("message", () => resolve()));
  const rttMs: number[] = [];
  for (let i = 0; i < 2_000; i++) {
    const started = performance.now();
    child.send({ t: "ping", i });
    await new Promise<void>((resolve) => child.once("message", () => resolve()));
    if (i >= 200) rttMs.push(performance.now() - started);
  }
  child.send({ t: "exit" });
  await new Promise((resolve) => child.once("exit", resolve));
  return { fork_to_first_ipc: summarize(forkMs), ipc_round_trip: summarize(rttMs) };
}

interface Harness {
  handle: WorkerHandle;
  assign(jobId: string): Promise<number>;
}

async function startWorker(maxProcesses: number, numIdleProcesses: number): Promise<Harness> {
  let sendBack: ((event: unknown) => void) | undefined;
  const waiting = new Map<string, { started: number; resolve: (ms: number) => void }>();
  const link = fromCallback(({ sendBack: back, receive }) => {
    sendBack = back as (event: unknown) => void;
    receive((command: { type: string; update?: { jobId: string; status: string } }) => {
      if (command.type === "link.job_update" && command.update?.status === "running") {
        const entry = waiting.get(command.update.jobId);
        if (entry) entry.resolve(performance.now() - entry.started);
      }
    });
  });
  const options = new Options(
    { register: true, port: 0, host: "127.0.0.1", maxProcesses, numIdleProcesses, loadThreshold: 1, logLevel: "ERROR" },
    {},
  );
  const handle = await runWorker(
    { entrypoint: async () => {}, jobctx: undefined, options, agentModule },
    { logger: silent, handleSignals: false, registryLink: () => ({ logic: link, input: undefined }) },
  );
  return {
    handle,
    assign: (jobId) =>
      new Promise<number>((resolve) => {
        waiting.set(jobId, { started: performance.now(), resolve });
        sendBack?.({ type: "worker.assignment", spec: { jobId } });
      }),
  };
}

function idleCount(handle: WorkerHandle): number {
  return Object.values(handle.actor.getSnapshot().context.slots).filter((s) => s.phase === "idle").length;
}

async function until(condition: () => boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("bench: condition not reached in time");
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

async function jobCount(handle: WorkerHandle) {
  return Object.keys(handle.actor.getSnapshot().context.jobs).length;
}

async function warm() {
  const { handle, assign } = await startWorker(4, 2);
  await until(() => idleCount(handle) >= 2);
  const samples: number[] = [];
  for (let i = 0; i < JOBS; i++) {
    samples.push(await assign(`warm-${i}`));
    // next job only on a warm pool: the finished job is gone and two processes are idle again
    await until(() => idleCount(handle) >= 2 && Object.keys(handle.actor.getSnapshot().context.jobs).length === 0);
  }
  handle.stop();
  await handle.done;
  return summarize(samples);
}

async function cold() {
  const { handle, assign } = await startWorker(1, 0);
  const samples: number[] = [];
  for (let i = 0; i < COLD_JOBS; i++) {
    samples.push(await assign(`cold-${i}`));
    await until(() => Object.keys(handle.actor.getSnapshot().context.slots).length === 0);
  }
  await jobCount(handle);
  handle.stop();
  await handle.done;
  return summarize(samples);
}

async function rssPerSlot() {
  const slots = 16;
  gc?.();
  const { handle: baseline } = await startWorker(1, 0);
  await new Promise((resolve) => setTimeout(resolve, 500));
  gc?.();
  const before = process.memoryUsage().rss;
  baseline.stop();
  await baseline.done;
  const { handle } = await startWorker(slots, slots);
  await until(() => idleCount(handle) >= slots, 60_000);
  await new Promise((resolve) => setTimeout(resolve, 2_000)); // pings and memory samples have run
  gc?.();
  const after = process.memoryUsage().rss;
  handle.stop();
  await handle.done;
  return { slots, parent_rss_growth_per_slot_mb: Math.round(((after - before) / slots / 1024 / 1024) * 1000) / 1000 };
}

const result = {
  bench: "job-start",
  node: process.version,
  gc_exposed: Boolean(gc),
  floor: await floor(),
  warm_job_start: await warm(),
  cold_job_start: await cold(),
  supervision_memory: await rssPerSlot(),
  targets: { warm_p50_ms: 5, warm_p99_ms: 20, parent_rss_per_slot_mb: 1 },
};
console.log(JSON.stringify(result, null, 2));
