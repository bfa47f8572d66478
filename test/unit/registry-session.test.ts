import { describe, expect, it } from "vitest";
import {
  type SessionEvent,
  type SessionTiming,
  sessionMachine,
  type WorkerReportedStatus,
} from "../../machines/registry/session.ts";
import { runMachine } from "../support/machine-harness.ts";

const timing: SessionTiming = { registrationTimeoutMs: 1_000, pongTimeoutMs: 200, reconnectGraceMs: 500 };
const FLOOR = 10;

/** The session machine alone, on a simulated clock, with every emitted event recorded in order. */
function session(epochFloor = FLOOR) {
  const t = runMachine(sessionMachine, { input: { workerId: "conn-1", timing, epochFloor } });
  const live = () => (t.snapshot().value as { live?: { capacity: string; liveness: string } }).live;
  return {
    ...t,
    value: () => t.snapshot().value,
    context: () => t.snapshot().context,
    status: () => t.snapshot().status,
    capacity: () => live()?.capacity,
    liveness: () => live()?.liveness,
    gone: () => t.emittedOf("gone"),
    announced: () => t.emittedOf("availability_changed").map((e) => e.epoch),
    report: (status: WorkerReportedStatus, jobCount = 0, load = 0) =>
      t.send({ type: "status", status, load, jobCount }),
  };
}
type Session = ReturnType<typeof session>;

const registered = {
  type: "registered",
  workerId: "w1",
  agentName: "A",
  maxProcesses: 4,
  loadThreshold: 0.75,
} as const;

function live(epochFloor = FLOOR) {
  const t = session(epochFloor);
  t.send(registered);
  return t;
}

function available(epochFloor = FLOOR) {
  const t = live(epochFloor);
  t.report("available", 1, 0.1);
  return t;
}

function disconnected() {
  const t = available();
  t.send({ type: "socket_closed" });
  return t;
}

function expectGone(t: Session, reason: string, workerId = "w1") {
  expect(t.value()).toBe("gone");
  expect(t.status()).toBe("done");
  expect(t.context().goneReason).toBe(reason);
  expect(t.gone()).toEqual([{ type: "gone", workerId, reason }]);
}

describe("session machine: registration", () => {
  it("starts registering under the connection id, at the epoch floor, with nothing in flight", () => {
    const t = session();
    expect(t.value()).toBe("registering");
    expect(t.context()).toMatchObject({
      workerId: "conn-1",
      reportedStatus: "starting",
      jobCount: 0,
      inflight: 0,
      epoch: FLOOR,
      goneReason: "",
    });
    expect(t.emitted).toEqual([]);
    expect(session(0).context().epoch).toBe(0);
  });

  it("registers under the worker's id and starts full and quiet (a starting worker takes no offers)", () => {
    const t = live();
    expect(t.value()).toEqual({ live: { capacity: "full", liveness: "quiet" } });
    expect(t.context()).toMatchObject({ workerId: "w1", agentName: "A", maxProcesses: 4, loadThreshold: 0.75 });
    expect(t.context().epoch).toBe(FLOOR);
    expect(t.emitted).toEqual([]);
  });

  it("a status that came before the registration counts once it registers", () => {
    const t = session();
    t.report("available", 0, 0);
    expect(t.value()).toBe("registering");
    t.send(registered);
    expect(t.capacity()).toBe("available");
    expect(t.announced()).toEqual([FLOOR + 1]);
  });

  it("is gone when no registration comes in time, or the socket closes first", () => {
    const t = session();
    t.elapse(timing.registrationTimeoutMs);
    expectGone(t, "never registered", "conn-1");

    const closed = session();
    closed.send({ type: "socket_closed", departed: true });
    expectGone(closed, "closed before registering", "conn-1");
  });

  it("a reconnect merges into the worker's existing session: done, nothing announced", () => {
    const t = session();
    t.send({ type: "merged" });
    expect(t.value()).toBe("merged");
    expect(t.status()).toBe("done");
    expect(t.emitted).toEqual([]);
    // No timer left behind.
    t.clock.increment(10 * timing.registrationTimeoutMs);
    expect(t.emitted).toEqual([]);
  });

  it("while registering, liveness and reconnect events change nothing", () => {
    const t = session();
    for (const e of [{ type: "ping_sent" }, { type: "pong" }, { type: "reattached" }] as SessionEvent[]) {
      t.send(e);
      expect(t.value()).toBe("registering");
    }
    expect(t.emitted).toEqual([]);
  });

  it("once registered, another registered or merged changes nothing", () => {
    const t = available();
    const before = t.context();
    t.send({ ...registered, workerId: "w2", agentName: "B", maxProcesses: 1 });
    t.send({ type: "merged" });
    expect(t.value()).toEqual({ live: { capacity: "available", liveness: "quiet" } });
    expect(t.context()).toEqual(before);
  });
});

