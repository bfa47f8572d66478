import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { SIGNAL_GESTURE_WINDOW_MS, SignalGestures } from "../../src/util/signal-gestures.ts";
import { spawnWorker } from "../integration/helpers/out-of-process.ts";
import {
  childPidsOf,
  commandLineOf,
  MARKER_VARIABLE,
  ProcessScope,
  waitUntilGone,
} from "../integration/helpers/processes.ts";
import { until } from "../support/wait.ts";
import { jsonLines, shellQuote, Tmux, tmuxAvailable } from "./tmux.ts";

/**
 * Ctrl-C through a real terminal (tmux): the terminal sends SIGINT to the whole foreground process
 * group, and launchers relay copies (`npx` runs `tsx` through a shell; tsx relays SIGINT to its child
 * when the child does not confirm it within 30 ms). One Ctrl-C must drain (the running job completes,
 * the worker exits 0); a second, deliberate one after a second stops at once (the job fails
 * `worker_shutdown`, exit 2). The same for `troupe dev`.
 */
const REPO = fileURLToPath(new URL("../../", import.meta.url));
const HOLDS_JOB = fileURLToPath(new URL("../fixtures/terminal/holds-job.ts", import.meta.url));
const SOURCES = new URL("../../src/index.ts", import.meta.url).href;
const TROUPE = fileURLToPath(new URL("../../bin/troupe.mjs", import.meta.url));
/** Short shutdown timeouts, and room for a slow start on a busy machine. */
const FAST = { closeTimeout: 2, killTimeout: 1, initializeTimeout: 30, launchTimeout: 60, logLevel: "DEBUG" };

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

let cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  cleanups = [];
});

/** A folder, a tmux server and a process scope (by environment marker) for one test; all gone after it. */
function terminal() {
  const folder = mkdtempSync(join(tmpdir(), "troupe-tty-"));
  const tmux = new Tmux(folder);
  const marker = `${process.pid}-tty-${Math.random().toString(36).slice(2)}`;
  const scope = new ProcessScope(marker);
  cleanups.push(async () => {
    tmux.close();
    const survivors = await scope.cleanup(3_000);
    rmSync(folder, { recursive: true, force: true });
    expect(survivors, "processes that outlived the test").toEqual([]);
  });
  const env = (vars: Record<string, string>) =>
    Object.entries({ ...vars, [MARKER_VARIABLE]: marker })
      .map(([name, value]) => `export ${name}=${shellQuote(value)}`)
      .join("\n");
  return { folder, tmux, env };
}

/** `npx tsx holds-job.ts` in a terminal: a local-mode worker whose one job holds for `holdMs`. */
async function npxTsxAgent(holdMs: number) {
  const { folder, tmux, env } = terminal();
  const events = join(folder, "events.jsonl");
  const log = join(folder, "worker.log");
  tmux.start(
    [
      `cd ${shellQuote(REPO)}`,
      env({
        TROUPE_TERMINAL_EVENTS: events,
        TROUPE_TEST_OPTIONS: JSON.stringify(FAST),
        TROUPE_TEST_METADATA: JSON.stringify({ holdMs }),
      }),
    ].join("\n"),
    `npx tsx ${shellQuote(HOLDS_JOB)} > ${shellQuote(log)} 2>&1`,
  );
  await until(() => jsonLines(events).some((e) => e.event === "job started"), {
    label: "the job to start",
    timeoutMs: 60_000,
    intervalMs: 50,
  }).catch((error: Error) => {
    throw new Error(`${error.message}\n${existsSync(log) ? readFileSync(log, "utf8") : ""}\n${tmux.screen()}`);
  });
  return {
    tmux,
    logs: () => jsonLines(log),
    text: () => (existsSync(log) ? readFileSync(log, "utf8") : ""),
    events: () => jsonLines(events),
    workerExit: () => jsonLines(events).find((e) => e.event === "worker exited")?.code,
  };
}

const DEV_AGENT = `import { JobContext, Options, WorkerJob } from ${JSON.stringify(SOURCES)};
async function entrypoint(ctx: JobContext) {
  ctx.logger.info({ pid: process.pid }, "dev job started");
  await new Promise((resolve) => setTimeout(resolve, Number(ctx.metadata.holdMs ?? 10)));
}
new WorkerJob({ entrypoint, jobctx: () => new JobContext(), options: new Options({ agentId: "TtyAgent", maxProcesses: 1, numIdleProcesses: 1, closeTimeout: 2, killTimeout: 1, initializeTimeout: 30, launchTimeout: 60, logLevel: "DEBUG" }) }).start();
`;

