import {
  type Context,
  createTraceState,
  isSpanContextValid,
  ROOT_CONTEXT,
  type Span,
  type SpanContext,
  SpanStatusCode,
  trace,
} from "@opentelemetry/api";
import { formatTraceparent, parseTraceparent, parseTracestate, type TraceCarrier } from "./traceparent.ts";

/**
 * troupe's spans go through `@opentelemetry/api` only. Until the application registers a
 * TracerProvider the API is a no-op: spans are non-recording objects that still carry the trace
 * context they were given, so a trace passes through a process that records nothing.
 */
export const tracer = trace.getTracer("troupe");

/** Span names, one per step of a job's way from the dispatch request to its process. */
export const SPAN = {
  dispatch: "troupe.dispatch",
  offer: "troupe.offer",
  assign: "troupe.assign",
  processHandout: "troupe.process_handout",
  entrypoint: "troupe.entrypoint",
  shutdown: "troupe.shutdown",
} as const;

/** Attribute names on troupe's spans. */
export const ATTR = {
  jobId: "troupe.job.id",
  agentName: "troupe.agent.name",
  workerId: "troupe.worker.id",
  status: "troupe.outcome.status",
  reason: "troupe.outcome.reason",
  answer: "troupe.offer.answer",
  answerError: "troupe.offer.error",
  attempt: "troupe.dispatch.attempt",
  origin: "troupe.dispatch.origin",
  slotId: "troupe.slot.id",
  pid: "process.pid",
} as const;

/** A context whose (remote) parent is the carrier's span; the root context when it carries none. */
export function contextFrom(carrier: TraceCarrier | undefined): Context {
  const parsed = carrier?.traceparent === undefined ? undefined : parseTraceparent(carrier.traceparent);
  if (!parsed) return ROOT_CONTEXT;
  const tracestate = parseTracestate(carrier?.tracestate);
  const spanContext: SpanContext = {
    ...parsed,
    isRemote: true,
    ...(tracestate ? { traceState: createTraceState(tracestate) } : {}),
  };
  return trace.setSpanContext(ROOT_CONTEXT, spanContext);
}

/** The carrier that continues the trace under this span; empty when it has no valid context. */
export function carrierOf(span: Span): TraceCarrier {
  const spanContext = span.spanContext();
  if (!isSpanContextValid(spanContext)) return {};
  const tracestate = parseTracestate(spanContext.traceState?.serialize());
  return { traceparent: formatTraceparent(spanContext), ...(tracestate ? { tracestate } : {}) };
}

/** Records how a step ended and ends the span; an outcome that is not `ok` marks it as an error. */
export function endWithOutcome(
  span: Span,
  status: string,
  reason?: string,
  ok = status === "completed" || status === "cancelled",
): void {
  span.setAttribute(ATTR.status, status);
  if (reason !== undefined) span.setAttribute(ATTR.reason, reason);
  if (!ok) span.setStatus({ code: SpanStatusCode.ERROR, ...(reason !== undefined ? { message: reason } : {}) });
  span.end();
}
