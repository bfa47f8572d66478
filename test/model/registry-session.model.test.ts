import { describe, expect, it } from "vitest";
import {
  type AnyStateMachine,
  assign,
  createActor,
  type InspectionEvent,
  SimulatedClock,
  type SnapshotFrom,
  setup,
} from "xstate";
import { createTestModel } from "xstate/graph";
import {
  type SessionEmitted,
  type SessionEvent,
  type SessionTiming,
  sessionMachine,
} from "../../machines/registry/session.ts";
import { createTracedActor } from "../support/actor.ts";
import { machineInventory, transitionKey } from "../support/coverage.ts";

const timing: SessionTiming = { registrationTimeoutMs: 10_000, pongTimeoutMs: 9_000, reconnectGraceMs: 10_000 };
const FLOOR = 50;
const MAX_PROCESSES = 4;
const LOAD_THRESHOLD = 0.75;

type Reported = "starting" | "available" | "full" | "draining" | "offline";
/** Why a worker that says "available" may still be full, or that it says so itself. */
type FullBecause = "status" | "load" | "jobs" | "starting";

interface ModelContext {
  /** What the worker last reported, as far as capacity is concerned. */
  reported: Reported;
  goneReason: string | null;
}

type ModelEvent =
  | { type: "REGISTER" }
  | { type: "MERGE" }
  | { type: "REGISTRATION_TIMEOUT" }
  | { type: "SOCKET_CLOSED" }
  | { type: "DEPART" }
  | { type: "STATUS_AVAILABLE" }
  | { type: "STATUS_FULL"; because: FullBecause }
  | { type: "STATUS_DRAINING" }
  | { type: "STATUS_OFFLINE" }
  | { type: "PING" }
  | { type: "PONG" }
  | { type: "PONG_TIMEOUT" }
  | { type: "REATTACH" }
  | { type: "GRACE_TIMEOUT" }
  | { type: "CLOSE" };

const goneBecause = (reason: string) => ({ type: "goneBecause", params: { reason } }) as const;
const draining = ({ context }: { context: ModelContext }) =>
  context.reported === "draining" || context.reported === "offline";
const hasRoom = ({ context }: { context: ModelContext }) => context.reported === "available";
/** A status report updates what the worker said, in every state but the final ones. */
const reports = {
  STATUS_AVAILABLE: { actions: "reportAvailable" },
  STATUS_FULL: { actions: "reportFull" },
  STATUS_DRAINING: { actions: "reportDraining" },
  STATUS_OFFLINE: { actions: "reportOffline" },
} as const;

/**
 * A worker's session as the registry sees it. No timers: each deadline is an abstract event the
 * driver plays on the real machine's clock. Capacity follows the last report (the model keeps only
 * what matters: room, full, draining or offline); liveness follows pings and pongs.
 */
