import { INSPECT_OPTION_PROBLEM, type InspectOption, isInspectOption } from "./observability/inspect.ts";
import { closestName } from "./util/closest-name.ts";
import * as v from "./vendor/valibot.ts";

/**
 * Options and RoomOptions: the public configuration of a worker and of a job's room. Both parse
 * their input with valibot at construction and throw one OptionsError that names every bad field.
 * Every job process builds them (the agent module does), so they use valibot rather than zod: zod
 * would cost each idle job process megabytes of memory and a fraction of a second of CPU to load.
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

/*
 * How a field's problems are reported. A wrong type (a schema issue: not a finite number, a string
 * where a number belongs, a fractional count) is the field's only problem, and it keeps the checks
 * that relate two fields from running on the parsed options (they run on the raw input instead). A
 * value of the right type out of range (a validation issue) is reported with every other range
 * problem of the field, and the cross-field checks still run.
 */

/** A finite number: NaN and ±Infinity have the wrong type, as a non-number has. */
const finiteNumber = (message: string) =>
  v.custom<number>((value) => typeof value === "number" && Number.isFinite(value), message);
/** A whole number. A fraction has the wrong type; an integer beyond 2^53 is out of range (and checked on). */
const wholeNumber = (name: string) =>
  v.pipe(
    finiteNumber(`${name} must be a number`),
    v.custom<number>(Number.isInteger, `${name} must be a whole number`),
    v.safeInteger(`${name} must be a whole number`),
  );
const seconds = (name: string) => finiteNumber(`${name} must be a number of seconds`);
const positiveSeconds = (name: string) => v.pipe(seconds(name), v.gtValue(0, `${name} must be greater than 0 seconds`));
const nonNegativeSeconds = (name: string) => v.pipe(seconds(name), v.minValue(0, `${name} must be 0 or more seconds`));
/**
 * A string of at least one character. Anything else with a `length` below 1 (an empty array, a
 * function without parameters) is reported as empty too, after its type: zod, which parsed options
 * before, checked lengths that way, and the messages stay as they were.
 */
const nonEmptyString = (name: string, emptyMessage = `${name} must not be empty`) =>
  v.pipe(
    v.string(`${name} must be a string`),
    v.rawCheck(({ dataset, addIssue }) => {
      const value: unknown = dataset.value;
      if (value === null || value === undefined) return;
      const length = (value as { length?: unknown }).length;
      if (length !== undefined && !((length as number) >= 1)) addIssue({ message: emptyMessage });
    }),
  );
const flag = (name: string) => v.boolean(`${name} must be true or false`);
const fn = <F>(name: string) => v.custom<F>((value) => typeof value === "function", `${name} must be a function`);

/** Any case is accepted and upper-cased; anything but a string is refused as it is. */
const logLevel = v.pipe(
  v.unknown(),
  v.transform((value) => (typeof value === "string" ? value.toUpperCase() : value)),
  v.picklist(LOG_LEVELS, `logLevel must be one of ${LOG_LEVELS.join(", ")}`),
);

/**
 * The fields of Options, in the order they are checked and reported. The object schema ignores
 * unknown keys: parseOrThrow reports them (with the nearest valid name), and then the checks that
 * relate two fields (crossFieldProblems).
 */
