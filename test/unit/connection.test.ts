import { afterEach, beforeEach, describe, expect, it, type MockInstance, vi } from "vitest";
import { type AnyActorRef, fromCallback, type SnapshotFrom } from "xstate";
import {
  type ConnectionEmitted,
  type ConnectionEvent,
  type ConnectionInput,
  type ConnectionTiming,
  connectionMachine,
  MAX_RECENT_FINAL,
  type SocketCommand,
  type SocketEvent,
} from "../../machines/connection.ts";
import type { JobUpdate, WorkerStatus } from "../../machines/shared.ts";
import {
  type JobAssignment,
  PROTOCOL_VERSION,
  type RegistryMessage,
  registryMessage,
  type WorkerMessage,
  workerMessage,
} from "../../src/protocol/registry.ts";
import {
  parseRegistryFrame,
  specFromAssignment,
  toSocketEvent,
  toWorkerMessage,
} from "../../src/worker/registry-wire.ts";
import { hostChild } from "../support/machine-harness.ts";

/*
 * The connection machine's one unit suite. The machine speaks machine events (SocketCommand,
 * SocketEvent); the fake socket below puts its commands on the wire with the same pure translation
 * the real socket uses (src/worker/registry-wire.ts), so the tests read what the registry would get.
 * The translation's own cases are at the end.
 */

// ---------------------------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------------------------

const timing: ConnectionTiming = {
  registrationTimeoutMs: 1_000,
  pingIntervalMs: 500,
  pongTimeoutMs: 200,
  backoffBaseMs: 100,
  backoffMaxMs: 1_000,
};

/** One socket actor the connection invoked: what it was given, what it was told, how it ended. */
interface SocketInstance {
  readonly input: ConnectionInput;
  readonly commands: SocketCommand[];
  readonly sendBack: (event: SocketEvent) => void;
  /** The socket reported itself closed: a real socket could deliver nothing more. */
  closed: boolean;
  /** The connection stopped (disposed) this socket actor. */
  disposed: boolean;
}

/** A command a socket got after it had reported itself closed: a message lost on a dead socket. */
interface DeadLetter {
  socket: number;
  command: SocketCommand;
}

/** The `socket` actor, faked: it records every command and lets the test speak for the registry. */
class FakeSocket {
  readonly instances: SocketInstance[] = [];
  readonly deadLetters: DeadLetter[] = [];
  /** When set, the next socket actors throw this at start (one use per entry, `undefined` = start fine). */
  readonly startFailures: (string | undefined)[] = [];
  /** When it returns true for a command, the socket throws instead of sending it. */
  crashOn: ((command: SocketCommand) => boolean) | undefined;

  readonly logic = fromCallback<SocketCommand, ConnectionInput, SocketEvent>(({ input, sendBack, receive }) => {
    const index = this.instances.length;
    const instance: SocketInstance = { input, commands: [], sendBack, closed: false, disposed: false };
    this.instances.push(instance);
    const failure = this.startFailures.shift();
    if (failure !== undefined) throw new Error(failure);
    receive((command) => {
      // Not a SocketCommand: the test's way to make the socket fail while it runs.
      if ((command as { type: string }).type === "test.crash") throw new Error("socket crashed");
      if (this.crashOn?.(command)) throw new Error("send failed");
      if (instance.closed || instance.disposed) this.deadLetters.push({ socket: index, command });
      else instance.commands.push(command);
    });
    return () => {
      instance.disposed = true;
    };
  });

  get count(): number {
    return this.instances.length;
  }

  get current(): SocketInstance {
    const socket = this.instances.at(-1);
    if (!socket) throw new Error("no socket was started");
    return socket;
  }

  /** Every message the current socket was told to send, as the wire carries it (heartbeats aside), in order. */
  messages(): WorkerMessage[] {
    return this.current.commands.flatMap((c) =>
      c.type === "send.ping" || c.type === "send.pong" ? [] : [toWorkerMessage(c, 0)],
    );
  }

  sent<T extends WorkerMessage["type"]>(type: T): Extract<WorkerMessage, { type: T }>[] {
    return this.messages().filter((m): m is Extract<WorkerMessage, { type: T }> => m.type === type);
  }

  /** An event from the current socket (the registry speaking, or the socket's own news). */
  emit(event: SocketEvent): void {
    const socket = this.current;
    if (event.type === "socket.closed") socket.closed = true;
    socket.sendBack(event);
  }

  /** A message from the registry as the wire carries it, translated as the real socket does. */
  fromRegistry(message: RegistryMessage): void {
    this.emit(toSocketEvent(registryMessage.parse(message)));
  }
}

type ConnectionSnapshot = SnapshotFrom<typeof connectionMachine>;

/** hostChild's handles, plus the fake socket and typed views of the connection. */
interface Harness extends ReturnType<typeof hostChild> {
  input: ConnectionInput;
  socket: FakeSocket;
  snap: () => ConnectionSnapshot;
  value: () => ConnectionSnapshot["value"];
  context: () => ConnectionSnapshot["context"];
  /** Makes the live socket actor throw while it runs. */
  crashSocket: () => void;
  /** Everything the connection emitted (link.connected, link.lost, link.retrying, link.gave_up), in order. */
  emitted: ConnectionEmitted[];
}

interface Options {
  maxRetry?: number;
  random?: () => number;
  timing?: Partial<ConnectionTiming>;
  /** Error messages the next socket actors throw at start, one per start (`undefined`: starts fine). */
  startFailures?: (string | undefined)[];
  /** Commands on which the socket throws. */
  crashOn?: (command: SocketCommand) => boolean;
}

const live: Harness[] = [];

function connection(options: Options = {}): Harness {
  const socket = new FakeSocket();
  socket.startFailures.push(...(options.startFailures ?? []));
  socket.crashOn = options.crashOn;
  const input: ConnectionInput = {
    agentName: "agent-a",
    maxProcesses: 4,
    loadThreshold: 0.75,
    maxRetry: options.maxRetry ?? 3,
    timing: { ...timing, ...options.timing },
    random: options.random ?? (() => 0.5),
  };
  const t = hostChild(connectionMachine.provide({ actors: { socket: socket.logic } }), input);
  const emitted: ConnectionEmitted[] = [];
  t.sut().on("*", (event: ConnectionEmitted) => emitted.push(event));
  const harness: Harness = {
    ...t,
    input,
    socket,
    emitted,
    snap: () => t.snapshot() as ConnectionSnapshot,
    value: () => (t.snapshot() as ConnectionSnapshot).value,
    context: () => (t.snapshot() as ConnectionSnapshot).context,
    crashSocket: () => {
      const child = (t.snapshot() as ConnectionSnapshot).children.socket as AnyActorRef | undefined;
      if (!child) throw new Error("no live socket to crash");
      child.send({ type: "test.crash" });
    },
  };
  live.push(harness);
  return harness;
}

/**
 * xstate's development build warns when an event goes to an actor that has stopped: for the socket
 * actor that is a command sent on a dead socket. Captured for every test.
 */
let warnings: string[] = [];
let warnSpy: MockInstance<typeof console.warn>;
/** Set by the one test where a socket dies mid-macrostep and later commands of that step can't know it. */
let deadSocketSendsExpected = false;
beforeEach(() => {
  warnings = [];
  deadSocketSendsExpected = false;
  warnSpy = vi.spyOn(console, "warn").mockImplementation((...args: unknown[]) => {
    warnings.push(args.map(String).join(" "));
  });
});

