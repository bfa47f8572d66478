/**
 * bench/job-start: how fast and how cheaply a worker starts jobs, next to what bare Node costs on
 * the same machine in the same run. Prints JSON. Run: npx tsx bench/job-start.ts
 *
 * Every latency runs from the worker's launch decision (the assignment handed to the worker) to the
 * first line of the job's entrypoint in the job process, read from CLOCK_MONOTONIC on both sides
 * (`process.hrtime.bigint()`, one clock for every process on Linux). The split says how much of it
 * the worker spent before `start_job` left it. Per agent kind (a TypeScript agent run with tsx, and
 * the same agent compiled to JavaScript and run with plain `node`), each in its own process:
 *
 * - warm start: an idle process takes the job (pool of 4, 2 kept warm, each job on a pool left
 *   alone for 200 ms after it settled);
 * - cold start: no idle process (maxProcesses 1, numIdleProcesses 0), split into the worker's steps
 *   to its fork, fork → the process's `ready` in the worker, `ready` → `start_job` written, and
 *   `start_job` → entrypoint;
 * - the idle job process: PSS, RSS and private memory (/proc/<pid>/smaps_rollup), CPU from fork to
 *   idle (utime + stime from /proc/<pid>/stat);
 * - sustained starts per second: short jobs kept 4 deep on a worker with maxProcesses 4;
 * - the worker's RSS per supervised idle slot.
 *
 * The floor, measured here first: IPC round trip (back to back, to a child idle for 200 ms, as a
 * warm start's is, and the first one a fresh child gets, after 200 ms idle), the one way to an idle
 * child's handler, bare `fork()` → first IPC message, bare forks per second 4 at a time, and a bare
 * idle Node child's memory and CPU (bench/bare-child.mjs). On a shared machine the speed drifts by
 * tens of percent from one minute to the next, so the warm and cold starts also get a paired floor,
 * measured in the worker's own process between their samples: before each warm start, a bare child
 * pinged after the worker's process was left alone SETTLE_MS, as it is before the start itself (the
 * pool's processes are then idle SETTLE_MS longer than without it); a bare child forked before or
 * after each cold start, by turns; bare forks per second just before and just after the sustained
 * starts.
 *
 * BENCH_AGENTS=ts,js (default both), BENCH_JOBS (warm, default 150), BENCH_COLD_JOBS (20),
 * BENCH_SUSTAINED_JOBS (60). The compiled agent is built with tsc into a temporary directory.
 */
import { type ChildProcess, fork, spawn } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createRequire, syncBuiltinESMExports } from "node:module";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { fileURLToPath, pathToFileURL } from "node:url";
import { type AnyActorRef, fromCallback } from "xstate";
import { compileToTemp } from "../scripts/compile-to-temp.ts";
import { createLogger } from "../src/observability/logger.ts";
import { Options } from "../src/options.ts";
import { runWorker, type WorkerHandle } from "../src/worker/runtime.ts";
import { median, summarize } from "./stats.ts";

const JOBS = Number(process.env.BENCH_JOBS ?? 150);
const COLD_JOBS = Number(process.env.BENCH_COLD_JOBS ?? 20);
const SUSTAINED_JOBS = Number(process.env.BENCH_SUSTAINED_JOBS ?? 60);
const SUSTAINED_DEPTH = 4;
/** How long the warm pool is left alone between two warm starts. */
const SETTLE_MS = 200;
const here = fileURLToPath(import.meta.url);
const compiled = here.endsWith(".js");
const bareChild = fileURLToPath(new URL("./bare-child.mjs", import.meta.url));
const gc = (globalThis as { gc?: () => void }).gc;
const now = () => process.hrtime.bigint();
const msBetween = (from: bigint, to: bigint) => Number(to - from) / 1e6;
const round = (n: number, digits = 3) => Math.round(n * 10 ** digits) / 10 ** digits;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- /proc readings ----

