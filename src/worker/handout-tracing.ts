import { type Span, SpanKind } from "@opentelemetry/api";
import type { JobSpec } from "../../machines/shared.ts";
import { ATTR, carrierOf, contextFrom, endWithOutcome, SPAN, tracer } from "../observability/tracing/spans.ts";

/**
 * The worker's span of a job: `troupe.process_handout`, from the assignment's arrival until the job
 * process was sent its `start_job`, so a job that waited for a process (a cold start: a fork and the
 * agent's prewarm) shows it. It is a child of the registry's assign span, and the job process's
 * spans are its children: the `start_job` carries its context.
 */

/** Hand-outs begun and not done yet; bounded, since a job can end without one (cancelled, launch failed). */
const pending = new Map<string, Span>();
const MAX_PENDING = 2_048;

/**
 * The registry assigned a job to this worker (`workerId`, as the registry knows it): its hand-out
 * starts now. Only recording spans are kept.
 */
export function assignmentReceived(spec: JobSpec, workerId: string | undefined): void {
  pending.get(spec.jobId)?.end();
  pending.delete(spec.jobId);
  const span = startHandout(spec, workerId);
  if (!span.isRecording()) return;
  if (pending.size >= MAX_PENDING) {
    const [oldestId, oldest] = pending.entries().next().value as [string, Span];
    pending.delete(oldestId);
    endWithOutcome(oldest, "abandoned", "too many hand-outs pending");
  }
  pending.set(spec.jobId, span);
}

/**
 * The job goes to this process now: ends its hand-out span (one begun now when the job did not come
 * from a registry, as in local mode) and returns the job with that span's trace context, for the
 * job process's spans. Synchronous and cheap: it is on the job's start path.
 */
export function handOut(job: JobSpec, slotId: string, pid: number | undefined): JobSpec {
  const span = pending.get(job.jobId) ?? startHandout(job);
  pending.delete(job.jobId);
  // Not recorded (no TracerProvider, or not sampled): the job keeps the context it came with.
  if (!span.isRecording()) return job;
  span.setAttribute(ATTR.slotId, slotId);
  if (pid !== undefined) span.setAttribute(ATTR.pid, pid);
  span.end();
  const { traceparent, tracestate } = carrierOf(span);
  if (traceparent === undefined) return job;
  const { tracestate: _previous, ...rest } = job;
  return { ...rest, traceparent, ...(tracestate ? { tracestate } : {}) };
}

/** The job ended before any process got it: its hand-out ends with the job's outcome. */
export function handoutAbandoned(jobId: string, status: string, reason: string | undefined): void {
  const span = pending.get(jobId);
  if (!span) return;
  pending.delete(jobId);
  endWithOutcome(span, status, reason);
}

function startHandout(job: JobSpec, workerId?: string): Span {
  return tracer.startSpan(
    SPAN.processHandout,
    {
      kind: SpanKind.CONSUMER,
      attributes: {
        [ATTR.jobId]: job.jobId,
        ...(job.agentName ? { [ATTR.agentName]: job.agentName } : {}),
        ...(workerId ? { [ATTR.workerId]: workerId } : {}),
      },
    },
    contextFrom(job),
  );
}
