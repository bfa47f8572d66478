import { createRequire } from "node:module";
import { runInThisContext } from "node:vm";

/**
 * Every job process gets a random value in this variable (see src/worker/job-env.ts). Its
 * descendants inherit it, so a process that moved to another session or process group (`setsid`,
 * `spawn(..., { detached: true })`) is still found by its /proc/<pid>/environ.
 */
export const JOB_MARKER_VARIABLE = "TROUPE_JOB_PROCESS";

/** Freeze-and-rescan rounds: a descendant forking while we look is caught by the next round. */
export const SWEEP_MAX_ROUNDS = 5;

/**
 * Kills, from inside a job process, the descendants that left its process group: those whose
 * environment carries this job's marker and those still in its live process tree (a child started
 * with a cleared environment). Members of the job's own group are left to the group kill that always
 * follows. Each one is SIGSTOPped when found, so it cannot fork while we rescan, and SIGKILLed once
 * no round finds anything new, if its start time (/proc/<pid>/stat field 22) still matches: a pid
 * reused meanwhile is never hit. Returns how many were killed; 0 without /proc (non-Linux).
 *
 * Plain JavaScript in a string because the worker's orphan guardian, a plain Node process, runs it
 * too (see src/worker/orphan-guardian.ts, where `selfPid` is the job process's); a job process compiles the
 * same text.
 */
export const SWEEP_FUNCTION_SOURCE = `(function sweepJobDescendants(require, marker, selfPid) {
  const fs = require("node:fs");
  const needle = marker ? Buffer.from(${JSON.stringify(JOB_MARKER_VARIABLE)} + "=" + marker + "\\0") : undefined;
  const statOf = (pid) => {
    try {
      const text = fs.readFileSync("/proc/" + pid + "/stat", "latin1");
      const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
      if (fields[0] === "Z" || fields[0] === "X") return undefined;
      return { pgrp: Number(fields[2]), start: fields[19] };
    } catch { return undefined; }
  };
  const isMarked = (pid) => {
    try {
      const environ = fs.readFileSync("/proc/" + pid + "/environ");
      for (let at = environ.indexOf(needle); at >= 0; at = environ.indexOf(needle, at + 1)) {
        if (at === 0 || environ[at - 1] === 0) return true;
      }
    } catch {}
    return false;
  };
  const childrenOf = (pid) => {
    const found = [];
    let tasks = [];
    try { tasks = fs.readdirSync("/proc/" + pid + "/task"); } catch { return found; }
    for (const task of tasks) {
      try {
        const text = fs.readFileSync("/proc/" + pid + "/task/" + task + "/children", "latin1");
        for (const child of text.split(" ")) if (child.trim()) found.push(Number(child));
      } catch {}
    }
    return found;
  };
  const candidates = () => {
    const pids = [];
    if (needle) {
      let entries = [];
      try { entries = fs.readdirSync("/proc"); } catch {}
      for (const entry of entries) {
        const first = entry.charCodeAt(0);
        if (first < 48 || first > 57) continue;
        const pid = Number(entry);
        if (pid !== selfPid && isMarked(pid)) pids.push(pid);
      }
    }
    const queue = [selfPid];
    while (queue.length > 0) {
      for (const child of childrenOf(queue.pop())) { pids.push(child); queue.push(child); }
    }
    return pids;
  };
  const self = statOf(selfPid);
  // Leading our own group, the group kill that follows takes its members; otherwise take them all.
  const ownGroup = self && self.pgrp === selfPid ? selfPid : -1;
  const frozen = new Map();
  for (let round = 0; round < ${SWEEP_MAX_ROUNDS}; round++) {
    let fresh = 0;
    for (const pid of candidates()) {
      if (pid === selfPid || pid === process.pid || frozen.has(pid)) continue;
      const stat = statOf(pid);
      if (!stat || stat.pgrp === ownGroup) continue;
      try { process.kill(pid, "SIGSTOP"); } catch { continue; }
      frozen.set(pid, stat.start);
      fresh++;
    }
    if (fresh === 0) break;
  }
  let killed = 0;
  for (const [pid, start] of frozen) {
    const stat = statOf(pid);
    if (!stat || stat.start !== start) continue;
    try { process.kill(pid, "SIGKILL"); killed++; } catch {}
  }
  return killed;
})`;

type SweepFunction = (require: NodeJS.Require, marker: string | undefined, selfPid: number) => number;

let capturedMarker: string | undefined;
let compiled: SweepFunction | undefined;

/**
 * Reads this job process's marker before agent code runs (it could delete it from process.env). Call
 * once, first thing in the job process.
 */
export function captureJobMarker(): string | undefined {
  capturedMarker ??= process.env[JOB_MARKER_VARIABLE];
  return capturedMarker;
}

/** Runs the sweep in this thread, synchronously; returns how many descendants it killed. */
export function killEscapedDescendants(): number {
  compiled ??= runInThisContext(SWEEP_FUNCTION_SOURCE, { filename: "troupe-descendant-sweep.js" }) as SweepFunction;
  try {
    return compiled(createRequire(import.meta.url), captureJobMarker(), process.pid);
  } catch {
    return 0;
  }
}