describe("session machine: capacity", () => {
  it("is available only while the worker says so and has room by load and by jobs", () => {
    const t = live();
    t.report("available", 1, 0.1);
    expect(t.capacity()).toBe("available");
    t.report("available", 1, 0.75);
    expect(t.capacity()).toBe("full");
    t.report("available", 1, 0.1);
    expect(t.capacity()).toBe("available");
    t.report("available", 4, 0.1);
    expect(t.capacity()).toBe("full");
    t.report("available", 3, 0.1);
    expect(t.capacity()).toBe("available");
    t.report("full", 3, 0.1);
    expect(t.capacity()).toBe("full");
    t.report("available", 3, 0.1);
    t.report("starting", 3, 0.1);
    expect(t.capacity()).toBe("full");
    expect(t.context()).toMatchObject({ reportedStatus: "starting", jobCount: 3, load: 0.1 });
  });

  it("drains from full or available, for draining or offline, and stays draining", () => {
    for (const s of ["draining", "offline"] as const) {
      const fromFull = live();
      fromFull.report(s);
      expect(fromFull.capacity()).toBe("draining");
      const fromAvailable = available();
      fromAvailable.report(s);
      expect(fromAvailable.capacity()).toBe("draining");
      fromAvailable.report("available");
      expect(fromAvailable.capacity()).toBe("draining");
    }
  });

  it("counts offers out: reserved and released in any state, never below zero", () => {
    const t = session();
    t.send({ type: "offer_reserved" });
    expect(t.context().inflight).toBe(1);
    t.send(registered);
    t.send({ type: "offer_reserved" });
    t.send({ type: "offer_reserved" });
    expect(t.context().inflight).toBe(3);
    t.send({ type: "offer_released" });
    expect(t.context().inflight).toBe(2);
    t.send({ type: "socket_closed" });
    t.send({ type: "offer_released" });
    t.send({ type: "offer_released" });
    t.send({ type: "offer_released" });
    expect(t.context().inflight).toBe(0);
    expect(t.value()).toBe("disconnected");
    // Offers do not change capacity or the epoch.
    expect(t.context().epoch).toBe(FLOOR);
  });
});

