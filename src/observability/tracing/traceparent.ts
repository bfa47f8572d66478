import * as v from "../../vendor/valibot.ts";

/**
 * W3C Trace Context (https://www.w3.org/TR/trace-context/) as plain strings, with no OpenTelemetry
 * import: the wire schemas (src/protocol) use these checks, and a `traceparent` header is client
 * input like any other. Parsing is strict and never throws; what fails it is ignored (the dispatch
 * starts a new trace), never answered with an error.
 */

/** A `traceparent` this code writes: version 00, always exactly this long. */
export const TRACEPARENT_LENGTH = 55;
/** The most `tracestate` kept: the length the specification asks every vendor to propagate. */
export const TRACESTATE_MAX_LENGTH = 512;
/** List members the specification allows in one `tracestate`. */
const TRACESTATE_MAX_MEMBERS = 32;
/** Headers longer than this are not even looked at (a future version may append fields). */
export const TRACEPARENT_MAX_INPUT = 256;

const VERSION_00 = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;
/** A later version: the same first four fields, then possibly more after a dash. */
const LATER_VERSION = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;
const ALL_ZERO = /^0+$/;

export interface ParsedTraceparent {
  traceId: string;
  spanId: string;
  /** The trace flags byte; bit 0 = sampled. */
  traceFlags: number;
}

/**
 * The trace and parent span a `traceparent` names, or undefined for anything the specification
 * says to ignore: a wrong length or character, upper-case hex, an all-zero id, version ff, or several
 * headers joined into one.
 */
export function parseTraceparent(value: unknown): ParsedTraceparent | undefined {
  if (typeof value !== "string" || value.length < TRACEPARENT_LENGTH || value.length > TRACEPARENT_MAX_INPUT) {
    return undefined;
  }
  let traceId: string;
  let spanId: string;
  let flags: string;
  const v00 = VERSION_00.exec(value);
  if (v00) {
    [, traceId, spanId, flags] = v00 as unknown as [string, string, string, string];
  } else {
    const later = LATER_VERSION.exec(value);
    // Version 00 has exactly four fields; ff is forbidden; anything else is parsed as its first four.
    if (!later || later[1] === "00" || later[1] === "ff") return undefined;
    [, , traceId, spanId, flags] = later as unknown as [string, string, string, string, string];
  }
  if (ALL_ZERO.test(traceId) || ALL_ZERO.test(spanId)) return undefined;
  return { traceId, spanId, traceFlags: Number.parseInt(flags, 16) };
}

/** The version-00 `traceparent` of a trace and span. */
export function formatTraceparent(parsed: ParsedTraceparent): string {
  return `00-${parsed.traceId}-${parsed.spanId}-${(parsed.traceFlags & 0xff).toString(16).padStart(2, "0")}`;
}

const TRACESTATE_KEY = /^(?:[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})$/;
// Printable ASCII but ',' and '=', up to 256 characters, not ending in a space.
const TRACESTATE_VALUE = /^[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]$/;

/**
 * A `tracestate` as given when every list member is well formed, there are at most 32 and the whole
 * is at most 512 characters; otherwise undefined (the specification: drop it, keep `traceparent`).
 * Empty members (`a=1,,b=2`) are allowed and left as they are.
 */
export function parseTracestate(value: unknown): string | undefined {
  if (typeof value !== "string" || value.length === 0 || value.length > TRACESTATE_MAX_LENGTH) return undefined;
  const members = value.split(",");
  let count = 0;
  const keys = new Set<string>();
  for (const raw of members) {
    const member = raw.trim();
    if (member === "") continue;
    const equals = member.indexOf("=");
    if (equals <= 0) return undefined;
    const key = member.slice(0, equals);
    if (!TRACESTATE_KEY.test(key) || !TRACESTATE_VALUE.test(member.slice(equals + 1)) || keys.has(key)) {
      return undefined;
    }
    keys.add(key);
    if (++count > TRACESTATE_MAX_MEMBERS) return undefined;
  }
  return count > 0 ? value : undefined;
}

/**
 * Trace context fields inside messages troupe itself writes (start_job here; job_assignment and job
 * records have zod twins in src/protocol/registry.ts). A bad value becomes absent instead of failing
 * the whole message: a job must never be lost over its tracing. Valibot, not zod: the job process
 * parses start_job with these, and it does not load zod.
 */
export const traceparentField = v.fallback(
  v.optional(
    v.pipe(
      v.string(),
      v.maxLength(TRACEPARENT_MAX_INPUT),
      v.check((value) => parseTraceparent(value) !== undefined),
    ),
  ),
  undefined,
);
export const tracestateField = v.fallback(
  v.optional(
    v.pipe(
      v.string(),
      v.maxLength(TRACESTATE_MAX_LENGTH),
      v.check((value) => parseTracestate(value) !== undefined),
    ),
  ),
  undefined,
);

/** Where a trace continues: a `traceparent` and, optionally, the vendors' `tracestate` with it. */
export interface TraceCarrier {
  traceparent?: string;
  tracestate?: string;
}
