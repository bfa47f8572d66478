import { describe, expect, it } from "vitest";
import type { SocketEvent } from "../../machines/connection.ts";
import { MAX_INVENTORY_ENTRIES, PROTOCOL_VERSION, type WorkerMessage } from "../../src/protocol/registry.ts";
import { LeaseClock } from "../../src/worker/lease-clock.ts";
import { parseRegistryFrame } from "../../src/worker/registry-wire.ts";

/**
 * The worker's side of the registry's leases (src/worker/lease-clock.ts), driven through the real
 * frame parser with a fake `now`: every lease counts from when the worker sent what the registry
 * answered, never from when the answer arrived.
 */

const LEASE_MS = 1_500;

const REGISTER: WorkerMessage = {
  type: "register",
  protocol_version: PROTOCOL_VERSION,
  worker_id: "",
  agent_name: "leased",
  capabilities: [],
  load_threshold: 1,
  max_processes: 2,
  jobs: [],
};

/** The machine event for a frame from the registry that arrived at `now`, with the clock's lease fields. */
function receive(clock: LeaseClock, message: Record<string, unknown>, now: number): SocketEvent {
  const { event, issues } = parseRegistryFrame(JSON.stringify(message), { clock, now });
  expect(issues, `frame ${JSON.stringify(message)}`).toBeUndefined();
  return event;
}

const registered = (leaseMs: number | null = LEASE_MS) => ({
  type: "register",
  success: true,
  worker_id: "worker-1",
  protocol_version: PROTOCOL_VERSION,
  ...(leaseMs === null ? {} : { lease_ms: leaseMs }),
});

const pong = (timestamp: number, leased?: string[]) => ({ type: "pong", timestamp, ...(leased ? { leased } : {}) });

const assignment = (jobId: string, leaseMs?: number) => ({
  type: "job_assignment",
  job_id: jobId,
  agent_name: "leased",
  metadata: { n: 1 },
  ...(leaseMs === undefined ? {} : { lease_ms: leaseMs }),
});

/** How long an assignment arriving at `now` may run, as the clock says (undefined: it holds no lease). */
function assignedValidity(clock: LeaseClock, now: number, leaseMs: number | undefined = LEASE_MS): number | undefined {
  const event = receive(clock, assignment(`job-${now}`, leaseMs), now);
  if (event.type !== "registry.assigned") throw new Error(`expected an assignment, got ${event.type}`);
  return event.spec.leaseValidForMs;
}

/** A clock whose register left at `sentAt` and whose answer (lease LEASE_MS) arrived at `answeredAt`. */
function registeredClock(sentAt: number, answeredAt: number): LeaseClock {
  const clock = new LeaseClock();
  clock.sent(REGISTER, sentAt);
  receive(clock, registered(), answeredAt);
  return clock;
}

describe("LeaseClock: the register answer", () => {
  it("carries the registry's lease length to the connection machine", () => {
    const clock = new LeaseClock();
    clock.sent(REGISTER, 1_000);
    expect(receive(clock, registered(), 1_400)).toEqual({
      type: "registry.registered",
      workerId: "worker-1",
      leaseMs: LEASE_MS,
    });
  });

  it("counts as a round trip answered at the register's send time, not its arrival", () => {
    const clock = registeredClock(1_000, 1_400);
    // From the send: 1 000 + 1 500 − 1 600 = 900 (from the arrival it would be 1 300).
    expect(assignedValidity(clock, 1_600)).toBe(900);
  });

  it("without lease_ms leaves the event as it is and counts no round trip", () => {
    const clock = new LeaseClock();
    clock.sent(REGISTER, 1_000);
    expect(receive(clock, registered(null), 1_100)).toEqual({ type: "registry.registered", workerId: "worker-1" });
    // No lease length: a pong's `leased` renews nothing...
    expect(receive(clock, pong(1_200, ["job-a"]), 1_250)).toEqual({ type: "registry.pong", timestamp: 1_200 });
    // ...yet the pong was an answered round trip for a later leased assignment.
    expect(assignedValidity(clock, 1_300)).toBe(1_200 + LEASE_MS - 1_300);
  });

  it("a refusal carries no lease and counts no round trip", () => {
    const clock = new LeaseClock();
    clock.sent(REGISTER, 1_000);
    expect(receive(clock, { type: "register", success: false, message: "no", lease_ms: LEASE_MS }, 1_100)).toEqual({
      type: "registry.refused",
      message: "no",
    });
    expect(assignedValidity(clock, 1_200)).toBe(0);
  });

  it("only a register counts as the register's send: other messages sent leave it alone", () => {
    const clock = new LeaseClock();
    clock.sent(REGISTER, 1_000);
    clock.sent({ type: "ping", timestamp: 1_050 }, 1_050);
    clock.sent({ type: "status_update", worker_id: "w", status: "available", load: 0, job_count: 0 }, 1_060);
    receive(clock, registered(), 1_100);
    expect(assignedValidity(clock, 1_200)).toBe(1_000 + LEASE_MS - 1_200);
  });
});

