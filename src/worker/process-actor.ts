import { type ChildProcess, fork } from "node:child_process";
import { createRequire } from "node:module";
import { fileURLToPath, pathToFileURL } from "node:url";
import { fromCallback } from "xstate";
import type { ProcessCommand, ProcessEvent, ProcessInput } from "../../machines/slot.ts";
import { LOG_LINE_MAX_BYTES } from "../job/log-limits.ts";
import type { Logger } from "../observability/logger.ts";
import type { LogLevel } from "../options.ts";
import { type ChildConfig, toErrorInfo, toParent } from "../protocol/ipc.ts";
import { onBoundedLines } from "./bounded-lines.ts";
import { killLeftovers, RememberedDescendants } from "./descendants.ts";
import { jobProcessEnv, withoutEnvFileFlags } from "./job-env.ts";
import { JobLogGate } from "./job-log-gate.ts";
import { processTreeMemoryMb } from "./process-memory.ts";

/** What the runtime wants to know about processes, for /worker and /metrics. */
export interface ProcessObserver {
  spawned?(slotId: string, pid: number): void;
  ready?(slotId: string, pid: number, spawnSeconds: number): void;
  jobRunning?(slotId: string, jobId: string, startSeconds: number): void;
  memory?(slotId: string, mb: number): void;
  exited?(slotId: string, pid: number | undefined, code: number | null, signal: string | null): void;
}

/** How long a new process waits before it is forked (see createProcessLogic). */
const FORK_DEFER_MS = 20;

export interface ProcessSettings {
  agentModule: string;
  logLevel: LogLevel;
  closeTimeoutMs: number;
  logger: Logger;
  observer?: ProcessObserver;
  /** The environment job processes start from (default process.env); secrets are stripped either way. */
  env?: NodeJS.ProcessEnv;
  /** Milliseconds before fork(); 0 forks at once. Default 20. */
  forkDeferMs?: number;
}

const here = fileURLToPath(import.meta.url);
const runningFromTypeScript = here.endsWith(".ts");
const childMain = fileURLToPath(new URL(`../job/child-main.${runningFromTypeScript ? "ts" : "js"}`, import.meta.url));
const bootGuard = fileURLToPath(new URL("../job/boot-guard.cjs", import.meta.url));

/**
 * A TypeScript child needs the tsx loader unless this process already runs under it. Never an
 * `--env-file`: the child would read back the secrets its environment is stripped of.
 */
function childExecArgv(): string[] {
  // The boot guard first: loading tsx and child-main takes long enough for a worker to die meanwhile.
  const inherited = [
    "--require",
    bootGuard,
    ...withoutEnvFileFlags(process.execArgv).filter((arg) => !arg.startsWith("--inspect")),
  ];
  const hasTsx = inherited.some((arg) => arg.includes("tsx"));
  if (!runningFromTypeScript || hasTsx) return inherited;
  const loader = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href;
  return [...inherited, "--import", loader];
}

/** Signals the child's whole process group (it is the group leader), so its descendants go too. */
function signalGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    try {
      child.kill(signal);
    } catch {
      // already gone
    }
  }
}

/** How long after a child's exit its stdio may stay open before the exit is reported anyway. */
const EXIT_REPORT_CAP_MS = 500;

/**
 * After the group leader (the job process) exited, SIGKILLs what is left of its process group. The
 * group id cannot be reused while any member lives, so this reaches only the job's own descendants.
 */
function killGroupRemnants(pid: number): void {
  try {
    process.kill(-pid, "SIGKILL");
  } catch {
    // ESRCH: the group is empty
  }
}

/**
 * The slot machine's `process` actor: one forked job process. It translates IPC messages (parsed
 * with zod) into proc.* events, commands into IPC messages or signals, samples memory on request, and
 * forwards the child's logs tagged with slot, job and pid. Stopping the actor SIGKILLs a live child.
 */
