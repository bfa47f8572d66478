import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { fileURLToPath } from "node:url";
import type { TestContext } from "vitest";
import type { OptionsInput } from "../../../src/options.ts";
import { within } from "../../support/wait.ts";
import { fixture, type LogLine } from "./in-process.ts";
import { killHard, MARKER_VARIABLE, ProcessScope } from "./processes.ts";
import { Recorder } from "./recorder.ts";

const REPO_ROOT = fileURLToPath(new URL("../../../", import.meta.url));

/** Small timeouts for every worker process; JSON-safe (they travel in TROUPE_TEST_OPTIONS). */
export const FAST_LOCAL_OPTIONS = {
  ipcPingInterval: 0.2,
  ipcPongTimeout: 1,
  memorySampleInterval: 0.1,
  closeTimeout: 1,
  killTimeout: 0.5,
  initializeTimeout: 20,
  launchTimeout: 30,
  spawnBackoffBase: 0.2,
  spawnBackoffMax: 1,
  logLevel: "INFO",
} satisfies OptionsInput;

export interface ProcessExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface SpawnedWorker {
  child: ChildProcess;
  pid: number;
  scope: ProcessScope;
  /** JSON log lines from the worker's stdout (a line that is not JSON arrives as `{ msg: line }`). */
  lines: Recorder<LogLine>;
  stderr: () => string;
  exit: Promise<ProcessExit>;
  line(msg: string, timeoutMs: number, match?: (line: LogLine) => boolean): Promise<LogLine>;
  /** The port from the "worker started" line. */
  port(timeoutMs: number): Promise<number>;
  get(path: string): Promise<{ status: number; json: () => unknown }>;
  exited(timeoutMs: number): Promise<ProcessExit>;
}

/**
 * Runs a fixture agent as its own worker process (`node --import tsx fixture.ts`, local mode), and
 * registers its teardown with the test: kill it if it still runs, and fail the test if any process it
 * started (found by pid and by an inherited environment marker) outlives it.
 */
export function spawnWorker(
  context: Pick<TestContext, "onTestFinished">,
  fixtureName: string,
  settings: { options?: OptionsInput & Record<string, unknown>; metadata?: Record<string, unknown> } = {},
): SpawnedWorker {
  const marker = `${process.pid}-spawn-${randomUUID()}`;
  const scope = new ProcessScope(marker);
  const child = spawn(process.execPath, ["--import", "tsx", fixture(fixtureName)], {
    cwd: REPO_ROOT,
    env: {
      ...process.env,
      [MARKER_VARIABLE]: marker,
      TROUPE_TEST_OPTIONS: JSON.stringify({ ...FAST_LOCAL_OPTIONS, ...settings.options }),
      TROUPE_TEST_METADATA: settings.metadata ? JSON.stringify(settings.metadata) : "",
    },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true, // its own process group: nothing we send it reaches the test runner
  });
  if (child.pid === undefined) throw new Error(`could not start ${fixtureName}`);
  const pid = child.pid;
  scope.track(pid);

  const lines = new Recorder<LogLine>((l) => ({ msg: l.msg, jobId: l.jobId, status: l.status }));
  let buffered = "";
  child.stdout?.setEncoding("utf8");
  child.stdout?.on("data", (chunk: string) => {
    buffered += chunk;
    let newline = buffered.indexOf("\n");
    while (newline >= 0) {
      const text = buffered.slice(0, newline);
      buffered = buffered.slice(newline + 1);
      newline = buffered.indexOf("\n");
      if (!text.trim()) continue;
      let line: LogLine;
      try {
        line = JSON.parse(text) as LogLine;
      } catch {
        line = { level: 30, msg: text };
      }
      if (typeof line.jobPid === "number") scope.track(line.jobPid);
      lines.push(line);
    }
  });
  let stderr = "";
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (chunk: string) => {
    stderr += chunk;
  });
  const exit = new Promise<ProcessExit>((resolve) => {
    child.on("exit", (code, signal) => resolve({ code, signal }));
  });
  let hasExited = false;
  void exit.then(() => {
    hasExited = true;
  });

  const worker: SpawnedWorker = {
    child,
    pid,
    scope,
    lines,
    stderr: () => stderr,
    exit,
    line: (msg, timeoutMs, match = () => true) =>
      lines.waitFor((l) => l.msg === msg && match(l), timeoutMs, `log line "${msg}" from ${fixtureName}`),
    async port(timeoutMs) {
      const started = await worker.line("worker started", timeoutMs);
      return started.port as number;
    },
    async get(path) {
      const port = await worker.port(1);
      const response = await fetch(`http://127.0.0.1:${port}${path}`);
      const text = await response.text();
      return { status: response.status, json: () => JSON.parse(text) };
    },
    exited: (timeoutMs) => within(`${fixtureName} worker to exit`, exit, timeoutMs),
  };

  context.onTestFinished(async () => {
    const wasRunning = !hasExited;
    if (wasRunning) {
      killHard(pid);
      await within("the killed worker to exit", exit, 5_000);
    }
    const survivors = (await scope.cleanup(wasRunning ? 3_000 : 2_000)).filter((s) => s.pid !== pid);
    if (survivors.length > 0) {
      throw new Error(`job processes outlived their worker and had to be killed: ${JSON.stringify(survivors)}`);
    }
  });
  return worker;
}