// Every test: neither the connection nor its host ever errs, and no command reaches a dead socket.
afterEach(() => {
  warnSpy.mockRestore();
  for (const t of live.splice(0)) {
    expect(t.snapshot().status).not.toBe("error");
    expect(t.host.getSnapshot().status).not.toBe("error");
    expect(t.received.filter((e) => e.type.startsWith("xstate.error.actor"))).toEqual([]);
    expect(t.socket.deadLetters).toEqual([]);
  }
  if (!deadSocketSendsExpected) expect(warnings.filter((w) => w.includes('to stopped actor "socket'))).toEqual([]);
  // The only warnings allowed: events to a connection that already ended (tests that send to `failed`).
  expect(warnings.filter((w) => !w.includes('to stopped actor "sut'))).toEqual(
    deadSocketSendsExpected ? warnings.filter((w) => w.includes('to stopped actor "socket')) : [],
  );
});

const open = (t: Harness) => t.socket.emit({ type: "socket.open" });
const accept = (t: Harness, workerId?: string) =>
  t.socket.emit(workerId === undefined ? { type: "registry.registered" } : { type: "registry.registered", workerId });
const refuse = (t: Harness, message?: string) =>
  t.socket.emit(message === undefined ? { type: "registry.refused" } : { type: "registry.refused", message });
const drop = (t: Harness, code = 1006, reason = "") => t.socket.emit({ type: "socket.closed", code, reason });
const pong = (t: Harness, timestamp = 1) => t.socket.emit({ type: "registry.pong", timestamp });

function registered(options: Options = {}, workerId = "w-1") {
  const t = connection(options);
  open(t);
  accept(t, workerId);
  return t;
}

/** Full jitter as specified: random · min(max, base · 2^(retries − 1)). */
const jitter = (r: number, retries: number, tm: ConnectionTiming = timing) =>
  r * Math.min(tm.backoffMaxMs, tm.backoffBaseMs * 2 ** (retries - 1));

/** From backoff, waits exactly the expected delay (checking it is still waiting 1 ms before). */
function waitOut(t: Harness, delay: number) {
  expect(t.value()).toBe("backoff");
  if (delay >= 1) {
    t.clock.increment(delay - 1);
    expect(t.value()).toBe("backoff");
    t.clock.increment(1);
  } else {
    t.clock.increment(delay);
  }
  expect(t.value()).toEqual({ online: "connecting" });
}

const CONNECTING = { online: "connecting" };
const REGISTERING = { online: "registering" };
const QUIET = { online: { registered: "quiet" } };
const AWAITING_PONG = { online: { registered: "awaitingPong" } };

const available: WorkerStatus = { status: "available", load: 0.25, jobCount: 1, idleProcesses: 3 };
const full: WorkerStatus = { status: "full", load: 1, jobCount: 4, idleProcesses: 0 };

const update = (jobId: string, status: JobUpdate["status"], extra: Partial<JobUpdate> = {}): ConnectionEvent => ({
  type: "link.job_update",
  update: { jobId, status, ...extra },
});

/** Drives a fresh connection into each state it can be in. */
const reach = {
  connecting: (o?: Options) => connection(o),
  registering: (o?: Options) => {
    const t = connection(o);
    open(t);
    return t;
  },
  quiet: (o?: Options) => registered(o),
  awaitingPong: (o?: Options) => {
    const t = registered(o);
    t.clock.increment(timing.pingIntervalMs);
    return t;
  },
} satisfies Record<string, (options?: Options) => Harness>;
type Reachable = keyof typeof reach;
const reachable = Object.keys(reach) as Reachable[];

// ---------------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------------

describe("connection: connecting and registering", () => {
  it("starts connecting with one socket, given its input, and sends nothing before the socket opens", () => {
    const t = connection();
    expect(t.value()).toEqual(CONNECTING);
    expect(t.socket.count).toBe(1);
    expect(t.socket.current.input).toEqual(t.input);
    expect(t.socket.current.commands).toEqual([]);
    t.clock.increment(60_000); // connecting has no timer of its own: the socket decides
    expect(t.value()).toEqual(CONNECTING);
    expect(t.socket.current.commands).toEqual([]);
  });

  it("on socket.open registers with its limits, worker id '' and the (empty) job inventory", () => {
    const t = connection();
    open(t);
    expect(t.value()).toEqual(REGISTERING);
    expect(t.socket.current.commands).toEqual([
      {
        type: "send.register",
        workerId: "",
        agentName: "agent-a",
        capabilities: ["room"],
        loadThreshold: 0.75,
        maxProcesses: 4,
        inventory: [],
      },
    ]);
    // On the wire, with the protocol version.
    expect(t.socket.messages()).toEqual([
      {
        type: "register",
        protocol_version: PROTOCOL_VERSION,
        worker_id: "",
        agent_name: "agent-a",
        capabilities: ["room"],
        load_threshold: 0.75,
        max_processes: 4,
        jobs: [],
      },
    ]);
  });

  it("an accepted registration goes to registered.quiet, keeps the worker id and reuses it on the next register", () => {
    const t = connection();
    open(t);
    accept(t, "w-1");
    expect(t.value()).toEqual(QUIET);
    expect(t.context()).toMatchObject({ workerId: "w-1", retries: 0, lastProblem: null });
    drop(t);
    waitOut(t, jitter(0.5, 1));
    expect(t.socket.count).toBe(2);
    open(t);
    expect(t.socket.sent("register")).toHaveLength(1);
    expect(t.socket.sent("register")[0]?.worker_id).toBe("w-1");
    // A registry that confirms without repeating the id: the id is kept.
    accept(t);
    expect(t.context().workerId).toBe("w-1");
    drop(t);
    waitOut(t, jitter(0.5, 1));
    open(t);
    expect(t.socket.sent("register")[0]?.worker_id).toBe("w-1");
    // A registry that hands out a new id: the new one is used from then on.
    accept(t, "w-2");
    expect(t.context().workerId).toBe("w-2");
    expect(t.socket.sent("status_update").at(-1)?.worker_id).toBe("w-2");
  });

  it.each([
    ["with a reason", "agent unknown", "registration refused: agent unknown"],
    ["without a reason", undefined, "registration refused: no reason given"],
  ])("a refused registration (%s) backs off and records why", (_, message, problem) => {
    const t = connection();
    open(t);
    refuse(t, message);
    expect(t.value()).toBe("backoff");
    expect(t.context()).toMatchObject({ retries: 1, lastProblem: problem, workerId: "" });
    expect(t.socket.current.disposed).toBe(true);
  });

  it("a registration not answered within registrationTimeout backs off, exactly on time", () => {
    const t = connection();
    t.clock.increment(250); // the timeout runs from socket.open, not from the start
    open(t);
    t.clock.increment(timing.registrationTimeoutMs - 1);
    expect(t.value()).toEqual(REGISTERING);
    t.clock.increment(1);
    expect(t.value()).toBe("backoff");
    expect(t.context()).toMatchObject({ retries: 1, lastProblem: "registration timed out" });
    expect(t.socket.current.disposed).toBe(true);
  });

  it("an accepted registration cancels the registration timeout", () => {
    const t = connection();
    open(t);
    accept(t, "w-1");
    pong(t); // keep nothing pending: answer every ping from here on
    for (let elapsed = 0; elapsed < 3 * timing.registrationTimeoutMs; elapsed += timing.pingIntervalMs) {
      t.clock.increment(timing.pingIntervalMs);
      expect(t.value()).toEqual(AWAITING_PONG);
      pong(t);
    }
    expect(t.value()).toEqual(QUIET);
  });

  it.each(reachable)("a socket closed while %s backs off and records the close", (state) => {
    const t = reach[state]();
    const before = t.socket.current;
    drop(t, 1001, "going away");
    expect(t.value()).toBe("backoff");
    expect(t.context()).toMatchObject({ retries: 1, lastProblem: "connection closed (1001: going away)" });
    expect(before.disposed).toBe(true);
    expect(t.snap().children.socket).toBeUndefined();
  });

  it("a close without a reason is recorded with its code only", () => {
    const t = connection();
    drop(t, 1006, "");
    expect(t.context().lastProblem).toBe("connection closed (1006)");
  });

  it("a socket actor that throws at start backs off, records the error, and the next one is tried", () => {
    const t = connection({ startFailures: ["ECONNREFUSED"] });
    expect(t.value()).toBe("backoff");
    expect(t.context()).toMatchObject({ retries: 1, lastProblem: "socket failed: ECONNREFUSED" });
    expect(t.snap().children.socket).toBeUndefined();
    waitOut(t, jitter(0.5, 1));
    expect(t.socket.count).toBe(2);
    open(t);
    expect(t.value()).toEqual(REGISTERING);
  });

  it.each(reachable)("a socket actor that throws while %s backs off and records the error", (state) => {
    const t = reach[state]();
    const before = t.socket.current;
    t.crashSocket();
    expect(t.value()).toBe("backoff");
    expect(t.context()).toMatchObject({ retries: 1, lastProblem: "socket failed: socket crashed" });
    expect(t.snap().children.socket).toBeUndefined();
    // nothing more reaches the crashed socket
    const sent = before.commands.length;
    t.send({ type: "link.offer_answer", jobId: "j", accept: true });
    expect(before.commands).toHaveLength(sent);
    waitOut(t, jitter(0.5, 1));
    expect(t.socket.count).toBe(2);
  });

  it("a socket that throws on the register message backs off, without error", () => {
    const t = connection({ crashOn: (c) => c.type === "send.register" });
    open(t);
    expect(t.value()).toBe("backoff");
    expect(t.context()).toMatchObject({ retries: 1, lastProblem: "socket failed: send failed" });
  });

  it("a socket that dies while the buffer is replayed: the jobs are still in the next register's inventory", () => {
    // The replay is one macrostep: the socket's error reaches the connection after it, so the updates after
    // the failing one go to the dead actor and are dropped. Nothing can tell them apart from sent ones
    // (a real socket drops them the same way when it is closing); the inventory is what makes up for it.
    deadSocketSendsExpected = true;
    let armed = false;
    const t = connection({ crashOn: (c) => armed && c.type === "send.job_update" });
    t.send(update("a", "running"));
    t.send(update("a", "completed"));
    t.send(update("b", "running"));
    open(t);
    armed = true;
    accept(t, "w-1");
    expect(t.value()).toBe("backoff");
    armed = false;
    waitOut(t, jitter(0.5, 1));
    open(t);
    expect(t.socket.sent("register")[0]?.jobs).toEqual([
      { job_id: "a", status: "completed" },
      { job_id: "b", status: "running" },
    ]);
  });

  it("after a backoff it starts a new socket and registers again from connecting", () => {
    const t = registered();
    drop(t);
    waitOut(t, jitter(0.5, 1));
    expect(t.socket.count).toBe(2);
    expect(t.socket.current.commands).toEqual([]);
    open(t);
    expect(t.value()).toEqual(REGISTERING);
    accept(t, "w-1");
    expect(t.value()).toEqual(QUIET);
  });
});