/** `node bin/troupe.mjs dev agent.ts` in a terminal, with one job dispatched that holds for `holdMs`. */
async function devWithJob(holdMs: number) {
  const { folder, tmux, env } = terminal();
  const agent = join(folder, "agent.ts");
  writeFileSync(agent, DEV_AGENT);
  const out = join(folder, "dev.log");
  tmux.start(
    [`cd ${shellQuote(REPO)}`, env({ TROUPE_HOME: join(folder, "home") })].join("\n"),
    `node ${shellQuote(TROUPE)} dev ${shellQuote(agent)} --port 0 > ${shellQuote(out)} 2>&1`,
  );
  const text = () => (existsSync(out) ? readFileSync(out, "utf8") : "");
  const playground = await until(() => /playground\s+(http:\/\/\S+)/.exec(text())?.[1], {
    label: "troupe dev to print its URLs",
    timeoutMs: 60_000,
    intervalMs: 50,
  });
  const url = new URL(playground);
  const token = url.searchParams.get("token") as string;
  // biome-ignore lint/suspicious/noExplicitAny: JSON from the registry's API, read field by field
  const api = async (path: string, init: RequestInit = {}): Promise<any> => {
    const response = await fetch(new URL(path, url.origin), {
      ...init,
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    });
    return response.json();
  };
  await until(
    async () => ((await api("/v1/workers")).workers as { status: string }[]).some((w) => w.status === "available"),
    { label: "the dev worker to register", timeoutMs: 60_000, intervalMs: 100 },
  );
  const { job } = await api("/v1/jobs", {
    method: "POST",
    body: JSON.stringify({ agent_name: "TtyAgent", metadata: { holdMs } }),
  });
  const jobId = (job as { id: string }).id;
  await until(async () => ((await api(`/v1/jobs/${jobId}`)).job as { status: string }).status === "running", {
    label: "the dispatched job to run",
    timeoutMs: 30_000,
    intervalMs: 50,
  });
  return { tmux, jobId, text, logs: () => jsonLines(out) };
}

describe("signal gestures", () => {
  it("count copies within the window once, and a later signal as the next gesture", () => {
    let now = 0;
    const gestures = new SignalGestures(1_000, () => now);
    expect(gestures.next()).toBe(1);
    now = 30;
    expect(gestures.next()).toBe(0);
    now = 999;
    expect(gestures.next()).toBe(0);
    now = 1_000;
    expect(gestures.next()).toBe(2);
    now = 1_500;
    expect(gestures.next()).toBe(0);
    now = 5_000;
    expect(gestures.next()).toBe(3);
    expect(gestures.count).toBe(3);
  });

  it("a worker that gets the same SIGINT twice, 30 ms apart, drains: its job completes, exit 0", async (ctx) => {
    const worker = spawnWorker(ctx, "completes", { metadata: { delayMs: 2_000 } });
    await worker.line("job started", 30_000);
    process.kill(worker.pid, "SIGINT");
    await sleep(30);
    process.kill(worker.pid, "SIGINT");
    expect(await worker.exited(30_000)).toEqual({ code: 0, signal: null });
    expect(worker.lines.find((l) => l.msg === "job completed")).toBeDefined();
    expect(worker.lines.find((l) => l.msg === "stopping now")).toBeUndefined();
  });
});

describe("troupe registry and troupe dev", { timeout: 120_000 }, () => {
  it("troupe registry: the same SIGINT twice, 30 ms apart, closes it once and it exits 0", async () => {
    const child = spawn(process.execPath, [TROUPE, "registry", "--port", "0"], {
      env: { ...process.env, TROUPE_API_KEY: "tty", TROUPE_API_SECRET: "s".repeat(64) },
      stdio: ["ignore", "pipe", "pipe"],
    });
    cleanups.push(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    });
    let out = "";
    child.stdout.on("data", (chunk) => {
      out += chunk;
    });
    const exit = new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
      child.once("exit", (code, signal) => resolve([code, signal])),
    );
    await until(() => out.includes("registry listening"), { label: "the registry to listen", timeoutMs: 30_000 });
    child.kill("SIGINT");
    await sleep(30);
    child.kill("SIGINT");
    expect(await exit).toEqual([0, null]);
  });

  it("troupe dev killed with SIGKILL: its worker notices (IPC closed), drains and exits", async () => {
    const folder = mkdtempSync(join(tmpdir(), "troupe-tty-"));
    const marker = `${process.pid}-orphan-${Math.random().toString(36).slice(2)}`;
    const scope = new ProcessScope(marker);
    cleanups.push(async () => {
      const survivors = await scope.cleanup(2_000);
      rmSync(folder, { recursive: true, force: true });
      expect(survivors, "processes that outlived the test").toEqual([]);
    });
    writeFileSync(join(folder, "agent.ts"), DEV_AGENT);
    const parent = spawn(process.execPath, [TROUPE, "dev", join(folder, "agent.ts"), "--port", "0", "--no-watch"], {
      env: { ...process.env, TROUPE_HOME: join(folder, "home"), [MARKER_VARIABLE]: marker },
      stdio: ["ignore", "pipe", "pipe"],
    });
    scope.track(parent.pid);
    let out = "";
    parent.stdout.on("data", (chunk) => {
      out += chunk;
    });
    await until(() => out.includes('"connected to the registry"'), {
      label: "the dev worker to register",
      timeoutMs: 60_000,
    });
    const [worker] = childPidsOf(parent.pid as number).filter((pid) => commandLineOf(pid).includes("dev-worker"));
    expect(worker).toBeDefined();
    parent.kill("SIGKILL");
    expect(await waitUntilGone([worker as number], 30_000)).toEqual([]);
  });
});

