import { readdirSync, readFileSync } from "node:fs";

/**
 * Process bookkeeping for integration tests: no process a test starts may outlive it. A scope tracks
 * pids it learns and an environment marker its processes inherit (a job process gets its worker's
 * environment), so even a process no test ever saw is found in /proc and killed.
 */

export const MARKER_VARIABLE = "TROUPE_IT_SCOPE";

/** Alive: it exists and is not a zombie (an exited child nobody reaped yet is as good as gone). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EPERM") return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const state = stat.slice(stat.lastIndexOf(")") + 2).charAt(0);
    return state !== "Z" && state !== "X";
  } catch {
    return false;
  }
}

/** Pids whose environment holds `name=value` (Linux /proc; other users' processes are unreadable). */
export function pidsWithEnvironment(name: string, value: string): number[] {
  const needle = `${name}=${value}`;
  const found: number[] = [];
  let entries: string[] = [];
  try {
    entries = readdirSync("/proc");
  } catch {
    return found;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    if (pid === process.pid) continue;
    try {
      const environ = readFileSync(`/proc/${pid}/environ`, "utf8").split("\0");
      if (environ.includes(needle)) found.push(pid);
    } catch {
      // gone, or not ours
    }
  }
  return found;
}

/** Direct children of a process (Linux /proc). */
export function childPidsOf(ppid: number): number[] {
  const found: number[] = [];
  let tasks: string[] = [];
  try {
    tasks = readdirSync(`/proc/${ppid}/task`);
  } catch {
    return found;
  }
  for (const task of tasks) {
    try {
      const text = readFileSync(`/proc/${ppid}/task/${task}/children`, "utf8").trim();
      for (const pid of text.split(/\s+/).filter(Boolean).map(Number)) if (!found.includes(pid)) found.push(pid);
    } catch {
      // the task ended
    }
  }
  return found;
}

/** The job processes a worker forked (other children, such as the TypeScript loader's esbuild, aside). */
export function jobProcessesOf(ppid: number): number[] {
  return childPidsOf(ppid).filter((pid) => /child-main\.(ts|js)/.test(commandLineOf(pid)));
}

/** CPU time a process used so far, in clock ticks (utime + stime from /proc/<pid>/stat). */
export function cpuTicks(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // after the command: state is field 3, utime field 14, stime field 15 (1-based in proc(5))
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return 0;
  }
}

export function commandLineOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ").trim();
  } catch {
    return "";
  }
}

/** SIGKILL a process and, when it leads one, its process group. Never this process or its group. */
export function killHard(pid: number): void {
  if (pid <= 1 || pid === process.pid) return;
  try {
    process.kill(-pid, "SIGKILL");
  } catch {
    // not a group leader, or already gone
  }
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // already gone
  }
}

/** Polls until every pid is gone or the time is up; returns the ones still alive. */
export async function waitUntilGone(pids: Iterable<number>, timeoutMs: number): Promise<number[]> {
  const list = [...new Set(pids)];
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const alive = list.filter(isAlive);
    if (alive.length === 0 || Date.now() >= deadline) return alive;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

export interface Survivor {
  pid: number;
  command: string;
}

/**
 * Every process a test started or learned about: by pid, and, when the scope has one, by an environment
 * marker its processes inherited (only for a marker no other running test shares).
 */
export class ProcessScope {
  readonly pids = new Set<number>();
  readonly marker: string | undefined;

  constructor(marker?: string) {
    this.marker = marker;
  }

  track(pid: number | null | undefined): void {
    if (typeof pid === "number" && pid > 1 && pid !== process.pid) this.pids.add(pid);
  }

  /** Everything of this scope still alive: tracked pids and marked processes. */
  alive(): number[] {
    if (this.marker) for (const pid of pidsWithEnvironment(MARKER_VARIABLE, this.marker)) this.track(pid);
    return [...this.pids].filter(isAlive);
  }

  /**
   * Gives the scope's processes `graceMs` to end by themselves, then SIGKILLs (process groups too)
   * whatever is left and waits for it. Returns what had to be killed: a test asserts that is nothing.
   */
  async cleanup(graceMs: number): Promise<Survivor[]> {
    const survivors = (await waitUntilGone(this.alive(), graceMs)).map((pid) => ({
      pid,
      command: commandLineOf(pid),
    }));
    for (const { pid } of survivors) killHard(pid);
    const stubborn = await waitUntilGone(
      survivors.map((s) => s.pid),
      5_000,
    );
    if (stubborn.length > 0) throw new Error(`could not kill ${stubborn.join(", ")}`);
    // a marked process that appeared meanwhile (a late fork) is killed too
    const late = this.alive();
    for (const pid of late) killHard(pid);
    await waitUntilGone(late, 5_000);
    return [...survivors, ...late.map((pid) => ({ pid, command: commandLineOf(pid) }))];
  }
}

/**
 * In-process workers fork their job processes with this process's environment, which concurrent
 * tests share: one marker per test file (per vitest worker process) finds every job process any of its
 * tests started, for a last sweep after the file.
 */
export function fileMarker(): string {
  const current = process.env[MARKER_VARIABLE];
  if (current?.startsWith(`file-${process.pid}-`)) return current;
  const marker = `file-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}`;
  process.env[MARKER_VARIABLE] = marker;
  return marker;
}

/** For afterAll: kills whatever job process of this file is still alive and fails if there was any. */
export async function sweepFile(): Promise<void> {
  const survivors = await new ProcessScope(fileMarker()).cleanup(2_000);
  if (survivors.length > 0) {
    throw new Error(`job processes outlived their tests and had to be killed: ${JSON.stringify(survivors)}`);
  }
}
