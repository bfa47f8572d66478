import { SpanStatusCode, trace } from "@opentelemetry/api";
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { DispatchTrace } from "../../src/observability/tracing/dispatch-trace.ts";

/** The registry's spans of a dispatch, from the events its machine emits, recorded in memory. */
const exporter = new InMemorySpanExporter();
beforeAll(() => {
  trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }));
});
afterAll(() => trace.disable());
beforeEach(() => exporter.reset());

const spans = (name: string) => exporter.getFinishedSpans().filter((span) => span.name === name);
const CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

describe("DispatchTrace", () => {
  it("records each offer's answer: accepted, declined with the worker's reason, or none; and says how each ended", () => {
    const dispatch = DispatchTrace.open("job-1", "Agent", { traceparent: CALLER });
    expect(dispatch.observe({ type: "offer", jobId: "job-1", workerId: "w-1" })).toBeUndefined();
    dispatch.received({ type: "answer", workerId: "w-1", available: false, error: "full" });
    expect(dispatch.observe({ type: "release", jobId: "job-1", workerId: "w-1" })).toBe("declined");
    dispatch.observe({ type: "offer", jobId: "job-1", workerId: "w-2" });
    // An answer from a worker not asked now changes nothing.
    dispatch.received({ type: "answer", workerId: "w-1", available: true });
    expect(dispatch.observe({ type: "release", jobId: "job-1", workerId: "w-2" })).toBe("no_answer");
    dispatch.observe({ type: "offer", jobId: "job-1", workerId: "w-3" });
    dispatch.received({ type: "answer", workerId: "w-3", available: true });
    expect(dispatch.observe({ type: "release", jobId: "job-1", workerId: "w-3" })).toBe("accepted");
    // No offer open: nothing ended.
    expect(dispatch.observe({ type: "release", jobId: "job-1", workerId: "w-3" })).toBeUndefined();
    const agent = { "troupe.job.id": "job-1", "troupe.agent.name": "Agent" };
    expect(spans("troupe.offer").map((span) => span.attributes)).toEqual([
      { ...agent, "troupe.worker.id": "w-1", "troupe.offer.answer": "declined", "troupe.offer.error": "full" },
      { ...agent, "troupe.worker.id": "w-2", "troupe.offer.answer": "no_answer" },
      { ...agent, "troupe.worker.id": "w-3", "troupe.offer.answer": "accepted" },
    ]);
    expect(spans("troupe.offer").every((span) => span.status.code === SpanStatusCode.UNSET)).toBe(true);
  });

  it("ends the assign span when the job runs, and the dispatch span with the outcome", () => {
    const dispatch = DispatchTrace.open("job-2", "Agent", { traceparent: CALLER, tracestate: "v=1" });
    expect(dispatch.carrier.traceparent).toMatch(/^00-4bf92f3577b34da6a3ce929d0e0e4736-[0-9a-f]{16}-01$/);
    expect(dispatch.carrier.tracestate).toBe("v=1");
    expect(dispatch.assignmentCarrier()).toEqual(dispatch.carrier);
    dispatch.observe({ type: "assign", jobId: "job-2", workerId: "w-1" });
    const toWorker = dispatch.assignmentCarrier();
    expect(toWorker.traceparent).not.toBe(dispatch.carrier.traceparent);
    dispatch.observe({ type: "status", jobId: "job-2", status: "running", workerId: "w-1", attempts: 1 });
    const [assign] = spans("troupe.assign");
    expect(assign?.attributes).toMatchObject({
      "troupe.agent.name": "Agent",
      "troupe.worker.id": "w-1",
      "troupe.outcome.status": "running",
    });
    expect(toWorker.traceparent).toContain(assign?.spanContext().spanId);
    dispatch.observe({
      type: "finished",
      jobId: "job-2",
      output: { jobId: "job-2", status: "failed", workerId: "w-1", reason: "crashed", attempts: 1 },
    });
    const [span] = spans("troupe.dispatch");
    expect(span?.parentSpanContext?.spanId).toBe("00f067aa0ba902b7");
    expect(span?.attributes).toMatchObject({
      "troupe.job.id": "job-2",
      "troupe.agent.name": "Agent",
      "troupe.worker.id": "w-1",
      "troupe.outcome.status": "failed",
      "troupe.outcome.reason": "crashed",
      "troupe.dispatch.attempt": 1,
      "troupe.dispatch.origin": "created",
    });
    expect(span?.status).toEqual({ code: SpanStatusCode.ERROR, message: "crashed" });
  });

  it("a node taking a dispatch over continues the trace under the recorded dispatch span", () => {
    const first = DispatchTrace.open("job-3", "Agent", undefined);
    const record = { id: "job-3", agentName: "Agent", ...first.carrier };
    first.observe({ type: "handed_over", jobId: "job-3" });
    const second = DispatchTrace.resume(record, "forwarded");
    second.observe({
      type: "finished",
      jobId: "job-3",
      output: { jobId: "job-3", status: "completed", workerId: "w-1", attempts: 1 },
    });
    const [handedOver, resumed] = spans("troupe.dispatch");
    expect(handedOver?.parentSpanContext).toBeUndefined();
    expect(handedOver?.attributes["troupe.outcome.status"]).toBe("handed_over");
    expect(resumed?.spanContext().traceId).toBe(handedOver?.spanContext().traceId);
    expect(resumed?.parentSpanContext?.spanId).toBe(handedOver?.spanContext().spanId);
    expect(resumed?.attributes["troupe.dispatch.origin"]).toBe("forwarded");
  });

  it("a registry closing ends the open offer, assign and dispatch spans once, as abandoned, not as errors", () => {
    const offering = DispatchTrace.open("job-4", "Agent", undefined);
    offering.observe({ type: "offer", jobId: "job-4", workerId: "w-1" });
    const assigned = DispatchTrace.open("job-5", "Agent", undefined);
    assigned.observe({ type: "assign", jobId: "job-5", workerId: "w-1" });
    const finished = DispatchTrace.open("job-6", "Agent", undefined);
    finished.observe({
      type: "finished",
      jobId: "job-6",
      output: { jobId: "job-6", status: "completed", workerId: "w-1", attempts: 1 },
    });
    for (const dispatch of [offering, assigned, finished]) {
      dispatch.abandon("registry closing");
      dispatch.abandon("registry closing");
    }
    expect(spans("troupe.offer").map((span) => span.attributes["troupe.offer.answer"])).toEqual(["no_answer"]);
    const abandoned = [...spans("troupe.assign"), ...spans("troupe.dispatch")].filter(
      (span) => span.attributes["troupe.outcome.status"] === "abandoned",
    );
    expect(abandoned.map((span) => `${span.name} ${span.attributes["troupe.job.id"]}`).sort()).toEqual([
      "troupe.assign job-5",
      "troupe.dispatch job-4",
      "troupe.dispatch job-5",
    ]);
    for (const span of abandoned) {
      expect(span.attributes["troupe.outcome.reason"]).toBe("registry closing");
      expect(span.status.code).toBe(SpanStatusCode.UNSET);
    }
    expect(spans("troupe.dispatch").filter((span) => span.attributes["troupe.job.id"] === "job-6")).toHaveLength(1);
  });
});