describe("connection: heartbeat", () => {
  it("pings every pingInterval while registered, and a pong returns it to quiet", () => {
    const t = registered();
    const pings = () => t.socket.current.commands.filter((c) => c.type === "send.ping").length;
    for (let round = 1; round <= 3; round++) {
      t.clock.increment(timing.pingIntervalMs - 1);
      expect(t.value()).toEqual(QUIET);
      expect(pings()).toBe(round - 1);
      t.clock.increment(1);
      expect(t.value()).toEqual(AWAITING_PONG);
      expect(pings()).toBe(round);
      expect(t.socket.current.commands.at(-1)).toEqual({ type: "send.ping" });
      t.clock.increment(timing.pongTimeoutMs - 1);
      pong(t, round);
      expect(t.value()).toEqual(QUIET);
    }
  });

  it("no pong within pongTimeout backs off, exactly on time", () => {
    const t = registered();
    t.clock.increment(timing.pingIntervalMs);
    expect(t.value()).toEqual(AWAITING_PONG);
    t.clock.increment(timing.pongTimeoutMs - 1);
    expect(t.value()).toEqual(AWAITING_PONG);
    t.clock.increment(1);
    expect(t.value()).toBe("backoff");
    expect(t.context()).toMatchObject({ retries: 1, lastProblem: "pong timed out" });
    expect(t.socket.current.disposed).toBe(true);
  });

  it("a pong while quiet changes nothing and sends nothing", () => {
    const t = registered();
    const before = t.socket.current.commands.length;
    pong(t);
    expect(t.value()).toEqual(QUIET);
    expect(t.socket.current.commands).toHaveLength(before);
    t.clock.increment(timing.pingIntervalMs);
    expect(t.value()).toEqual(AWAITING_PONG);
  });

  it.each(["quiet", "awaitingPong"] as const)(
    "registry.ping while %s is answered with send.pong echoing its timestamp",
    (state) => {
      const t = reach[state]();
      t.socket.fromRegistry({ type: "ping", timestamp: 1_234_567 });
      expect(t.socket.current.commands.at(-1)).toEqual({ type: "send.pong", timestamp: 1_234_567 });
      expect(t.value()).toEqual(state === "quiet" ? QUIET : AWAITING_PONG);
    },
  );
});

