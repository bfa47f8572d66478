import { describe, expect, it } from "vitest";
import { assign, fromCallback, setup } from "xstate";
import { createTestModel } from "xstate/graph";
import {
  type ConnectionInput,
  connectionMachine,
  type SocketCommand,
  type SocketEvent,
} from "../../machines/connection.ts";
import { hostChild } from "../support/host.ts";

const MAX_RETRY = 2;
const timing = {
  registrationTimeoutMs: 1_000,
  pingIntervalMs: 500,
  pongTimeoutMs: 200,
  backoffBaseMs: 100,
  backoffMaxMs: 400,
};

/** The link as the worker sees it, with a failure count that ends in `failed` after MAX_RETRY. */
const fail = {
  guard: ({ context }: { context: { retries: number } }) => context.retries + 1 >= MAX_RETRY,
  target: "failed",
};
const backOff = { target: "backoff", actions: "countFailure" } as const;
const connectionModel = setup({
  types: { context: {} as { retries: number } },
  actions: { countFailure: assign({ retries: ({ context }) => context.retries + 1 }), reset: assign({ retries: 0 }) },
}).createMachine({
  id: "connectionModel",
  context: { retries: 0 },
  initial: "connecting",
  states: {
    connecting: { on: { OPEN: "registering", DROP: [fail, backOff] } },
    registering: {
      on: {
        REGISTER_OK: { target: "quiet", actions: "reset" },
        REGISTER_REFUSED: [fail, backOff],
        REGISTER_TIMEOUT: [fail, backOff],
        DROP: [fail, backOff],
      },
    },
    quiet: { on: { PING_DUE: "awaitingPong", DROP: [fail, backOff] } },
    awaitingPong: { on: { PONG: "quiet", PONG_TIMEOUT: [fail, backOff], DROP: [fail, backOff] } },
    backoff: { on: { BACKOFF_ELAPSED: "connecting" } },
    failed: { type: "final" },
  },
});

function createSut() {
  let sendBack: ((event: SocketEvent) => void) | undefined;
  const sent: SocketCommand[] = [];
  const socket = fromCallback<SocketCommand, ConnectionInput, SocketEvent>(({ sendBack: back, receive }) => {
    sendBack = back;
    receive((command) => sent.push(command));
  });
  const t = hostChild(connectionMachine.provide({ actors: { socket } }), {
    agentName: "A",
    maxProcesses: 2,
    loadThreshold: 0.75,
    maxRetry: MAX_RETRY,
    timing,
    random: () => 0.5,
  });
  return { ...t, sent, emit: (event: SocketEvent) => sendBack?.(event) };
}

describe("connection machine (model-based)", () => {
  const paths = createTestModel(connectionModel).getShortestPaths();
  it("covers every model state", () => {
    const reached = new Set(paths.flatMap((p) => p.steps.map((s) => s.state.value as string)));
    expect([...reached].sort()).toEqual(Object.keys(connectionModel.states).sort());
  });
  for (const path of paths) {
    it(path.description, async () => {
      const sut = createSut();
      const value = () => sut.snapshot().value;
      await path.test({
        states: {
          connecting: () => expect(value()).toEqual({ online: "connecting" }),
          registering: () => {
            expect(value()).toEqual({ online: "registering" });
            expect(sut.sent.at(-1)).toMatchObject({ type: "send", message: { type: "register" } });
          },
          quiet: () => expect(value()).toEqual({ online: { registered: "quiet" } }),
          awaitingPong: () => {
            expect(value()).toEqual({ online: { registered: "awaitingPong" } });
            expect(sut.sent.at(-1)).toEqual({ type: "send_ping" });
          },
          backoff: () => expect(value()).toBe("backoff"),
          failed: () => {
            expect(sut.snapshot().status).toBe("done");
            expect(sut.snapshot().output).toMatchObject({ reason: "max_retry", retries: MAX_RETRY });
          },
        },
        events: {
          OPEN: () => sut.emit({ type: "socket.open" }),
          REGISTER_OK: () =>
            sut.emit({ type: "registry.register", message: { type: "register", success: true, worker_id: "w" } }),
          REGISTER_REFUSED: () =>
            sut.emit({ type: "registry.register", message: { type: "register", success: false } }),
          REGISTER_TIMEOUT: () => sut.clock.increment(timing.registrationTimeoutMs),
          DROP: () => sut.emit({ type: "socket.closed", code: 1006, reason: "" }),
          PING_DUE: () => sut.clock.increment(timing.pingIntervalMs),
          PONG: () => sut.emit({ type: "registry.pong", message: { type: "pong", timestamp: 1 } }),
          PONG_TIMEOUT: () => sut.clock.increment(timing.pongTimeoutMs),
          // Full jitter with random() = 0.5: half of min(max, base·2^(retries−1)).
          BACKOFF_ELAPSED: () => {
            const retries = (sut.snapshot().context as { retries: number }).retries;
            sut.clock.increment(0.5 * Math.min(timing.backoffMaxMs, timing.backoffBaseMs * 2 ** (retries - 1)));
          },
        },
      });
    });
  }
});
