import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { createWebSocketInspector, type StatelyInspectionEvent } from "@statelyai/inspect";
import { afterEach, describe, expect, it } from "vitest";
import { WebSocketServer } from "ws";
import {
  api,
  closeRegistries,
  dispatch,
  ProcessGuard,
  startInProcessWorker,
  startRegistry,
  stopInProcessWorkers,
  token,
  waitAvailableAgent,
} from "../registry/helpers.ts";
import { until } from "../support/wait.ts";

/**
 * @statelyai/inspect's WebSocket inspector attached to a registered worker (`Options.inspect`) and to
 * its registry (`createRegistry({ inspect })`): one job dispatched to completion reaches a local
 * WebSocket server as inspection events of the worker root, its slot and job, the registry's session
 * for the worker, and the job's dispatch. The inspector's `serialize` is docs/inspect.md's
 * `statesOnly`: nothing of the job's metadata or room token leaves the process.
 */

const guard = new ProcessGuard();
const cleanups: (() => void | Promise<void>)[] = [];

afterEach(async () => {
  await stopInProcessWorkers();
  await closeRegistries();
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  await guard.killAll();
});

/** A WebSocket server on a free loopback port that keeps every message it gets, parsed. */
async function inspectionServer() {
  const server = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await once(server, "listening");
  const received: StatelyInspectionEvent[] = [];
  server.on("connection", (socket) => {
    socket.on("message", (data) => received.push(JSON.parse(String(data)) as StatelyInspectionEvent));
  });
  cleanups.push(async () => {
    for (const client of server.clients) client.terminate();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}`, received };
}

/** docs/inspect.md's recipe: event types and states only; no payloads, context, input or output. */
function statesOnly(event: StatelyInspectionEvent): StatelyInspectionEvent {
  if (event.type === "@xstate.event") return { ...event, event: { type: event.event.type } };
  const { status, value } = event.snapshot as { status?: string; value?: unknown };
  const snapshot = { status, value } as never;
  return event.type === "@xstate.snapshot"
    ? { ...event, event: { type: event.event.type }, snapshot }
    : { ...event, snapshot };
}

/** The actors announced (`@xstate.actor`) by name, each with the session id its other events carry. */
function announced(received: StatelyInspectionEvent[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const event of received) if (event.type === "@xstate.actor") out.set(event.name, event.sessionId);
  return out;
}

/** Session ids that sent at least one snapshot, and the event types of those snapshots. */
function snapshotsBySession(received: StatelyInspectionEvent[]): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const event of received) {
    if (event.type !== "@xstate.snapshot") continue;
    const list = out.get(event.sessionId) ?? [];
    list.push(event.event.type);
    out.set(event.sessionId, list);
  }
  return out;
}

describe("attaching @statelyai/inspect", () => {
  it("streams a worker's and its registry's actors to a WebSocket inspector through one job", async () => {
    const server = await inspectionServer();
    // Events wait in the inspector until its socket is open; a worker's start is more than the
    // default 200 of them.
    const inspector = createWebSocketInspector({ url: server.url, maxDeferredEvents: 100_000, serialize: statesOnly });
    cleanups.push(() => inspector.stop());

    const registry = await startRegistry({}, { inspect: inspector.inspect });
    await startInProcessWorker(registry.url, {
      agentId: "inspected",
      maxProcesses: 1,
      numIdleProcesses: 1,
      initializeTimeout: 30,
      inspect: inspector.inspect,
    });
    await waitAvailableAgent(registry, "inspected", 30_000);
    const job = await dispatch(registry, { agent_name: "inspected", metadata: { note: "not-for-the-inspector" } });
    const done = await registry.store.untilFinal(job.id, 60_000);
    expect(done.status).toBe("completed");

    const wanted = {
      worker: (name: string) => name === "worker",
      slot: (name: string) => /^slot\.\d+$/.test(name),
      job: (name: string) => name === `job.${job.id}`,
      session: (name: string) => name.startsWith("session."),
      dispatch: (name: string) => name === `dispatch.${job.id}`,
    };
    const missing = () => {
      const actors = announced(server.received);
      const snapshots = snapshotsBySession(server.received);
      return Object.entries(wanted).flatMap(([kind, matches]) => {
        const ids = [...actors].filter(([name]) => matches(name)).map(([, sessionId]) => sessionId);
        return ids.some((id) => snapshots.has(id)) ? [] : [kind];
      });
    };
    await until(() => missing().length === 0, {
      label: "inspection events of every kind of actor",
      timeoutMs: 15_000,
    }).catch((error: Error) => {
      throw new Error(
        `${error.message}; missing: ${missing().join(", ")}; actors: ${[...announced(server.received).keys()].join(", ")}`,
      );
    });

    // The job's own story is there: its dispatch got the worker's answer and its final update, and
    // the worker's job actor ran.
    const actors = announced(server.received);
    const snapshots = snapshotsBySession(server.received);
    expect(snapshots.get(actors.get(`dispatch.${job.id}`) ?? "")).toEqual(
      expect.arrayContaining(["xstate.init", "answer", "job_update"]),
    );
    expect(snapshots.get(actors.get(`job.${job.id}`) ?? "")?.length).toBeGreaterThan(1);
    // The assignment carried a room token and the metadata; the serializer kept both in the process.
    const sent = JSON.stringify(server.received);
    expect(sent).not.toContain("not-for-the-inspector");
    expect(sent).not.toContain("roomToken");
    expect(sent).not.toContain('"token"');
  }, 120_000);

  it("the dashboard's actor events: a dispatcher's token, session and dispatch ids only, no payloads", async () => {
    const seen: string[] = [];
    const registry = await startRegistry({}, { inspect: { next: (event) => seen.push(event.type) } });
    // No worker serves this agent: the dispatch waits, and its events so far are kept.
    const job = await dispatch(registry, { agent_name: "nobody", metadata: { secret: "not-for-the-dashboard" } });
    const path = `/dashboard/actor-events?actor=dispatch.${job.id}`;
    const answer = await until(
      async () => {
        const response = await api(registry.url, registry.dispatcher, "GET", path);
        return response.status === 200 && response.body.events.length >= 2 ? response : undefined;
      },
      { label: "the dispatch's events" },
    );
    expect(answer.body).toMatchObject({ actor: `dispatch.${job.id}`, known: true, ended: false });
    expect(answer.body.events[0]).toMatchObject({ event: "xstate.init", from: null, to: "unassigned.pending" });
    expect(JSON.stringify(answer.body)).not.toContain("not-for-the-dashboard");
    // The caller's observer got the same actor's events alongside the dashboard's recorder.
    expect(seen).toEqual(expect.arrayContaining(["@xstate.actor", "@xstate.event", "@xstate.snapshot"]));
    // The token as a query parameter works as on the dashboard's stream.
    expect((await api(registry.url, undefined, "GET", `${path}&token=${registry.dispatcher}`)).status).toBe(200);

    expect((await api(registry.url, undefined, "GET", path)).status).toBe(401);
    expect((await api(registry.url, "not-a-token", "GET", path)).status).toBe(401);
    expect((await api(registry.url, await token("worker"), "GET", path)).status).toBe(401);
    const bad = await api(registry.url, registry.dispatcher, "GET", "/dashboard/actor-events?actor=worker");
    expect(bad).toMatchObject({ status: 400, body: { error: "actor must be session.<id> or dispatch.<id>" } });
    const long = await api(
      registry.url,
      registry.dispatcher,
      "GET",
      `/dashboard/actor-events?actor=dispatch.${"x".repeat(400)}`,
    );
    expect(long.status).toBe(400);
    const unknown = await api(
      registry.url,
      registry.dispatcher,
      "GET",
      "/dashboard/actor-events?actor=dispatch.job-none",
    );
    expect(unknown).toMatchObject({ status: 200, body: { known: false, events: [] } });
    expect((await api(registry.url, registry.dispatcher, "POST", path)).status).toBe(405);
  });
});