describe("connection: leases", () => {
  const leasedPong = (t: Harness, jobIds: string[], validForMs: number) =>
    t.socket.emit({ type: "registry.pong", timestamp: 1, lease: { jobIds, validForMs } });
  const registeredLeased = (leaseMs: number, options: Options = {}) => {
    const t = connection(options);
    open(t);
    t.socket.emit({ type: "registry.registered", workerId: "w-1", leaseMs });
    return t;
  };
  const pings = (t: Harness) => t.socket.current.commands.filter((c) => c.type === "send.ping").length;
  /** Waits out one ping interval from quiet: still quiet 1 ms before it, pinging exactly at it, then answered. */
  const pingRound = (t: Harness, intervalMs: number) => {
    const before = pings(t);
    t.clock.increment(intervalMs - 1);
    expect(t.value()).toEqual(QUIET);
    expect(pings(t)).toBe(before);
    t.clock.increment(1);
    expect(t.value()).toEqual(AWAITING_PONG);
    expect(pings(t)).toBe(before + 1);
    pong(t);
    expect(t.value()).toEqual(QUIET);
  };

  it("a registration with leaseMs pings every leaseMs / 3 when that is shorter than pingInterval", () => {
    const t = registeredLeased(600);
    expect(t.value()).toEqual(QUIET);
    expect(t.context().leaseMs).toBe(600);
    for (let round = 0; round < 4; round++) pingRound(t, 200);
    expect(t.clock.now()).toBe(800);
  });

  it("a lease that is not a multiple of 3 ms pings at the first whole millisecond past leaseMs / 3", () => {
    const t = registeredLeased(1_000);
    t.clock.increment(333);
    expect(t.value()).toEqual(QUIET);
    t.clock.increment(1);
    expect(t.value()).toEqual(AWAITING_PONG);
  });

  it("a lease longer than three ping intervals keeps pingInterval", () => {
    const t = registeredLeased(3 * timing.pingIntervalMs + 300);
    for (let round = 0; round < 3; round++) pingRound(t, timing.pingIntervalMs);
  });

  it("without leaseMs it pings every pingInterval; a registration without it drops the earlier lease", () => {
    const t = registered();
    expect(t.context().leaseMs).toBeNull();
    pingRound(t, timing.pingIntervalMs);
    drop(t);
    waitOut(t, jitter(0.5, 1));
    open(t);
    t.socket.emit({ type: "registry.registered", workerId: "w-1", leaseMs: 300 });
    expect(t.context().leaseMs).toBe(300);
    pingRound(t, 100);
    drop(t);
    waitOut(t, jitter(0.5, 1));
    open(t);
    accept(t, "w-1");
    expect(t.context().leaseMs).toBeNull();
    pingRound(t, timing.pingIntervalMs);
  });

  it("the pong timeout is not shortened by the lease", () => {
    const t = registeredLeased(300);
    t.clock.increment(100);
    expect(t.value()).toEqual(AWAITING_PONG);
    t.clock.increment(timing.pongTimeoutMs - 1);
    expect(t.value()).toEqual(AWAITING_PONG);
    t.clock.increment(1);
    expect(t.value()).toBe("backoff");
  });

  it("a pong with a lease, awaited, forwards worker.lease_renewed to the worker and returns to quiet", () => {
    const t = registeredLeased(600);
    t.clock.increment(200);
    expect(t.value()).toEqual(AWAITING_PONG);
    const commands = t.socket.current.commands.length;
    leasedPong(t, ["a", "b"], 540);
    expect(t.value()).toEqual(QUIET);
    expect(t.ofType("worker.lease_renewed")).toEqual([
      { type: "worker.lease_renewed", jobIds: ["a", "b"], validForMs: 540 },
    ]);
    // Nothing goes back to the registry for it.
    expect(t.socket.current.commands).toHaveLength(commands);
    // The next ping is a whole interval after this pong.
    pingRound(t, 200);
    expect(t.ofType("worker.lease_renewed")).toHaveLength(1);
  });

  it("a late pong with a lease, while quiet, still forwards it, and the ping schedule is kept", () => {
    const t = registeredLeased(600);
    t.clock.increment(50);
    leasedPong(t, ["a"], 480);
    expect(t.value()).toEqual(QUIET);
    expect(t.ofType("worker.lease_renewed")).toEqual([
      { type: "worker.lease_renewed", jobIds: ["a"], validForMs: 480 },
    ]);
    // The interval still runs from entering quiet (t=0): the ping goes at 200, not at 250.
    t.clock.increment(149);
    expect(t.value()).toEqual(QUIET);
    t.clock.increment(1);
    expect(t.value()).toEqual(AWAITING_PONG);
  });

  it("a pong after a registration without leaseMs still forwards what it vouches for", () => {
    const t = registered();
    leasedPong(t, ["a"], 1_000);
    expect(t.ofType("worker.lease_renewed")).toEqual([
      { type: "worker.lease_renewed", jobIds: ["a"], validForMs: 1_000 },
    ]);
  });

  it.each(["quiet", "awaitingPong"] as const)(
    "a pong while %s with an empty jobIds list, or with no lease, forwards nothing",
    (state) => {
      const t = reach[state]();
      leasedPong(t, [], 1_000);
      pong(t);
      expect(t.value()).toEqual(QUIET);
      expect(t.ofType("worker.lease_renewed")).toEqual([]);
      expect(t.received.filter((e) => !e.type.startsWith("xstate."))).toEqual([]);
    },
  );

  it.each(["connecting", "registering", "backoff"] as const)(
    "a pong with a lease while %s (no live session) forwards nothing",
    (state) => {
      const t = connection();
      if (state !== "connecting") open(t);
      if (state === "backoff") drop(t);
      expect(t.value()).toEqual(state === "backoff" ? "backoff" : { online: state });
      if (state === "backoff")
        t.send({ type: "registry.pong", timestamp: 1, lease: { jobIds: ["a"], validForMs: 500 } });
      else leasedPong(t, ["a"], 500);
      expect(t.ofType("worker.lease_renewed")).toEqual([]);
    },
  );
});

describe("connection: backoff", () => {
  /**
   * retries − 1 zero-delay failures first (random 0), so the measured backoff starts at clock time 0 and its
   * delay is exact; then one failure with random r.
   */
  function backoffAt(r: number, retries: number) {
    const values = [...Array<number>(retries - 1).fill(0), r];
    const calls: number[] = [];
    const t = connection({
      maxRetry: 100,
      random: () => {
        const value = values[Math.min(calls.length, values.length - 1)] ?? r;
        calls.push(value);
        return value;
      },
    });
    for (let i = 1; i < retries; i++) {
      drop(t);
      t.clock.increment(0);
      expect(t.value()).toEqual(CONNECTING);
    }
    drop(t);
    expect(t.clock.now()).toBe(0);
    expect(t.context().retries).toBe(retries);
    return { t, calls };
  }

  it.each([0, 0.5, 0.999])("reconnects after exactly random · min(max, base·2^(retries−1)) with random %s", (r) => {
    for (let retries = 1; retries <= 6; retries++) {
      const { t, calls } = backoffAt(r, retries);
      const delay = jitter(r, retries);
      expect(delay).toBeLessThanOrEqual(timing.backoffMaxMs);
      waitOut(t, delay);
      expect(t.socket.count).toBe(retries + 1);
      expect(calls).toHaveLength(retries); // one draw per backoff
    }
  });

  it("the delay doubles from the base and stops at the cap (random 0.5: 50, 100, 200, 400, 500, 500 ms)", () => {
    const t = connection({ maxRetry: 100 });
    const observed: number[] = [];
    for (let retries = 1; retries <= 6; retries++) {
      drop(t);
      const start = t.clock.now();
      waitOut(t, jitter(0.5, retries));
      observed.push(t.clock.now() - start);
    }
    expect(observed).toEqual([50, 100, 200, 400, 500, 500]);
  });

  it("jitter is drawn from random: the same failure waits differently for different draws", () => {
    const delays = [0.1, 0.9].map((r) => {
      const t = connection({ random: () => r });
      drop(t);
      let waited = 0;
      while (t.value() === "backoff") {
        t.clock.increment(1);
        waited++;
      }
      return waited;
    });
    expect(delays).toEqual([10, 90]);
  });

  it("every kind of failure counts: refused, timeout, close, pong timeout, socket error (random 0.5)", () => {
    const t = connection({ maxRetry: 100 });
    const fails: [string, () => void][] = [
      [
        "refused",
        () => {
          open(t);
          refuse(t, "no");
        },
      ],
      [
        "timeout",
        () => {
          open(t);
          t.clock.increment(timing.registrationTimeoutMs);
        },
      ],
      ["closed", () => drop(t)],
      ["socket error", () => t.crashSocket()],
    ];
    let retries = 0;
    for (const [, fail] of fails) {
      fail();
      retries++;
      expect(t.context().retries).toBe(retries);
      waitOut(t, jitter(0.5, retries));
    }
    // a pong timeout after a successful registration counts as the first failure again
    open(t);
    accept(t, "w-1");
    expect(t.context().retries).toBe(0);
    t.clock.increment(timing.pingIntervalMs);
    t.clock.increment(timing.pongTimeoutMs);
    expect(t.context()).toMatchObject({ retries: 1, lastProblem: "pong timed out" });
    waitOut(t, jitter(0.5, 1));
  });

  it("retries are reset by a successful registration (and so is the delay)", () => {
    const t = connection({ maxRetry: 2 });
    drop(t);
    expect(t.context().retries).toBe(1);
    waitOut(t, jitter(0.5, 1));
    open(t);
    accept(t, "w-1");
    expect(t.context()).toMatchObject({ retries: 0, lastProblem: null });
    drop(t);
    // one failure since the registration, not two: still backing off, with the base delay
    expect(t.value()).toBe("backoff");
    expect(t.context().retries).toBe(1);
    waitOut(t, jitter(0.5, 1));
    drop(t);
    expect(t.snapshot().status).toBe("done");
  });

  it("maxRetry consecutive failures end in failed (final) with reason, retries and last problem", () => {
    const t = connection({ maxRetry: 3 });
    open(t);
    refuse(t, "busy");
    waitOut(t, jitter(0.5, 1));
    open(t);
    t.clock.increment(timing.registrationTimeoutMs);
    waitOut(t, jitter(0.5, 2));
    drop(t, 1011, "server error");
    expect(t.value()).toBe("failed");
    expect(t.snapshot().status).toBe("done");
    const output = { reason: "max_retry", retries: 3, lastProblem: "connection closed (1011: server error)" };
    expect(t.snapshot().output).toEqual(output);
    expect(t.ofType("xstate.done.actor.sut")).toEqual([expect.objectContaining({ output })]);
    expect(t.socket.current.disposed).toBe(true);
    // final: no more sockets, no more timers
    t.clock.increment(1_000_000);
    expect(t.socket.count).toBe(3);
    expect(t.value()).toBe("failed");
  });

  it("maxRetry consecutive socket errors also end in failed", () => {
    const t = connection({ maxRetry: 2, startFailures: ["down", "down"] });
    expect(t.value()).toBe("backoff");
    t.clock.increment(jitter(0.5, 1));
    expect(t.snapshot().status).toBe("done");
    expect(t.snapshot().output).toEqual({ reason: "max_retry", retries: 2, lastProblem: "socket failed: down" });
    expect(t.socket.count).toBe(2);
  });

  it("maxRetry 0 fails on the first failure", () => {
    const t = connection({ maxRetry: 0 });
    open(t);
    t.clock.increment(timing.registrationTimeoutMs);
    expect(t.value()).toBe("failed");
    expect(t.snapshot().output).toEqual({ reason: "max_retry", retries: 1, lastProblem: "registration timed out" });
    expect(t.socket.count).toBe(1);
  });
});