const sessionModel = setup({
  types: { context: {} as ModelContext, events: {} as ModelEvent },
  actions: {
    goneBecause: assign({ goneReason: (_, params: { reason: string }) => params.reason }),
    reportAvailable: assign({ reported: "available" }),
    reportFull: assign({
      reported: ({ event }) => (event.type === "STATUS_FULL" && event.because === "starting" ? "starting" : "full"),
    }),
    reportDraining: assign({ reported: "draining" }),
    reportOffline: assign({ reported: "offline" }),
  },
}).createMachine({
  id: "sessionModel",
  context: { reported: "starting", goneReason: null },
  initial: "registering",
  states: {
    registering: {
      on: {
        ...reports,
        REGISTER: "live",
        MERGE: "merged",
        REGISTRATION_TIMEOUT: { target: "gone", actions: goneBecause("never registered") },
        SOCKET_CLOSED: { target: "gone", actions: goneBecause("closed before registering") },
        DEPART: { target: "gone", actions: goneBecause("closed before registering") },
        CLOSE: { target: "gone", actions: goneBecause("registry closing") },
      },
    },
    live: {
      type: "parallel",
      on: {
        ...reports,
        SOCKET_CLOSED: "disconnected",
        // Only a worker that said it drains (or goes offline) has departed when it closes normally.
        DEPART: [
          {
            guard: draining,
            target: "gone",
            actions: goneBecause("drained and left"),
          },
          { target: "disconnected" },
        ],
        REATTACH: { target: "live", reenter: true },
        CLOSE: { target: "gone", actions: goneBecause("registry closing") },
      },
      states: {
        capacity: {
          initial: "full",
          states: {
            full: {
              always: [
                { guard: draining, target: "draining" },
                { guard: hasRoom, target: "available" },
              ],
            },
            available: {
              always: [
                { guard: draining, target: "draining" },
                { guard: ({ context }) => !hasRoom({ context }), target: "full" },
              ],
            },
            draining: {},
          },
        },
        liveness: {
          initial: "quiet",
          states: {
            quiet: { on: { PING: "awaitingPong" } },
            awaitingPong: {
              on: {
                PONG: "quiet",
                PONG_TIMEOUT: { target: "#sessionModel.gone", actions: goneBecause("stopped answering pings") },
              },
            },
          },
        },
      },
    },
    disconnected: {
      on: {
        ...reports,
        REATTACH: "live",
        GRACE_TIMEOUT: { target: "gone", actions: goneBecause("did not reconnect in time") },
        CLOSE: { target: "gone", actions: goneBecause("registry closing") },
      },
    },
    gone: { type: "final" },
    merged: { type: "final" },
  },
});

type ModelSnapshot = SnapshotFrom<typeof sessionModel>;
type SessionSnapshot = SnapshotFrom<typeof sessionMachine>;
/** An executor's step: the model state the event leads to, and the event (its payload untyped there). */
type Step = { state: ModelSnapshot; event: { type: string } };

const isAvailable = (value: unknown) =>
  typeof value === "object" &&
  value !== null &&
  (value as { live?: { capacity?: string } }).live?.capacity === "available";

/** What the worker reports for each model status event. */
function statusOf(event: ModelEvent): Extract<SessionEvent, { type: "status" }> {
  switch (event.type) {
    case "STATUS_AVAILABLE":
      return { type: "status", status: "available", load: 0.1, jobCount: 1 };
    case "STATUS_FULL":
      if (event.because === "status") return { type: "status", status: "full", load: 0.1, jobCount: 1 };
      if (event.because === "load") return { type: "status", status: "available", load: 0.9, jobCount: 1 };
      if (event.because === "jobs") return { type: "status", status: "available", load: 0.1, jobCount: MAX_PROCESSES };
      return { type: "status", status: "starting", load: 0, jobCount: 0 };
    case "STATUS_DRAINING":
      return { type: "status", status: "draining", load: 0.1, jobCount: 1 };
    default:
      return { type: "status", status: "offline", load: 0, jobCount: 0 };
  }
}

/**
 * One path's driver: the real session machine (traced, simulated clock) and what the path made it
 * do: whether it registered, the job count last reported, and the availability epoch it must have
 * now (the floor, plus one per entry into available and one per drop in the job count).
 */
