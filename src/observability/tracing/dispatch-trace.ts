import { type Context, type Span, SpanKind, trace } from "@opentelemetry/api";
import type { DispatchEmitted, DispatchEvent } from "../../../machines/registry/dispatch.ts";
import { ATTR, carrierOf, contextFrom, endWithOutcome, SPAN, tracer } from "./spans.ts";
import type { TraceCarrier } from "./traceparent.ts";

/** How an offer ended: the worker's answer, or none (its timeout, its loss, or it could not be asked). */
export type OfferEnding = "accepted" | "declined" | "no_answer";

interface OpenOffer {
  span: Span;
  workerId: string;
  /** Set when the worker's answer arrives; an offer released without one timed out or was never sent. */
  answer?: "accepted" | "declined";
}

/**
 * The spans of one dispatch on the registry, derived from what its machine emits (the machine
 * decides; this only watches): `troupe.dispatch` from the request (or, on another node, from taking
 * the dispatch over) to its outcome, a `troupe.offer` per worker asked, and a `troupe.assign` from
 * the assignment until the worker reports the job running. The assignment carries the assign span's
 * context to the worker, so the worker's and the job process's spans join the same trace.
 */
export class DispatchTrace {
  readonly #span: Span;
  readonly #context: Context;
  readonly #agentName: string;
  #offer: OpenOffer | undefined;
  #assign: Span | undefined;
  /** The dispatch span ended (the dispatch finished or moved to another node). */
  #ended = false;

  private constructor(name: string, parent: Context, attributes: Record<string, string>, kind: SpanKind) {
    this.#span = tracer.startSpan(name, { kind, attributes }, parent);
    this.#context = trace.setSpan(parent, this.#span);
    this.#agentName = attributes[ATTR.agentName] ?? "";
  }

  /**
   * A new dispatch request: its span is a child of the caller's trace context when it sent a valid
   * one (`traceparent` and `tracestate` headers), otherwise the root of a new trace.
   */
  static open(jobId: string, agentName: string, incoming: TraceCarrier | undefined): DispatchTrace {
    return new DispatchTrace(
      SPAN.dispatch,
      contextFrom(incoming),
      { [ATTR.jobId]: jobId, [ATTR.agentName]: agentName, [ATTR.origin]: "created" },
      SpanKind.SERVER,
    );
  }

  /**
   * A dispatch this node takes over (forwarded by another node, resumed after a restart, adopted
   * from a worker's inventory): a child of the span recorded with the job, so it stays in one trace.
   */
  static resume(record: { id: string; agentName: string } & TraceCarrier, origin: string): DispatchTrace {
    return new DispatchTrace(
      SPAN.dispatch,
      contextFrom(record),
      { [ATTR.jobId]: record.id, [ATTR.agentName]: record.agentName, [ATTR.origin]: origin },
      SpanKind.INTERNAL,
    );
  }

  /** The dispatch span's context, kept in the job's record for the nodes that may take it over. */
  get carrier(): TraceCarrier {
    return carrierOf(this.#span);
  }

  /** The context an assignment carries to the worker: the open assign span's, else the dispatch's. */
  assignmentCarrier(): TraceCarrier {
    return carrierOf(this.#assign ?? this.#span);
  }

  /** An event sent to the dispatch machine: only a worker's answer to the open offer matters here. */
  received(event: DispatchEvent): void {
    const offer = this.#offer;
    if (event.type !== "answer" || !offer || offer.workerId !== event.workerId) return;
    offer.answer = event.available ? "accepted" : "declined";
    if (event.error !== undefined) offer.span.setAttribute(ATTR.answerError, event.error);
  }

  /**
   * Something the dispatch machine emitted. Returns how an offer ended when this event ended one
   * (the registry counts offers by it), so an offer's outcome is decided in this one place.
   */
  observe(event: DispatchEmitted): OfferEnding | undefined {
    switch (event.type) {
      case "offer": {
        const ended = this.#endOffer();
        this.#offer = {
          workerId: event.workerId,
          span: tracer.startSpan(
            SPAN.offer,
            { kind: SpanKind.CLIENT, attributes: this.#stepAttributes(event.jobId, event.workerId) },
            this.#context,
          ),
        };
        return ended;
      }
      case "release":
        return this.#endOffer();
      case "waiting":
        this.#span.addEvent("waiting for a worker");
        break;
      case "forward":
        this.#span.addEvent("forwarded to another node", { [ATTR.workerId]: event.workerId });
        break;
      case "assign":
        this.#assign?.end();
        this.#assign = tracer.startSpan(
          SPAN.assign,
          { kind: SpanKind.PRODUCER, attributes: this.#stepAttributes(event.jobId, event.workerId) },
          this.#context,
        );
        this.#span.setAttribute(ATTR.workerId, event.workerId);
        break;
      case "status":
        if (event.status === "running" && this.#assign) {
          endWithOutcome(this.#assign, "running", undefined, true);
          this.#assign = undefined;
        }
        if (event.status !== "pending") this.#span.setAttribute(ATTR.attempt, event.attempts);
        break;
      case "unbind":
        // The worker let the job go (or was lost) before reporting it running.
        if (this.#assign) endWithOutcome(this.#assign, "released", "the worker did not start the job");
        this.#assign = undefined;
        break;
      case "finished": {
        const { output } = event;
        const ended = this.#endOffer();
        if (this.#assign) endWithOutcome(this.#assign, output.status, output.reason);
        this.#assign = undefined;
        if (output.workerId) this.#span.setAttribute(ATTR.workerId, output.workerId);
        this.#span.setAttribute(ATTR.attempt, output.attempts);
        endWithOutcome(this.#span, output.status, output.reason);
        this.#ended = true;
        return ended;
      }
      case "handed_over": {
        const ended = this.#endOffer();
        this.#assign?.end();
        this.#assign = undefined;
        endWithOutcome(this.#span, "handed_over", "another node runs the dispatch", true);
        this.#ended = true;
        return ended;
      }
    }
    return undefined;
  }

  /**
   * The registry is closing with this dispatch still open: its spans end now, so the exporter gets
   * them before the process exits (the next registry reconciles the job and traces it on).
   */
  abandon(reason: string): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#endOffer();
    // Not an error of the dispatch: the job goes on, recorded as it was, under the next registry.
    if (this.#assign) endWithOutcome(this.#assign, "abandoned", reason, true);
    this.#assign = undefined;
    endWithOutcome(this.#span, "abandoned", reason, true);
  }

  /** The attributes of an offer or assign span: the job, its agent and the worker asked. */
  #stepAttributes(jobId: string, workerId: string): Record<string, string> {
    return { [ATTR.jobId]: jobId, [ATTR.agentName]: this.#agentName, [ATTR.workerId]: workerId };
  }

  #endOffer(): OfferEnding | undefined {
    const offer = this.#offer;
    if (!offer) return undefined;
    this.#offer = undefined;
    const ending = offer.answer ?? "no_answer";
    // A worker saying no is normal, not an error: the answer is an attribute, the status stays unset.
    offer.span.setAttribute(ATTR.answer, ending);
    offer.span.end();
    return ending;
  }
}