describe("connection: job updates", () => {
  it("are sent at once while registered, in wire format", () => {
    const t = registered();
    t.send(update("j1", "running"));
    t.send(update("j1", "failed", { reason: "crashed", error: { name: "Error", message: "boom" } }));
    t.send(update("j2", "cancelled", { reason: "by user" }));
    expect(t.socket.sent("job_update")).toEqual([
      { type: "job_update", job_id: "j1", status: "running" },
      {
        type: "job_update",
        job_id: "j1",
        status: "failed",
        reason: "crashed",
        error: { name: "Error", message: "boom" },
      },
      { type: "job_update", job_id: "j2", status: "cancelled", reason: "by user" },
    ]);
    expect(t.context().buffer).toEqual([]);
  });

  it("are buffered while not registered and replayed in order right after registering", () => {
    const t = connection();
    t.send(update("a", "running"));
    open(t);
    t.send(update("b", "running"));
    expect(t.socket.messages().map((m) => m.type)).toEqual(["register"]);
    accept(t, "w-1");
    expect(t.socket.messages()).toEqual([
      expect.objectContaining({ type: "register" }),
      expect.objectContaining({ type: "status_update" }),
      { type: "job_update", job_id: "a", status: "running" },
      { type: "job_update", job_id: "b", status: "running" },
    ]);
    expect(t.context().buffer).toEqual([]);
  });

  it("held back across a drop (backoff, connecting, registering) are replayed in order on the new socket only", () => {
    const t = registered({ maxRetry: 10 });
    t.send(update("a", "running"));
    drop(t);
    t.send(update("a", "completed")); // backoff
    t.send(update("b", "running"));
    waitOut(t, jitter(0.5, 1));
    t.send(update("b", "failed", { reason: "crashed", error: { name: "E", message: "x" } })); // connecting
    open(t);
    t.send(update("c", "running")); // registering
    expect(t.socket.messages().map((m) => m.type)).toEqual(["register"]);
    refuse(t, "not yet"); // a refused attempt keeps the buffer
    waitOut(t, jitter(0.5, 2));
    t.send(update("c", "completed"));
    open(t);
    expect(t.socket.messages().map((m) => m.type)).toEqual(["register"]);
    accept(t, "w-1");
    expect(t.socket.messages().slice(1)).toEqual([
      expect.objectContaining({ type: "status_update" }),
      { type: "job_update", job_id: "a", status: "completed" },
      { type: "job_update", job_id: "b", status: "running" },
      { type: "job_update", job_id: "b", status: "failed", reason: "crashed", error: { name: "E", message: "x" } },
      { type: "job_update", job_id: "c", status: "running" },
      { type: "job_update", job_id: "c", status: "completed" },
    ]);
    // Nothing but the first update ever went to the first socket; none went to the refused one.
    expect(t.socket.instances[0]?.commands.filter((c) => c.type === "send.job_update")).toHaveLength(1);
    expect(t.socket.instances[1]?.commands.filter((c) => c.type === "send.job_update")).toEqual([]);
    // Replayed once: the next registration does not send them again.
    drop(t);
    waitOut(t, jitter(0.5, 1));
    open(t);
    accept(t, "w-1");
    expect(t.socket.sent("job_update")).toEqual([]);
  });

  it("the register message carries the inventory: running jobs and final ones, latest status per job", () => {
    const t = registered({ maxRetry: 10 });
    t.send(update("r1", "running"));
    t.send(update("r2", "running"));
    t.send(update("done", "running"));
    t.send(update("done", "completed"));
    drop(t);
    t.send(update("bad", "failed", { reason: "crashed", error: { name: "E", message: "x" } }));
    waitOut(t, jitter(0.5, 1));
    open(t);
    expect(t.socket.sent("register")[0]?.jobs).toEqual([
      { job_id: "r1", status: "running" },
      { job_id: "r2", status: "running" },
      { job_id: "done", status: "completed" },
      { job_id: "bad", status: "failed", reason: "crashed" },
    ]);
  });

  it("a failed job's exit code and signal go with its update and stay in the next register's inventory", () => {
    const t = registered({ maxRetry: 10 });
    t.send(update("exit", "failed", { reason: "crashed", exitCode: 3, signal: null }));
    t.send(update("segv", "failed", { reason: "crashed", exitCode: null, signal: "SIGSEGV" }));
    const exited = { job_id: "exit", status: "failed", reason: "crashed", exit_code: 3, signal: null };
    const killed = { job_id: "segv", status: "failed", reason: "crashed", exit_code: null, signal: "SIGSEGV" };
    expect(t.socket.sent("job_update")).toEqual([
      { type: "job_update", ...exited },
      { type: "job_update", ...killed },
    ]);
    expect(t.context().inventory).toEqual([
      { jobId: "exit", status: "failed", reason: "crashed", exitCode: 3, signal: null },
      { jobId: "segv", status: "failed", reason: "crashed", exitCode: null, signal: "SIGSEGV" },
    ]);
    drop(t);
    waitOut(t, jitter(0.5, 1));
    open(t);
    expect(t.socket.sent("register")[0]?.jobs).toEqual([exited, killed]);
  });

  it("the inventory keeps every running job and only the MAX_RECENT_FINAL most recent final ones", () => {
    const t = connection();
    t.send(update("r1", "running"));
    t.send(update("r2", "running"));
    t.send(update("r3", "running"));
    const extra = 5;
    const finalsKept = () => t.context().inventory.filter((j) => j.status !== "running");
    for (let i = 0; i < MAX_RECENT_FINAL; i++) t.send(update(`f${i}`, "completed"));
    expect(finalsKept()).toHaveLength(MAX_RECENT_FINAL); // exactly at the bound: nothing dropped
    expect(finalsKept()[0]?.jobId).toBe("f0");
    t.send(update(`f${MAX_RECENT_FINAL}`, "completed"));
    expect(finalsKept()).toHaveLength(MAX_RECENT_FINAL); // one over: the oldest goes
    expect(finalsKept()[0]?.jobId).toBe("f1");
    for (let i = MAX_RECENT_FINAL + 1; i < MAX_RECENT_FINAL + extra; i++) t.send(update(`f${i}`, "completed"));
    t.send(update("r2", "failed", { reason: "memory_limit" }));
    open(t);
    const jobs = t.socket.sent("register")[0]?.jobs ?? [];
    const finals = Array.from({ length: MAX_RECENT_FINAL - 1 }, (_, k) => ({
      job_id: `f${extra + 1 + k}`,
      status: "completed",
    }));
    expect(jobs).toEqual([
      { job_id: "r1", status: "running" },
      { job_id: "r3", status: "running" },
      ...finals,
      { job_id: "r2", status: "failed", reason: "memory_limit" },
    ]);
    expect(jobs.filter((j) => j.status !== "running")).toHaveLength(MAX_RECENT_FINAL);
  });

  it("more running jobs than MAX_RECENT_FINAL are all kept", () => {
    const t = connection();
    for (let i = 0; i < MAX_RECENT_FINAL + 10; i++) t.send(update(`r${i}`, "running"));
    t.send(update("f", "cancelled"));
    open(t);
    const jobs = t.socket.sent("register")[0]?.jobs ?? [];
    expect(jobs.filter((j) => j.status === "running")).toHaveLength(MAX_RECENT_FINAL + 10);
    expect(jobs.at(-1)).toEqual({ job_id: "f", status: "cancelled" });
  });
});

