import { describe, expect, it } from "vitest";
import { type AnyActorRef, assign, fromCallback, type SnapshotFrom, setup } from "xstate";
import { createTestModel } from "xstate/graph";
import {
  type ConnectionEmitted,
  type ConnectionInput,
  type ConnectionTiming,
  connectionMachine,
  type SocketCommand,
  type SocketEvent,
} from "../../machines/connection.ts";
import { hostChild } from "../support/host.ts";

const MAX_RETRY = 2;
const RANDOM = 0.5;
const timing: ConnectionTiming = {
  registrationTimeoutMs: 1_000,
  pingIntervalMs: 500,
  pongTimeoutMs: 200,
  backoffBaseMs: 100,
  backoffMaxMs: 400,
};

/** The registry's lease length when it grants leases: the link then pings every LEASE_MS / 3 (< pingInterval). */
const LEASE_MS = 600;

interface ModelContext {
  /** Consecutive failures, as the real machine counts them. */
  retries: number;
  /** The worker id the registry gave ("" before the first accepted registration). */
  workerId: string;
  /** The last failure dropped a registered link: the link says "lost" before it retries or gives up. */
  lost: boolean;
  /** The current session's registration granted leases (leaseMs). */
  leased: boolean;
  /** A pong of the current session renewed leases, which went to the worker. */
  forwarded: boolean;
}

/**
 * The link as the worker sees it. Timers and the socket are plain events here (no invoke, no after):
 * each is played on the real machine by the event handlers below. Every failure counts one retry; the
 * MAX_RETRY-th consecutive one ends in `failed`; an accepted registration resets the count.
 */
const failure = [
  {
    guard: ({ context }: { context: ModelContext }) => context.retries + 1 >= MAX_RETRY,
    target: "failed",
    actions: "countFailure",
  },
  { target: "backoff", actions: "countFailure" },
] as const;
/** A failure of a registered link: the same, and the link was lost. */
const lostLink = [
  {
    guard: ({ context }: { context: ModelContext }) => context.retries + 1 >= MAX_RETRY,
    target: "failed",
    actions: "countLoss",
  },
  { target: "backoff", actions: "countLoss" },
] as const;
/** The registry refused the credentials (401/403 on the upgrade): no retry, whatever the count. */
const UNAUTHORIZED = "unauthorized";

const connectionModel = setup({
  types: { context: {} as ModelContext },
  actions: {
    countFailure: assign({
      retries: ({ context }) => context.retries + 1,
      lost: false,
      leased: false,
      forwarded: false,
    }),
    countLoss: assign({ retries: ({ context }) => context.retries + 1, lost: true, leased: false, forwarded: false }),
    acceptRegistration: assign({ retries: 0, workerId: "w-1", lost: false }),
    grantLeases: assign({ leased: true }),
    forwardLease: assign({ forwarded: true }),
  },
}).createMachine({
  id: "connectionModel",
  context: { retries: 0, workerId: "", lost: false, leased: false, forwarded: false },
  initial: "connecting",
  states: {
    connecting: {
      on: {
        OPEN: "registering",
        DROP: failure,
        CONNECT_FAILED: failure,
        SOCKET_ERROR: failure,
        UNAUTHORIZED: UNAUTHORIZED,
      },
    },
    registering: {
      on: {
        REGISTER_OK: { target: "quiet", actions: "acceptRegistration" },
        REGISTER_OK_LEASED: { target: "quiet", actions: ["acceptRegistration", "grantLeases"] },
        REGISTER_REFUSED: failure,
        REGISTER_TIMEOUT: failure,
        DROP: failure,
        SOCKET_ERROR: failure,
      },
    },
    quiet: {
      on: {
        PING_DUE: "awaitingPong",
        // A pong after its ping's deadline (its ping was answered late) still renews the leases it lists.
        LATE_PONG_LEASED: { target: "quiet", actions: "forwardLease" },
        DROP: lostLink,
        SOCKET_ERROR: lostLink,
      },
    },
    awaitingPong: {
      on: {
        PONG: "quiet",
        PONG_LEASED: { target: "quiet", actions: "forwardLease" },
        PONG_TIMEOUT: lostLink,
        DROP: lostLink,
        SOCKET_ERROR: lostLink,
      },
    },
    backoff: {
      on: { BACKOFF_ELAPSED: "connecting" },
    },
    failed: { type: "final" },
    [UNAUTHORIZED]: { type: "final" },
  },
});

type ConnectionSnapshot = SnapshotFrom<typeof connectionMachine>;

