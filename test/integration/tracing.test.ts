import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { context, SpanStatusCode, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Options } from "../../src/options.ts";
import { runWorker, type WorkerHandle } from "../../src/worker/runtime.ts";
import type { ExportedSpan } from "../fixtures/agents/traced.ts";
import { api, CREDS, closeRegistries, silent, startRegistry, waitAvailableAgent } from "../registry/helpers.ts";
import { fixture } from "./helpers/in-process.ts";
import { fileMarker, sweepFile } from "./helpers/processes.ts";

/**
 * One dispatch, traced end to end: a real registry and a worker in this process record their spans
 * with an in-memory exporter; the job process records its own through the TracerProvider its agent
 * module registers (test/fixtures/agents/traced.ts), into a file. All of them must form one trace
 * with the right parents.
 */

const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
const dir = mkdtempSync(join(tmpdir(), "troupe-tracing-"));
const spanFile = join(dir, "job-spans.jsonl");
let worker: WorkerHandle | undefined;

beforeAll(() => {
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  trace.setGlobalTracerProvider(provider);
  // Job processes inherit the environment: the fixture's provider writes there.
  process.env.TROUPE_TEST_SPAN_FILE = spanFile;
});

afterAll(async () => {
  if (worker) {
    if (worker.actor.getSnapshot().status === "active") worker.stop();
    await worker.done;
  }
  await closeRegistries();
  delete process.env.TROUPE_TEST_SPAN_FILE;
  trace.disable();
  context.disable();
  rmSync(dir, { recursive: true, force: true });
  await sweepFile();
}, 60_000);

interface SpanView {
  name: string;
  traceId: string;
  spanId: string;
  parentSpanId: string | undefined;
  attributes: Record<string, unknown>;
  status: number;
}

function recordedHere(): SpanView[] {
  return exporter.getFinishedSpans().map((span) => ({
    name: span.name,
    traceId: span.spanContext().traceId,
    spanId: span.spanContext().spanId,
    parentSpanId: span.parentSpanContext?.spanId,
    attributes: { ...span.attributes },
    status: span.status.code,
  }));
}

function recordedInJobProcesses(): ExportedSpan[] {
  let text = "";
  try {
    text = readFileSync(spanFile, "utf8");
  } catch {
    return [];
  }
  return text
    .split("\n")
    .filter(Boolean)
    .map((line) => JSON.parse(line) as ExportedSpan);
}

/** The one span of this name in the trace; fails when there is none or several. */
function only(spans: SpanView[], name: string): SpanView {
  const found = spans.filter((span) => span.name === name);
  expect(found.map((span) => span.name)).toEqual([name]);
  return found[0] as SpanView;
}