function createDriver() {
  const clock = new SimulatedClock();
  const emitted: SessionEmitted[] = [];
  const actor = createTracedActor(sessionMachine, {
    clock,
    input: { workerId: "conn-1", timing, epochFloor: FLOOR },
  });
  actor.on("*", (event) => emitted.push(event as SessionEmitted));
  actor.start();
  const snap = () => actor.getSnapshot() as SessionSnapshot;

  let current: ModelSnapshot | undefined;
  let registered = false;
  let jobCount = 0;
  let lastStatus: Extract<SessionEvent, { type: "status" }> = {
    type: "status",
    status: "starting",
    load: 0,
    jobCount: 0,
  };
  let epoch = FLOOR;
  let enteredAvailable = false;
  let disconnectedAt = 0;

  /** A deadline, played in two steps: nothing happens a millisecond early. */
  const elapse = (ms: number) => {
    const before = JSON.stringify(snap().value);
    const count = emitted.length;
    clock.increment(ms - 1);
    expect(JSON.stringify(snap().value)).toBe(before);
    expect(emitted).toHaveLength(count);
    clock.increment(1);
  };

  const expectCommon = (model: ModelSnapshot) => {
    expect(snap().status).not.toBe("error");
    expect(snap().context.epoch).toBe(epoch);
    const announced = emitted.filter((e) => e.type === "availability_changed");
    if (enteredAvailable) {
      expect(emitted.at(-1)).toEqual({ type: "availability_changed", workerId: "w1", epoch });
    }
    // Announcements only go up.
    const epochs = announced.map((e) => e.epoch);
    expect(epochs).toEqual([...new Set(epochs)].sort((a, b) => a - b));
    expect(snap().context).toMatchObject({ reportedStatus: lastStatus.status, jobCount, inflight: 0 });
    // The model's view of the report: full by load or by jobs is a worker that still says "available".
    const full = lastStatus.status === "available" && (lastStatus.load >= LOAD_THRESHOLD || jobCount >= MAX_PROCESSES);
    expect(full ? "full" : lastStatus.status).toBe(model.context.reported);
    expect(snap().context.workerId).toBe(registered ? "w1" : "conn-1");
  };

  const states = {
    registering: (model: ModelSnapshot) => {
      expect(snap().value).toBe("registering");
      expect(snap().status).toBe("active");
      expect(emitted).toEqual([]);
      expectCommon(model);
    },
    live: (model: ModelSnapshot) => {
      // The model's value has the real machine's shape: capacity and liveness, side by side.
      expect(snap().value).toEqual(model.value);
      expect(snap().status).toBe("active");
      expect(emitted.filter((e) => e.type === "gone")).toEqual([]);
      expect(snap().context).toMatchObject({ agentName: "A", maxProcesses: MAX_PROCESSES });
      expectCommon(model);
    },
    disconnected: (model: ModelSnapshot) => {
      expect(snap().value).toBe("disconnected");
      expect(snap().status).toBe("active");
      expectCommon(model);
    },
    gone: (model: ModelSnapshot) => {
      expect(snap().value).toBe("gone");
      expect(snap().status).toBe("done");
      const reason = model.context.goneReason;
      expect(snap().context.goneReason).toBe(reason);
      expect(emitted.filter((e) => e.type === "gone")).toEqual([
        { type: "gone", workerId: registered ? "w1" : "conn-1", reason },
      ]);
      expect(emitted.at(-1)?.type).toBe("gone");
      expectCommon(model);
    },
    merged: (model: ModelSnapshot) => {
      expect(snap().value).toBe("merged");
      expect(snap().status).toBe("done");
      expect(emitted).toEqual([]);
      expectCommon(model);
    },
  };

  /** Plays one event, then works out the epoch the machine must be at. */
  const play =
    (perform: (step: Step) => void) =>
    (step: Step): void => {
      const before = current?.value;
      enteredAvailable = false;
      perform(step);
      const after = step.state.value;
      if (isAvailable(after) && (!isAvailable(before) || step.event.type === "REATTACH")) {
        enteredAvailable = true;
        epoch++;
      }
    };
  const report = (event: { type: string }) => {
    const status = statusOf(event as ModelEvent);
    if (status.jobCount < jobCount) epoch++;
    jobCount = status.jobCount;
    lastStatus = status;
    actor.send(status);
  };

  const events = {
    REGISTER: play(() => {
      actor.send({
        type: "registered",
        workerId: "w1",
        agentName: "A",
        maxProcesses: MAX_PROCESSES,
        loadThreshold: LOAD_THRESHOLD,
      });
      registered = true;
    }),
    MERGE: play(() => actor.send({ type: "merged" })),
    REGISTRATION_TIMEOUT: play(() => elapse(timing.registrationTimeoutMs)),
    SOCKET_CLOSED: play(() => {
      actor.send({ type: "socket_closed" });
      disconnectedAt = clock.now();
    }),
    DEPART: play(() => {
      actor.send({ type: "socket_closed", departed: true });
      disconnectedAt = clock.now();
    }),
    STATUS_AVAILABLE: play(({ event }) => report(event)),
    STATUS_FULL: play(({ event }) => report(event)),
    STATUS_DRAINING: play(({ event }) => report(event)),
    STATUS_OFFLINE: play(({ event }) => report(event)),
    PING: play(() => actor.send({ type: "ping_sent" })),
    PONG: play(() => actor.send({ type: "pong" })),
    PONG_TIMEOUT: play(() => elapse(timing.pongTimeoutMs)),
    REATTACH: play(() => actor.send({ type: "reattached" })),
    GRACE_TIMEOUT: play(() => elapse(disconnectedAt + timing.reconnectGraceMs - clock.now())),
    CLOSE: play(() => actor.send({ type: "close" })),
  };

  /** Each state check also records where the path is, for the next event. */
  const tracked = Object.fromEntries(
    Object.entries(states).map(([key, check]) => [
      key,
      (model: ModelSnapshot) => {
        check(model);
        current = model;
      },
    ]),
  ) as typeof states;

  /** After the path: a final session stays as it is, whatever comes late. */
  const expectSettledAfterPath = () => {
    if (snap().status !== "done") return;
    const count = emitted.length;
    clock.increment(timing.registrationTimeoutMs + timing.pongTimeoutMs + timing.reconnectGraceMs);
    expect(emitted).toHaveLength(count);
  };

  return { states: tracked, events, expectSettledAfterPath };
}