describe("session machine: the availability epoch (c)", () => {
  it("starts at the floor and goes up by one on each entry to available, announced with it", () => {
    const t = live(41);
    expect(t.context().epoch).toBe(41);
    t.report("available", 1);
    expect(t.context().epoch).toBe(42);
    expect(t.emitted).toEqual([{ type: "availability_changed", workerId: "w1", epoch: 42 }]);
    // Staying available is no new availability.
    t.report("available", 1, 0.5);
    expect(t.context().epoch).toBe(42);
    t.report("full", 1);
    expect(t.context().epoch).toBe(42);
    t.report("available", 1);
    expect(t.context().epoch).toBe(43);
    expect(t.announced()).toEqual([42, 43]);
  });

  it("goes up when the job count drops, in any state, and only then", () => {
    const t = session();
    t.report("starting", 2);
    t.report("starting", 1);
    expect(t.context().epoch).toBe(FLOOR + 1);
    t.send(registered);
    t.report("full", 4);
    expect(t.context().epoch).toBe(FLOOR + 1);
    t.report("full", 3);
    expect(t.context().epoch).toBe(FLOOR + 2);
    expect(t.capacity()).toBe("full");
    // A drop that also makes it available: one for fewer jobs, one for the availability.
    t.report("available", 2);
    expect(t.context().epoch).toBe(FLOOR + 4);
    expect(t.announced()).toEqual([FLOOR + 4]);
    t.report("available", 3);
    expect(t.context().epoch).toBe(FLOOR + 4);
    t.send({ type: "socket_closed" });
    t.report("available", 0);
    expect(t.context().epoch).toBe(FLOOR + 5);
  });

  it("a reattached worker that is still available announces a new epoch", () => {
    const t = disconnected();
    const epoch = t.context().epoch;
    t.send({ type: "reattached" });
    expect(t.capacity()).toBe("available");
    expect(t.context().epoch).toBe(epoch + 1);
    expect(t.announced().at(-1)).toBe(epoch + 1);
  });

  it("never goes down, whatever happens", () => {
    const t = session(7);
    const steps: SessionEvent[] = [
      { type: "status", status: "available", load: 0, jobCount: 3 },
      registered,
      { type: "status", status: "available", load: 0, jobCount: 0 },
      { type: "status", status: "full", load: 0, jobCount: 5 },
      { type: "offer_reserved" },
      { type: "status", status: "available", load: 0.9, jobCount: 1 },
      { type: "status", status: "available", load: 0, jobCount: 1 },
      { type: "reattached" },
      { type: "ping_sent" },
      { type: "pong" },
      { type: "socket_closed" },
      { type: "status", status: "available", load: 0, jobCount: 0 },
      { type: "reattached" },
      { type: "status", status: "draining", load: 0, jobCount: 2 },
      { type: "status", status: "available", load: 0, jobCount: 1 },
      { type: "offer_released" },
    ];
    const epochs = [t.context().epoch];
    for (const e of steps) {
      t.send(e);
      epochs.push(t.context().epoch);
    }
    expect(epochs[0]).toBe(7);
    expect(epochs).toEqual([...epochs].sort((a, b) => a - b));
    expect(epochs.at(-1)).toBeGreaterThan(7);
    // Every announcement carries the epoch it was made at, and they only go up.
    expect(t.announced()).toEqual([...new Set(t.announced())].sort((a, b) => a - b));
  });
});

describe("session machine: liveness", () => {
  it("waits for a pong after a ping, is kept by one, and is gone without one", () => {
    const t = live();
    expect(t.liveness()).toBe("quiet");
    // Quiet lasts until the registry pings: no timer of its own.
    t.clock.increment(100_000);
    expect(t.liveness()).toBe("quiet");
    t.send({ type: "pong" });
    expect(t.liveness()).toBe("quiet");
    t.send({ type: "ping_sent" });
    expect(t.liveness()).toBe("awaitingPong");
    t.clock.increment(150);
    t.send({ type: "pong" });
    expect(t.liveness()).toBe("quiet");
    t.clock.increment(10_000);
    t.send({ type: "ping_sent" });
    t.clock.increment(100);
    // A second ping while waiting does not restart the deadline.
    t.send({ type: "ping_sent" });
    t.clock.increment(99);
    expect(t.status()).toBe("active");
    t.clock.increment(1);
    expectGone(t, "stopped answering pings");
  });

  it("capacity and liveness are independent", () => {
    const t = available();
    t.send({ type: "ping_sent" });
    t.report("full", 4);
    expect(t.value()).toEqual({ live: { capacity: "full", liveness: "awaitingPong" } });
    t.send({ type: "pong" });
    t.report("available", 1);
    expect(t.value()).toEqual({ live: { capacity: "available", liveness: "quiet" } });
  });
});