export const optionsSchema = v.object({
  agentId: v.optional(nonEmptyString("agentId"), "Agent"),
  maxProcesses: v.optional(v.pipe(wholeNumber("maxProcesses"), v.minValue(1, "maxProcesses must be at least 1")), 1),
  numIdleProcesses: v.optional(
    v.pipe(wholeNumber("numIdleProcesses"), v.minValue(0, "numIdleProcesses must be 0 or more")),
    1,
  ),
  loadThreshold: v.optional(
    v.pipe(
      finiteNumber("loadThreshold must be a number"),
      v.gtValue(0, "loadThreshold must be in (0, 1]"),
      v.maxValue(1, "loadThreshold must be in (0, 1]"),
    ),
    0.75,
  ),
  register: v.optional(flag("register"), false),
  logLevel: v.optional(logLevel, "INFO"),
  host: v.optional(nonEmptyString("host"), "0.0.0.0"),
  port: v.optional(
    v.pipe(
      wholeNumber("port"),
      v.minValue(0, "port must be from 0 to 65535"),
      v.maxValue(65535, "port must be from 0 to 65535"),
    ),
    8081,
  ),
  memoryWarnMb: v.optional(
    v.pipe(finiteNumber("memoryWarnMb must be a number"), v.minValue(0, "memoryWarnMb must be 0 or more")),
    500,
  ),
  memoryLimitMb: v.optional(
    v.pipe(
      finiteNumber("memoryLimitMb must be a number"),
      v.minValue(0, "memoryLimitMb must be 0 (unlimited) or more"),
    ),
    0,
  ),
  pingInterval: v.optional(positiveSeconds("pingInterval"), 30),
  pingTimeout: v.optional(positiveSeconds("pingTimeout"), 10),
  maxRetry: v.optional(v.pipe(wholeNumber("maxRetry"), v.minValue(0, "maxRetry must be 0 or more")), 16),
  initializeTimeout: v.optional(positiveSeconds("initializeTimeout"), 10),
  closeTimeout: v.optional(positiveSeconds("closeTimeout"), 60),
  drainTimeout: v.optional(nonNegativeSeconds("drainTimeout"), 1800),
  killTimeout: v.optional(positiveSeconds("killTimeout"), 5),
  maxJobDuration: v.optional(nonNegativeSeconds("maxJobDuration"), 0),
  assignmentTimeout: v.optional(positiveSeconds("assignmentTimeout"), 10),
  launchTimeout: v.optional(positiveSeconds("launchTimeout"), 10),
  ipcPingInterval: v.optional(positiveSeconds("ipcPingInterval"), 5),
  ipcPongTimeout: v.optional(positiveSeconds("ipcPongTimeout"), 15),
  memorySampleInterval: v.optional(positiveSeconds("memorySampleInterval"), 5),
  memoryWarnInterval: v.optional(positiveSeconds("memoryWarnInterval"), 60),
  spawnBackoffBase: v.optional(positiveSeconds("spawnBackoffBase"), 1),
  spawnBackoffMax: v.optional(positiveSeconds("spawnBackoffMax"), 60),
  reconnectBackoffBase: v.optional(positiveSeconds("reconnectBackoffBase"), 1),
  reconnectBackoffMax: v.optional(positiveSeconds("reconnectBackoffMax"), 30),
  registrationTimeout: v.optional(positiveSeconds("registrationTimeout"), 10),
  registryUrl: v.optional(
    v.pipe(
      v.string("registryUrl must be a string"),
      v.regex(/^(wss?|https?):\/\/[^\s]+$/, "registryUrl must be a ws://, wss://, http:// or https:// URL"),
    ),
  ),
  authToken: v.optional(nonEmptyString("authToken")),
  apiKey: v.optional(nonEmptyString("apiKey")),
  apiSecret: v.optional(nonEmptyString("apiSecret")),
  prewarm: v.optional(fn<PrewarmFn>("prewarm")),
  requestFn: v.optional(fn<RequestFn>("requestFn")),
  loadFn: v.optional(fn<LoadFn>("loadFn")),
  /** true: every transition logged at debug level; an XState inspection observer: every inspection event. */
  inspect: v.optional(v.custom<InspectOption>(isInspectOption, INSPECT_OPTION_PROBLEM), false),
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
 * Checks that relate two fields. They see the parsed options when every field has the right type
 * (a field only out of range does not stop them, nor does an unknown key), and otherwise only the
 * raw input for the fields no other problem names, so one error still names every bad field.
 */
function crossFieldProblems(o: CrossFieldInput): Problem[] {
  const num = (v: unknown, fallback: number) => (typeof v === "number" && Number.isFinite(v) ? v : fallback);
  const problems: Problem[] = [];
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

export type OptionsInput = v.InferInput<typeof optionsSchema>;
export type ResolvedOptions = v.InferOutput<typeof optionsSchema>;

interface Problem {
  field: string;
  message: string;
}

/** One error for all bad fields. Its message lists each field and why; string values (so secrets) are never echoed. */
export class OptionsError extends Error {
  override readonly name = "OptionsError";
  constructor(
    readonly subject: string,
    readonly problems: Problem[],
  ) {
    super(`Invalid ${subject}:\n${problems.map((p) => `  - ${p.field}: ${p.message}`).join("\n")}`);
  }
}

type FieldsSchema = v.ObjectSchema<v.ObjectEntries, undefined>;

/**
 * The parsed input, or one OptionsError naming, in this order: each field's problems (in the
 * schema's order), each unknown key (with the valid name nearest to it), then the cross-field
 * problems (see crossFieldProblems).
 */
function parseOrThrow<S extends FieldsSchema>(
  schema: S,
  input: unknown,
  subject: string,
  keys: readonly string[],
  crossField: (raw: Record<string, unknown>) => Problem[] = () => [],
): v.InferOutput<S> {
  if (input === null || typeof input !== "object" || Array.isArray(input)) {
    throw new OptionsError(subject, [{ field: "(options)", message: "must be an object" }]);
  }
  const result = v.safeParse(schema, input);
  const problems: Problem[] = [];
  let wrongType = false;
  for (const issue of result.issues ?? []) {
    const field = issue.path?.map((item) => String(item.key)).join(".") || "(options)";
    wrongType ||= issue.kind !== "validation";
    // A library's default message can quote the received value; ours never do, so use ours or a neutral one.
    const message = issue.kind === "schema" && !issue.message.includes(field) ? "has the wrong type" : issue.message;
    problems.push({ field, message });
  }
  // Every enumerable key, inherited ones included, as a strict object schema would see it.
  for (const key in input) {
    if (keys.includes(key)) continue;
    const near = closestName(key, keys);
    problems.push({ field: key, message: near ? `unknown option; did you mean "${near}"?` : "unknown option" });
  }
  // With every type right, the parsed options and the raw input agree on what crossField reads.
  const named = wrongType ? new Set(problems.map((p) => p.field)) : undefined;
  for (const problem of crossField(input as Record<string, unknown>)) {
    if (!named?.has(problem.field)) problems.push(problem);
  }
  if (problems.length > 0) throw new OptionsError(subject, problems);
  return result.output as v.InferOutput<S>;
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

const OPTION_KEYS = Object.keys(optionsSchema.entries);

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

/** An object made by `{}`, `Object.create(null)` or alike; no array, no class instance (zod's z.record's rule). */
function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return false;
  const ctor = (value as { constructor?: unknown }).constructor;
  if (ctor === undefined || typeof ctor !== "function") return true;
  const prototype: unknown = ctor.prototype;
  if (prototype === null || typeof prototype !== "object" || Array.isArray(prototype)) return false;
  return Object.hasOwn(prototype, "isPrototypeOf");
}

/** A plain object of any values, copied: its own enumerable string keys; a symbol key is refused. */
const record = (message: string) =>
  v.pipe(
    v.custom<Record<string, unknown>>(isPlainObject, message),
    v.rawTransform(({ dataset, addIssue }) => {
      const input = dataset.value as Record<PropertyKey, unknown>;
      const copy: Record<string, unknown> = {};
      for (const key of Reflect.ownKeys(input)) {
        if (key === "__proto__" || !Object.prototype.propertyIsEnumerable.call(input, key)) continue;
        if (typeof key === "symbol") {
          addIssue({ message, path: [{ type: "unknown", origin: "key", input, key, value: input[key] }] });
          continue;
        }
        copy[key] = input[key];
      }
      return copy;
    }),
  );

export const roomOptionsSchema = v.object({
  name: v.optional(nonEmptyString("name"), "Agent"),
  roomId: v.optional(nonEmptyString("roomId")),
  // An empty id has always been reported with the type message.
  agentParticipantId: v.optional(nonEmptyString("agentParticipantId", "agentParticipantId must be a string")),
  autoEndSession: v.optional(flag("autoEndSession"), true),
  sessionTimeoutSeconds: v.optional(nonNegativeSeconds("sessionTimeoutSeconds"), 5),
  noParticipantTimeoutSeconds: v.optional(nonNegativeSeconds("noParticipantTimeoutSeconds"), 90),
  /**
   * Local mode: the worker serves a playground page for the job's room and prints a link to it (and a
   * `troupe connect` command), each with a participant token. A registered worker ignores it.
   */
  playground: v.optional(flag("playground"), true),
  metadata: v.optional(record("metadata must be an object")),
});

export type RoomOptionsInput = v.InferInput<typeof roomOptionsSchema>;
export type ResolvedRoomOptions = v.InferOutput<typeof roomOptionsSchema>;
const ROOM_OPTION_KEYS = Object.keys(roomOptionsSchema.entries);

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
