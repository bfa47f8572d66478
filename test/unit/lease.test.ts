import { describe, expect, it, vi } from "vitest";
import type { SnapshotFrom } from "xstate";
import { type LeaseEvent, type LeaseInput, leaseMachine } from "../../machines/lease.ts";
import { runMachine } from "../support/machine-harness.ts";

const VALID_FOR = 1_000;

/** The real lease machine as the root of its own system, on a SimulatedClock. */
function startLease(input: LeaseInput = {}) {
  const run = runMachine(leaseMachine, { input });
  const snapshot = () => run.snapshot() as SnapshotFrom<typeof leaseMachine>;
  return {
    ...run,
    snapshot,
    value: () => snapshot().value,
    status: () => snapshot().status,
    validForMs: () => snapshot().context.validForMs,
    renew: (validForMs: number) => run.send({ type: "lease.renewed", validForMs }),
  };
}

type Lease = ReturnType<typeof startLease>;

/** Advances to a deadline: still held a millisecond before it, lapsed (final) exactly at it. */
function expectLapsesIn(lease: Lease, ms: number) {
  lease.clock.increment(ms - 1);
  expect(lease.value()).toBe("held");
  expect(lease.status()).toBe("active");
  lease.clock.increment(1);
  expectLapsed(lease);
}

function expectLapsed(lease: Lease) {
  expect(lease.value()).toBe("lapsed");
  expect(lease.status()).toBe("done");
  expect(lease.errors).toEqual([]);
}

/**
 * Sends events to a lease that already lapsed. xstate's development build warns that the actor is
 * stopped; that warning (and nothing else) is expected, so it is checked and kept out of the output.
 */
function sendLate(lease: Lease, ...events: LeaseEvent[]) {
  const warn = vi.spyOn(console, "warn").mockImplementation(() => {});
  try {
    for (const event of events) lease.send(event);
    expect(warn.mock.calls.length).toBe(events.length);
    for (const call of warn.mock.calls) expect(String(call[0])).toMatch(/was sent to stopped actor/);
  } finally {
    warn.mockRestore();
  }
}

describe("lease: no lease (none)", () => {
  it("without validForMs the job holds no lease: none, and it stays none however long it runs", () => {
    const lease = startLease();
    expect(lease.value()).toBe("none");
    expect(lease.status()).toBe("active");
    expect(lease.validForMs()).toBeNull();
    lease.clock.increment(1_000_000_000);
    expect(lease.value()).toBe("none");
    expect(lease.status()).toBe("active");
    expect(lease.errors).toEqual([]);
  });

  it("a renewal with validForMs > 0 makes it held, and it lapses exactly that long after the renewal", () => {
    const lease = startLease();
    lease.clock.increment(5_000);
    lease.renew(VALID_FOR);
    expect(lease.value()).toBe("held");
    expect(lease.validForMs()).toBe(VALID_FOR);
    expectLapsesIn(lease, VALID_FOR);
    expect(lease.clock.now()).toBe(5_000 + VALID_FOR);
  });

  it.each([0, -1, -5_000])("a renewal with validForMs %s lapses it at once", (validForMs) => {
    const lease = startLease();
    lease.renew(validForMs);
    expectLapsed(lease);
    // No renewal was recorded: there was no time to run at all.
    expect(lease.validForMs()).toBeNull();
  });
});

describe("lease: held", () => {
  it("an input validForMs > 0 is held, and lapses exactly at validForMs, not a millisecond before", () => {
    const lease = startLease({ validForMs: VALID_FOR });
    expect(lease.value()).toBe("held");
    expect(lease.status()).toBe("active");
    expect(lease.validForMs()).toBe(VALID_FOR);
    expectLapsesIn(lease, VALID_FOR);
  });

  it("a 1 ms lease lapses after 1 ms", () => {
    const lease = startLease({ validForMs: 1 });
    lease.clock.increment(0);
    expect(lease.value()).toBe("held");
    lease.clock.increment(1);
    expectLapsed(lease);
  });

  it("each renewal restarts the timer: renewed at t=900 for 1000 ms, it lapses at 1900", () => {
    const lease = startLease({ validForMs: VALID_FOR });
    lease.clock.increment(900);
    lease.renew(VALID_FOR);
    expect(lease.value()).toBe("held");
    // Past the first deadline: the renewal replaced it.
    lease.clock.increment(100);
    expect(lease.clock.now()).toBe(VALID_FOR);
    expect(lease.value()).toBe("held");
    lease.clock.increment(899);
    expect(lease.value()).toBe("held");
    lease.clock.increment(1);
    expect(lease.clock.now()).toBe(1_900);
    expectLapsed(lease);
  });

  it("renewed again and again before each deadline it never lapses; the last renewal's validity counts", () => {
    const lease = startLease({ validForMs: VALID_FOR });
    for (let round = 0; round < 50; round++) {
      lease.clock.increment(VALID_FOR - 1);
      expect(lease.value()).toBe("held");
      lease.renew(VALID_FOR);
    }
    expect(lease.clock.now()).toBe(50 * (VALID_FOR - 1));
    lease.renew(2_500);
    expect(lease.validForMs()).toBe(2_500);
    expectLapsesIn(lease, 2_500);
  });

  it("a renewal takes the validity it grants, even a shorter one (it is counted from now)", () => {
    const lease = startLease({ validForMs: 10_000 });
    lease.clock.increment(1_000);
    lease.renew(300);
    expect(lease.validForMs()).toBe(300);
    expectLapsesIn(lease, 300);
    expect(lease.clock.now()).toBe(1_300);
  });

  it.each([0, -1, -10_000])("a renewal with validForMs %s while held changes nothing", (validForMs) => {
    const lease = startLease({ validForMs: VALID_FOR });
    lease.clock.increment(400);
    lease.renew(validForMs);
    expect(lease.value()).toBe("held");
    expect(lease.status()).toBe("active");
    expect(lease.validForMs()).toBe(VALID_FOR);
    // The timer was not restarted: it lapses at the first deadline.
    expectLapsesIn(lease, VALID_FOR - 400);
    expect(lease.clock.now()).toBe(VALID_FOR);
  });
});

describe("lease: lapsed", () => {
  it.each([0, -1, -250])("an input validForMs %s is lapsed at once (final)", (validForMs) => {
    const lease = startLease({ validForMs });
    expectLapsed(lease);
    expect(lease.validForMs()).toBe(validForMs);
    expect(lease.snapshot().output).toBeUndefined();
  });

  it("a lapsed lease is final: a later renewal or any amount of time changes nothing", () => {
    const lease = startLease({ validForMs: VALID_FOR });
    lease.clock.increment(VALID_FOR);
    expectLapsed(lease);
    sendLate(lease, { type: "lease.renewed", validForMs: VALID_FOR }, { type: "lease.renewed", validForMs: 0 });
    lease.clock.increment(VALID_FOR * 10);
    expectLapsed(lease);
    expect(lease.validForMs()).toBe(VALID_FOR);
  });
});
