import { type Context, context, type Span, SpanStatusCode, trace } from "@opentelemetry/api";
import type { JobSpec } from "../../machines/shared.ts";
import { openTelemetryRegistered } from "../observability/tracing/registered.ts";
import { ATTR, contextFrom, endWithOutcome, SPAN, tracer } from "../observability/tracing/spans.ts";

/**
 * The job process's spans: `troupe.entrypoint` while the agent's entrypoint runs (the context the
 * entrypoint runs in, and `ctx.traceContext`, have it as the active span, so an agent's own spans
 * are its children) and `troupe.shutdown` while the job ends. Both are children of the worker's
 * hand-out span, whose context came with `start_job`. A job process gets a TracerProvider from the
 * agent's module or from a module preloaded with `--import` (see docs/operating.md): without one
 * these are no-ops.
 */
export class JobTrace {
  readonly #parent: Context;
  readonly #entrypoint: Span;
  /** The context the entrypoint runs in: the job's trace with the entrypoint span active. */
  readonly context: Context;
  #entrypointOpen = true;

  /**
   * The job's trace, or undefined while nothing registered an OpenTelemetry global (a provider, a
   * context manager): then there is nothing to record or propagate in this process, and the job's
   * start path does no tracing work at all.
   */
  static forJob(job: JobSpec): JobTrace | undefined {
    return openTelemetryRegistered() ? new JobTrace(job) : undefined;
  }

  /** Starts the entrypoint span. Synchronous: it is on the job's start path. */
  private constructor(private readonly job: JobSpec) {
    this.#parent = contextFrom(job);
    this.#entrypoint = tracer.startSpan(SPAN.entrypoint, { attributes: attributesOf(job) }, this.#parent);
    this.context = trace.setSpan(this.#parent, this.#entrypoint);
  }

  /** Calls the entrypoint in the job's trace context, so an agent's `startActiveSpan` joins it. */
  runEntrypoint<T, A>(entrypoint: (this: T, arg: A) => unknown, thisArg: T, arg: A): unknown {
    return context.with(this.context, entrypoint, thisArg, arg);
  }

  /** The entrypoint returned (or its promise settled); `error` when it threw or rejected. */
  entrypointEnded(error?: unknown): void {
    if (!this.#entrypointOpen) return;
    this.#entrypointOpen = false;
    if (error !== undefined) {
      this.#entrypoint.recordException(error instanceof Error ? error : String(error));
      this.#entrypoint.setStatus({ code: SpanStatusCode.ERROR, message: describe(error) });
    }
    this.#entrypoint.end();
  }

  /**
   * The job is ending: its shutdown span (to end with the outcome) and the context with it active,
   * for the shutdown callbacks. The entrypoint's span ends here at the latest.
   */
  shutdownStarted(reason: string): { span: Span; context: Context } {
    if (this.#entrypointOpen) {
      this.#entrypoint.setAttribute(ATTR.reason, `job ended while the entrypoint ran: ${reason}`);
      this.entrypointEnded();
    }
    const span = tracer.startSpan(
      SPAN.shutdown,
      { attributes: { ...attributesOf(this.job), [ATTR.reason]: reason } },
      this.#parent,
    );
    return { span, context: trace.setSpan(this.#parent, span) };
  }
}

/** Runs `work` with `active` as the active context (the shutdown span's, for the shutdown callbacks). */
export function runIn<R>(active: Context, work: () => R): R {
  return context.with(active, work);
}

/** Ends the shutdown span with the job's outcome. */
export function shutdownEnded(span: Span, ok: boolean, reason: string): void {
  endWithOutcome(span, ok ? "completed" : "failed", reason, ok);
}

function attributesOf(job: JobSpec): Record<string, string | number> {
  return {
    [ATTR.jobId]: job.jobId,
    [ATTR.pid]: process.pid,
    ...(job.agentName ? { [ATTR.agentName]: job.agentName } : {}),
  };
}

function describe(error: unknown): string {
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}

/**
 * Hands the spans this process ended to the exporter before it exits: a batching span processor
 * would otherwise lose the job's last spans with the process. The API has no flush, so this asks
 * the registered provider (the SDK's has `forceFlush`); with none it resolves at once.
 */
export function flushTraces(): Promise<void> {
  const registered = trace.getTracerProvider() as { getDelegate?: () => unknown };
  const provider = (registered.getDelegate?.() ?? registered) as { forceFlush?: () => Promise<unknown> };
  if (typeof provider.forceFlush !== "function") return Promise.resolve();
  return provider.forceFlush().then(
    () => {},
    () => {},
  );
}
