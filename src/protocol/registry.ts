import { z } from "zod";
import {
  parseTraceparent,
  parseTracestate,
  TRACEPARENT_MAX_INPUT,
  TRACESTATE_MAX_LENGTH,
} from "../observability/tracing/traceparent.ts";

/**
 * The worker ⇄ registry wire protocol: JSON text frames over WebSocket at `<registry>/agent`.
 * Message types and snake_case fields follow VideoSDK's registry protocol, plus `protocol_version`,
 * the job inventory in `register`, and failure reasons, exit codes and signals in `job_update`. Both
 * sides parse with these schemas. Objects are not strict: unknown fields are ignored so either side
 * can grow.
 */
export const PROTOCOL_VERSION = 1;
export const MAX_FRAME_BYTES = 256 * 1024;

/** A worker runs at most this many processes; it bounds its inventory too. */
export const MAX_WORKER_PROCESSES = 1_024;
/** Entries in a `register` inventory: running jobs (at most max_processes) and recently finished ones. */
export const MAX_INVENTORY_ENTRIES = 2_048;

/**
 * Trace context fields inside messages troupe itself writes (job_assignment here, job records in
 * src/registry/cluster/redis-store.ts). A bad value becomes absent instead of failing the whole
 * message: a job must never be lost over its tracing. (start_job, which a job process parses, has
 * valibot twins of these in src/observability/tracing/traceparent.ts.)
 */
export const traceparentField = z
  .string()
  .max(TRACEPARENT_MAX_INPUT)
  .refine((value) => parseTraceparent(value) !== undefined)
  .optional()
  .catch(undefined);
export const tracestateField = z
  .string()
  .max(TRACESTATE_MAX_LENGTH)
  .refine((value) => parseTracestate(value) !== undefined)
  .optional()
  .catch(undefined);

const jobId = z.string().min(1).max(256);
/** Diagnostics a worker reports (reasons, errors, stacks) are cut, not refused: a final status must arrive. */
const clipped = (max: number) => z.string().transform((text) => (text.length > max ? text.slice(0, max) : text));
const reason = clipped(1_024);
const errorInfo = z.object({ name: clipped(256), message: clipped(4_096), stack: clipped(16_384).optional() });
const finalStatus = z.enum(["completed", "failed", "cancelled"]);
/** How a failed job's process ended: its exit code (null when a signal ended it) and the signal's name. */
export const exitCode = z
  .number()
  .int()
  .min(-(2 ** 31))
  .max(2 ** 32 - 1);
export const signalName = z
  .string()
  .max(32)
  .regex(/^SIG[A-Z0-9]+$/);
const processEnd = { exit_code: exitCode.nullable().optional(), signal: signalName.nullable().optional() };

export const jobInventoryEntry = z.object({
  job_id: jobId,
  status: z.enum(["running", "completed", "failed", "cancelled"]),
  reason: reason.optional(),
  ...processEnd,
});

// ---- worker → registry ----
export const registerRequest = z
  .object({
    type: z.literal("register"),
    protocol_version: z.number().int().positive(),
    worker_id: z.string().max(256),
    agent_name: z.string().min(1).max(256),
    capabilities: z.array(z.string().max(256)).max(64).default([]),
    load_threshold: z.number().gt(0).max(1),
    max_processes: z.number().int().positive().max(MAX_WORKER_PROCESSES),
    /** Jobs still running here, and recently finished ones whose final update may have been lost. */
    jobs: z
      .array(jobInventoryEntry)
      .max(MAX_INVENTORY_ENTRIES, `an inventory has at most ${MAX_INVENTORY_ENTRIES} entries`)
      .default([]),
  })
  .refine((register) => register.jobs.filter((job) => job.status === "running").length <= register.max_processes, {
    message: "more running jobs in the inventory than max_processes",
    path: ["jobs"],
  });

/** One of the worker's processes as the registry's dashboard shows it (optional, informational). */
export const slotSummary = z.object({
  id: z.string().max(64),
  state: z.string().max(256),
  pid: z.number().int().nullable().optional(),
  memory_mb: z.number().nullable().optional(),
  job_id: z.string().max(256).nullable().optional(),
});
export type SlotSummary = z.infer<typeof slotSummary>;

