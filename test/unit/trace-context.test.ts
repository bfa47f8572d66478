import { trace } from "@opentelemetry/api";
import fc from "fast-check";
import * as v from "valibot";
import { describe, expect, it } from "vitest";
import { carrierOf, contextFrom } from "../../src/observability/tracing/spans.ts";
import {
  formatTraceparent,
  parseTraceparent,
  parseTracestate,
  TRACESTATE_MAX_LENGTH,
} from "../../src/observability/tracing/traceparent.ts";
import { jobSpec } from "../../src/protocol/ipc.ts";
import { jobAssignment } from "../../src/protocol/registry.ts";

const TRACE = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN = "00f067aa0ba902b7";
const VALID = `00-${TRACE}-${SPAN}-01`;

describe("traceparent parsing", () => {
  it("reads a version-00 header and writes it back the same", () => {
    expect(parseTraceparent(VALID)).toEqual({ traceId: TRACE, spanId: SPAN, traceFlags: 1 });
    expect(formatTraceparent(parseTraceparent(VALID) as never)).toBe(VALID);
    expect(parseTraceparent(`00-${TRACE}-${SPAN}-00`)?.traceFlags).toBe(0);
  });

  it("reads the first four fields of a later version, and writes version 00", () => {
    const later = `cc-${TRACE}-${SPAN}-01-what-the-future-brings`;
    expect(parseTraceparent(later)).toEqual({ traceId: TRACE, spanId: SPAN, traceFlags: 1 });
    expect(parseTraceparent(`cc-${TRACE}-${SPAN}-01`)).toBeDefined();
    expect(formatTraceparent(parseTraceparent(later) as never)).toBe(VALID);
  });

  it.each([
    ["not a string", 42],
    ["undefined", undefined],
    ["an array (repeated header)", [VALID, VALID]],
    ["empty", ""],
    ["two headers joined", `${VALID}, ${VALID}`],
    ["version 00 with more fields", `${VALID}-extra`],
    ["version ff", `ff-${TRACE}-${SPAN}-01`],
    ["a later version glued to more text", `cc-${TRACE}-${SPAN}-01extra`],
    ["upper-case hex", `00-${TRACE.toUpperCase()}-${SPAN}-01`],
    ["an all-zero trace id", `00-${"0".repeat(32)}-${SPAN}-01`],
    ["an all-zero span id", `00-${TRACE}-${"0".repeat(16)}-01`],
    ["a short trace id", `00-${TRACE.slice(1)}-${SPAN}-01`],
    ["a long span id", `00-${TRACE}-${SPAN}0-01`],
    ["a non-hex flag", `00-${TRACE}-${SPAN}-0g`],
    ["a non-hex version", `0x-${TRACE}-${SPAN}-01`],
    ["leading whitespace", ` ${VALID}`],
    ["trailing whitespace", `${VALID} `],
    ["other separators", VALID.replaceAll("-", "_")],
    ["a newline inside", `00-${TRACE}\n${SPAN}-01`],
    ["non-ASCII digits", `00-${TRACE.slice(0, 31)}٣-${SPAN}-01`],
    ["huge", `cc-${TRACE}-${SPAN}-01-${"x".repeat(100_000)}`],
  ])("ignores %s", (_label, value) => {
    expect(parseTraceparent(value)).toBeUndefined();
  });

  it("never throws, and what it accepts round-trips as a valid traceparent", () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 300 }), (value) => {
        const parsed = parseTraceparent(value);
        if (parsed) expect(parseTraceparent(formatTraceparent(parsed))).toEqual(parsed);
      }),
    );
  });
});

