import { z } from "zod";
import { INSPECT_OPTION_PROBLEM, type InspectOption, isInspectOption } from "./observability/inspect.ts";
import { closestName } from "./util/closest-name.ts";

/**
 * Options and RoomOptions: the public configuration of a worker and of a job's room. Both parse
 * their input with zod at construction and throw one OptionsError that names every bad field.
 * Durations are in seconds (fractions allowed), sizes in megabytes, as in the documented API.
 */

export const LOG_LEVELS = ["DEBUG", "INFO", "WARN", "ERROR"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Keys whose values are never printed: not in errors, not in toJSON(), not in logs. */
export const SECRET_KEYS = new Set(["authToken", "apiKey", "apiSecret"]);

export interface JobRequest {
  jobId: string;
  agentName?: string;
  roomId?: string;
  metadata?: Record<string, unknown>;
}

export type PrewarmFn = () => unknown | Promise<unknown>;
export type RequestFn = (request: JobRequest) => boolean | Promise<boolean>;
export type LoadFn = () => number | Promise<number>;

const seconds = (name: string) =>
  z.number({ error: `${name} must be a number of seconds` }).finite(`${name} must be finite`);
const positiveSeconds = (name: string) => seconds(name).gt(0, `${name} must be greater than 0 seconds`);
const nonNegativeSeconds = (name: string) => seconds(name).min(0, `${name} must be 0 or more seconds`);
const fn = <F>(name: string) => z.custom<F>((v) => typeof v === "function", `${name} must be a function`);

const logLevel = z.preprocess(
  (v) => (typeof v === "string" ? v.toUpperCase() : v),
  z.enum(LOG_LEVELS, { error: `logLevel must be one of ${LOG_LEVELS.join(", ")}` }),
);

export const optionsSchema = z
  .strictObject({
    agentId: z.string({ error: "agentId must be a string" }).min(1, "agentId must not be empty").default("Agent"),
    maxProcesses: z
      .number({ error: "maxProcesses must be a number" })
      .int("maxProcesses must be a whole number")
      .min(1, "maxProcesses must be at least 1")
      .default(1),
    numIdleProcesses: z
      .number({ error: "numIdleProcesses must be a number" })
      .int("numIdleProcesses must be a whole number")
      .min(0, "numIdleProcesses must be 0 or more")
      .default(1),
    loadThreshold: z
      .number({ error: "loadThreshold must be a number" })
      .gt(0, "loadThreshold must be in (0, 1]")
      .max(1, "loadThreshold must be in (0, 1]")
      .default(0.75),
    register: z.boolean({ error: "register must be true or false" }).default(false),
    logLevel: logLevel.default("INFO"),
    host: z.string({ error: "host must be a string" }).min(1, "host must not be empty").default("0.0.0.0"),
    port: z
      .number({ error: "port must be a number" })
      .int("port must be a whole number")
      .min(0, "port must be from 0 to 65535")
      .max(65535, "port must be from 0 to 65535")
      .default(8081),
    memoryWarnMb: z
      .number({ error: "memoryWarnMb must be a number" })
      .min(0, "memoryWarnMb must be 0 or more")
      .default(500),
    memoryLimitMb: z
      .number({ error: "memoryLimitMb must be a number" })
      .min(0, "memoryLimitMb must be 0 (unlimited) or more")
      .default(0),
    pingInterval: positiveSeconds("pingInterval").default(30),
    pingTimeout: positiveSeconds("pingTimeout").default(10),
    maxRetry: z
      .number({ error: "maxRetry must be a number" })
      .int("maxRetry must be a whole number")
      .min(0, "maxRetry must be 0 or more")
      .default(16),
    initializeTimeout: positiveSeconds("initializeTimeout").default(10),
    closeTimeout: positiveSeconds("closeTimeout").default(60),
    drainTimeout: nonNegativeSeconds("drainTimeout").default(1800),
    killTimeout: positiveSeconds("killTimeout").default(5),
    maxJobDuration: nonNegativeSeconds("maxJobDuration").default(0),
    assignmentTimeout: positiveSeconds("assignmentTimeout").default(10),
    launchTimeout: positiveSeconds("launchTimeout").default(10),
    ipcPingInterval: positiveSeconds("ipcPingInterval").default(5),
    ipcPongTimeout: positiveSeconds("ipcPongTimeout").default(15),
    memorySampleInterval: positiveSeconds("memorySampleInterval").default(5),
    memoryWarnInterval: positiveSeconds("memoryWarnInterval").default(60),
    spawnBackoffBase: positiveSeconds("spawnBackoffBase").default(1),
    spawnBackoffMax: positiveSeconds("spawnBackoffMax").default(60),
    reconnectBackoffBase: positiveSeconds("reconnectBackoffBase").default(1),
    reconnectBackoffMax: positiveSeconds("reconnectBackoffMax").default(30),
    registrationTimeout: positiveSeconds("registrationTimeout").default(10),
    registryUrl: z
      .string({ error: "registryUrl must be a string" })
      .refine(
        (v) => /^(wss?|https?):\/\/[^\s]+$/.test(v),
        "registryUrl must be a ws://, wss://, http:// or https:// URL",
      )
      .optional(),
    authToken: z.string({ error: "authToken must be a string" }).min(1, "authToken must not be empty").optional(),
    apiKey: z.string({ error: "apiKey must be a string" }).min(1, "apiKey must not be empty").optional(),
    apiSecret: z.string({ error: "apiSecret must be a string" }).min(1, "apiSecret must not be empty").optional(),
    prewarm: fn<PrewarmFn>("prewarm").optional(),
    requestFn: fn<RequestFn>("requestFn").optional(),
    loadFn: fn<LoadFn>("loadFn").optional(),
    /** true: every transition logged at debug level; an XState inspection observer: every inspection event. */
    inspect: z.custom<InspectOption>(isInspectOption, INSPECT_OPTION_PROBLEM).default(false),
  })
  .superRefine((o, ctx) => {
    for (const problem of crossFieldProblems(o))
      ctx.addIssue({ code: "custom", path: [problem.field], message: problem.message });
  });

interface CrossFieldInput {
  memoryWarnMb?: unknown;
  memoryLimitMb?: unknown;
  numIdleProcesses?: unknown;
  maxProcesses?: unknown;
  spawnBackoffBase?: unknown;
  spawnBackoffMax?: unknown;
  reconnectBackoffBase?: unknown;
  reconnectBackoffMax?: unknown;
  apiKey?: unknown;
  apiSecret?: unknown;
}

/**
 * Checks that relate two fields. Runs on the parsed options, and on the raw input when other fields
 * failed (zod skips refinements then), so one error still names every bad field.
 */
function crossFieldProblems(o: CrossFieldInput): { field: string; message: string }[] {
  const num = (v: unknown, fallback: number) => (typeof v === "number" && Number.isFinite(v) ? v : fallback);
  const problems: { field: string; message: string }[] = [];
  const warn = num(o.memoryWarnMb, 500);
  const limit = num(o.memoryLimitMb, 0);
  if (limit > 0 && warn > limit) {
    problems.push({
      field: "memoryLimitMb",
      message: `memoryLimitMb (${limit}) must not be below memoryWarnMb (${warn}) when set`,
    });
  }
  const idle = num(o.numIdleProcesses, 1);
  const max = num(o.maxProcesses, 1);
  if (max >= 1 && idle > max) {
    problems.push({
      field: "numIdleProcesses",
      message: `numIdleProcesses (${idle}) must not exceed maxProcesses (${max})`,
    });
  }
  if (num(o.spawnBackoffBase, 1) > num(o.spawnBackoffMax, 60)) {
    problems.push({ field: "spawnBackoffMax", message: "spawnBackoffMax must not be below spawnBackoffBase" });
  }
  if (num(o.reconnectBackoffBase, 1) > num(o.reconnectBackoffMax, 30)) {
    problems.push({
      field: "reconnectBackoffMax",
      message: "reconnectBackoffMax must not be below reconnectBackoffBase",
    });
  }
  if ((o.apiKey === undefined) !== (o.apiSecret === undefined)) {
    problems.push({ field: "apiSecret", message: "apiKey and apiSecret must be given together" });
  }
  return problems;
}

export type OptionsInput = z.input<typeof optionsSchema>;
export type ResolvedOptions = z.output<typeof optionsSchema>;

/** One error for all bad fields. Its message lists each field and why; string values (so secrets) are never echoed. */
export class OptionsError extends Error {
  override readonly name = "OptionsError";
  constructor(
    readonly subject: string,
    readonly problems: { field: string; message: string }[],
  ) {
    super(`Invalid ${subject}:\n${problems.map((p) => `  - ${p.field}: ${p.message}`).join("\n")}`);
  }
}

function problemsOf(error: z.ZodError, validKeys: readonly string[]): { field: string; message: string }[] {
  const problems: { field: string; message: string }[] = [];
  for (const issue of error.issues) {
    if (issue.code === "unrecognized_keys") {
      for (const key of issue.keys) {
        const near = closestName(key, validKeys);
        problems.push({
          field: key,
          message: near ? `unknown option; did you mean "${near}"?` : "unknown option",
        });
      }
      continue;
    }
    const field = issue.path.map(String).join(".") || "(options)";
    // zod's default messages can quote the received value; ours never do, so use ours or a neutral one.
    const message =
      issue.code === "invalid_type" && !issue.message.includes(field) ? `has the wrong type` : issue.message;
    problems.push({ field, message });
  }
  return problems;
}

function parseOrThrow<S extends z.ZodType>(
  schema: S,
  input: unknown,
  subject: string,
  keys: readonly string[],
  crossField: (raw: Record<string, unknown>) => { field: string; message: string }[] = () => [],
) {
  if (input === null || typeof input !== "object" || Array.isArray(input)) {
    throw new OptionsError(subject, [{ field: "(options)", message: "must be an object" }]);
  }
  const result = schema.safeParse(input);
  if (!result.success) {
    const problems = problemsOf(result.error, keys);
    const named = new Set(problems.map((p) => p.field));
    for (const problem of crossField(input as Record<string, unknown>)) {
      if (!named.has(problem.field)) problems.push(problem);
    }
    throw new OptionsError(subject, problems);
  }
  return result.data as z.output<S>;
}

type Env = Record<string, string | undefined>;

/**
 * Fills registryUrl, authToken and apiKey/apiSecret from TROUPE_* variables when not given. In a job
 * process (its worker strips those variables and sets TROUPE_JOB_PROCESS) the agent module's Options
 * never reach a registry, so credentials are dropped instead: half a pair given in code must not
 * make the module fail to load there.
 */
function withEnvironment(input: Record<string, unknown>, env: Env): Record<string, unknown> {
  const merged = { ...input };
  if (env.TROUPE_JOB_PROCESS) {
    for (const key of ["authToken", "apiKey", "apiSecret"]) delete merged[key];
    return merged;
  }
  const fill = (key: string, variable: string) => {
    const value = env[variable];
    if (merged[key] === undefined && value !== undefined && value !== "") merged[key] = value;
  };
  fill("registryUrl", "TROUPE_URL");
  fill("authToken", "TROUPE_AUTH_TOKEN");
  fill("apiKey", "TROUPE_API_KEY");
  fill("apiSecret", "TROUPE_API_SECRET");
  return merged;
}

const OPTION_KEYS = Object.keys(optionsSchema.shape);

export interface Options extends Readonly<ResolvedOptions> {}

// biome-ignore lint/suspicious/noUnsafeDeclarationMerging: the interface types the fields Object.assign sets.
export class Options {
  constructor(input: OptionsInput = {}, env: Env = process.env) {
    const raw = input as unknown;
    const merged =
      raw !== null && typeof raw === "object" && !Array.isArray(raw)
        ? withEnvironment(raw as Record<string, unknown>, env)
        : raw;
    const parsed = parseOrThrow(optionsSchema, merged, "Options", OPTION_KEYS, crossFieldProblems);
    Object.assign(this, parsed);
    Object.freeze(this);
  }

  /** True when the worker can authenticate to a registry (a token, or a key and secret to mint one). */
  get hasCredentials(): boolean {
    return Boolean(this.authToken || (this.apiKey && this.apiSecret));
  }

  /** Every option except functions and observers, with secrets redacted. */
  toJSON(): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(this)) {
      if (typeof value === "function") {
        out[key] = "[function]";
        continue;
      }
      // An inspection observer (e.g. @statelyai/inspect's) holds sockets and windows: not JSON.
      if (key === "inspect" && typeof value === "object") {
        out[key] = "[observer]";
        continue;
      }
      out[key] = SECRET_KEYS.has(key) && value !== undefined ? "[redacted]" : value;
    }
    return out;
  }
}