export function createProcessLogic(settings: ProcessSettings) {
  const deferMs = settings.forkDeferMs ?? FORK_DEFER_MS;
  return fromCallback<ProcessCommand, ProcessInput, ProcessEvent>(({ input, sendBack, receive }) => {
    // fork() blocks this event loop for milliseconds. A replacement process is spawned in the same
    // step that hands an idle one a job, so forking at once would delay that job's start; a short
    // deferral lets the job start first. Commands that arrive meanwhile are kept in order.
    let handle: ((command: ProcessCommand) => void) | undefined;
    const early: ProcessCommand[] = [];
    receive((command) => (handle ? handle(command) : early.push(command)));
    let cleanup: (() => void) | undefined;
    const launch = () => {
      cleanup = launchProcess(settings, input, sendBack, (handler) => {
        handle = handler;
        for (const command of early.splice(0)) handler(command);
      });
    };
    const timer = deferMs > 0 ? setTimeout(launch, deferMs) : undefined;
    if (deferMs <= 0) launch();
    return () => {
      clearTimeout(timer);
      cleanup?.();
    };
  });
}

function launchProcess(
  settings: ProcessSettings,
  input: ProcessInput,
  sendBack: (event: ProcessEvent) => void,
  receive: (handler: (command: ProcessCommand) => void) => void,
): (() => void) | undefined {
  {
    const { slotId } = input;
    const config: ChildConfig = {
      agentModule: settings.agentModule,
      slotId,
      logLevel: settings.logLevel,
      closeTimeoutMs: settings.closeTimeoutMs,
    };
    const forkedAt = performance.now();
    let jobSentAt = 0;
    let jobId: string | undefined;
    let exited = false;
    let exitReported = false;
    let shutdownReason: string | undefined;
    let logger = settings.logger.child({ slotId });
    const { env, marker } = jobProcessEnv(settings.env ?? process.env);
    const remembered = new RememberedDescendants();

    let child: ChildProcess;
    try {
      child = fork(childMain, [JSON.stringify(config)], {
        detached: true,
        stdio: ["ignore", "pipe", "pipe", "ipc"],
        execArgv: childExecArgv(),
        serialization: "json",
        env,
      });
    } catch (error) {
      sendBack({ type: "proc.spawn_failed", error: toErrorInfo(error) });
      return;
    }
    const pid = child.pid;
    if (pid !== undefined) {
      logger = logger.child({ jobPid: pid });
      settings.observer?.spawned?.(slotId, pid);
      sendBack({ type: "proc.spawned", pid });
    }

    const logs = new JobLogGate(logger, () => jobId, slotId);
    for (const [stream, name] of [
      [child.stdout, "stdout"],
      [child.stderr, "stderr"],
    ] as const) {
      if (stream) onBoundedLines(stream, LOG_LINE_MAX_BYTES, (line, cut) => logs.streamLine(name, line, cut));
    }

    child.on("error", (error) => {
      if (pid === undefined && !exited) {
        exited = true;
        sendBack({ type: "proc.spawn_failed", error: toErrorInfo(error) });
      } else {
        logger.warn({ err: error.message }, "job process channel error");
      }
    });

    child.on("message", (raw) => {
      const parsed = toParent.safeParse(raw);
      if (!parsed.success) {
        logger.warn(
          { issues: parsed.error.issues.map((i) => i.message) },
          "ignored an invalid message from a job process",
        );
        return;
      }
      const message = parsed.data;
      switch (message.type) {
        case "ready":
          settings.observer?.ready?.(slotId, pid ?? 0, (performance.now() - forkedAt) / 1000);
          sendBack({ type: "proc.ready" });
          break;
        case "init_failed":
          logger.error({ error: message.error }, "job process failed to initialize");
          break;
        case "pong":
          sendBack({ type: "proc.pong" });
          break;
        case "job_status":
          if (message.status === "running") {
            settings.observer?.jobRunning?.(slotId, jobId ?? "", (performance.now() - jobSentAt) / 1000);
            sendBack({ type: "proc.job_running" });
          } else {
            // The job is ending: what it started is still in its tree now, not after it exited.
            if (pid !== undefined) remembered.rememberTreeOf(pid);
            sendBack({ type: "proc.job_ending" });
          }
          break;
        case "log":
          logs.message(levelName(message.level), message.msg, message.fields);
          break;
        case "done":
          sendBack({ type: "proc.done", result: message.result });
          break;
      }
    });

    /** Kills what the job left outside its process group (Linux) and says so. Never rejects. */
    const killDescendants = (code: number | null, signal: NodeJS.Signals | null): void => {
      if (pid === undefined) return;
      killLeftovers(pid, marker, remembered).then(
        (killed) => {
          if (killed.length === 0) return;
          const how = signal ? `signal ${signal}` : `code ${code}`;
          const after = shutdownReason ? `, after shutdown: ${shutdownReason}` : "";
          logger.warn(
            { jobId, killed: killed.length, pids: killed, exitCode: code, exitSignal: signal, shutdownReason },
            `killed ${killed.length} descendant process(es) of ${jobId ? `job ${jobId}` : `job process ${slotId}`} ` +
              `that left its process group (job process exited with ${how}${after})`,
          );
        },
        (error: unknown) =>
          logger.warn({ jobId, err: String(error) }, "could not look for the job's leftover processes"),
      );
    };

    // Reported on `close`, once the child's last log lines and IPC messages are in, so an outcome
    // never arrives after the exit that settles the job. A descendant that kept our stdout open would
    // hold `close` back forever, hence the short cap after `exit`.
    let reportTimer: NodeJS.Timeout | undefined;
    const reportExit = (code: number | null, signal: NodeJS.Signals | null) => {
      if (exitReported) return;
      exitReported = true;
      clearTimeout(reportTimer);
      logs.close();
      settings.observer?.exited?.(slotId, pid, code, signal);
      sendBack({ type: "proc.exit", code, signal });
    };
    child.on("exit", (code, signal) => {
      exited = true;
      // Whatever the job started in its process group goes with it (a media tool, a shell)...
      if (pid !== undefined) killGroupRemnants(pid);
      // ...and so does what it moved to another session or group. The exit is not held back for
      // this: on a busy worker reading /proc can take longer than the job's closeTimeout has left.
      killDescendants(code, signal);
      reportTimer = setTimeout(() => reportExit(code, signal), EXIT_REPORT_CAP_MS);
    });
    child.on("close", (code, signal) => reportExit(code, signal));

    const sendToChild = (message: unknown) => {
      if (child.connected)
        child.send(message as never, (error) => error && logger.debug({ err: error.message }, "send failed"));
    };

    receive((command) => {
      switch (command.type) {
        case "start_job":
          jobId = command.job.jobId;
          jobSentAt = performance.now();
          sendToChild({ type: "start_job", job: command.job });
          break;
        case "shutdown":
          shutdownReason = command.reason;
          sendToChild({ type: "shutdown", reason: command.reason });
          break;
        case "ping":
          sendToChild({ type: "ping", ts: Date.now() });
          break;
        case "sample_memory":
          if (pid === undefined || exited) break;
          processTreeMemoryMb(pid, remembered).then(
            (mb) => {
              settings.observer?.memory?.(slotId, mb);
              if (!exited) sendBack({ type: "proc.memory", mb });
            },
            () => {},
          );
          break;
        case "signal": {
          const { signal } = command;
          logger.info({ jobId, signal }, "signalling job process group");
          // Remember its tree first: once it is dead, its children are no longer found under it.
          if (pid !== undefined && !exited) remembered.rememberTreeOf(pid);
          signalGroup(child, signal);
          break;
        }
      }
    });

    return () => {
      clearTimeout(reportTimer);
      child.removeAllListeners("message");
      if (!exited) signalGroup(child, "SIGKILL");
      else if (pid !== undefined) killGroupRemnants(pid);
    };
  }
}

function levelName(level: number): "debug" | "info" | "warn" | "error" {
  if (level >= 50) return "error";
  if (level >= 40) return "warn";
  if (level >= 30) return "info";
  return "debug";
}
