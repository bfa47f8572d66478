import { traceparentField, tracestateField } from "../observability/tracing/traceparent.ts";
import * as v from "../vendor/valibot.ts";

/**
 * Worker ⇄ job process messages over Node's IPC channel (child_process.fork, JSON serialization).
 * Both sides parse every message with these schemas; errors cross as {name, message, stack}. They
 * use valibot, not zod: a job process loads this module, and zod would cost each idle one megabytes
 * of memory and a fraction of a second of CPU.
 */

/** A finite number (JSON has no NaN or Infinity; a message holding one is refused). */
const finiteNumber = v.pipe(v.number(), v.finite());

/** A plain object: made by `{}` or `Object.create(null)`, not an array or a class instance. */
function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return false;
  const ctor = (value as { constructor?: unknown }).constructor;
  if (typeof ctor !== "function") return true;
  const prototype: unknown = ctor.prototype;
  return prototype !== null && typeof prototype === "object" && Object.hasOwn(prototype, "isPrototypeOf");
}

/**
 * A plain object of any values, copied: every own enumerable string key but `__proto__`, as it is
 * (keys such as `constructor` included, which valibot's own record drops).
 */
const anyRecord = v.pipe(
  v.custom<Record<string, unknown>>(isPlainObject, "Invalid type: Expected a plain object"),
  v.check(
    (record) =>
      Object.getOwnPropertySymbols(record).every((key) => !Object.prototype.propertyIsEnumerable.call(record, key)),
    "Invalid key: Expected string keys only",
  ),
  v.transform((record) => {
    const copy: Record<string, unknown> = {};
    for (const key of Object.keys(record)) if (key !== "__proto__") copy[key] = record[key];
    return copy;
  }),
);

export const errorInfo = v.object({
  name: v.string(),
  message: v.string(),
  stack: v.optional(v.string()),
});

export const jobSpec = v.object({
  jobId: v.pipe(v.string(), v.minLength(1)),
  agentName: v.optional(v.string()),
  roomId: v.optional(v.string()),
  roomToken: v.optional(v.string()),
  url: v.optional(v.string()),
  metadata: v.optional(anyRecord),
  roomOptions: v.optional(anyRecord),
  maxDurationMs: v.optional(v.pipe(finiteNumber, v.minValue(0))),
  traceparent: traceparentField,
  tracestate: tracestateField,
});

// ---- worker → job process ----
export const startJob = v.object({ type: v.literal("start_job"), job: jobSpec });
export const shutdown = v.object({ type: v.literal("shutdown"), reason: v.string() });
export const ping = v.object({ type: v.literal("ping"), ts: finiteNumber });

export const toChild = v.variant("type", [startJob, shutdown, ping]);

// ---- job process → worker ----
export const ready = v.object({ type: v.literal("ready") });
export const initFailed = v.object({ type: v.literal("init_failed"), error: errorInfo });
export const pong = v.object({ type: v.literal("pong"), ts: finiteNumber });
export const jobStatus = v.object({ type: v.literal("job_status"), status: v.picklist(["running", "ending"]) });
export const log = v.object({
  type: v.literal("log"),
  level: v.pipe(v.number(), v.safeInteger()),
  msg: v.string(),
  fields: v.optional(anyRecord),
});
export const done = v.object({
  type: v.literal("done"),
  result: v.variant("ok", [
    v.object({ ok: v.literal(true), reason: v.optional(v.string()) }),
    v.object({ ok: v.literal(false), error: errorInfo }),
  ]),
});

export const toParent = v.variant("type", [ready, initFailed, pong, jobStatus, log, done]);

export type ToChild = v.InferOutput<typeof toChild>;
export type ToParent = v.InferOutput<typeof toParent>;
export type IpcErrorInfo = v.InferOutput<typeof errorInfo>;

/** Each problem of a message that failed to parse, as `path: message`, for a log line. */
export function describeIssues(issues: readonly v.BaseIssue<unknown>[]): string[] {
  return issues.map((issue) => {
    const path = issue.path?.map((item) => String(item.key)).join(".");
    return path ? `${path}: ${issue.message}` : issue.message;
  });
}

/** An Error (or anything thrown) as plain data that survives JSON. */
export function toErrorInfo(error: unknown): IpcErrorInfo {
  if (error instanceof Error) {
    return { name: error.name, message: error.message, ...(error.stack ? { stack: error.stack } : {}) };
  }
  return { name: "Error", message: typeof error === "string" ? error : (JSON.stringify(error) ?? String(error)) };
}

/** Arguments the worker passes to a job process; parsed there. */
export const childConfig = v.object({
  agentModule: v.pipe(v.string(), v.minLength(1)),
  slotId: v.string(),
  logLevel: v.picklist(["DEBUG", "INFO", "WARN", "ERROR"]),
  /** Each shutdown callback's own deadline, and all of them together. Milliseconds. */
  closeTimeoutMs: v.pipe(finiteNumber, v.gtValue(0)),
});
export type ChildConfig = v.InferOutput<typeof childConfig>;

/** The job process's configuration from its argument, or an Error that names each bad field. */
export function parseChildConfig(argument: string | undefined): ChildConfig {
  const parsed = v.safeParse(childConfig, JSON.parse(argument ?? "{}"));
  if (parsed.success) return parsed.output;
  throw new TypeError(`invalid job process configuration: ${describeIssues(parsed.issues).join("; ")}`);
}