/** The real machine, hosted as the worker would host it, with a fake socket the events speak through. */
function createSut() {
  let sendBack: ((event: SocketEvent) => void) | undefined;
  let sockets = 0;
  let commands: SocketCommand[] = [];
  const emitted: ConnectionEmitted[] = [];
  const socket = fromCallback<SocketCommand, ConnectionInput, SocketEvent>(({ sendBack: back, receive }) => {
    sockets++;
    sendBack = back;
    const mine: SocketCommand[] = [];
    commands = mine;
    receive((command) => {
      if ((command as { type: string }).type === "test.crash") throw new Error("socket crashed");
      mine.push(command);
    });
  });
  const t = hostChild(connectionMachine.provide({ actors: { socket } }), {
    agentName: "agent-a",
    maxProcesses: 2,
    loadThreshold: 0.75,
    maxRetry: MAX_RETRY,
    timing,
    random: () => RANDOM,
  } satisfies ConnectionInput);
  const snap = () => t.snapshot() as ConnectionSnapshot;
  t.sut().on("*", (event: ConnectionEmitted) => emitted.push(event));
  return {
    ...t,
    snap,
    emitted,
    /** Commands the current socket received. */
    commands: () => commands,
    sockets: () => sockets,
    emit: (event: SocketEvent) => {
      if (!sendBack) throw new Error("no socket");
      sendBack(event);
    },
    crash: () => {
      const child = snap().children.socket as AnyActorRef | undefined;
      if (!child) throw new Error("no live socket to crash");
      child.send({ type: "test.crash" });
    },
  };
}