describe("tracestate parsing", () => {
  it("keeps well-formed lists as given", () => {
    // Spaces around members are optional whitespace; a space inside a value is part of it.
    for (const value of ["a=1", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", "t@sys=x y", "a=1 , b=2 ", "a=1,,b=2"]) {
      expect(parseTracestate(value)).toBe(value);
    }
  });

  it.each([
    ["not a string", 7],
    ["empty", ""],
    ["only commas", ",,"],
    ["a member without '='", "a"],
    ["an empty key", "=1"],
    ["an upper-case key", "A=1"],
    ["a key starting with a digit (no tenant)", "1a=1"],
    ["a value with '='", "a=b=c"],
    ["a tab in a value", "a=b\tc"],
    ["a control character", "a=b\u0001"],
    ["a non-ASCII value", "a=é"],
    ["a duplicate key", "a=1,a=2"],
    ["33 members", Array.from({ length: 33 }, (_, i) => `k${i}=v`).join(",")],
    ["longer than the limit", `a=${"x".repeat(TRACESTATE_MAX_LENGTH)}`],
  ])("drops %s", (_label, value) => {
    expect(parseTracestate(value)).toBeUndefined();
  });
});

describe("trace context in OpenTelemetry terms", () => {
  it("a carrier becomes a remote parent and comes back unchanged through a non-recording span", () => {
    const ctx = contextFrom({ traceparent: VALID, tracestate: "a=1" });
    const parent = trace.getSpanContext(ctx);
    expect(parent).toMatchObject({ traceId: TRACE, spanId: SPAN, traceFlags: 1, isRemote: true });
    // No TracerProvider here: the API's span carries the parent's context on.
    const span = trace.getTracer("test").startSpan("x", {}, ctx);
    expect(carrierOf(span)).toEqual({ traceparent: VALID, tracestate: "a=1" });
  });

  it("no carrier, or a bad one, gives the root context and an empty carrier", () => {
    for (const carrier of [undefined, {}, { traceparent: "garbage", tracestate: "a=1" }]) {
      const ctx = contextFrom(carrier);
      expect(trace.getSpanContext(ctx)).toBeUndefined();
      expect(carrierOf(trace.getTracer("test").startSpan("x", {}, ctx))).toEqual({});
    }
  });

  it("a bad tracestate is dropped, the traceparent kept", () => {
    const ctx = contextFrom({ traceparent: VALID, tracestate: "A=1" });
    expect(trace.getSpanContext(ctx)?.traceState).toBeUndefined();
    expect(trace.getSpanContext(ctx)?.traceId).toBe(TRACE);
  });
});

describe("trace context on the wire", () => {
  const assignment = { type: "job_assignment", job_id: "job-1", agent_name: "A" };

  it("job_assignment and start_job carry a valid trace context", () => {
    expect(jobAssignment.parse({ ...assignment, traceparent: VALID, tracestate: "a=1" })).toMatchObject({
      traceparent: VALID,
      tracestate: "a=1",
    });
    expect(v.parse(jobSpec, { jobId: "job-1", traceparent: VALID })).toMatchObject({ traceparent: VALID });
  });

  it.each([
    ["a malformed traceparent", { traceparent: "00-xyz" }],
    ["a traceparent of the wrong type", { traceparent: { nested: true } }],
    ["a huge traceparent", { traceparent: `cc-${TRACE}-${SPAN}-01-${"x".repeat(1_000_000)}` }],
    ["a malformed tracestate", { traceparent: VALID, tracestate: "=" }],
    ["a huge tracestate", { traceparent: VALID, tracestate: `a=${"x".repeat(1_000_000)}` }],
  ])("drop %s, not the message", (_label, fields) => {
    const parsed = jobAssignment.safeParse({ ...assignment, ...fields });
    expect(parsed.success).toBe(true);
    const valid = parsed.success ? parsed.data : undefined;
    expect(valid?.job_id).toBe("job-1");
    if (fields.traceparent !== VALID) expect(valid?.traceparent).toBeUndefined();
    expect(valid?.tracestate).toBeUndefined();
    const spec = v.safeParse(jobSpec, { jobId: "job-1", ...fields });
    expect(spec.success).toBe(true);
    const job = spec.success ? spec.output : undefined;
    expect(job?.jobId).toBe("job-1");
    if (fields.traceparent !== VALID) expect(job?.traceparent).toBeUndefined();
    expect(job?.tracestate).toBeUndefined();
  });
});