export const statusUpdate = z.object({
  type: z.literal("status_update"),
  worker_id: z.string().max(256),
  agent_name: z.string().max(256).optional(),
  status: z.enum(["starting", "available", "full", "draining", "offline"]),
  load: z.number().min(0).max(1),
  job_count: z.number().int().min(0),
  idle_processes: z.number().int().min(0).optional(),
  /** The worker's processes with their slot machine states, for dashboards; at most 256. */
  slots: z.array(slotSummary).max(256).optional(),
});

export const availabilityResponse = z.object({
  type: z.literal("availability_response"),
  job_id: jobId,
  available: z.boolean(),
  error: clipped(4_096).optional(),
});

export const jobUpdate = z.object({
  type: z.literal("job_update"),
  job_id: jobId,
  status: z.enum(["running", "completed", "failed", "cancelled"]),
  reason: reason.optional(),
  error: errorInfo.optional(),
  ...processEnd,
});

export const ping = z.object({ type: z.literal("ping"), timestamp: z.number() });
export const pong = z.object({ type: z.literal("pong"), timestamp: z.number() });

/** How long a lease the registry grants lasts: from the moment the worker sent what the registry answered. */
const leaseMs = z.number().int().positive().max(3_600_000);

/** The registry's pong: `leased` names the jobs it vouches for, each for `lease_ms` from the ping's timestamp. */
export const registryPong = pong.extend({
  leased: z.array(jobId).max(MAX_INVENTORY_ENTRIES, `a pong leases at most ${MAX_INVENTORY_ENTRIES} jobs`).optional(),
});

export const workerMessage = z.discriminatedUnion("type", [
  registerRequest,
  statusUpdate,
  availabilityResponse,
  jobUpdate,
  ping,
  pong,
]);

// ---- registry → worker ----
export const registerResponse = z.object({
  type: z.literal("register"),
  success: z.boolean(),
  worker_id: z.string().optional(),
  message: z.string().optional(),
  protocol_version: z.number().int().positive().optional(),
  /** The registry leases the jobs it may run elsewhere (see registryPong); the worker renews them this often. */
  lease_ms: leaseMs.optional(),
});

export const availabilityRequest = z.object({
  type: z.literal("availability_request"),
  job_id: jobId,
  agent_name: z.string(),
  room_id: z.string().optional(),
  metadata: z.record(z.string(), z.unknown()).optional(),
});

export const jobAssignment = z.object({
  type: z.literal("job_assignment"),
  job_id: jobId,
  agent_name: z.string(),
  room_id: z.string().optional(),
  token: z.string().optional(),
  url: z.string().optional(),
  room_options: z.record(z.string(), z.unknown()).optional(),
  metadata: z.record(z.string(), z.unknown()).optional(),
  /** Seconds; 0 or absent = the worker's own maxJobDuration. */
  max_duration: z.number().min(0).optional(),
  /** W3C trace context of the registry's assign span; an invalid value is dropped, not the assignment. */
  traceparent: traceparentField,
  tracestate: tracestateField,
  /**
   * A job the registry runs elsewhere once it has lost contact with this worker (`redispatch`): the
   * worker stops it when the lease lapses, lease_ms after its last answered round trip.
   */
  lease_ms: leaseMs.optional(),
});

export const jobTermination = z.object({
  type: z.literal("job_termination"),
  job_id: jobId,
  reason: z.string().optional(),
});

export const errorFrame = z.object({
  type: z.literal("error"),
  message: z.string(),
  code: z.string().optional(),
});

export const registryMessage = z.discriminatedUnion("type", [
  registerResponse,
  availabilityRequest,
  jobAssignment,
  jobTermination,
  ping,
  registryPong,
  errorFrame,
]);

export type WorkerMessage = z.infer<typeof workerMessage>;
export type RegistryMessage = z.infer<typeof registryMessage>;
export type RegisterRequest = z.infer<typeof registerRequest>;
export type JobInventoryEntry = z.infer<typeof jobInventoryEntry>;
export type JobUpdateMessage = z.infer<typeof jobUpdate>;
export type StatusUpdateMessage = z.infer<typeof statusUpdate>;
export type AvailabilityRequest = z.infer<typeof availabilityRequest>;
export type JobAssignment = z.infer<typeof jobAssignment>;
export type JobTermination = z.infer<typeof jobTermination>;
export type FinalStatus = z.infer<typeof finalStatus>;
