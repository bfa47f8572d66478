import type { Server } from "node:http";
import { pino } from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { type AnyActorRef, type InspectionEvent, SimulatedClock } from "xstate";
import { ActorEventLog } from "../../src/observability/actor-events.ts";
import { Options } from "../../src/options.ts";
import { boundPort, closeServer, startHealthServer } from "../../src/worker/http-server.ts";
import { createWorkerActor, createWorkerActorEvents } from "../../src/worker/worker-actor.ts";
import { cooperativeBehaviour, FakeProcesses } from "../support/fake-process.ts";

const silent = pino({ level: "silent" });

/** A worker on fake processes that runs job j1 (whose metadata holds a secret) and stops. */
async function runWorker(log: ActorEventLog, inspect: Options["inspect"] = false) {
  const fakes = new FakeProcesses(cooperativeBehaviour());
  const clock = new SimulatedClock();
  const actor = createWorkerActor(
    new Options({ inspect }, {}),
    { process: fakes.logic },
    { logger: silent, clock, random: () => 0.5, actorEvents: log },
  );
  actor.start();
  actor.send({ type: "worker.run", spec: { jobId: "j1", metadata: { secret: "not-for-the-log" } } });
  clock.increment(1_000);
  actor.send({ type: "worker.stop" });
  clock.increment(120_000);
  await new Promise((resolve) => setImmediate(resolve));
  return actor;
}

describe("a worker's actor event log", () => {
  it("keeps the root, each slot and each job by id, without payloads, and their ends", async () => {
    const log = createWorkerActorEvents(() => 0);
    const actor = await runWorker(log);
    expect(actor.getSnapshot().status).toBe("done");

    const worker = log.recent("worker");
    expect(worker?.events[0]).toMatchObject({ event: "xstate.init", from: null });
    expect(worker?.events.some((e) => e.event === "worker.stop")).toBe(true);
    expect(worker?.ended).toBe(true);

    const slot = log.recent("slot.0");
    expect(slot?.events.some((e) => e.event === "slot.assign" && e.to.includes("work.busy"))).toBe(true);
    expect(slot?.ended).toBe(true);

    const job = log.recent("job.j1");
    expect(job?.events.map((e) => e.to)).toContain("running");
    expect(job?.ended).toBe(true);

    // Only those: not a slot's process, a job's offer decision or any other grandchild.
    expect(log.size).toBe(3);
    expect(JSON.stringify([worker, slot, job])).not.toContain("not-for-the-log");
  });

  it("leaves the user's inspect observer every event it got before, children's children included", async () => {
    const seen: InspectionEvent[] = [];
    const withLog = await runWorker(
      createWorkerActorEvents(() => 0),
      (event) => seen.push(event),
    );
    const alone: InspectionEvent[] = [];
    const withoutLog = await runWorker(
      new ActorEventLog(
        () => 0,
        {},
        () => undefined,
      ),
      (event) => alone.push(event),
    );
    expect(withLog.getSnapshot().status).toBe("done");
    expect(withoutLog.getSnapshot().status).toBe("done");
    const ids = (events: InspectionEvent[]) => new Set(events.map((e) => (e.actorRef as AnyActorRef).id));
    expect(ids(seen)).toEqual(ids(alone));
    expect(ids(seen)).toContain("process");
    expect(seen.map((e) => e.type)).toEqual(alone.map((e) => e.type));
  });

  it("starts a new list when a later actor takes an ended one's id", async () => {
    const log = createWorkerActorEvents(() => 0);
    await runWorker(log);
    const before = log.recent("worker")?.events.length ?? 0;
    await runWorker(log);
    const after = log.recent("worker");
    expect(after?.ended).toBe(true);
    expect(after?.events[0]?.event).toBe("xstate.init");
    expect(after?.events.length).toBe(before);
  });
});

describe("GET /dashboard/actor-events on a worker's server", () => {
  const servers: Server[] = [];
  afterEach(async () => {
    await Promise.all(servers.splice(0).map(closeServer));
  });

  async function serve(actorEvents?: ActorEventLog): Promise<string> {
    const server = await startHealthServer(
      "127.0.0.1",
      0,
      {
        ready: () => true,
        worker: () => ({}),
        metrics: async () => ({ contentType: "text/plain", body: "" }),
        ...(actorEvents ? { actorEvents } : {}),
      },
      silent,
    );
    servers.push(server);
    return `http://127.0.0.1:${boundPort(server)}/dashboard/actor-events`;
  }

  it("answers a malformed or missing actor id with 400", async () => {
    const url = await serve(createWorkerActorEvents());
    for (const query of [
      "",
      "?actor=",
      "?actor=registryLink",
      "?actor=slot.x",
      "?actor=session.abc",
      "?actor=job.",
      `?actor=job.${"x".repeat(400)}`,
      "?actor=worker%20",
    ]) {
      const res = await fetch(`${url}${query}`);
      expect({ query, status: res.status }).toEqual({ query, status: 400 });
      expect(typeof ((await res.json()) as { error?: unknown }).error).toBe("string");
    }
  });

  it("answers a well-formed id with its events, or known: false for one it does not keep", async () => {
    const log = createWorkerActorEvents(() => 7);
    await runWorker(log);
    const url = await serve(log);
    const slot = await fetch(`${url}?actor=slot.0`);
    expect(slot.status).toBe(200);
    const body = (await slot.json()) as { actor: string; known: boolean; ended: boolean; events: { at: number }[] };
    expect(body).toMatchObject({ actor: "slot.0", known: true, ended: true });
    expect(body.events[0]?.at).toBe(7);
    const unknown = await fetch(`${url}?actor=job.never`);
    expect(await unknown.json()).toEqual({ actor: "job.never", known: false, ended: false, events: [] });
    expect((await fetch(url, { method: "POST" })).status).toBe(405);
  });

  it("is not there when the server has no log", async () => {
    const url = await serve();
    expect((await fetch(`${url}?actor=worker`)).status).toBe(404);
  });
});
