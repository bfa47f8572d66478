/**
 * bench/worker-steps: the worker's own part of a warm start, alone: from the assignment handed to
 * the worker root to `start_job` reaching the slot's process actor, with fake processes (no fork,
 * no IPC), the real worker, slot and job machines and the dashboard's event log attached as in
 * production. Prints JSON. Run: npx tsx bench/worker-steps.ts
 *
 * BENCH_JOBS (default 150) warm starts, each after BENCH_SETTLE_MS (default 200) of idle, as
 * bench/job-start leaves its pool; BENCH_SETTLE_MS=0 runs them back to back (the code hot).
 * BENCH_NO_EVENT_LOG=1 leaves the dashboard's event log out.
 */
import { Writable } from "node:stream";
import { fromCallback } from "xstate";
import type { ProcessCommand, ProcessEvent, ProcessInput } from "../machines/slot.ts";
import { createLogger } from "../src/observability/logger.ts";
import { Options } from "../src/options.ts";
import { createWorkerActor, createWorkerActorEvents } from "../src/worker/worker-actor.ts";
import { summarize } from "./stats.ts";

const JOBS = Number(process.env.BENCH_JOBS ?? 150);
const SETTLE_MS = Number(process.env.BENCH_SETTLE_MS ?? 200);
const WITH_EVENT_LOG = !process.env.BENCH_NO_EVENT_LOG;
const MAX_PROCESSES = Number(process.env.BENCH_MAX_PROCESSES ?? 4);
const now = () => process.hrtime.bigint();
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** When each job's start_job reached its fake process. */
const startedAt = new Map<string, bigint>();
let nextPid = 1;

/** A process that boots at once, starts and ends each job when told, and exits when shut down. */
const fakeProcess = fromCallback<ProcessCommand, ProcessInput, ProcessEvent>(({ sendBack, receive }) => {
  queueMicrotask(() => {
    sendBack({ type: "proc.spawned", pid: nextPid++ });
    sendBack({ type: "proc.ready" });
  });
  receive((command) => {
    if (command.type === "start_job") {
      startedAt.set(command.job.jobId, now());
      setImmediate(() => {
        sendBack({ type: "proc.job_running" });
        sendBack({ type: "proc.done", result: { ok: true } });
        sendBack({ type: "proc.exit", code: 0, signal: null });
      });
    } else if (command.type === "shutdown") {
      setImmediate(() => sendBack({ type: "proc.exit", code: 0, signal: null }));
    }
  });
});

let toWorker: ((event: unknown) => void) | undefined;
const finished = new Set<string>();
const link = fromCallback(({ sendBack, receive }) => {
  toWorker = sendBack as (event: unknown) => void;
  receive((command: { type: string; update?: { jobId: string; status: string } }) => {
    if (command.type === "link.job_update" && command.update && command.update.status !== "running") {
      finished.add(command.update.jobId);
    }
  });
});

const options = new Options(
  { register: true, port: 0, maxProcesses: MAX_PROCESSES, numIdleProcesses: 2, loadThreshold: 1, logLevel: "ERROR" },
  {},
);
const logger = createLogger("ERROR", new Writable({ write: (_c, _e, done) => done() }));
const actor = createWorkerActor(
  options,
  { process: fakeProcess, registryLink: link },
  { logger, ...(WITH_EVENT_LOG ? { actorEvents: createWorkerActorEvents() } : {}) },
);
actor.start();

const idleSlots = () => Object.values(actor.getSnapshot().context.slots).filter((s) => s.phase === "idle").length;
async function until(condition: () => boolean): Promise<void> {
  for (let i = 0; !condition(); i++) {
    if (i > 10_000) throw new Error("bench: the worker never settled");
    await new Promise((resolve) => setImmediate(resolve));
  }
}

const latencyMs: number[] = [];
for (let i = 0; i < JOBS; i++) {
  await until(() => idleSlots() >= 2);
  if (SETTLE_MS > 0) await sleep(SETTLE_MS);
  const jobId = `job-${i}`;
  const decided = now();
  toWorker?.({ type: "worker.assignment", spec: { jobId } });
  const started = startedAt.get(jobId);
  if (started === undefined) throw new Error(`bench: ${jobId} did not reach its process in the same turn`);
  latencyMs.push(Number(started - decided) / 1e6);
  await until(() => finished.has(jobId));
}
actor.stop();

console.log(
  JSON.stringify(
    {
      bench: "worker-steps",
      jobs: JOBS,
      settle_ms: SETTLE_MS,
      event_log: WITH_EVENT_LOG,
      assignment_to_start_job_ms: summarize(latencyMs),
    },
    null,
    2,
  ),
);
