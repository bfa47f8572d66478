import { captureJobMarker, killEscapedDescendants } from "./descendant-sweep.ts";

/**
 * Entry of a job process. Before anything slow is loaded (the agent, its dependencies, the rest of
 * troupe) it makes sure the process does not outlive its worker: on IPC `disconnect`, and on finding
 * the channel already closed, it kills the job's descendants that left its process group, then the
 * group. That takes a free event loop; a job whose loop is blocked (`while (true) {}`) is killed from
 * outside, by its worker's orphan guardian (src/worker/orphan-guardian.ts), which reads end-of-file
 * from the worker the moment the worker is gone.
 *
 * The published build bundles this module with job-process.ts (scripts/bundle-job-process.ts); what
 * that shares with the agent's `troupe` (JobContext, options, valibot) stays separate files, which
 * load, in a few milliseconds, before these lines run. The boot guard covers that time.
 */

const EXIT_ORPHANED = 70;

// Read before agent code can touch process.env: the sweeps find the job's descendants by it.
captureJobMarker();

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
// These guards cover everything the boot guard (src/job/boot-guard.cjs) did, and more.
(globalThis as { [key: symbol]: { stop(): void } | undefined })[Symbol.for("troupe.bootGuard")]?.stop();

const { runJobProcess } = await import("./job-process.ts");
await runJobProcess();