describe("session machine: connection", () => {
  it("a dropped worker keeps its session for the reconnect grace; reattached, it is live again", () => {
    const t = available();
    t.send({ type: "ping_sent" });
    t.send({ type: "socket_closed" });
    expect(t.value()).toBe("disconnected");
    // The pong deadline went with the connection; the grace is the only clock now.
    for (const e of [{ type: "ping_sent" }, { type: "pong" }, { type: "socket_closed" }] as SessionEvent[]) {
      t.send(e);
      expect(t.value()).toBe("disconnected");
    }
    t.clock.increment(timing.reconnectGraceMs - 1);
    t.send({ type: "reattached" });
    expect(t.value()).toEqual({ live: { capacity: "available", liveness: "quiet" } });
    t.clock.increment(timing.reconnectGraceMs);
    expect(t.status()).toBe("active");
    expect(t.gone()).toEqual([]);
  });

  it("is gone when it does not reconnect in time", () => {
    const t = disconnected();
    t.elapse(timing.reconnectGraceMs);
    expectGone(t, "did not reconnect in time");
  });

  it("reattached while live starts over: quiet, capacity from the last status", () => {
    const t = live();
    t.report("full", 4);
    t.send({ type: "ping_sent" });
    t.send({ type: "reattached" });
    expect(t.value()).toEqual({ live: { capacity: "full", liveness: "quiet" } });
    // The old pong deadline is gone with the state it belonged to.
    t.clock.increment(timing.pongTimeoutMs * 10);
    expect(t.status()).toBe("active");

    const draining = live();
    draining.report("draining", 1);
    draining.send({ type: "reattached" });
    expect(draining.capacity()).toBe("draining");
  });

  it("a draining worker that closes normally has departed; any other close waits for a reconnect", () => {
    const left = live();
    left.report("draining", 0);
    left.send({ type: "socket_closed", departed: true });
    expectGone(left, "drained and left");

    const notDraining = available();
    notDraining.send({ type: "socket_closed", departed: true });
    expect(notDraining.value()).toBe("disconnected");

    const abnormal = live();
    abnormal.report("draining", 0);
    abnormal.send({ type: "socket_closed" });
    expect(abnormal.value()).toBe("disconnected");

    // A worker that said it goes offline and closes normally has left too.
    const offline = live();
    offline.report("offline", 0);
    offline.send({ type: "socket_closed", departed: true });
    expectGone(offline, "drained and left");
  });

  it("close ends it from registering, live and disconnected, once", () => {
    for (const [make, workerId] of [
      [() => session(), "conn-1"],
      [() => available(), "w1"],
      [() => disconnected(), "w1"],
    ] as const) {
      const t = make();
      t.send({ type: "close" });
      expectGone(t, "registry closing", workerId);
      t.clock.increment(100_000);
      expect(t.gone()).toHaveLength(1);
    }
  });
});

describe("session machine: robustness", () => {
  it("no event after any other, from any state, puts it in error; gone is announced at most once", () => {
    const events: SessionEvent[] = [
      registered,
      { type: "merged" },
      { type: "offer_reserved" },
      { type: "offer_released" },
      { type: "status", status: "available", load: 0, jobCount: 0 },
      { type: "status", status: "draining", load: 0, jobCount: 0 },
      { type: "ping_sent" },
      { type: "pong" },
      { type: "socket_closed", departed: true },
      { type: "socket_closed" },
      { type: "reattached" },
    ];
    for (const make of [() => session(), () => available(), () => disconnected()]) {
      for (const first of events) {
        const t = make();
        let epoch = t.context().epoch;
        for (const e of [first, ...events]) {
          if (t.status() !== "active") break;
          t.send(e);
          expect(t.status()).not.toBe("error");
          expect(t.context().epoch).toBeGreaterThanOrEqual(epoch);
          epoch = t.context().epoch;
        }
        t.clock.increment(timing.registrationTimeoutMs + timing.reconnectGraceMs + timing.pongTimeoutMs);
        expect(t.gone().length).toBeLessThanOrEqual(1);
        expect(t.status()).not.toBe("error");
      }
    }
  });
});