const CLOCK_TICKS_PER_SECOND = 100; // USER_HZ on Linux

/** Seconds of CPU (user + system, all threads) a process has used since it was forked. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
}

/**
 * PSS, RSS, private (clean + dirty) and private dirty memory of a process, in MB. PSS and private
 * clean hold this process's share of the `node` binary's pages, which grows as fewer node processes
 * run; private dirty (heap, compiled code) is what the process itself costs, whatever else runs.
 */
function memoryMb(pid: number): { pss: number; rss: number; private: number; privateDirty: number } {
  const text = readFileSync(`/proc/${pid}/smaps_rollup`, "latin1");
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, "m").exec(text)?.[1] ?? Number.NaN);
  const mb = (value: number) => round(value / 1024, 1);
  return {
    pss: mb(kb("Pss")),
    rss: mb(kb("Rss")),
    private: mb(kb("Private_Clean") + kb("Private_Dirty")),
    privateDirty: mb(kb("Private_Dirty")),
  };
}

function idleChildFigures(pids: number[]) {
  const readings = pids.map((pid) => ({ ...memoryMb(pid), cpu: cpuSeconds(pid) }));
  return {
    processes: pids.length,
    pss_mb: median(readings.map((r) => r.pss)),
    rss_mb: median(readings.map((r) => r.rss)),
    private_mb: median(readings.map((r) => r.private)),
    private_dirty_mb: median(readings.map((r) => r.privateDirty)),
    cpu_fork_to_idle_s: median(readings.map((r) => r.cpu)),
  };
}

/** This process's child that is a troupe orphan guardian, if any. */
function guardianPid(): number | undefined {
  for (const task of readdirSync(`/proc/${process.pid}/task`)) {
    let children: string[] = [];
    try {
      children = readFileSync(`/proc/${process.pid}/task/${task}/children`, "latin1").split(" ").filter(Boolean);
    } catch {
      continue;
    }
    for (const pid of children.map(Number)) {
      try {
        if (readFileSync(`/proc/${pid}/cmdline`, "latin1").includes("troupe orphan guardian")) return pid;
      } catch {
        // gone
      }
    }
  }
  return undefined;
}

// ---- the floor ----

/** Plain `node`: without `execArgv: []` the child would inherit this process's tsx loader. */
function forkBare(): ChildProcess {
  return fork(bareChild, [], { stdio: ["ignore", "ignore", "inherit", "ipc"], execArgv: [] });
}
const firstMessage = (child: ChildProcess) => new Promise<void>((resolve) => child.once("message", () => resolve()));
const exited = (child: ChildProcess) => new Promise((resolve) => child.once("exit", resolve));

/** Pings a bare child: the round trip, and the one way to its handler (it says when that ran). */
async function pingBare(child: ChildProcess, i: number): Promise<{ roundTripMs: number; oneWayMs: number }> {
  const pong = new Promise<{ at: string }>((resolve) => child.once("message", (m) => resolve(m as { at: string })));
  const started = now();
  child.send({ t: "ping", i });
  const { at } = await pong;
  return { roundTripMs: msBetween(started, now()), oneWayMs: msBetween(started, BigInt(at)) };
}

/**
 * Forks per second, 4 at a time: each child says hello and is told to exit, and the next is forked.
 * Resolves once every child has exited, so none is still going when what follows is measured.
 */
async function bareForksPerSecond(forks = 60): Promise<number> {
  let forked = 0;
  const exits: Promise<unknown>[] = [];
  const startedAt = now();
  await Promise.all(
    Array.from({ length: SUSTAINED_DEPTH }, async () => {
      while (forked < forks) {
        forked++;
        const child = forkBare();
        exits.push(exited(child));
        await firstMessage(child);
        child.send({ t: "exit" });
      }
    }),
  );
  const perSecond = forks / (msBetween(startedAt, now()) / 1000);
  await Promise.all(exits);
  return perSecond;
}

