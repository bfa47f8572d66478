import { Worker } from "node:worker_threads";
import { SWEEP_FUNCTION_SOURCE } from "./descendant-sweep.ts";

/** How often the watcher looks at the parent: the worst case for an orphan to notice it is one. */
const WATCH_INTERVAL_MS = 250;

/**
 * Runs on its own thread, so it works while the job's event loop is blocked (an entrypoint stuck in
 * `while (true) {}` never sees the IPC `disconnect`). When the job process is re-parented, its worker
 * died: it first kills the job's descendants that left its process group (they carry the job's
 * marker, or are still in its process tree), then SIGKILLs the job's whole process group, itself and
 * everything else the job started included. Plain JavaScript evaluated as a script: it must not
 * depend on the TypeScript loader.
 */
const WATCHER_SOURCE = `
const { workerData } = require("node:worker_threads");
const sweep = ${SWEEP_FUNCTION_SOURCE};
const orphaned = () => process.ppid !== workerData.parent;
const killJob = () => {
  try { sweep(require, workerData.marker, process.pid); } catch {}
  try { process.kill(-process.pid, "SIGKILL"); } catch { process.kill(process.pid, "SIGKILL"); }
};
if (orphaned()) killJob();
setInterval(() => { if (orphaned()) killJob(); }, workerData.intervalMs);
`;

/**
 * Starts the orphan watchdog for a job process whose worker is `parentPid`; `marker` is the job's
 * TROUPE_JOB_PROCESS value. It costs one small thread (about 9 MB of RSS, measured on Node 20) and
 * keeps nothing alive: the process still exits when its work is done.
 */
export function watchParent(parentPid: number, marker: string | undefined, onError: (error: Error) => void): void {
  const watcher = new Worker(WATCHER_SOURCE, {
    eval: true,
    workerData: { parent: parentPid, marker, intervalMs: WATCH_INTERVAL_MS },
    resourceLimits: { maxOldGenerationSizeMb: 16, maxYoungGenerationSizeMb: 2 },
    stdout: false,
    stderr: false,
  });
  watcher.on("error", onError);
  watcher.unref();
}
