import { z } from "zod";
import { traceparentField, tracestateField } from "../observability/tracing/traceparent.ts";

/**
 * Worker ⇄ job process messages over Node's IPC channel (child_process.fork, JSON serialization).
 * Both sides parse every message with these schemas; errors cross as {name, message, stack}.
 */
export const errorInfo = z.object({
  name: z.string(),
  message: z.string(),
  stack: z.string().optional(),
});

export const jobSpec = z.object({
  jobId: z.string().min(1),
  agentName: z.string().optional(),
  roomId: z.string().optional(),
  roomToken: z.string().optional(),
  url: z.string().optional(),
  metadata: z.record(z.string(), z.unknown()).optional(),
  roomOptions: z.record(z.string(), z.unknown()).optional(),
  maxDurationMs: z.number().min(0).optional(),
  traceparent: traceparentField,
  tracestate: tracestateField,
});

// ---- worker → job process ----
export const startJob = z.object({ type: z.literal("start_job"), job: jobSpec });
export const shutdown = z.object({ type: z.literal("shutdown"), reason: z.string() });
export const ping = z.object({ type: z.literal("ping"), ts: z.number() });

export const toChild = z.discriminatedUnion("type", [startJob, shutdown, ping]);

// ---- job process → worker ----
export const ready = z.object({ type: z.literal("ready") });
export const initFailed = z.object({ type: z.literal("init_failed"), error: errorInfo });
export const pong = z.object({ type: z.literal("pong"), ts: z.number() });
export const jobStatus = z.object({ type: z.literal("job_status"), status: z.enum(["running", "ending"]) });
export const log = z.object({
  type: z.literal("log"),
  level: z.number().int(),
  msg: z.string(),
  fields: z.record(z.string(), z.unknown()).optional(),
});
export const done = z.object({
  type: z.literal("done"),
  result: z.discriminatedUnion("ok", [
    z.object({ ok: z.literal(true), reason: z.string().optional() }),
    z.object({ ok: z.literal(false), error: errorInfo }),
  ]),
});

export const toParent = z.discriminatedUnion("type", [ready, initFailed, pong, jobStatus, log, done]);

export type ToChild = z.infer<typeof toChild>;
export type ToParent = z.infer<typeof toParent>;
export type IpcErrorInfo = z.infer<typeof errorInfo>;

/** An Error (or anything thrown) as plain data that survives JSON. */
export function toErrorInfo(error: unknown): IpcErrorInfo {
  if (error instanceof Error) {
    return { name: error.name, message: error.message, ...(error.stack ? { stack: error.stack } : {}) };
  }
  return { name: "Error", message: typeof error === "string" ? error : (JSON.stringify(error) ?? String(error)) };
}

/** Arguments the worker passes to a job process; parsed there. */
export const childConfig = z.object({
  agentModule: z.string().min(1),
  slotId: z.string(),
  logLevel: z.enum(["DEBUG", "INFO", "WARN", "ERROR"]),
  /** Each shutdown callback's own deadline, and all of them together. Milliseconds. */
  closeTimeoutMs: z.number().positive(),
});
export type ChildConfig = z.infer<typeof childConfig>;
