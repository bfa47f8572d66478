import { watchParent } from "./parent-watch.ts";

/**
 * Entry of a job process. Before anything slow is loaded (the agent, its dependencies, the rest of
 * troupe) it makes sure the process cannot outlive its worker: on IPC `disconnect`, on finding the
 * channel already closed, and, from a watchdog thread that works while the event loop is blocked, on
 * being re-parented. A SIGKILLed worker therefore leaves no job process and none of its descendants.
 */

const EXIT_ORPHANED = 70;

/**
 * The worker is gone: take down the whole process group (this process leads it), so nothing the job
 * started outlives it either, then exit in case the group could not be signalled.
 */
function exitOrphaned(): never {
  try {
    process.kill(-process.pid, "SIGKILL");
  } catch {
    // not a group leader (started by hand): exiting is all there is to do
  }
  process.exit(EXIT_ORPHANED);
}

process.on("disconnect", exitOrphaned);
// The worker may have died while this module was loading, before anyone listened.
if (!process.connected) exitOrphaned();
watchParent(process.ppid, (error) => {
  process.send?.({ type: "log", level: 40, msg: `orphan watchdog failed: ${error.message}` });
});

const { runJobProcess } = await import("./job-process.ts");
await runJobProcess();
