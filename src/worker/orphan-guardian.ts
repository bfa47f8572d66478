import { type ChildProcess, spawn } from "node:child_process";
import { SWEEP_FUNCTION_SOURCE } from "../job/descendant-sweep.ts";
import { STRIPPED_ENV_NAMES } from "./job-env.ts";

/**
 * The orphan guardian: one small plain-Node process per worker that kills the worker's job processes
 * and their descendants when the worker dies, even a job whose event loop is blocked (a job process
 * with a free event loop sees its IPC channel close and exits by itself, see child-main.ts).
 *
 * The worker tells it, over the guardian's stdin, each job process it forks (`+ <pid> <marker>`) and
 * each that exited (`- <pid>`). Only the worker holds the pipe's write end, so the guardian reads
 * end-of-file the moment the worker is gone, however it died (SIGKILL, the OOM killer, a crash).
 * Then, for each job process still alive and still the same process (its start time, /proc/<pid>/stat
 * field 22, as when it was registered, so a reused pid is never hit), it kills the descendants that
 * left the job's process group (by the job's TROUPE_JOB_PROCESS marker and its process tree, the same
 * sweep the job process runs itself) and then SIGKILLs the job's process group. One guardian costs
 * what one bare Node process costs, once per worker, instead of a watchdog thread (about 7 MB and
 * 0.1 s of CPU to start) in every job process.
 */
const GUARDIAN_SOURCE = `// troupe orphan guardian: kills the worker's job processes when the worker is gone
"use strict";
const fs = require("node:fs");
const sweep = ${SWEEP_FUNCTION_SOURCE};
const guarded = new Map();
const startOf = (pid) => {
  try {
    const text = fs.readFileSync("/proc/" + pid + "/stat", "latin1");
    return text.slice(text.lastIndexOf(")") + 2).split(" ")[19];
  } catch { return undefined; }
};
const killJobs = () => {
  for (const [pid, { marker, start }] of guarded) {
    if (start !== undefined && startOf(pid) !== start) continue;
    try { sweep(require, marker, pid); } catch {}
    try { process.kill(-pid, "SIGKILL"); } catch { try { process.kill(pid, "SIGKILL"); } catch {} }
  }
  process.exit(0);
};
let pending = "";
process.stdin.setEncoding("latin1");
process.stdin.on("data", (chunk) => {
  pending += chunk;
  for (let end = pending.indexOf("\\n"); end >= 0; end = pending.indexOf("\\n")) {
    const [op, pidText, marker] = pending.slice(0, end).split(" ");
    pending = pending.slice(end + 1);
    const pid = Number(pidText);
    if (!Number.isSafeInteger(pid) || pid <= 1) continue;
    if (op === "+") guarded.set(pid, { marker: marker || undefined, start: startOf(pid) });
    else if (op === "-") guarded.delete(pid);
  }
});
process.stdin.on("end", killJobs);
process.stdin.on("error", killJobs);
`;

/** With no job process left to guard, the guardian is let go after this long (the next fork starts one). */
const IDLE_CLOSE_MS = 500;
/** A guardian that died while it had processes to guard is restarted after this long. */
const RESTART_DELAY_MS = 1_000;

export class OrphanGuardian {
  readonly #guarded = new Map<number, string | undefined>();
  #process: ChildProcess | undefined;
  #closeTimer: NodeJS.Timeout | undefined;
  #restartTimer: NodeJS.Timeout | undefined;

  /** `warn` hears about a guardian that could not start or died. */
  constructor(private readonly warn: (message: string) => void) {}

  /** Guards a job process just forked; `marker` is its TROUPE_JOB_PROCESS value. */
  guard(pid: number, marker: string | undefined): void {
    this.#guarded.set(pid, marker);
    clearTimeout(this.#closeTimer);
    this.#closeTimer = undefined;
    if (this.#process) this.#write(`+ ${pid} ${marker ?? ""}\n`);
    else this.#start();
  }

  /** The job process exited: nothing of it is left for the guardian to kill. */
  release(pid: number): void {
    if (!this.#guarded.delete(pid)) return;
    this.#write(`- ${pid}\n`);
    if (this.#guarded.size > 0 || !this.#process) return;
    this.#closeTimer = setTimeout(() => this.#close(), IDLE_CLOSE_MS);
    this.#closeTimer.unref();
  }

  #write(line: string): void {
    this.#process?.stdin?.write(line);
  }

  /** Starts a guardian and tells it every process guarded now. */
  #start(): void {
    clearTimeout(this.#restartTimer);
    this.#restartTimer = undefined;
    const env: NodeJS.ProcessEnv = { ...process.env };
    for (const name of STRIPPED_ENV_NAMES) delete env[name];
    let guardian: ChildProcess;
    try {
      // Its own session: a Ctrl-C to the worker's terminal must not reach it before the worker is gone.
      guardian = spawn(process.execPath, ["-e", GUARDIAN_SOURCE], {
        detached: true,
        stdio: ["pipe", "ignore", "ignore"],
        env,
      });
    } catch (error) {
      this.warn(`could not start the orphan guardian: ${(error as Error).message}`);
      return;
    }
    this.#process = guardian;
    guardian.unref();
    const stdin = guardian.stdin as NodeJS.WritableStream & { unref?: () => void };
    stdin.unref?.();
    // A write to a guardian that just died fails with EPIPE: its exit is handled below.
    stdin.on("error", () => {});
    guardian.on("error", (error) => this.warn(`orphan guardian: ${error.message}`));
    guardian.on("exit", (code, signal) => {
      if (this.#process !== guardian) return;
      this.#process = undefined;
      if (this.#guarded.size === 0) return;
      this.warn(`the orphan guardian exited (${signal ?? `code ${code}`}); restarting it`);
      this.#restartTimer = setTimeout(() => {
        if (!this.#process && this.#guarded.size > 0) this.#start();
      }, RESTART_DELAY_MS);
      this.#restartTimer.unref();
    });
    for (const [pid, marker] of this.#guarded) this.#write(`+ ${pid} ${marker ?? ""}\n`);
  }

  /** Closing its stdin ends the guardian (it finds nothing to kill). */
  #close(): void {
    const guardian = this.#process;
    this.#process = undefined;
    guardian?.stdin?.end();
  }
}
