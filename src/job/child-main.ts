import { captureJobMarker, killEscapedDescendants } from "./descendant-sweep.ts";
import { watchParent } from "./parent-watch.ts";

/**
 * Entry of a job process. Before anything slow is loaded (the agent, its dependencies, the rest of
 * troupe) it makes sure the process cannot outlive its worker: on IPC `disconnect`, on finding the
 * channel already closed, and, from a watchdog thread that works while the event loop is blocked, on
 * being re-parented. A SIGKILLed worker therefore leaves no job process and none of its descendants,
 * not even those that moved to another session or process group.
 */

const EXIT_ORPHANED = 70;

// Read before agent code can touch process.env: the sweeps find the job's descendants by it.
const marker = captureJobMarker();

/**
 * The worker is gone: kill the descendants that left the process group, then the whole group (this
 * process leads it), so nothing the job started outlives it either, then exit in case the group could
 * not be signalled.
 */
function exitOrphaned(): never {
  killEscapedDescendants();
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
watchParent(process.ppid, marker, (error) => {
  process.send?.({ type: "log", level: 40, msg: `orphan watchdog failed: ${error.message}` });
});
// These guards cover everything the boot guard (src/job/boot-guard.cjs) did, and more.
(globalThis as { [key: symbol]: { stop(): void } | undefined })[Symbol.for("troupe.bootGuard")]?.stop();

const { runJobProcess } = await import("./job-process.ts");
await runJobProcess();
