import { describe, expect, it, vi } from "vitest";
import { assign, type SnapshotFrom, setup } from "xstate";
import { createTestModel } from "xstate/graph";
import { type LeaseInput, leaseMachine } from "../../machines/lease.ts";
import { runMachine } from "../support/machine-harness.ts";
import { modelTransitions } from "../support/model-transitions.ts";

/** The validity the job arrives with, and the (longer) one every renewal grants. */
const GRANTED = 1_000;
const RENEWED = 2_000;
/** How long the job runs between two of the model's renewals (less than any validity left). */
const BETWEEN_RENEWALS = 300;

interface ModelContext {
  /** A renewal was taken: the timer runs from it, with RENEWED. */
  renewed: boolean;
  /** A renewal that granted nothing was ignored while held. */
  ignored: boolean;
}

type ModelEvent =
  | { type: "START_UNLEASED" }
  | { type: "START_LEASED" }
  | { type: "START_RUN_OUT" }
  | { type: "RENEW" }
  | { type: "RENEW_RUN_OUT" }
  | { type: "VALIDITY_ELAPSED" };

/**
 * The lease as the job sees it. No timers: the job's arrival with or without a lease, each renewal
 * from the registry and the validity running out are abstract events the test performs on the real
 * machine. `idle` is before the job created its lease.
 */
const leaseModel = setup({
  types: { context: {} as ModelContext, events: {} as ModelEvent },
  actions: {
    markRenewed: assign({ renewed: true }),
    markIgnored: assign({ ignored: true }),
  },
}).createMachine({
  id: "leaseModel",
  context: { renewed: false, ignored: false },
  initial: "idle",
  states: {
    idle: { on: { START_UNLEASED: "none", START_LEASED: "held", START_RUN_OUT: "lapsed" } },
    none: {
      on: {
        RENEW: { target: "held", actions: "markRenewed" },
        RENEW_RUN_OUT: "lapsed",
      },
    },
    held: {
      on: {
        RENEW: { target: "held", actions: "markRenewed" },
        RENEW_RUN_OUT: { target: "held", actions: "markIgnored" },
        VALIDITY_ELAPSED: "lapsed",
      },
    },
    lapsed: { type: "final" },
  },
});

type ModelSnapshot = SnapshotFrom<typeof leaseModel>;

/** One path's driver: the real lease, and the deadline the path has given it so far. */
function createDriver() {
  let lease: ReturnType<typeof runMachine<typeof leaseMachine>> | undefined;
  /** When the real lease must lapse (clock time); null while it holds no lease. */
  let deadline: number | null = null;
  /** The validity the lease must hold. */
  let validity: number | null = null;
  const sut = () => {
    if (!lease) throw new Error("the lease was not created yet");
    return lease;
  };
  const snapshot = () => sut().snapshot() as SnapshotFrom<typeof leaseMachine>;
  const now = () => sut().clock.now();

  const start = (input: LeaseInput) => {
    lease = runMachine(leaseMachine, { input });
    validity = input.validForMs ?? null;
    deadline = input.validForMs !== undefined && input.validForMs > 0 ? input.validForMs : null;
  };

  /** The job runs on a while its lease holds: never up to the deadline. */
  const runOn = (ms: number) => {
    if (deadline !== null) expect(now() + ms).toBeLessThan(deadline);
    sut().clock.increment(ms);
  };

  const expectActive = (value: string) => {
    expect(snapshot().value).toBe(value);
    expect(snapshot().status).toBe("active");
    expect(sut().errors).toEqual([]);
  };

  const states = {
    idle: () => expect(lease).toBeUndefined(),
    none: () => {
      expectActive("none");
      expect(snapshot().context.validForMs).toBeNull();
      expect(deadline).toBeNull();
    },
    held: (model: ModelSnapshot) => {
      expectActive("held");
      expect(snapshot().context.validForMs).toBe(model.context.renewed ? RENEWED : GRANTED);
      expect(snapshot().context.validForMs).toBe(validity);
      expect(deadline).not.toBeNull();
      expect(now()).toBeLessThan(deadline as number);
    },
    lapsed: () => {
      expect(snapshot().value).toBe("lapsed");
      expect(snapshot().status).toBe("done");
      expect(sut().errors).toEqual([]);
      // Lapsed exactly at its deadline, or at once when there was none left.
      if (deadline !== null) expect(now()).toBe(deadline);
      else expect(validity === null || validity <= 0).toBe(true);
    },
  };

  const events = {
    START_UNLEASED: () => start({}),
    START_LEASED: () => start({ validForMs: GRANTED }),
    START_RUN_OUT: () => start({ validForMs: 0 }),
    RENEW: () => {
      runOn(BETWEEN_RENEWALS);
      sut().send({ type: "lease.renewed", validForMs: RENEWED });
      validity = RENEWED;
      deadline = now() + RENEWED;
    },
    RENEW_RUN_OUT: () => {
      runOn(BETWEEN_RENEWALS);
      sut().send({ type: "lease.renewed", validForMs: 0 });
    },
    VALIDITY_ELAPSED: () => {
      if (deadline === null) throw new Error("no deadline to reach");
      const left = deadline - now();
      sut().clock.increment(left - 1);
      expect(snapshot().value).toBe("held");
      sut().clock.increment(1);
    },
  };

  /** After the path: a held lease still lapses on time, no lease never lapses, a lapsed one stays so. */
  const expectSettledAfterPath = () => {
    if (!lease) return;
    const value = snapshot().value;
    if (value === "held") {
      events.VALIDITY_ELAPSED();
      states.lapsed();
    } else if (value === "none") {
      sut().clock.increment(1_000_000_000);
      states.none();
    } else {
      const warn = vi.spyOn(console, "warn").mockImplementation(() => {});
      sut().send({ type: "lease.renewed", validForMs: RENEWED });
      for (const call of warn.mock.calls) expect(String(call[0])).toMatch(/was sent to stopped actor/);
      warn.mockRestore();
      sut().clock.increment(RENEWED * 10);
      expect(snapshot().value).toBe("lapsed");
      expect(snapshot().status).toBe("done");
    }
  };

  return { states, events, expectSettledAfterPath };
}

const model = createTestModel(leaseModel);
const paths = model.getShortestPaths();

describe("lease (model-based)", () => {
  it("the shortest paths cover every state and every transition of the model", () => {
    const states = new Set<string>();
    const edges = new Set<string>();
    for (const path of paths) {
      let previous: string | null = null;
      for (const step of path.steps) {
        const value = step.state.value as string;
        states.add(value);
        if (previous !== null) edges.add(`${previous} -${step.event.type}-> ${value}`);
        previous = value;
      }
    }
    expect([...states].sort()).toEqual(Object.keys(leaseModel.root.states).sort());
    expect([...edges].sort()).toEqual(modelTransitions(leaseModel));
  });

  for (const path of paths) {
    it(path.description, async () => {
      const driver = createDriver();
      await path.test({ states: driver.states, events: driver.events });
      driver.expectSettledAfterPath();
    });
  }
});