/** A bare child forked from this process: fork → its first IPC message, then it is told to exit. */
async function bareForkMs(): Promise<number> {
  const started = now();
  const child = forkBare();
  await firstMessage(child);
  const ms = msBetween(started, now());
  child.send({ t: "exit" });
  await exited(child);
  return ms;
}

async function floor() {
  const forkMs: number[] = [];
  // A process's first IPC message from its parent costs Node's lazy set-up of the receiving path;
  // the slot pings a process as soon as it is ready so that a start_job is not that message.
  const firstWakeMs: number[] = [];
  for (let i = 0; i < 25; i++) {
    const started = now();
    const child = forkBare();
    await firstMessage(child);
    forkMs.push(msBetween(started, now()));
    await sleep(200);
    const pinged = now();
    child.send({ t: "ping", i });
    await firstMessage(child);
    firstWakeMs.push(msBetween(pinged, now()));
    child.send({ t: "exit" });
    await exited(child);
  }
  const child = forkBare();
  await firstMessage(child);
  const rttMs: number[] = [];
  for (let i = 0; i < 2_000; i++) {
    const started = now();
    child.send({ t: "ping", i });
    await firstMessage(child);
    if (i >= 200) rttMs.push(msBetween(started, now()));
  }
  // A warm start wakes an idle process: the same round trip to a child idle for 200 ms (on a busy
  // machine, mostly the time the scheduler takes to give the woken processes a core).
  const wakeMs: number[] = [];
  const wakeOneWayMs: number[] = [];
  for (let i = 0; i < 40; i++) {
    await sleep(200);
    const { roundTripMs, oneWayMs } = await pingBare(child, i);
    wakeMs.push(roundTripMs);
    wakeOneWayMs.push(oneWayMs);
  }
  child.send({ t: "exit" });
  await exited(child);

  const forksPerSecond = await bareForksPerSecond();

  // Two idle bare children, as the warm pool below keeps two idle job processes.
  const idle = [forkBare(), forkBare()];
  await Promise.all(idle.map(firstMessage));
  await sleep(1_000);
  const idleFigures = idleChildFigures(idle.map((c) => c.pid as number));
  for (const c of idle) c.send({ t: "exit" });
  await Promise.all(idle.map(exited));

  return {
    ipc_round_trip: summarize(rttMs),
    ipc_round_trip_to_idle_child: summarize(wakeMs),
    ipc_one_way_to_idle_child: summarize(wakeOneWayMs),
    ipc_first_round_trip_to_idle_child: summarize(firstWakeMs),
    fork_to_first_ipc: summarize(forkMs),
    bare_forks_per_second_4_at_a_time: round(forksPerSecond, 2),
    idle_bare_child: idleFigures,
  };
}

// ---- one agent kind, in its own process ----

interface Harness {
  handle: WorkerHandle;
  /** Hands the worker an assignment (the launch decision) and records when. */
  assign(jobId: string): void;
  decidedAt: Map<string, bigint>;
  runningAt: Map<string, bigint>;
  /** Called with every job that reached a final status. */
  onFinished?: (jobId: string, status: string) => void;
}

/** Where the agent notes its entries (bench/agents/entry-clock.ts); set in the scenario's process. */
let entryFile = "";

/** When each job's entrypoint ran its first line, as the agent noted it. */
function entryTimes(): Map<string, bigint> {
  const times = new Map<string, bigint>();
  let text = "";
  try {
    text = readFileSync(entryFile, "utf8");
  } catch {
    return times;
  }
  for (const line of text.split("\n")) {
    const [jobId, at] = line.split(" ");
    if (jobId && at) times.set(jobId, BigInt(at));
  }
  return times;
}

/** When the worker wrote each job's `start_job` to its process (the end of the worker's part). */
const startSentAt = new Map<string, bigint>();
/** For each job, when the worker forked its process and when that process's `ready` reached the worker. */
const processOf = new Map<string, { forkedAt: bigint; readyAt: bigint | undefined }>();

