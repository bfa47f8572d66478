// Types shared by the machines. Plain data only: machines/ imports nothing from Node.

/** Why a job failed. Every kill and crash maps to exactly one of these. */
export type FailureReason =
  | "entrypoint_error"
  | "crashed"
  | "memory_limit"
  | "unresponsive"
  | "launch_failed"
  | "max_duration"
  | "worker_shutdown"
  | "close_timeout"
  /** The job's lease from the registry ran out unrenewed: it was stopped, as the registry may run it elsewhere. */
  | "lease_lapsed";

/** Why the worker asked a slot's process to stop. */
export type StopReason =
  | "cancelled"
  | "max_duration"
  | "worker_shutdown"
  | "memory_limit"
  | "unresponsive"
  | "initialize_timeout"
  | "launch_failed"
  | "close_timeout"
  | "idle_shutdown"
  | "lease_lapsed";

/** An error as it crosses a process or wire boundary. */
export interface ErrorInfo {
  name: string;
  message: string;
  stack?: string;
}

export type JobOutcome =
  | { status: "completed"; reason?: string }
  | { status: "failed"; reason: FailureReason; error?: ErrorInfo; exitCode?: number | null; signal?: string | null }
  | { status: "cancelled"; reason?: string };

/** What a job process needs to run a job. Comes from an assignment or from local mode. */
export interface JobSpec {
  jobId: string;
  agentName?: string;
  roomId?: string;
  roomToken?: string;
  url?: string;
  metadata?: Record<string, unknown>;
  roomOptions?: Record<string, unknown>;
  /** Milliseconds; overrides the worker's maxJobDuration when set. 0 = unlimited. */
  maxDurationMs?: number;
  /** W3C trace context the job's spans continue (the registry's assign span, then the worker's hand-out). */
  traceparent?: string;
  tracestate?: string;
  /**
   * Set on a job the registry may give to another worker once it has lost contact with this one (a
   * dispatch with `redispatch`): how long it may run from its assignment unless the registry renews
   * its lease. See machines/lease.ts.
   */
  leaseValidForMs?: number;
}

export interface ProcessExit {
  code: number | null;
  signal: string | null;
}

/** Final status a job can report to the registry. */
export type FinalJobStatus = "completed" | "failed" | "cancelled";

/**
 * A job update as the worker reports it: running, or one final status with its reason. A failed job
 * whose process exited carries the exit code and the signal that ended it (null when not applicable).
 */
export interface JobUpdate {
  jobId: string;
  status: "running" | FinalJobStatus;
  reason?: string;
  error?: ErrorInfo;
  exitCode?: number | null;
  signal?: string | null;
}

/** One job in the inventory a worker hands the registry on register: running, or recently final. */
export type JobInventoryEntry = Pick<JobUpdate, "jobId" | "status" | "reason" | "exitCode" | "signal">;

/** The worker's availability as the registry sees it. */
export interface WorkerStatus {
  status: "starting" | "available" | "full" | "draining";
  load: number;
  jobCount: number;
  idleProcesses: number;
}