describe("LeaseClock: pongs", () => {
  it("renew the leased jobs from the pong's own timestamp: validity = timestamp + leaseMs − now", () => {
    const clock = registeredClock(0, 100);
    expect(receive(clock, pong(2_000, ["job-a", "job-b"]), 2_300)).toEqual({
      type: "registry.pong",
      timestamp: 2_000,
      lease: { jobIds: ["job-a", "job-b"], validForMs: 2_000 + LEASE_MS - 2_300 },
    });
  });

  it("a pong whose timestamp is in the future renews nothing and counts as no round trip", () => {
    const clock = registeredClock(0, 100);
    expect(receive(clock, pong(1_000, []), 1_100).type).toBe("registry.pong");
    // Timestamped after it arrived: no ping of this worker's, whatever it says.
    expect(receive(clock, pong(5_000, ["job-a"]), 1_200)).toEqual({ type: "registry.pong", timestamp: 5_000 });
    // Assignments still count from the pong of 1 000, not from 5 000.
    expect(assignedValidity(clock, 1_300)).toBe(1_000 + LEASE_MS - 1_300);
  });

  it("a pong without `leased` renews nothing but is an answered round trip for later assignments", () => {
    const clock = registeredClock(0, 100);
    expect(receive(clock, pong(3_000), 3_050)).toEqual({ type: "registry.pong", timestamp: 3_000 });
    expect(assignedValidity(clock, 3_400)).toBe(3_000 + LEASE_MS - 3_400);
  });

  it("a pong with an empty `leased` is passed on as an empty renewal (the connection machine drops it)", () => {
    const clock = registeredClock(0, 100);
    expect(receive(clock, pong(1_000, []), 1_100)).toEqual({
      type: "registry.pong",
      timestamp: 1_000,
      lease: { jobIds: [], validForMs: LEASE_MS - 100 },
    });
  });

  it("a pong whose lease has already run out by its arrival renews nothing, yet still counts", () => {
    const clock = registeredClock(0, 100);
    // 1 000 + 1 500 = 2 500: at 2 500 nothing is left of it.
    expect(receive(clock, pong(1_000, ["job-a"]), 2_500)).toEqual({ type: "registry.pong", timestamp: 1_000 });
    expect(assignedValidity(clock, 2_600, 2_000)).toBe(1_000 + 2_000 - 2_600);
  });

  it("a pong before any register answer renews nothing (no lease length yet), but counts", () => {
    const clock = new LeaseClock();
    expect(receive(clock, pong(500, ["job-a"]), 600)).toEqual({ type: "registry.pong", timestamp: 500 });
    expect(assignedValidity(clock, 700)).toBe(500 + LEASE_MS - 700);
  });

  it("a pong whose timestamp is exactly now renews for the whole lease", () => {
    const clock = registeredClock(0, 100);
    expect(receive(clock, pong(4_000, ["job-a"]), 4_000)).toMatchObject({
      lease: { jobIds: ["job-a"], validForMs: LEASE_MS },
    });
  });
});