describe("connection: status", () => {
  it("link.status while registered sends status_update at once", () => {
    const t = registered();
    t.send({ type: "link.status", status: available });
    t.send({ type: "link.status", status: full });
    expect(t.socket.sent("status_update").slice(-2)).toEqual([
      {
        type: "status_update",
        worker_id: "w-1",
        agent_name: "agent-a",
        status: "available",
        load: 0.25,
        job_count: 1,
        idle_processes: 3,
      },
      {
        type: "status_update",
        worker_id: "w-1",
        agent_name: "agent-a",
        status: "full",
        load: 1,
        job_count: 4,
        idle_processes: 0,
      },
    ]);
  });

  it("while not registered only the last status is kept, and it is sent right after registering", () => {
    const t = connection();
    t.send({ type: "link.status", status: full });
    open(t);
    t.send({ type: "link.status", status: available });
    expect(t.socket.sent("status_update")).toEqual([]);
    accept(t, "w-9");
    expect(t.socket.messages().slice(1)).toEqual([
      {
        type: "status_update",
        worker_id: "w-9",
        agent_name: "agent-a",
        status: "available",
        load: 0.25,
        job_count: 1,
        idle_processes: 3,
      },
    ]);
  });

  it("the status last sent before a drop is sent again on the next registration", () => {
    const t = registered();
    t.send({ type: "link.status", status: full });
    drop(t);
    waitOut(t, jitter(0.5, 1));
    open(t);
    accept(t, "w-1");
    expect(t.socket.sent("status_update")).toEqual([expect.objectContaining({ status: "full", job_count: 4 })]);
    expect(t.context().lastStatus).toEqual(full);
  });

  it("with no status yet, registration announces 'starting'", () => {
    const t = registered();
    expect(t.socket.sent("status_update")).toEqual([
      {
        type: "status_update",
        worker_id: "w-1",
        agent_name: "agent-a",
        status: "starting",
        load: 0,
        job_count: 0,
        idle_processes: 0,
      },
    ]);
  });
});

describe("connection: offer answers", () => {
  it("link.offer_answer while registered sends availability_response", () => {
    const t = registered();
    t.send({ type: "link.offer_answer", jobId: "j1", accept: true });
    t.send({ type: "link.offer_answer", jobId: "j2", accept: false, error: "full" });
    expect(t.socket.sent("availability_response")).toEqual([
      { type: "availability_response", job_id: "j1", available: true },
      { type: "availability_response", job_id: "j2", available: false, error: "full" },
    ]);
  });

  it.each(["connecting", "registering", "backoff"] as const)("link.offer_answer while %s sends nothing", (state) => {
    const t = state === "backoff" ? connection() : reach[state]();
    if (state === "backoff") drop(t);
    const before = t.socket.instances.map((s) => s.commands.length);
    t.send({ type: "link.offer_answer", jobId: "j1", accept: true });
    expect(t.socket.instances.map((s) => s.commands.length)).toEqual(before);
    if (state === "backoff") {
      waitOut(t, jitter(0.5, 1));
      open(t);
      accept(t, "w-1");
      expect(t.socket.sent("availability_response")).toEqual([]); // not replayed later either
    }
  });
});

describe("connection: registry messages", () => {
  it("availability_request is forwarded to the parent as worker.offer", () => {
    const t = registered();
    t.socket.fromRegistry({
      type: "availability_request",
      job_id: "j1",
      agent_name: "agent-a",
      room_id: "room",
      metadata: { a: 1 },
    });
    t.socket.fromRegistry({ type: "availability_request", job_id: "j2", agent_name: "agent-a" });
    expect(t.ofType("worker.offer")).toEqual([
      { type: "worker.offer", spec: { jobId: "j1", agentName: "agent-a", roomId: "room", metadata: { a: 1 } } },
      { type: "worker.offer", spec: { jobId: "j2", agentName: "agent-a" } },
    ]);
  });

  it("job_assignment is forwarded as worker.assignment with max_duration seconds turned into maxDurationMs", () => {
    const t = registered();
    const message: JobAssignment = {
      type: "job_assignment",
      job_id: "j1",
      agent_name: "agent-a",
      room_id: "room",
      token: "tok",
      url: "wss://media",
      room_options: { audio: true },
      metadata: { user: "u" },
      max_duration: 90,
    };
    t.socket.fromRegistry(message);
    expect(t.ofType("worker.assignment")).toEqual([
      {
        type: "worker.assignment",
        spec: {
          jobId: "j1",
          agentName: "agent-a",
          roomId: "room",
          roomToken: "tok",
          url: "wss://media",
          roomOptions: { audio: true },
          metadata: { user: "u" },
          maxDurationMs: 90_000,
        },
      },
    ]);
  });

  it("specFromAssignment: only present fields are mapped; max_duration 0 or absent leaves maxDurationMs unset", () => {
    expect(specFromAssignment({ type: "job_assignment", job_id: "j", agent_name: "a" })).toEqual({
      jobId: "j",
      agentName: "a",
    });
    expect(specFromAssignment({ type: "job_assignment", job_id: "j", agent_name: "a", max_duration: 0 })).toEqual({
      jobId: "j",
      agentName: "a",
    });
    expect(specFromAssignment({ type: "job_assignment", job_id: "j", agent_name: "a", max_duration: 1.5 })).toEqual({
      jobId: "j",
      agentName: "a",
      maxDurationMs: 1_500,
    });
  });

  it("job_termination is forwarded as worker.terminate, with a default reason", () => {
    const t = registered();
    t.socket.fromRegistry({ type: "job_termination", job_id: "j1", reason: "room closed" });
    t.socket.fromRegistry({ type: "job_termination", job_id: "j2" });
    expect(t.ofType("worker.terminate")).toEqual([
      { type: "worker.terminate", jobId: "j1", reason: "room closed" },
      { type: "worker.terminate", jobId: "j2", reason: "terminated by registry" },
    ]);
  });

  it.each(reachable)(
    "registry.error and socket.invalid while %s are recorded as lastProblem and change nothing else",
    (state) => {
      const t = reach[state]();
      const value = t.value();
      t.socket.fromRegistry({ type: "error", message: "rate limited", code: "429" });
      expect(t.context().lastProblem).toBe("registry error: rate limited");
      expect(t.value()).toEqual(value);
      t.socket.emit({ type: "socket.invalid", error: "frame is not JSON" });
      expect(t.context().lastProblem).toBe("invalid frame from registry: frame is not JSON");
      expect(t.value()).toEqual(value);
    },
  );

  it("the recorded problem is the one reported in the failed output", () => {
    const t = connection({ maxRetry: 1 });
    t.socket.emit({ type: "registry.error", message: "bad agent name" });
    expect(t.context().lastProblem).toBe("registry error: bad agent name");
    // the failure that ends the link is what the output reports
    drop(t, 1008, "policy");
    expect(t.snapshot().output).toEqual({
      reason: "max_retry",
      retries: 1,
      lastProblem: "connection closed (1008: policy)",
    });
  });
});