export const roomOptionsSchema = z.strictObject({
  name: z.string({ error: "name must be a string" }).min(1, "name must not be empty").default("Agent"),
  roomId: z.string({ error: "roomId must be a string" }).min(1, "roomId must not be empty").optional(),
  agentParticipantId: z.string({ error: "agentParticipantId must be a string" }).min(1).optional(),
  autoEndSession: z.boolean({ error: "autoEndSession must be true or false" }).default(true),
  sessionTimeoutSeconds: nonNegativeSeconds("sessionTimeoutSeconds").default(5),
  noParticipantTimeoutSeconds: nonNegativeSeconds("noParticipantTimeoutSeconds").default(90),
  /**
   * Local mode: the worker serves a playground page for the job's room and prints a link to it (and a
   * `troupe connect` command), each with a participant token. A registered worker ignores it.
   */
  playground: z.boolean({ error: "playground must be true or false" }).default(true),
  metadata: z.record(z.string(), z.unknown(), { error: "metadata must be an object" }).optional(),
});

export type RoomOptionsInput = z.input<typeof roomOptionsSchema>;
export type ResolvedRoomOptions = z.output<typeof roomOptionsSchema>;
const ROOM_OPTION_KEYS = Object.keys(roomOptionsSchema.shape);

export interface RoomOptions extends Readonly<ResolvedRoomOptions> {}

// biome-ignore lint/suspicious/noUnsafeDeclarationMerging: the interface types the fields Object.assign sets.
export class RoomOptions {
  constructor(input: RoomOptionsInput = {}) {
    Object.assign(this, parseOrThrow(roomOptionsSchema, input, "RoomOptions", ROOM_OPTION_KEYS));
    Object.freeze(this);
  }

  toJSON(): ResolvedRoomOptions {
    return { ...this };
  }
}