describe("LeaseClock: assignments", () => {
  it("with lease_ms: validity = newest answered send time + lease_ms − now", () => {
    const clock = registeredClock(0, 100);
    receive(clock, pong(1_000, []), 1_200);
    receive(clock, pong(1_500, []), 1_700);
    // The assignment's own lease_ms counts, not the register's.
    expect(assignedValidity(clock, 1_800, 4_000)).toBe(1_500 + 4_000 - 1_800);
  });

  it("is clamped at 0 once that is past", () => {
    const clock = registeredClock(0, 100);
    expect(assignedValidity(clock, 1_500)).toBe(0);
    expect(assignedValidity(clock, 60_000)).toBe(0);
  });

  it("never exceeds lease_ms, even if the clock it is given went back", () => {
    const clock = registeredClock(0, 100);
    receive(clock, pong(10_000, []), 10_050);
    expect(assignedValidity(clock, 5_100, 1_500)).toBe(1_500);
  });

  it("is 0 before any answered round trip", () => {
    expect(assignedValidity(new LeaseClock(), 1_000)).toBe(0);
    // A register sent but not answered yet is no answered round trip either.
    const clock = new LeaseClock();
    clock.sent(REGISTER, 900);
    expect(assignedValidity(clock, 1_000)).toBe(0);
  });

  it("without lease_ms is passed on untouched", () => {
    const clock = registeredClock(0, 100);
    const event = receive(clock, assignment("job-plain"), 200);
    expect(event).toEqual({
      type: "registry.assigned",
      spec: { jobId: "job-plain", agentName: "leased", metadata: { n: 1 } },
    });
    expect(event.type === "registry.assigned" && "leaseValidForMs" in event.spec).toBe(false);
  });

  it("leases never shorten because of an older pong: the newest answered send time wins", () => {
    const clock = registeredClock(0, 100);
    receive(clock, pong(3_000, []), 3_100);
    // An older pong arriving later (only a reordered link could do it) moves nothing back.
    receive(clock, pong(2_000, []), 3_200);
    expect(assignedValidity(clock, 3_300)).toBe(3_000 + LEASE_MS - 3_300);
    // Nor does a register answer carrying an older send time.
    clock.sent(REGISTER, 1_000);
    receive(clock, registered(), 3_400);
    expect(assignedValidity(clock, 3_500)).toBe(3_000 + LEASE_MS - 3_500);
  });

  it("other frames pass through untouched and leave the clock alone", () => {
    const clock = registeredClock(0, 100);
    const offer = { type: "availability_request", job_id: "job-o", agent_name: "leased" };
    expect(receive(clock, offer, 200)).toEqual({
      type: "registry.offer",
      spec: { jobId: "job-o", agentName: "leased" },
    });
    expect(receive(clock, { type: "ping", timestamp: 99_999 }, 300)).toEqual({
      type: "registry.ping",
      timestamp: 99_999,
    });
    expect(receive(clock, { type: "job_termination", job_id: "job-o" }, 400)).toEqual({
      type: "registry.terminate",
      jobId: "job-o",
    });
    // A registry ping's timestamp is no round trip of the worker's: assignments still count from the register.
    expect(assignedValidity(clock, 500)).toBe(0 + LEASE_MS - 500);
  });
});

describe("the wire's lease fields", () => {
  it("a pong leases at most MAX_INVENTORY_ENTRIES jobs", () => {
    const ids = (n: number) => Array.from({ length: n }, (_, i) => `job-${i}`);
    const clock = registeredClock(0, 100);
    const ok = parseRegistryFrame(JSON.stringify(pong(1_000, ids(MAX_INVENTORY_ENTRIES))), { clock, now: 1_000 });
    expect(ok.event).toMatchObject({ lease: { validForMs: LEASE_MS } });
    const tooMany = parseRegistryFrame(JSON.stringify(pong(1_000, ids(MAX_INVENTORY_ENTRIES + 1))), {
      clock,
      now: 1_000,
    });
    expect(tooMany.event.type).toBe("socket.invalid");
  });

  it("lease_ms must be a positive whole number of at most an hour", () => {
    for (const leaseMs of [0, -1, 1.5, 3_600_001]) {
      const { event } = parseRegistryFrame(JSON.stringify(assignment("job-x", leaseMs)));
      expect(event.type, `lease_ms ${leaseMs}`).toBe("socket.invalid");
      expect(parseRegistryFrame(JSON.stringify(registered(leaseMs))).event.type, `lease_ms ${leaseMs}`).toBe(
        "socket.invalid",
      );
    }
    expect(parseRegistryFrame(JSON.stringify(assignment("job-x", 3_600_000))).event.type).toBe("registry.assigned");
  });

  it("without a lease clock the frames parse as before: no lease fields", () => {
    expect(parseRegistryFrame(JSON.stringify(registered())).event).toEqual({
      type: "registry.registered",
      workerId: "worker-1",
    });
    expect(parseRegistryFrame(JSON.stringify(pong(1, ["job-a"]))).event).toEqual({
      type: "registry.pong",
      timestamp: 1,
    });
    const event = parseRegistryFrame(JSON.stringify(assignment("job-y", LEASE_MS))).event;
    expect(event.type === "registry.assigned" && event.spec.leaseValidForMs).toBeUndefined();
  });
});