describe("tracing one dispatch across registry, worker and job process", { timeout: 120_000 }, () => {
  it("yields one trace: dispatch → offer, dispatch → assign → process_handout → entrypoint → the agent's spans", async () => {
    const registry = await startRegistry({});
    fileMarker();
    const options = new Options(
      {
        register: true,
        registryUrl: registry.url,
        ...CREDS,
        agentId: "Traced",
        maxProcesses: 1,
        numIdleProcesses: 1,
        host: "127.0.0.1",
        port: 0,
        loadFn: () => 0,
        registrationTimeout: 5,
        closeTimeout: 5,
        killTimeout: 1,
        launchTimeout: 60,
      },
      {},
    );
    worker = await runWorker(
      { entrypoint: async () => {}, jobctx: undefined, options, agentModule: fixture("traced") },
      { handleSignals: false, logger: silent },
    );
    await waitAvailableAgent(registry, "Traced", 90_000);

    const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
    const callerSpanId = "00f067aa0ba902b7";
    const created = await api(
      registry.url,
      registry.dispatcher,
      "POST",
      "/v1/jobs",
      { agent_name: "Traced" },
      { traceparent: `00-${traceId}-${callerSpanId}-01`, tracestate: "vendor=abc" },
    );
    expect(created.status).toBe(201);
    const jobId = created.body.job.id as string;
    const record = await registry.store.untilFinal(jobId, 90_000);
    expect(record.status).toBe("completed");

    // Spans of the job process are written before it reports `done`, so they are there by now.
    const here = recordedHere().filter((span) => span.traceId === traceId);
    const there = recordedInJobProcesses().filter((span) => span.traceId === traceId);
    const all = [...here, ...there];

    const dispatch = only(here, "troupe.dispatch");
    expect(dispatch.parentSpanId).toBe(callerSpanId);
    expect(dispatch.attributes).toMatchObject({
      "troupe.job.id": jobId,
      "troupe.agent.name": "Traced",
      "troupe.worker.id": record.workerId,
      "troupe.outcome.status": "completed",
    });
    // The record keeps the dispatch span's context, for a node that takes the job over.
    expect(record.traceparent).toBe(`00-${traceId}-${dispatch.spanId}-01`);
    expect(record.tracestate).toBe("vendor=abc");

    const offer = only(here, "troupe.offer");
    expect(offer.parentSpanId).toBe(dispatch.spanId);
    expect(offer.attributes).toMatchObject({
      "troupe.job.id": jobId,
      "troupe.agent.name": "Traced",
      "troupe.worker.id": record.workerId,
      "troupe.offer.answer": "accepted",
    });

    const assign = only(here, "troupe.assign");
    expect(assign.parentSpanId).toBe(dispatch.spanId);
    expect(assign.attributes).toMatchObject({
      "troupe.job.id": jobId,
      "troupe.agent.name": "Traced",
      "troupe.worker.id": record.workerId,
    });

    const handout = only(here, "troupe.process_handout");
    expect(handout.parentSpanId).toBe(assign.spanId);
    expect(handout.attributes).toMatchObject({
      "troupe.job.id": jobId,
      "troupe.agent.name": "Traced",
      "troupe.worker.id": record.workerId,
    });
    expect(handout.attributes["troupe.slot.id"]).toMatch(/^slot\.\d+$/);
    const jobPid = handout.attributes["process.pid"];
    expect(jobPid).toBeTypeOf("number");

    const entrypoint = only(all, "troupe.entrypoint");
    expect(entrypoint.parentSpanId).toBe(handout.spanId);
    expect(entrypoint.attributes).toMatchObject({ "troupe.job.id": jobId, "process.pid": jobPid });
    const work = only(all, "agent.work");
    expect(work.parentSpanId).toBe(entrypoint.spanId);
    expect(only(all, "agent.nested").parentSpanId).toBe(work.spanId);
    expect(only(all, "agent.explicit").parentSpanId).toBe(entrypoint.spanId);

    const shutdown = only(all, "troupe.shutdown");
    expect(shutdown.parentSpanId).toBe(handout.spanId);
    expect(shutdown.attributes).toMatchObject({
      "troupe.job.id": jobId,
      "troupe.outcome.status": "completed",
      "troupe.outcome.reason": "entrypoint returned",
    });
    expect(only(all, "agent.cleanup").parentSpanId).toBe(shutdown.spanId);

    // Nothing of this job went to another trace.
    const elsewhere = [...recordedHere(), ...recordedInJobProcesses()].filter(
      (span) => span.attributes["troupe.job.id"] === jobId && span.traceId !== traceId,
    );
    expect(elsewhere).toEqual([]);
    expect(all.every((span) => span.status !== SpanStatusCode.ERROR)).toBe(true);

    // A malformed traceparent is ignored: the dispatch still succeeds, in a trace of its own.
    const second = await api(
      registry.url,
      registry.dispatcher,
      "POST",
      "/v1/jobs",
      { agent_name: "Traced" },
      { traceparent: `00-${traceId.toUpperCase()}-${callerSpanId}-01` },
    );
    expect(second.status).toBe(201);
    const secondId = second.body.job.id as string;
    expect((await registry.store.untilFinal(secondId, 90_000)).status).toBe("completed");
    const secondDispatch = recordedHere().find(
      (span) => span.name === "troupe.dispatch" && span.attributes["troupe.job.id"] === secondId,
    );
    expect(secondDispatch?.parentSpanId).toBeUndefined();
    expect(secondDispatch?.traceId).not.toBe(traceId);
    const secondEntrypoint = recordedInJobProcesses().find(
      (span) => span.name === "troupe.entrypoint" && span.attributes["troupe.job.id"] === secondId,
    );
    expect(secondEntrypoint?.traceId).toBe(secondDispatch?.traceId);
  });
});
