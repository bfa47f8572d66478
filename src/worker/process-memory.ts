import { readFile } from "node:fs/promises";
import pidusage from "pidusage";
import { descendantsOf, type RememberedDescendants } from "./descendants.ts";

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
 * count shared pages once per process), RSS from pidusage elsewhere. The tree walk it needs anyway
 * also feeds `remembered`, so descendants that later leave the tree can still be killed with the job.
 */
export async function processTreeMemoryMb(pid: number, remembered?: RememberedDescendants): Promise<number> {
  const descendants = await descendantsOf(pid);
  await remembered?.remember(descendants);
  const pids = [pid, ...descendants];
  const pss = await Promise.all(pids.map(pssKb));
  if (pss.every((kb) => kb !== undefined)) {
    return (pss as number[]).reduce((a, b) => a + b, 0) / 1024;
  }
  const stats = await pidusage(pids);
  return Object.values(stats).reduce((sum, s) => sum + (s?.memory ?? 0), 0) / (1024 * 1024);
}