async function startWorker(maxProcesses: number, numIdleProcesses: number): Promise<Harness> {
  let sendBack: ((event: unknown) => void) | undefined;
  const harness: Harness = {
    handle: undefined as unknown as WorkerHandle,
    decidedAt: new Map(),
    runningAt: new Map(),
    assign(jobId) {
      harness.decidedAt.set(jobId, now());
      sendBack?.({ type: "worker.assignment", spec: { jobId } });
    },
  };
  const link = fromCallback(({ sendBack: back, receive }) => {
    sendBack = back as (event: unknown) => void;
    receive((command: { type: string; update?: { jobId: string; status: string } }) => {
      if (command.type !== "link.job_update" || !command.update) return;
      const { jobId, status } = command.update;
      if (status === "running") harness.runningAt.set(jobId, now());
      else setImmediate(() => harness.onFinished?.(jobId, status));
    });
  });
  const options = new Options(
    {
      register: true,
      port: 0,
      host: "127.0.0.1",
      maxProcesses,
      numIdleProcesses,
      loadThreshold: 1,
      logLevel: "ERROR",
      // Under tsx on a loaded 2-core box, four children booting at once can take longer than the
      // defaults; a bench run that fails its jobs measures nothing.
      initializeTimeout: 60,
      launchTimeout: 60,
    },
    {},
  );
  const silent = createLogger("ERROR", new Writable({ write: (_c, _e, done) => done() }));
  harness.handle = await runWorker(
    { entrypoint: async () => {}, jobctx: undefined, options, agentModule: agentModuleFor() },
    { logger: silent, handleSignals: false, registryLink: () => ({ logic: link, input: undefined }) },
  );
  return harness;
}

function agentModuleFor(): string {
  return fileURLToPath(new URL(`./agents/entry-clock.${compiled ? "js" : "ts"}`, import.meta.url));
}

function slotsIn(handle: WorkerHandle, phase: string): string[] {
  const { slots } = handle.actor.getSnapshot().context;
  return Object.keys(slots).filter((id) => slots[id]?.phase === phase);
}

function pidOf(handle: WorkerHandle, slotId: string): number | undefined {
  const slot = handle.actor.getSnapshot().children[slotId] as AnyActorRef | undefined;
  return (slot?.getSnapshot().context as { pid?: number | null } | undefined)?.pid ?? undefined;
}

const slotCount = (handle: WorkerHandle) => Object.keys(handle.actor.getSnapshot().context.slots).length;

async function until(condition: () => boolean, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("bench: condition not reached in time");
    await sleep(2);
  }
}

async function stop(handle: WorkerHandle) {
  handle.stop();
  await handle.done;
}

function latencies(harness: Harness, jobIds: string[]) {
  const entered = entryTimes();
  const total: number[] = [];
  const worker: number[] = [];
  const child: number[] = [];
  const running: number[] = [];
  for (const jobId of jobIds) {
    const decided = harness.decidedAt.get(jobId);
    const entry = entered.get(jobId);
    const sent = startSentAt.get(jobId);
    const report = harness.runningAt.get(jobId);
    if (decided === undefined || entry === undefined) continue;
    total.push(msBetween(decided, entry));
    if (sent !== undefined) {
      worker.push(msBetween(decided, sent));
      child.push(msBetween(sent, entry));
    }
    if (report !== undefined) running.push(msBetween(decided, report));
  }
  return {
    launch_decision_to_entrypoint: summarize(total),
    split_decision_to_start_job_sent: summarize(worker),
    split_start_job_sent_to_entrypoint: summarize(child),
    launch_decision_to_running_report_in_worker: summarize(running),
  };
}

