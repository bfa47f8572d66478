import { readdirSync, readFileSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import { JOB_MARKER_VARIABLE, SWEEP_MAX_ROUNDS } from "../job/descendant-sweep.ts";

/**
 * The worker's side of "a job's descendants die with it": after a job process exited (ended, crashed
 * or was killed), find what it left outside its process group and kill it. Linux only (/proc);
 * elsewhere every function finds nothing and the process-group kill is all there is.
 *
 * The job process runs the same sweep itself when it ends normally or is orphaned
 * (src/job/descendant-sweep.ts, synchronous, in plain JavaScript for the orphan guardian); this one is
 * asynchronous so that the worker's event loop keeps serving the other jobs while it reads /proc.
 */

interface ProcStat {
  pgrp: number;
  /** Field 22 of /proc/<pid>/stat, clock ticks after boot: with the pid, it names one process. */
  startTime: string;
}

function parseStat(text: string): ProcStat | undefined {
  const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
  if (fields[0] === "Z" || fields[0] === "X") return undefined;
  return { pgrp: Number(fields[2]), startTime: fields[19] ?? "" };
}

/** A live (not zombie) process's group and start time, or undefined. */
async function statOf(pid: number): Promise<ProcStat | undefined> {
  try {
    return parseStat(await readFile(`/proc/${pid}/stat`, "latin1"));
  } catch {
    return undefined;
  }
}

function statOfSync(pid: number): ProcStat | undefined {
  try {
    return parseStat(readFileSync(`/proc/${pid}/stat`, "latin1"));
  } catch {
    return undefined;
  }
}

/** Children of `pid`, one file per thread: /proc/<pid>/task/<tid>/children. */
function childrenOfSync(pid: number): number[] {
  const found: number[] = [];
  let tasks: string[] = [];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return found;
  }
  for (const task of tasks) {
    try {
      const text = readFileSync(`/proc/${pid}/task/${task}/children`, "latin1");
      for (const child of text.split(" ")) if (child.trim()) found.push(Number(child));
    } catch {
      // the thread ended while we looked
    }
  }
  return found;
}

/** Direct and indirect children of `pid`, from /proc (Linux). Empty where /proc is missing. */
export async function descendantsOf(pid: number): Promise<number[]> {
  const found: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    const current = queue.shift() as number;
    let tasks: string[] = [];
    try {
      tasks = await readdir(`/proc/${current}/task`);
    } catch {
      continue;
    }
    for (const task of tasks) {
      try {
        const children = (await readFile(`/proc/${current}/task/${task}/children`, "utf8")).trim();
        for (const child of children.split(/\s+/).filter(Boolean).map(Number)) {
          if (!found.includes(child)) {
            found.push(child);
            queue.push(child);
          }
        }
      } catch {
        // the task ended while we looked
      }
    }
  }
  return found;
}

/** How many descendants a job process remembers; the oldest go first beyond it. */
export const MAX_REMEMBERED_DESCENDANTS = 1024;

/**
 * Descendants seen in a job's process tree while it ran (pid and start time). A child started with a
 * cleared environment carries no marker; once the job process exits it is re-parented and out of the
 * tree, so only this record still ties it to the job.
 */
export class RememberedDescendants {
  readonly #seen = new Map<number, string>();

  /**
   * Records the job process's current descendants, synchronously: the moment matters (it is about to
   * be signalled, or to end), and a job's own tree is a few small files, well under a millisecond.
   */
  rememberTreeOf(pid: number): void {
    const queue = [pid];
    // a fork bomb's tree must not stall the worker: no more than can be remembered
    for (let visited = 0; queue.length > 0 && visited < MAX_REMEMBERED_DESCENDANTS; ) {
      for (const child of childrenOfSync(queue.pop() as number)) {
        this.#add(child, statOfSync(child));
        queue.push(child);
        visited++;
      }
    }
  }

  /** Records these pids (descendants found by the memory sampler's tree walk) with their start times. */
  async remember(pids: readonly number[]): Promise<void> {
    const stats = await Promise.all(pids.map(statOf));
    for (const [i, pid] of pids.entries()) this.#add(pid, stats[i]);
  }

  #add(pid: number, stat: ProcStat | undefined): void {
    if (!stat) return;
    this.#seen.delete(pid);
    this.#seen.set(pid, stat.startTime);
    if (this.#seen.size > MAX_REMEMBERED_DESCENDANTS) this.#seen.delete(this.#seen.keys().next().value as number);
  }

  entries(): [pid: number, startTime: string][] {
    return [...this.#seen];
  }
}

/** How many /proc/<pid>/environ files a scan reads at once. */
const SCAN_BATCH = 64;

/** Pids whose environment holds exactly `TROUPE_JOB_PROCESS=<marker>`. */
async function markedPids(marker: string): Promise<number[]> {
  let entries: string[];
  try {
    entries = await readdir("/proc");
  } catch {
    return [];
  }
  const needle = Buffer.from(`${JOB_MARKER_VARIABLE}=${marker}\0`);
  const isMarked = async (pid: string): Promise<boolean> => {
    try {
      const environ = await readFile(`/proc/${pid}/environ`);
      for (let at = environ.indexOf(needle); at >= 0; at = environ.indexOf(needle, at + 1)) {
        if (at === 0 || environ[at - 1] === 0) return true;
      }
    } catch {
      // gone, or not ours to read
    }
    return false;
  };
  const pids = entries.filter((entry) => /^\d+$/.test(entry));
  const marked: number[] = [];
  // In batches: one open file per process at once could exceed the worker's descriptor limit.
  for (let i = 0; i < pids.length; i += SCAN_BATCH) {
    const batch = pids.slice(i, i + SCAN_BATCH);
    const hits = await Promise.all(batch.map(isMarked));
    for (const [j, hit] of hits.entries()) if (hit) marked.push(Number(batch[j]));
  }
  return marked;
}

function signal(pid: number, name: NodeJS.Signals): boolean {
  try {
    process.kill(pid, name);
    return true;
  } catch {
    return false;
  }
}

/**
 * SIGKILLs every process that carries the job's marker or was remembered as its descendant (with the
 * same start time), except members of the job's own process group, which the group kill takes. Each
 * is SIGSTOPped as found so it cannot fork while later rounds look again. Returns the killed pids.
 */
export async function killLeftovers(
  jobPid: number,
  marker: string,
  remembered: RememberedDescendants,
): Promise<number[]> {
  const frozen = new Map<number, string>();
  const freeze = async (pid: number, expectedStart?: string): Promise<boolean> => {
    if (pid === jobPid || pid === process.pid || frozen.has(pid)) return false;
    const stat = await statOf(pid);
    if (!stat || stat.pgrp === jobPid) return false;
    if (expectedStart !== undefined && stat.startTime !== expectedStart) return false; // pid reused
    if (!signal(pid, "SIGSTOP")) return false;
    frozen.set(pid, stat.startTime);
    return true;
  };
  for (const [pid, startTime] of remembered.entries()) await freeze(pid, startTime);
  for (let round = 0; round < SWEEP_MAX_ROUNDS; round++) {
    let fresh = 0;
    for (const pid of await markedPids(marker)) if (await freeze(pid)) fresh++;
    // children of what we froze (started with a cleared environment) are ours too
    for (const pid of [...frozen.keys()])
      for (const child of await descendantsOf(pid)) if (await freeze(child)) fresh++;
    if (fresh === 0) break;
  }
  const killed: number[] = [];
  for (const [pid, startTime] of frozen) {
    if ((await statOf(pid))?.startTime === startTime && signal(pid, "SIGKILL")) killed.push(pid);
  }
  return killed;
}
