import { describe, expect, it } from "vitest";
import { SimulatedClock } from "xstate";
import { type SessionEmitted, type SessionEvent, sessionMachine } from "../../machines/registry/session.ts";
import { createTracedActor } from "../support/actor.ts";

const timing = { registrationTimeoutMs: 1_000, pongTimeoutMs: 200, reconnectGraceMs: 500 };

function start() {
  const clock = new SimulatedClock();
  const emitted: SessionEmitted[] = [];
  const actor = createTracedActor(sessionMachine, { clock, input: { workerId: "w1", timing } });
  actor.on("*", (event) => emitted.push(event as SessionEmitted));
  actor.start();
  const capacity = () => (actor.getSnapshot().value as { live?: { capacity: string } }).live?.capacity;
  return { actor, clock, emitted, capacity, send: (e: SessionEvent) => actor.send(e) };
}

function live() {
  const t = start();
  t.send({ type: "registered", agentName: "A", maxProcesses: 4, loadThreshold: 0.75 });
  return t;
}

describe("session machine", () => {
  it("goes gone when no register comes in time, or the socket closes first", () => {
    const t = start();
    t.clock.increment(1_000);
    expect(t.actor.getSnapshot().status).toBe("done");
    expect(t.emitted).toEqual([{ type: "gone", workerId: "w1", reason: "never registered" }]);
    const closed = start();
    closed.send({ type: "socket_closed" });
    expect(closed.emitted.at(-1)).toMatchObject({ type: "gone", reason: "closed before registering" });
  });

  it("tracks capacity from status updates", () => {
    const t = live();
    expect(t.capacity()).toBe("full");
    t.send({ type: "status", status: "available", load: 0.1, jobCount: 1 });
    expect(t.capacity()).toBe("available");
    expect(t.emitted.filter((e) => e.type === "availability_changed")).toHaveLength(1);
    t.send({ type: "status", status: "available", load: 0.8, jobCount: 1 });
    expect(t.capacity()).toBe("full");
    t.send({ type: "status", status: "available", load: 0.2, jobCount: 4 });
    expect(t.capacity()).toBe("full");
    t.send({ type: "status", status: "full", load: 0.2, jobCount: 1 });
    expect(t.capacity()).toBe("full");
    t.send({ type: "status", status: "available", load: 0.2, jobCount: 1 });
    expect(t.emitted.filter((e) => e.type === "availability_changed")).toHaveLength(2);
    t.send({ type: "status", status: "draining", load: 0.2, jobCount: 1 });
    expect(t.capacity()).toBe("draining");
    const offline = live();
    offline.send({ type: "status", status: "offline", load: 0, jobCount: 0 });
    expect(offline.capacity()).toBe("draining");
    const drainingFromAvailable = live();
    drainingFromAvailable.send({ type: "status", status: "available", load: 0, jobCount: 0 });
    drainingFromAvailable.send({ type: "status", status: "draining", load: 0, jobCount: 0 });
    expect(drainingFromAvailable.capacity()).toBe("draining");
  });

  it("waits for a pong after a ping, is kept by one, and is gone without one", () => {
    const t = live();
    const liveness = () => (t.actor.getSnapshot().value as { live?: { liveness: string } }).live?.liveness;
    expect(liveness()).toBe("quiet");
    // Quiet lasts until the registry pings: no timer of its own.
    t.clock.increment(10_000);
    expect(liveness()).toBe("quiet");
    t.send({ type: "ping_sent" });
    expect(liveness()).toBe("awaitingPong");
    t.clock.increment(150);
    t.send({ type: "pong" });
    expect(liveness()).toBe("quiet");
    t.clock.increment(10_000);
    t.send({ type: "ping_sent" });
    t.clock.increment(199);
    expect(t.actor.getSnapshot().status).toBe("active");
    t.clock.increment(1);
    expect(t.emitted.at(-1)).toEqual({ type: "gone", workerId: "w1", reason: "stopped answering pings" });
    expect(t.emitted.filter((e) => e.type === "gone")).toHaveLength(1);
  });

  it("ignores a ping_sent while registering or disconnected", () => {
    const t = start();
    t.send({ type: "ping_sent" });
    expect(t.actor.getSnapshot().value).toBe("registering");
    const dropped = live();
    dropped.send({ type: "socket_closed" });
    dropped.send({ type: "ping_sent" });
    expect(dropped.actor.getSnapshot().value).toBe("disconnected");
  });

  it("keeps a dropped worker for the reconnect grace", () => {
    const t = live();
    t.send({ type: "socket_closed" });
    expect(t.actor.getSnapshot().value).toBe("disconnected");
    t.send({ type: "reattached" });
    expect(t.capacity()).toBe("full");
    t.send({ type: "reattached" });
    expect(t.capacity()).toBe("full");
    t.send({ type: "socket_closed" });
    t.clock.increment(500);
    expect(t.emitted.at(-1)).toMatchObject({ type: "gone", reason: "did not reconnect in time" });
  });

  it("closes on request, and ignores what a state does not expect", () => {
    const t = live();
    const events: SessionEvent[] = [
      { type: "registered", agentName: "A", maxProcesses: 1, loadThreshold: 1 },
      { type: "status", status: "available", load: 0, jobCount: 0 },
      { type: "pong" },
      { type: "reattached" },
    ];
    for (const e of events) t.send(e);
    const fresh = start();
    for (const e of [...events.slice(1)]) fresh.send(e);
    expect(fresh.actor.getSnapshot().value).toBe("registering");
    t.send({ type: "close" });
    expect(t.emitted.at(-1)).toMatchObject({ type: "gone", reason: "registry closing" });
    expect(t.actor.getSnapshot().status).toBe("done");
  });
});