async function warm() {
  const harness = await startWorker(4, 2);
  const { handle } = harness;
  await until(() => slotsIn(handle, "idle").length >= 2);
  await sleep(1_000);
  const idle = idleChildFigures(slotsIn(handle, "idle").map((id) => pidOf(handle, id) as number));
  const guardian = guardianPid();
  // The floor beside each warm start: a bare child of this process, pinged after the same idle.
  const bare = forkBare();
  await firstMessage(bare);
  // Its first message pays Node's one-time set-up of the receiving path (see the floor): not a sample.
  await pingBare(bare, -1);
  await sleep(SETTLE_MS);
  const bareOneWayMs: number[] = [];
  const bareRoundTripMs: number[] = [];
  const jobIds: string[] = [];
  for (let i = 0; i < JOBS; i++) {
    const { roundTripMs, oneWayMs } = await pingBare(bare, i);
    bareOneWayMs.push(oneWayMs);
    bareRoundTripMs.push(roundTripMs);
    await sleep(SETTLE_MS);
    const jobId = `warm-${i}`;
    jobIds.push(jobId);
    const finished = new Promise<void>((resolve) => {
      harness.onFinished = (id) => id === jobId && resolve();
    });
    harness.assign(jobId);
    await finished;
    // the next job only on a settled pool: two idle processes, none booting, and the worker done
    // with the last job (its exit, the sweep for its leftovers), as a worker between calls would be
    await until(() => slotsIn(handle, "idle").length >= 2 && slotsIn(handle, "warming").length === 0);
    await sleep(SETTLE_MS);
  }
  bare.send({ t: "exit" });
  await exited(bare);
  await stop(handle);
  return {
    idle_job_process: idle,
    paired_floor: {
      ipc_one_way_to_idle_bare_child: summarize(bareOneWayMs),
      ipc_round_trip_to_idle_bare_child: summarize(bareRoundTripMs),
    },
    // one per worker, not per process (see docs/process-model.md, "Orphans"); absent before it existed
    orphan_guardian:
      guardian === undefined ? null : { pss_mb: memoryMb(guardian).pss, private_mb: memoryMb(guardian).private },
    ...latencies(harness, jobIds),
  };
}

async function cold() {
  const harness = await startWorker(1, 0);
  const { handle } = harness;
  const jobIds: string[] = [];
  // The floor beside each cold start: a bare child forked by this process (the worker's).
  const bareMs: number[] = [];
  for (let i = 0; i < COLD_JOBS; i++) {
    // Before the job, then after it, by turns: what follows a job's end (its exit, the worker's sweep
    // for its leftovers) overlaps as many bare forks as cold starts.
    if (i % 2 === 0) bareMs.push(await bareForkMs());
    const jobId = `cold-${i}`;
    jobIds.push(jobId);
    const finished = new Promise<void>((resolve) => {
      harness.onFinished = (id) => id === jobId && resolve();
    });
    harness.assign(jobId);
    await finished;
    await until(() => slotCount(handle) === 0);
    if (i % 2 === 1) bareMs.push(await bareForkMs());
  }
  await stop(handle);
  const { launch_decision_to_entrypoint, launch_decision_to_running_report_in_worker } = latencies(harness, jobIds);
  const bare = summarize(bareMs);
  return {
    launch_decision_to_entrypoint,
    launch_decision_to_running_report_in_worker,
    ...coldSplits(harness, jobIds),
    paired_floor: { bare_fork_to_first_ipc: bare },
    p50_vs_paired_bare_fork_p50: round(launch_decision_to_entrypoint.p50_ms / bare.p50_ms, 2),
  };
}

