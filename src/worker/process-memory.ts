import { readdir, readFile } from "node:fs/promises";
import pidusage from "pidusage";

/** Direct and indirect children of `pid`, from /proc (Linux). Empty where /proc is missing. */
async function descendantsOf(pid: number): Promise<number[]> {
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

async function pssKb(pid: number): Promise<number | undefined> {
  try {
    const text = await readFile(`/proc/${pid}/smaps_rollup`, "utf8");
    const match = /^Pss:\s+(\d+) kB/m.exec(text);
    return match ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Memory of a job process and all its descendants in MB: PSS from /proc where available (RSS would
 * count shared pages once per process), RSS from pidusage elsewhere.
 */
export async function processTreeMemoryMb(pid: number): Promise<number> {
  const pids = [pid, ...(await descendantsOf(pid))];
  const pss = await Promise.all(pids.map(pssKb));
  if (pss.every((kb) => kb !== undefined)) {
    return (pss as number[]).reduce((a, b) => a + b, 0) / 1024;
  }
  const stats = await pidusage(pids);
  return Object.values(stats).reduce((sum, s) => sum + (s?.memory ?? 0), 0) / (1024 * 1024);
}