describe("connection: failed attempts, refused credentials and what the link says", () => {
  it.each(["connecting", "registering"] as const)(
    "socket.failed while %s backs off with the socket's error as the problem",
    (state) => {
      const t = reach[state]();
      t.socket.emit({ type: "socket.failed", error: "connection refused: connect ECONNREFUSED 127.0.0.1:9" });
      expect(t.value()).toBe("backoff");
      expect(t.context()).toMatchObject({
        retries: 1,
        lastProblem: "connection refused: connect ECONNREFUSED 127.0.0.1:9",
      });
      expect(t.snap().children.socket).toBeUndefined();
      waitOut(t, jitter(0.5, 1));
      expect(t.socket.count).toBe(2);
    },
  );

  it.each(reachable)("socket.unauthorized while %s gives up at once: failed, reason unauthorized", (state) => {
    const t = reach[state]({ maxRetry: 16 });
    const retries = t.context().retries;
    t.socket.emit({ type: "socket.unauthorized", status: 401, error: "registry refused the credentials: 401" });
    expect(t.value()).toBe("failed");
    const output = { reason: "unauthorized", retries, lastProblem: "registry refused the credentials: 401" };
    expect(t.snapshot().output).toEqual(output);
    expect(t.ofType("xstate.done.actor.sut")).toEqual([expect.objectContaining({ output })]);
    expect(t.emitted.at(-1)).toEqual({
      type: "link.gave_up",
      reason: "unauthorized",
      retries,
      problem: "registry refused the credentials: 401",
    });
    // No second attempt, ever.
    t.clock.increment(1_000_000);
    expect(t.socket.count).toBe(1);
  });

  it("emits connected, then lost with its cause, then retrying with attempt, delay and cause", () => {
    const t = connection({ maxRetry: 3 });
    t.socket.emit({ type: "socket.failed", error: "connection refused" });
    expect(t.emitted).toEqual([
      { type: "link.retrying", attempt: 2, maxRetry: 3, delayMs: jitter(0.5, 1), problem: "connection refused" },
    ]);
    waitOut(t, jitter(0.5, 1));
    open(t);
    accept(t, "w-7");
    expect(t.emitted.at(-1)).toEqual({ type: "link.connected", workerId: "w-7" });
    drop(t, 1001, "going away");
    expect(t.emitted.slice(-2)).toEqual([
      { type: "link.lost", problem: "connection closed (1001: going away)" },
      {
        type: "link.retrying",
        attempt: 2,
        maxRetry: 3,
        delayMs: jitter(0.5, 1),
        problem: "connection closed (1001: going away)",
      },
    ]);
    waitOut(t, jitter(0.5, 1));
    open(t);
    accept(t, "w-7");
    t.clock.increment(timing.pingIntervalMs);
    t.clock.increment(timing.pongTimeoutMs);
    expect(t.emitted.slice(-2)).toEqual([
      { type: "link.lost", problem: "pong timed out" },
      expect.objectContaining({ type: "link.retrying", attempt: 2, problem: "pong timed out" }),
    ]);
    waitOut(t, jitter(0.5, 1));
    open(t);
    accept(t, "w-7");
    t.crashSocket();
    expect(t.emitted.slice(-2)).toEqual([
      { type: "link.lost", problem: "socket failed: socket crashed" },
      expect.objectContaining({ type: "link.retrying", attempt: 2, problem: "socket failed: socket crashed" }),
    ]);
  });

  it("a failed attempt before registering is not a lost link; the last failure gives up instead of retrying", () => {
    const t = connection({ maxRetry: 2 });
    open(t);
    refuse(t, "busy");
    expect(t.emitted.map((e) => e.type)).toEqual(["link.retrying"]);
    waitOut(t, jitter(0.5, 1));
    t.socket.emit({ type: "socket.failed", error: "connecting timed out after 1000 ms" });
    expect(t.emitted).toEqual([
      expect.objectContaining({ type: "link.retrying", attempt: 2, problem: "registration refused: busy" }),
      {
        type: "link.gave_up",
        reason: "max_retry",
        retries: 2,
        problem: "connecting timed out after 1000 ms",
      },
    ]);
    expect(t.snapshot().output).toEqual({
      reason: "max_retry",
      retries: 2,
      lastProblem: "connecting timed out after 1000 ms",
    });
  });
});

describe("connection: robustness", () => {
  /** Every ConnectionEvent type, with plausible payloads (the Record makes a missing type a type error). */
  const everyEvent: Record<ConnectionEvent["type"], ConnectionEvent[]> = {
    "socket.open": [{ type: "socket.open" }],
    "socket.closed": [
      { type: "socket.closed", code: 1000, reason: "" },
      { type: "socket.closed", code: 1006, reason: "abnormal" },
    ],
    "socket.invalid": [{ type: "socket.invalid", error: "bad frame" }],
    "socket.failed": [{ type: "socket.failed", error: "connection refused: connect ECONNREFUSED 127.0.0.1:1" }],
    "socket.unauthorized": [{ type: "socket.unauthorized", status: 401, error: "401 invalid token" }],
    "registry.registered": [
      { type: "registry.registered", workerId: "w-2" },
      { type: "registry.registered" },
      { type: "registry.registered", workerId: "w-2", leaseMs: 900 },
    ],
    "registry.refused": [{ type: "registry.refused", message: "no" }, { type: "registry.refused" }],
    "registry.offer": [{ type: "registry.offer", spec: { jobId: "j", agentName: "agent-a", roomId: "r" } }],
    "registry.assigned": [
      { type: "registry.assigned", spec: { jobId: "j", agentName: "agent-a", maxDurationMs: 10_000 } },
    ],
    "registry.terminate": [{ type: "registry.terminate", jobId: "j" }],
    "registry.ping": [{ type: "registry.ping", timestamp: 7 }],
    "registry.pong": [
      { type: "registry.pong", timestamp: 7 },
      { type: "registry.pong", timestamp: 7, lease: { jobIds: ["j"], validForMs: 900 } },
      { type: "registry.pong", timestamp: 7, lease: { jobIds: [], validForMs: 900 } },
    ],
    "registry.error": [{ type: "registry.error", message: "oops", code: "x" }],
    "link.status": [{ type: "link.status", status: available }],
    "link.job_update": [
      update("j", "running"),
      update("j", "failed", {
        reason: "crashed",
        error: { name: "E", message: "m" },
        exitCode: null,
        signal: "SIGSEGV",
      }),
    ],
    "link.offer_answer": [
      { type: "link.offer_answer", jobId: "j", accept: true },
      { type: "link.offer_answer", jobId: "j", accept: false, error: "full" },
    ],
  };

  const states = {
    connecting: () => reach.connecting(),
    registering: () => reach.registering(),
    quiet: () => reach.quiet(),
    awaitingPong: () => reach.awaitingPong(),
    "backoff (never registered)": () => {
      const t = connection();
      drop(t);
      return t;
    },
    "backoff (after a session)": () => {
      const t = registered();
      t.send(update("j0", "running"));
      drop(t);
      return t;
    },
    failed: () => {
      const t = connection({ maxRetry: 0 });
      drop(t);
      return t;
    },
  } satisfies Record<string, () => Harness>;

  it.each(Object.keys(states) as (keyof typeof states)[])(
    "in %s, no ConnectionEvent (then any amount of time) puts it or its host in error",
    (state) => {
      for (const events of Object.values(everyEvent)) {
        for (const event of events) {
          const t = states[state]();
          expect(t.snapshot().status).not.toBe("error");
          t.send(event);
          expect(t.snapshot().status).not.toBe("error");
          expect(t.host.getSnapshot().status).toBe("active");
          // and what follows (timers, reconnects) stays healthy too
          t.clock.increment(timing.backoffMaxMs + timing.registrationTimeoutMs);
          if (t.snapshot().status === "active" && t.snap().children.socket) {
            open(t);
            accept(t, "w-3");
            t.send(update("k", "running"));
            t.send({ type: "link.offer_answer", jobId: "k", accept: true });
          }
          expect(t.snapshot().status).not.toBe("error");
          expect(t.host.getSnapshot().status).toBe("active");
          expect(t.received.filter((e) => e.type.startsWith("xstate.error"))).toEqual([]);
        }
      }
      // events sent to the ended connection are dropped (with xstate's dev warning), and only there
      if (state !== "failed") expect(warnings).toEqual([]);
    },
  );
});