/** Where a cold start's time goes: to the fork, the process's boot to `ready`, the worker's answer, the child's start. */
function coldSplits(harness: Harness, jobIds: string[]) {
  const entered = entryTimes();
  const toFork: number[] = [];
  const boot: number[] = [];
  const answer: number[] = [];
  const start: number[] = [];
  for (const jobId of jobIds) {
    const decided = harness.decidedAt.get(jobId);
    const forked = processOf.get(jobId);
    const sent = startSentAt.get(jobId);
    const entry = entered.get(jobId);
    if (decided === undefined || forked?.readyAt === undefined || sent === undefined || entry === undefined) continue;
    toFork.push(msBetween(decided, forked.forkedAt));
    boot.push(msBetween(forked.forkedAt, forked.readyAt));
    answer.push(msBetween(forked.readyAt, sent));
    start.push(msBetween(sent, entry));
  }
  return {
    split_decision_to_fork: summarize(toFork),
    split_fork_to_ready_in_worker: summarize(boot),
    split_ready_to_start_job_sent: summarize(answer),
    split_start_job_sent_to_entrypoint: summarize(start),
  };
}

/** Short jobs kept SUSTAINED_DEPTH deep on a worker with maxProcesses 4: how many start per second. */
async function sustained() {
  // The floor beside it: bare forks from this process, just before and just after.
  const bareBefore = await bareForksPerSecond();
  const harness = await startWorker(SUSTAINED_DEPTH, SUSTAINED_DEPTH);
  const { handle } = harness;
  await until(() => slotsIn(handle, "idle").length >= SUSTAINED_DEPTH);
  await sleep(1_000);
  const statuses = new Map<string, string>();
  let assigned = 0;
  const allDone = new Promise<void>((resolve) => {
    const next = () => {
      if (assigned < SUSTAINED_JOBS) harness.assign(`sustained-${assigned++}`);
    };
    harness.onFinished = (jobId, status) => {
      statuses.set(jobId, status);
      if (statuses.size === SUSTAINED_JOBS) resolve();
      else next();
    };
    for (let i = 0; i < SUSTAINED_DEPTH; i++) next();
  });
  await allDone;
  await stop(handle);
  const entered = entryTimes();
  const jobIds = Array.from({ length: SUSTAINED_JOBS }, (_, i) => `sustained-${i}`);
  const entries = jobIds
    .map((id) => entered.get(id))
    .filter((t): t is bigint => t !== undefined)
    .sort((a, b) => (a < b ? -1 : 1));
  const firstDecision = harness.decidedAt.get(jobIds[0] as string) as bigint;
  // The first SUSTAINED_DEPTH jobs take processes warmed beforehand; the rate after them is the
  // rate the worker forks and warms processes at.
  const afterWarm = entries.slice(SUSTAINED_DEPTH - 1);
  const steady = (afterWarm.length - 1) / (msBetween(afterWarm[0] as bigint, afterWarm.at(-1) as bigint) / 1000);
  const failed = [...statuses.values()].filter((s) => s !== "completed").length;
  const bareAfter = await bareForksPerSecond();
  const bare = (bareBefore + bareAfter) / 2;
  return {
    jobs: SUSTAINED_JOBS,
    failed,
    starts_per_second_steady: round(steady, 2),
    starts_per_second_overall: round(entries.length / (msBetween(firstDecision, entries.at(-1) as bigint) / 1000), 2),
    paired_floor: { bare_forks_per_second_4_at_a_time: [round(bareBefore, 2), round(bareAfter, 2)] },
    steady_vs_paired_bare_forks: round(steady / bare, 2),
  };
}

async function rssPerSlot() {
  const slots = 16;
  gc?.();
  const { handle: baseline } = await startWorker(1, 0);
  await sleep(500);
  gc?.();
  const before = process.memoryUsage().rss;
  await stop(baseline);
  const { handle } = await startWorker(slots, slots);
  await until(() => slotsIn(handle, "idle").length >= slots, 120_000);
  await sleep(2_000); // pings and memory samples have run
  gc?.();
  const after = process.memoryUsage().rss;
  await stop(handle);
  return { slots, parent_rss_growth_per_slot_mb: round((after - before) / slots / 1024 / 1024) };
}

/**
 * Notes when each `start_job` is written to a job process. `send` is set on each forked child, not
 * on a prototype, so the worker's `fork` is wrapped (syncBuiltinESMExports updates its ESM binding).
 */