describe.runIf(tmuxAvailable)("Ctrl-C in a real terminal", { timeout: 120_000 }, () => {
  it("npx tsx agent.ts: one Ctrl-C drains, the running job completes and the worker exits 0", async () => {
    const run = await npxTsxAgent(3_000);
    const pressedAt = Date.now();
    run.tmux.ctrlC();
    // npx's own status is npm's: 130 when a SIGINT reached it, whatever the worker's exit code.
    const npxStatus = await run.tmux.exited(60_000, run.text);
    const logs = run.logs();
    expect(logs.find((l) => l.msg === "job completed")).toBeDefined();
    expect(logs.find((l) => l.msg === "job failed")).toBeUndefined();
    expect(logs.find((l) => l.msg === "stopping now")).toBeUndefined();
    expect(run.workerExit()).toBe(0);
    const copies = logs.filter((l) => String(l.msg).startsWith("signal ignored")).length;
    const drained = (run.events().find((e) => e.event === "worker exited")?.at as number) - pressedAt;
    console.info(
      `npx tsx: drained in ${drained} ms after Ctrl-C; copies of the SIGINT ignored: ${copies}; npx exit status ${npxStatus}`,
    );
  });

  it("npx tsx agent.ts: a second Ctrl-C after a second stops at once: the job fails worker_shutdown, exit 2", async () => {
    const run = await npxTsxAgent(120_000);
    run.tmux.ctrlC();
    await until(() => run.logs().some((l) => l.msg === "draining: no new jobs; a second signal stops at once"), {
      label: "the worker to drain",
      timeoutMs: 10_000,
    });
    await sleep(SIGNAL_GESTURE_WINDOW_MS + 300);
    const secondAt = Date.now();
    run.tmux.ctrlC();
    await run.tmux.exited(30_000, run.text);
    const logs = run.logs();
    expect(logs.find((l) => l.msg === "stopping now")).toBeDefined();
    expect(
      logs.find((l) => l.msg === "job failed"),
      JSON.stringify(logs),
    ).toMatchObject({
      status: "failed",
      reason: "worker_shutdown",
    });
    expect(run.workerExit()).toBe(2);
    console.info(`npx tsx: stopped ${Date.now() - secondAt} ms after the second Ctrl-C`);
  });

  it("troupe dev: one Ctrl-C drains, the dispatched job completes and troupe dev exits 0", async () => {
    const run = await devWithJob(3_000);
    const pressedAt = Date.now();
    run.tmux.ctrlC();
    const exit = await run.tmux.exited(60_000, run.text);
    const logs = run.logs();
    expect(
      logs.find((l) => l.msg === "job completed" && l.jobId === run.jobId),
      run.text(),
    ).toBeDefined();
    expect(logs.find((l) => l.msg === "job failed")).toBeUndefined();
    expect(logs.find((l) => l.msg === "stopping now")).toBeUndefined();
    expect(exit, run.text()).toBe(0);
    console.info(`troupe dev: drained and exited ${Date.now() - pressedAt} ms after Ctrl-C`);
  });

  it("troupe dev: a second Ctrl-C after a second stops the job at once (worker_shutdown), exit 2", async () => {
    const run = await devWithJob(120_000);
    run.tmux.ctrlC();
    await until(() => run.logs().some((l) => l.msg === "draining: no new jobs; a second signal stops at once"), {
      label: "the worker to drain",
      timeoutMs: 10_000,
    });
    await sleep(SIGNAL_GESTURE_WINDOW_MS + 300);
    run.tmux.ctrlC();
    const exit = await run.tmux.exited(30_000, run.text);
    const logs = run.logs();
    expect(logs.find((l) => l.msg === "job failed" && l.jobId === run.jobId)).toMatchObject({
      reason: "worker_shutdown",
    });
    expect(exit, run.text()).toBe(2);
  });
});
