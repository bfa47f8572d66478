import { type ChildProcess, fork } from "node:child_process";
import { fileURLToPath } from "node:url";
import { fromCallback } from "xstate";
import type { ProcessCommand, ProcessEvent, ProcessInput } from "../../machines/slot.ts";
import { LOG_LINE_MAX_BYTES } from "../job/log-limits.ts";
import type { Logger } from "../observability/logger.ts";
import type { LogLevel } from "../options.ts";
import { type ChildConfig, describeIssues, toErrorInfo, toParent } from "../protocol/ipc.ts";
import { RUNNING_FROM_SOURCES } from "../util/tsx-loader.ts";
import * as v from "../vendor/valibot.ts";
import { onBoundedLines } from "./bounded-lines.ts";
import { killLeftovers, RememberedDescendants } from "./descendants.ts";
import { handOut } from "./handout-tracing.ts";
import { jobProcessEnv } from "./job-env.ts";
import { jobProcessExecArgv } from "./job-exec-argv.ts";
import { JobLogGate } from "./job-log-gate.ts";
import { OrphanGuardian } from "./orphan-guardian.ts";
import { processTreeMemoryMb } from "./process-memory.ts";

/** What the runtime wants to know about processes, for /worker and /metrics. */
export interface ProcessObserver {
  spawned?(slotId: string, pid: number): void;
  ready?(slotId: string, pid: number, spawnSeconds: number): void;
  jobRunning?(slotId: string, jobId: string, startSeconds: number): void;
  memory?(slotId: string, mb: number): void;
  exited?(slotId: string, pid: number | undefined, code: number | null, signal: string | null): void;
}

export interface ProcessSettings {
  agentModule: string;
  logLevel: LogLevel;
  closeTimeoutMs: number;
  logger: Logger;
  observer?: ProcessObserver;
  /** The environment job processes start from (default process.env); secrets are stripped either way. */
  env?: NodeJS.ProcessEnv;
}

const childMain = fileURLToPath(new URL(`../job/child-main.${RUNNING_FROM_SOURCES ? "ts" : "js"}`, import.meta.url));
const bootGuard = fileURLToPath(new URL("../job/boot-guard.cjs", import.meta.url));

/** How long a job just sent its start_job has before a new process is forked. */
const JOB_HEAD_START_MS = 20;

/** One per worker process: kills its job processes when it dies (see orphan-guardian.ts). */
let guardian: OrphanGuardian | undefined;
function orphanGuardian(logger: Logger): OrphanGuardian {
  guardian ??= new OrphanGuardian((message) => logger.warn(message));
  return guardian;
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
 * with valibot) into proc.* events, commands into IPC messages or signals, samples memory on request, and
 * forwards the child's logs tagged with slot, job and pid. Stopping the actor SIGKILLs a live child.
 */
export function createProcessLogic(settings: ProcessSettings) {
  /** When this worker last wrote a `start_job` (performance.now()). */
  const lastJobStart = { at: Number.NEGATIVE_INFINITY };
  return fromCallback<ProcessCommand, ProcessInput, ProcessEvent>(({ input, sendBack, receive }) => {
    // fork() blocks this event loop for milliseconds, and the new process's boot takes a core for
    // a while. A replacement process is spawned in the same step that hands an idle one a job:
    // forked at once, it would hold back that job's start_job. So the fork waits for this turn of
    // the event loop to end (the start_job is written by then) and, when a job started less than
    // JOB_HEAD_START_MS ago, until that job had that head start; otherwise (a cold start: a process
    // for a job that waits) it is not delayed. Commands that arrive meanwhile are kept in order.
    let handle: ((command: ProcessCommand) => void) | undefined;
    const early: ProcessCommand[] = [];
    receive((command) => (handle ? handle(command) : early.push(command)));
    let cleanup: (() => void) | undefined;
    let timer: NodeJS.Timeout | undefined;
    const launch = () => {
      cleanup = launchProcess(settings, input, lastJobStart, sendBack, (handler) => {
        handle = handler;
        for (const command of early.splice(0)) handler(command);
      });
    };
    const deferred = setImmediate(() => {
      const wait = lastJobStart.at + JOB_HEAD_START_MS - performance.now();
      if (wait > 0) timer = setTimeout(launch, wait);
      else launch();
    });
    return () => {
      clearImmediate(deferred);
      clearTimeout(timer);
      cleanup?.();
    };
  });
}

function launchProcess(
  settings: ProcessSettings,
  input: ProcessInput,
  lastJobStart: { at: number },
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
        execArgv: jobProcessExecArgv({ childMain, bootGuard, agentModule: settings.agentModule }, process.execArgv),
        serialization: "json",
        env,
      });
    } catch (error) {
      sendBack({ type: "proc.spawn_failed", error: toErrorInfo(error) });
      return;
    }
    const pid = child.pid;
    if (pid !== undefined) {
      orphanGuardian(settings.logger).guard(pid, marker);
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
      const parsed = v.safeParse(toParent, raw);
      if (!parsed.success) {
        logger.warn({ issues: describeIssues(parsed.issues) }, "ignored an invalid message from a job process");
        return;
      }
      const message = parsed.output;
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
      if (pid !== undefined) orphanGuardian(settings.logger).release(pid);
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
          lastJobStart.at = jobSentAt;
          sendToChild({ type: "start_job", job: handOut(command.job, slotId, pid) });
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