function recordStartJobSends(): void {
  const childProcess = createRequire(here)("node:child_process") as typeof import("node:child_process");
  const originalFork = childProcess.fork;
  childProcess.fork = ((...args: Parameters<typeof fork>) => {
    const forked = { forkedAt: now(), readyAt: undefined as bigint | undefined };
    const child = originalFork(...args);
    const onReady = (message: { type?: string }) => {
      if (message?.type !== "ready") return;
      forked.readyAt = now();
      child.off("message", onReady);
    };
    child.on("message", onReady);
    const send = child.send.bind(child) as (...sendArgs: unknown[]) => boolean;
    child.send = ((...sendArgs: unknown[]) => {
      const message = sendArgs[0] as { type?: string; job?: { jobId?: string } } | undefined;
      if (message?.type === "start_job" && message.job?.jobId) {
        startSentAt.set(message.job.jobId, now());
        processOf.set(message.job.jobId, forked);
      }
      return send(...sendArgs);
    }) as typeof child.send;
    return child;
  }) as typeof fork;
  syncBuiltinESMExports();
}

async function scenario(kind: string) {
  entryFile = join(mkdtempSync(join(tmpdir(), "troupe-bench-entry-")), "entries.txt");
  process.env.TROUPE_BENCH_ENTRY_FILE = entryFile;
  recordStartJobSends();
  const result = {
    agent: kind,
    warm_start: await warm(),
    cold_start: await cold(),
    sustained: await sustained(),
    supervision_memory: await rssPerSlot(),
  };
  rmSync(join(entryFile, ".."), { recursive: true, force: true });
  return result;
}

// ---- the orchestrator ----

function runScenario(kind: "ts" | "js", build: string | undefined): Promise<unknown> {
  const args =
    kind === "ts"
      ? ["--expose-gc", "--import", pathToFileURL(createRequire(here).resolve("tsx")).href, here]
      : ["--expose-gc", join(build as string, "bench/job-start.js")];
  const child = spawn(process.execPath, args, {
    env: { ...process.env, BENCH_SCENARIO: kind },
    stdio: ["ignore", "pipe", "inherit"],
  });
  let out = "";
  child.stdout.on("data", (chunk: Buffer) => {
    out += chunk.toString();
  });
  return new Promise((resolve, reject) => {
    child.on("exit", (code) =>
      code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`bench scenario ${kind} exited with ${code}`)),
    );
  });
}

async function orchestrate() {
  const kinds = (process.env.BENCH_AGENTS ?? "ts,js").split(",") as ("ts" | "js")[];
  const build = kinds.includes("js")
    ? await compileToTemp(
        "troupe-bench-build-",
        ["bench/job-start.ts", "bench/stats.ts", "bench/agents", "scripts/compile-to-temp.ts"],
        ["bench/bare-child.mjs"],
      )
    : undefined;
  const loadBefore = loadavg().map((l) => round(l, 2));
  const floorFigures = await floor();
  const results: Record<string, unknown> = {};
  for (const kind of kinds) results[kind] = await runScenario(kind, build?.dir);
  build?.remove();
  console.log(
    JSON.stringify(
      {
        bench: "job-start",
        node: process.version,
        load_average_before_after: [loadBefore, loadavg().map((l) => round(l, 2))],
        floor: floorFigures,
        ...results,
        targets: {
          warm_p50_ms: 1,
          warm_p99_ms: 5,
          cold_p50_vs_bare_fork_p50_compiled: 1.5,
          idle_child_pss_mb_compiled: 25,
          idle_child_cpu_fork_to_idle_s_compiled: 0.3,
          sustained_vs_bare_forks_per_second: 0.5,
          parent_rss_per_slot_mb: 1,
        },
      },
      null,
      2,
    ),
  );
}

const kind = process.env.BENCH_SCENARIO;
if (kind) console.log(JSON.stringify(await scenario(kind)));
else await orchestrate();