describe("connection machine (model-based)", () => {
  const paths = createTestModel(connectionModel).getShortestPaths();

  it("the paths visit every state of the model, and take each lease transition", () => {
    const reached = new Set(paths.flatMap((p) => p.steps.map((s) => s.state.value as string)));
    expect([...reached].sort()).toEqual(Object.keys(connectionModel.states).sort());
    const edges = new Set<string>();
    for (const path of paths) {
      for (let i = 1; i < path.steps.length; i++) {
        const from = path.steps[i - 1]?.state.value as string;
        const step = path.steps[i];
        if (step) edges.add(`${from} -${step.event.type}-> ${step.state.value as string}`);
      }
    }
    // (A registered link's loss never gives up in the model: a registration resets the count below MAX_RETRY.)
    for (const edge of [
      "registering -REGISTER_OK_LEASED-> quiet",
      "quiet -PING_DUE-> awaitingPong",
      "quiet -LATE_PONG_LEASED-> quiet",
      "awaitingPong -PONG_LEASED-> quiet",
      "awaitingPong -PONG-> quiet",
    ]) {
      expect(edges).toContain(edge);
    }
  });

  it("the paths reach failed and backoff at every retry count below MAX_RETRY", () => {
    const seen = new Set(paths.flatMap((p) => p.steps.map((s) => `${s.state.value}:${s.state.context.retries}`)));
    expect(seen.has(`failed:${MAX_RETRY}`)).toBe(true);
    for (let r = 1; r < MAX_RETRY; r++) expect(seen.has(`backoff:${r}`)).toBe(true);
  });

  for (const path of paths) {
    it(path.description, async () => {
      const sut = createSut();
      const value = () => sut.snap().value;
      /** The lease renewals the worker must have been given, in order. */
      const forwarded: { type: "worker.lease_renewed"; jobIds: string[]; validForMs: number }[] = [];
      /** How many of them came in the current session (since the last accepted registration). */
      let sessionForwards = 0;
      const healthy = (model: { context: ModelContext }) => {
        expect(sut.snap().status).not.toBe("error");
        expect(sut.host.getSnapshot().status).toBe("active");
        expect(sut.snap().context.retries).toBe(model.context.retries);
        expect(sut.snap().context.workerId).toBe(model.context.workerId);
        expect(sut.ofType("worker.lease_renewed")).toEqual(forwarded);
      };
      /** A live session: the lease the registration granted, and the renewals of its pongs. */
      const session = (model: { context: ModelContext }) => {
        expect(sut.snap().context.leaseMs).toBe(model.context.leased ? LEASE_MS : null);
        expect(sessionForwards > 0).toBe(model.context.forwarded);
      };
      /** A pong that renews the leases of two jobs; the worker must get them as they are. */
      const leasedPong = () => {
        const lease = { jobIds: ["job-a", "job-b"], validForMs: 450 + forwarded.length };
        sut.emit({ type: "registry.pong", timestamp: 1, lease });
        forwarded.push({ type: "worker.lease_renewed", ...lease });
        sessionForwards++;
      };
      await path.test({
        states: {
          connecting: (model) => {
            healthy(model);
            expect(value()).toEqual({ online: "connecting" });
            expect(sut.commands()).toEqual([]);
          },
          registering: (model) => {
            healthy(model);
            expect(value()).toEqual({ online: "registering" });
            expect(sut.commands()).toEqual([
              expect.objectContaining({ type: "send.register", workerId: model.context.workerId }),
            ]);
          },
          quiet: (model) => {
            healthy(model);
            session(model);
            expect(value()).toEqual({ online: { registered: "quiet" } });
            expect(sut.emitted.filter((e) => e.type === "link.connected").at(-1)).toEqual({
              type: "link.connected",
              workerId: "w-1",
            });
          },
          awaitingPong: (model) => {
            healthy(model);
            session(model);
            expect(value()).toEqual({ online: { registered: "awaitingPong" } });
            expect(sut.commands().at(-1)).toEqual({ type: "send.ping" });
          },
          backoff: (model) => {
            healthy(model);
            expect(value()).toBe("backoff");
            expect(sut.snap().children.socket).toBeUndefined();
            const problem = sut.snap().context.lastProblem;
            const retries = model.context.retries;
            const delayMs = RANDOM * Math.min(timing.backoffMaxMs, timing.backoffBaseMs * 2 ** (retries - 1));
            expect(sut.emitted.slice(model.context.lost ? -2 : -1)).toEqual([
              ...(model.context.lost ? [{ type: "link.lost", problem }] : []),
              { type: "link.retrying", attempt: retries + 1, maxRetry: MAX_RETRY, delayMs, problem },
            ]);
          },
          failed: (model) => {
            expect(value()).toBe("failed");
            expect(sut.snap().status).toBe("done");
            const output = { reason: "max_retry", retries: model.context.retries, lastProblem: expect.any(String) };
            expect(sut.snap().output).toEqual(output);
            expect(sut.ofType("xstate.done.actor.sut")).toHaveLength(1);
            expect(sut.host.getSnapshot().status).toBe("active");
            const problem = sut.snap().context.lastProblem;
            expect(sut.emitted.slice(model.context.lost ? -2 : -1)).toEqual([
              ...(model.context.lost ? [{ type: "link.lost", problem }] : []),
              { type: "link.gave_up", reason: "max_retry", retries: model.context.retries, problem },
            ]);
          },
          [UNAUTHORIZED]: (model) => {
            expect(value()).toBe("failed");
            expect(sut.snap().status).toBe("done");
            const output = { reason: "unauthorized", retries: model.context.retries, lastProblem: "401 bad token" };
            expect(sut.snap().output).toEqual(output);
            expect(sut.ofType("xstate.done.actor.sut")).toHaveLength(1);
            expect(sut.emitted.at(-1)).toEqual({
              type: "link.gave_up",
              reason: "unauthorized",
              retries: model.context.retries,
              problem: "401 bad token",
            });
            // No other attempt, however long it waits.
            const sockets = sut.sockets();
            sut.clock.increment(60_000);
            expect(sut.sockets()).toBe(sockets);
          },
        },
        events: {
          OPEN: () => sut.emit({ type: "socket.open" }),
          REGISTER_OK: () => {
            sessionForwards = 0;
            sut.emit({ type: "registry.registered", workerId: "w-1" });
          },
          REGISTER_OK_LEASED: () => {
            sessionForwards = 0;
            sut.emit({ type: "registry.registered", workerId: "w-1", leaseMs: LEASE_MS });
          },
          REGISTER_REFUSED: () => sut.emit({ type: "registry.refused", message: "no" }),
          REGISTER_TIMEOUT: () => {
            sut.clock.increment(timing.registrationTimeoutMs - 1);
            expect(value()).toEqual({ online: "registering" });
            sut.clock.increment(1);
          },
          DROP: () => sut.emit({ type: "socket.closed", code: 1006, reason: "" }),
          CONNECT_FAILED: () => sut.emit({ type: "socket.failed", error: "connection refused" }),
          UNAUTHORIZED: () => sut.emit({ type: "socket.unauthorized", status: 401, error: "401 bad token" }),
          SOCKET_ERROR: () => sut.crash(),
          // min(pingInterval, leaseMs / 3) once the registry grants leases.
          PING_DUE: ({ state }) => {
            const interval = state.context.leased ? LEASE_MS / 3 : timing.pingIntervalMs;
            sut.clock.increment(interval - 1);
            expect(value()).toEqual({ online: { registered: "quiet" } });
            sut.clock.increment(1);
          },
          PONG: () => sut.emit({ type: "registry.pong", timestamp: 1 }),
          PONG_LEASED: () => leasedPong(),
          LATE_PONG_LEASED: () => leasedPong(),
          PONG_TIMEOUT: () => {
            sut.clock.increment(timing.pongTimeoutMs - 1);
            expect(value()).toEqual({ online: { registered: "awaitingPong" } });
            sut.clock.increment(1);
          },
          // Full jitter: random · min(max, base·2^(retries−1)), not a millisecond earlier.
          BACKOFF_ELAPSED: () => {
            const retries = sut.snap().context.retries;
            const delay = RANDOM * Math.min(timing.backoffMaxMs, timing.backoffBaseMs * 2 ** (retries - 1));
            const before = sut.sockets();
            sut.clock.increment(delay - 1);
            expect(value()).toBe("backoff");
            sut.clock.increment(1);
            expect(sut.sockets()).toBe(before + 1);
          },
        },
      });
    });
  }
});
