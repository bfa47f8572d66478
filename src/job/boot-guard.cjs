"use strict";
/*
 * Preloaded (`--require`) into every job process, before the TypeScript loader and before any module:
 * plain CommonJS, so it runs within milliseconds of the fork. Until child-main has its own guards up
 * (which also kill descendants that left the group), this one makes sure a process whose worker died
 * while it was still booting does not outlive it: on IPC `disconnect`, on finding the channel already
 * closed, and on being re-parented, it SIGKILLs its process group (it leads it). A job has started
 * nothing yet at this point, so the group is all there is.
 */
// Node 22.1+ caches V8's compiled code of the modules loaded from here on, on disk, so the next job
// process skips compiling them. Node 20 has no such API (and this file stays plain CommonJS for it).
const { enableCompileCache } = require("node:module");
if (typeof enableCompileCache === "function") enableCompileCache();
const parent = process.ppid;
const killGroup = () => {
  try {
    process.kill(-process.pid, "SIGKILL");
  } catch {
    process.kill(process.pid, "SIGKILL");
  }
};
const timer = setInterval(() => {
  if (process.ppid !== parent) killGroup();
}, 100);
timer.unref();
if (process.send) {
  process.on("disconnect", killGroup);
  if (!process.connected) killGroup();
}
globalThis[Symbol.for("troupe.bootGuard")] = {
  stop() {
    clearInterval(timer);
    process.off("disconnect", killGroup);
  },
};