describe("registry-wire: machine commands and events ⇄ wire messages", () => {
  const status: WorkerStatus = { status: "available", load: 0.5, jobCount: 1, idleProcesses: 2 };
  const commands: SocketCommand[] = [
    {
      type: "send.register",
      workerId: "w-1",
      agentName: "agent-a",
      capabilities: ["room"],
      loadThreshold: 0.75,
      maxProcesses: 4,
      inventory: [
        { jobId: "r", status: "running" },
        { jobId: "f", status: "failed", reason: "crashed", exitCode: null, signal: "SIGKILL" },
      ],
    },
    { type: "send.status", workerId: "w-1", agentName: "agent-a", status },
    { type: "send.job_update", update: { jobId: "j", status: "running" } },
    {
      type: "send.job_update",
      update: {
        jobId: "j",
        status: "failed",
        reason: "crashed",
        error: { name: "Error", message: "m" },
        exitCode: 139,
        signal: null,
      },
    },
    { type: "send.offer_answer", jobId: "j", accept: false, error: "full" },
    { type: "send.offer_answer", jobId: "j", accept: true },
    { type: "send.ping" },
    { type: "send.pong", timestamp: 9 },
  ];

  it.each(commands.map((command) => [command.type, command] as const))(
    "%s becomes a message the protocol schema accepts unchanged",
    (_, command) => {
      const message = toWorkerMessage(command, 1_000);
      const parsed = workerMessage.safeParse(message);
      expect(parsed.success).toBe(true);
      expect(parsed.data).toEqual(message);
    },
  );

  it("field by field: status, offer answers, heartbeats (a ping is stamped with the socket's clock)", () => {
    expect(toWorkerMessage({ type: "send.status", workerId: "w-1", agentName: "agent-a", status }, 0)).toEqual({
      type: "status_update",
      worker_id: "w-1",
      agent_name: "agent-a",
      status: "available",
      load: 0.5,
      job_count: 1,
      idle_processes: 2,
    });
    expect(toWorkerMessage({ type: "send.offer_answer", jobId: "j", accept: true }, 0)).toEqual({
      type: "availability_response",
      job_id: "j",
      available: true,
    });
    expect(toWorkerMessage({ type: "send.ping" }, 1_234)).toEqual({ type: "ping", timestamp: 1_234 });
    expect(toWorkerMessage({ type: "send.pong", timestamp: 7 }, 1_234)).toEqual({ type: "pong", timestamp: 7 });
  });

  it("an exit code or signal the schema would refuse is left out, so the final status still arrives", () => {
    const failed = (exitCode: number | null | undefined, signal: string | null | undefined) =>
      toWorkerMessage(
        { type: "send.job_update", update: { jobId: "j", status: "failed", reason: "crashed", exitCode, signal } },
        0,
      );
    const base = { type: "job_update", job_id: "j", status: "failed", reason: "crashed" };
    expect(failed(1.5, "segv")).toEqual(base);
    expect(failed(2 ** 40, `SIG${"A".repeat(40)}`)).toEqual(base);
    expect(failed(undefined, undefined)).toEqual(base);
    expect(failed(null, null)).toEqual({ ...base, exit_code: null, signal: null });
    expect(failed(-1, "SIGRTMIN1")).toEqual({ ...base, exit_code: -1, signal: "SIGRTMIN1" });
  });

  it("the protocol bounds exit_code (an integer or null) and signal (SIG…, at most 32 characters, or null)", () => {
    const update = (extra: Record<string, unknown>) =>
      workerMessage.safeParse({ type: "job_update", job_id: "j", status: "failed", ...extra }).success;
    expect(update({ exit_code: 3, signal: null })).toBe(true);
    expect(update({ exit_code: null, signal: "SIGSEGV" })).toBe(true);
    expect(update({ exit_code: 1.5 })).toBe(false);
    expect(update({ exit_code: "3" })).toBe(false);
    expect(update({ signal: "segv" })).toBe(false);
    expect(update({ signal: "SIGSEGV; rm" })).toBe(false);
    expect(update({ signal: `SIG${"A".repeat(30)}` })).toBe(false);
  });

  it.each<[string, RegistryMessage, SocketEvent]>([
    [
      "an accepted register",
      { type: "register", success: true, worker_id: "w-1" },
      { type: "registry.registered", workerId: "w-1" },
    ],
    ["an accepted register without an id", { type: "register", success: true }, { type: "registry.registered" }],
    [
      "an accepted register with an empty id",
      { type: "register", success: true, worker_id: "" },
      { type: "registry.registered" },
    ],
    [
      "a refused register",
      { type: "register", success: false, message: "no" },
      { type: "registry.refused", message: "no" },
    ],
    ["a refused register without a reason", { type: "register", success: false }, { type: "registry.refused" }],
    [
      "an availability request",
      { type: "availability_request", job_id: "j", agent_name: "a", room_id: "r", metadata: { m: 1 } },
      { type: "registry.offer", spec: { jobId: "j", agentName: "a", roomId: "r", metadata: { m: 1 } } },
    ],
    [
      "a job assignment",
      { type: "job_assignment", job_id: "j", agent_name: "a", max_duration: 2 },
      { type: "registry.assigned", spec: { jobId: "j", agentName: "a", maxDurationMs: 2_000 } },
    ],
    [
      "a termination",
      { type: "job_termination", job_id: "j", reason: "why" },
      { type: "registry.terminate", jobId: "j", reason: "why" },
    ],
    [
      "a termination without a reason",
      { type: "job_termination", job_id: "j" },
      { type: "registry.terminate", jobId: "j" },
    ],
    ["a ping", { type: "ping", timestamp: 5 }, { type: "registry.ping", timestamp: 5 }],
    ["a pong", { type: "pong", timestamp: 5 }, { type: "registry.pong", timestamp: 5 }],
    ["an error", { type: "error", message: "e", code: "c" }, { type: "registry.error", message: "e", code: "c" }],
    ["an error without a code", { type: "error", message: "e" }, { type: "registry.error", message: "e" }],
  ])("%s becomes its machine event", (_, message, event) => {
    expect(toSocketEvent(message)).toEqual(event);
    expect(parseRegistryFrame(JSON.stringify(message))).toEqual({ event });
  });

  it("parseRegistryFrame: a frame that is not JSON, or not a valid message, is socket.invalid", () => {
    expect(parseRegistryFrame("{nope")).toEqual({
      event: { type: "socket.invalid", error: "frame is not valid JSON" },
    });
    const unknown = parseRegistryFrame(JSON.stringify({ type: "launch_missiles" }));
    expect(unknown.event.type).toBe("socket.invalid");
    expect(unknown.issues?.length).toBeGreaterThan(0);
    const missing = parseRegistryFrame(JSON.stringify({ type: "job_assignment", agent_name: "a" }));
    expect(missing.event).toEqual({ type: "socket.invalid", error: missing.issues?.[0] });
  });
});