const model = createTestModel(sessionModel, {
  events: [
    { type: "STATUS_FULL", because: "status" },
    { type: "STATUS_FULL", because: "load" },
    { type: "STATUS_FULL", because: "jobs" },
    { type: "STATUS_FULL", because: "starting" },
  ],
});
const paths = model.getShortestPaths();

/** The transitions of `machine` taken when each path's events are played on it (keys as in coverage.ts). */
function transitionsTaken(machine: AnyStateMachine, eventLists: ModelEvent[][]): Set<string> {
  const taken = new Set<string>();
  const inspect = (event: InspectionEvent) => {
    if (event.type !== "@xstate.microstep") return;
    type T = { source: AnyStateMachine["root"]; eventType: string };
    for (const t of (event as unknown as { _transitions: T[] })._transitions ?? []) {
      if (typeof t.eventType !== "string") continue;
      const list = t.eventType === "" ? (t.source.always ?? []) : (t.source.transitions.get(t.eventType) ?? []);
      taken.add(transitionKey(t.source.id, t.eventType, list.indexOf(t as never)));
    }
  };
  for (const events of eventLists) {
    const a = createActor(machine, { inspect }).start();
    for (const e of events) a.send(e);
    a.stop();
  }
  return taken;
}

describe("session (model-based)", () => {
  it("the shortest paths reach every state and take every transition of the model", () => {
    const inventory = machineInventory(sessionModel);
    const reached = new Set(
      paths.flatMap((p) => p.steps.flatMap((s) => (s.state as ModelSnapshot)._nodes.map((n) => n.id))),
    );
    expect([...reached].sort()).toEqual([...inventory.states].sort());
    const taken = transitionsTaken(
      sessionModel,
      paths.map((p) => p.steps.slice(1).map((s) => s.event)),
    );
    expect(inventory.transitions.filter((t) => !taken.has(t))).toEqual([]);
  });

  it("the paths reach gone for every reason, and available again after a reconnect", () => {
    const reasons = new Set(paths.map((p) => p.state.context.goneReason).filter((r) => r !== null));
    expect([...reasons].sort()).toEqual(
      [
        "closed before registering",
        "did not reconnect in time",
        "drained and left",
        "never registered",
        "registry closing",
        "stopped answering pings",
      ].sort(),
    );
    expect(
      paths.some((p) => p.steps.some((s, i) => s.event.type === "REATTACH" && i > 0 && isAvailable(s.state.value))),
    ).toBe(true);
  });

  for (const path of paths) {
    it(path.description, async () => {
      const driver = createDriver();
      await path.test({ states: driver.states, events: driver.events });
      driver.expectSettledAfterPath();
    });
  }
});
