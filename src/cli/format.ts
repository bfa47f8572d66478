import type { JobRecord } from "../registry/store.ts";

/** What `GET /v1/workers` lists for each worker (the fields the CLI shows). */
export interface WorkerRow {
  id: string;
  agentName: string;
  state: string;
  connected?: boolean;
  status: string;
  load: number;
  jobCount: number;
  maxProcesses: number;
  node?: string;
}

/** Columns padded to their widest cell, two spaces apart; the last column is not padded. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((header, i) => Math.max(header.length, ...rows.map((row) => (row[i] ?? "").length)));
  const line = (cells: string[]) =>
    cells
      .map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
      .join("  ")
      .trimEnd();
  return `${[line(headers), ...rows.map(line)].join("\n")}\n`;
}

/** "3.2s ago", "4m ago", "2h ago", "5d ago": how long before `now` a time was. */
export function ago(at: number | undefined, now = Date.now()): string {
  if (at === undefined) return "-";
  const seconds = Math.max(0, (now - at) / 1000);
  if (seconds < 60) return `${seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)}s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ago`;
  if (seconds < 86_400) return `${Math.floor(seconds / 3600)}h ago`;
  return `${Math.floor(seconds / 86_400)}d ago`;
}

/** A duration in seconds, to one decimal below a minute. */
export function duration(ms: number): string {
  const seconds = Math.max(0, ms / 1000);
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m${String(Math.round(seconds % 60)).padStart(2, "0")}s`;
  return `${Math.floor(minutes / 60)}h${String(minutes % 60).padStart(2, "0")}m`;
}

export function workersTable(workers: WorkerRow[]): string {
  if (workers.length === 0) return "no workers connected\n";
  const clustered = workers.some((w) => w.node !== undefined);
  const headers = ["WORKER", "AGENT", "STATUS", "JOBS", "LOAD", "STATE", ...(clustered ? ["NODE"] : [])];
  const rows = workers.map((w) => [
    w.id,
    w.agentName,
    w.connected === false ? `${w.status} (disconnected)` : w.status,
    `${w.jobCount}/${w.maxProcesses}`,
    Number.isFinite(w.load) ? w.load.toFixed(2) : "-",
    w.state,
    ...(clustered ? [w.node ?? "-"] : []),
  ]);
  return table(headers, rows);
}

/**
 * The status with its reason, and for a crash how the process ended (for the other reasons the
 * worker ended it, and the reason says why): "failed: crashed (signal SIGSEGV)",
 * "failed: crashed (exit code 3)", "rejected: no worker serves Echo".
 */
export function outcome(job: Pick<JobRecord, "status" | "reason" | "exitCode" | "signal">): string {
  const status = job.reason ? `${job.status}: ${job.reason}` : job.status;
  if (job.reason !== "crashed") return status;
  const end = job.signal
    ? `signal ${job.signal}`
    : typeof job.exitCode === "number"
      ? `exit code ${job.exitCode}`
      : null;
  return end ? `${status} (${end})` : status;
}

export function jobsTable(jobs: JobRecord[], now = Date.now()): string {
  if (jobs.length === 0) return "no jobs\n";
  const headers = ["JOB", "AGENT", "STATUS", "ROOM", "WORKER", "CREATED"];
  const rows = jobs.map((job) => [
    job.id,
    job.agentName,
    outcome(job),
    job.roomId ?? "-",
    job.workerId ?? "-",
    ago(job.createdAt, now),
  ]);
  return table(headers, rows);
}

/** One job, one field a line. */
export function jobDetails(job: JobRecord, now = Date.now()): string {
  const fields: [string, string | undefined][] = [
    ["job", job.id],
    ["agent", job.agentName],
    ["status", job.status],
    ["reason", job.reason],
    ["error", job.error ? `${job.error.name}: ${job.error.message}` : undefined],
    ["exit code", job.exitCode === undefined || job.exitCode === null ? undefined : String(job.exitCode)],
    ["signal", job.signal ?? undefined],
    ["room", job.roomId],
    ["worker", job.workerId],
    ["attempts", String(job.attempts)],
    ["created", `${new Date(job.createdAt).toISOString()} (${ago(job.createdAt, now)})`],
    [
      "ended",
      job.endedAt === undefined ? undefined : `${new Date(job.endedAt).toISOString()} (${ago(job.endedAt, now)})`,
    ],
    ["took", job.endedAt === undefined ? undefined : duration(job.endedAt - job.createdAt)],
    ["metadata", Object.keys(job.metadata ?? {}).length > 0 ? JSON.stringify(job.metadata) : undefined],
  ];
  const present = fields.filter((f): f is [string, string] => f[1] !== undefined);
  const width = Math.max(...present.map(([name]) => name.length));
  return `${present.map(([name, value]) => `${name.padEnd(width)}  ${value}`).join("\n")}\n`;
}

/** The line `dispatch --wait` ends with: how the job ended, where, and how long it took. */
export function finalLine(job: JobRecord): string {
  const where = job.workerId ? ` on ${job.workerId}` : "";
  const took = job.endedAt !== undefined ? ` after ${duration(job.endedAt - job.createdAt)}` : "";
  const error = job.error ? ` (${job.error.name}: ${job.error.message})` : "";
  return `job ${job.id} ${outcome(job)}${error}${where}${took}\n`;
}
