import { describe, expect, it } from "vitest";
import { SimulatedClock } from "xstate";
import { type DispatchEmitted, type DispatchEvent, dispatchMachine } from "../../machines/registry/dispatch.ts";
import { createTracedActor } from "../support/actor.ts";

const timing = { offerTimeoutMs: 100, runningTimeoutMs: 500, dispatchTimeoutMs: 2_000, cancelTimeoutMs: 300 };

function start(input: Partial<{ redispatch: boolean; adoptedBy: string }> = {}) {
  const clock = new SimulatedClock();
  const emitted: DispatchEmitted[] = [];
  const actor = createTracedActor(dispatchMachine, {
    clock,
    input: {
      jobId: "j1",
      redispatch: input.redispatch ?? false,
      timing,
      ...(input.adoptedBy ? { adoptedBy: input.adoptedBy } : {}),
    },
  });
  actor.on("*", (event) => emitted.push(event as DispatchEmitted));
  actor.start();
  const of = <T extends DispatchEmitted["type"]>(type: T) =>
    emitted.filter((e): e is Extract<DispatchEmitted, { type: T }> => e.type === type);
  const value = () => actor.getSnapshot().value;
  return { actor, clock, emitted, of, value, send: (e: DispatchEvent) => actor.send(e) };
}

function toAssigned(workerId = "w1", input: Partial<{ redispatch: boolean }> = {}) {
  const t = start(input);
  t.send({ type: "candidate", workerId });
  t.send({ type: "answer", workerId, available: true });
  return t;
}

describe("dispatch machine", () => {
  it("asks for a candidate, offers, and assigns on a yes", () => {
    const t = start();
    expect(t.value()).toEqual({ unassigned: "pending" });
    expect(t.of("need_candidate")).toEqual([{ type: "need_candidate", jobId: "j1", exclude: [] }]);
    t.send({ type: "candidate", workerId: "w1" });
    expect(t.value()).toEqual({ unassigned: "offering" });
    expect(t.of("offer")).toEqual([{ type: "offer", jobId: "j1", workerId: "w1" }]);
    t.send({ type: "answer", workerId: "w2", available: true });
    expect(t.value()).toEqual({ unassigned: "offering" });
    t.send({ type: "answer", workerId: "w1", available: true });
    expect(t.value()).toBe("assigned");
    expect(t.of("assign")).toEqual([{ type: "assign", jobId: "j1", workerId: "w1" }]);
    expect(t.of("status").map((s) => s.status)).toEqual(["pending", "offering", "assigned"]);
  });

  it("moves on after a no, an offer timeout, or a lost candidate, remembering who was tried", () => {
    const t = start();
    t.send({ type: "candidate", workerId: "w1" });
    t.send({ type: "answer", workerId: "w1", available: false });
    expect(t.value()).toEqual({ unassigned: "pending" });
    expect(t.of("need_candidate").at(-1)?.exclude).toEqual(["w1"]);
    t.send({ type: "candidate", workerId: "w2" });
    t.clock.increment(99);
    expect(t.value()).toEqual({ unassigned: "offering" });
    t.clock.increment(1);
    expect(t.of("need_candidate").at(-1)?.exclude).toEqual(["w1", "w2"]);
    t.send({ type: "candidate", workerId: "w3" });
    t.send({ type: "worker_gone", workerId: "w9" });
    expect(t.value()).toEqual({ unassigned: "offering" });
    t.send({ type: "worker_gone", workerId: "w3" });
    expect(t.of("need_candidate").at(-1)?.exclude).toEqual(["w1", "w2", "w3"]);
  });

  it("waits without a candidate and retries on capacity; rejects at the deadline", () => {
    const t = start();
    t.send({ type: "no_candidate" });
    expect(t.value()).toEqual({ unassigned: "waiting" });
    t.send({ type: "capacity_changed" });
    expect(t.value()).toEqual({ unassigned: "pending" });
    expect(t.of("need_candidate")).toHaveLength(2);
    t.send({ type: "no_candidate" });
    t.clock.increment(2_000);
    expect(t.value()).toBe("rejected");
    expect(t.of("finished")).toEqual([
      { type: "finished", jobId: "j1", output: expect.objectContaining({ status: "rejected", workerId: null }) },
    ]);
    expect(t.actor.getSnapshot().output?.status).toBe("rejected");
  });

  it("runs and ends with the worker's final status, reason and error", () => {
    for (const [status, reason] of [
      ["completed", undefined],
      ["failed", "entrypoint_error"],
      ["cancelled", "cancelled"],
    ] as const) {
      const t = toAssigned();
      t.send({ type: "job_update", workerId: "other", status: "running" });
      expect(t.value()).toBe("assigned");
      t.send({ type: "job_update", workerId: "w1", status: "running" });
      expect(t.value()).toBe("running");
      t.send({ type: "job_update", workerId: "other", status: "completed" });
      expect(t.value()).toBe("running");
      const error = status === "failed" ? { name: "Error", message: "boom" } : undefined;
      t.send({
        type: "job_update",
        workerId: "w1",
        status,
        ...(reason ? { reason } : {}),
        ...(error ? { error } : {}),
      });
      expect(t.value()).toBe(status);
      const finished = t.of("finished");
      expect(finished).toHaveLength(1);
      expect(finished[0]?.output).toMatchObject({ status, workerId: "w1", attempts: 1, ...(reason ? { reason } : {}) });
      if (error) expect(finished[0]?.output.error).toEqual(error);
      t.send({ type: "job_update", workerId: "w1", status: "failed" });
      expect(t.of("finished")).toHaveLength(1);
    }
  });

  it("a final report straight after assignment settles too", () => {
    const t = toAssigned();
    t.send({ type: "job_update", workerId: "w1", status: "failed", reason: "launch_failed" });
    expect(t.value()).toBe("failed");
  });

  it("terminates a worker that never reports running, then moves on", () => {
    const t = toAssigned();
    t.clock.increment(500);
    expect(t.of("terminate")).toEqual([
      { type: "terminate", jobId: "j1", workerId: "w1", reason: "did not start in time" },
    ]);
    expect(t.value()).toEqual({ unassigned: "pending" });
    expect(t.of("need_candidate").at(-1)?.exclude).toEqual(["w1"]);
    t.send({ type: "candidate", workerId: "w2" });
    t.send({ type: "answer", workerId: "w2", available: true });
    expect(t.actor.getSnapshot().context.attempts).toBe(2);
  });

  it("a lost worker ends the job lost, or dispatches it again when asked to", () => {
    const lost = toAssigned();
    lost.send({ type: "job_update", workerId: "w1", status: "running" });
    lost.send({ type: "worker_gone", workerId: "w2" });
    expect(lost.value()).toBe("running");
    lost.send({ type: "worker_gone", workerId: "w1" });
    expect(lost.value()).toBe("lost");
    expect(lost.of("finished")[0]?.output).toMatchObject({ status: "lost", reason: "worker lost" });

    const lostAssigned = toAssigned();
    lostAssigned.send({ type: "worker_gone", workerId: "w1" });
    expect(lostAssigned.value()).toBe("lost");

    const again = toAssigned("w1", { redispatch: true });
    again.send({ type: "worker_gone", workerId: "w1" });
    expect(again.value()).toEqual({ unassigned: "pending" });
    const againRunning = toAssigned("w1", { redispatch: true });
    againRunning.send({ type: "job_update", workerId: "w1", status: "running" });
    againRunning.send({ type: "worker_gone", workerId: "w1" });
    expect(againRunning.value()).toEqual({ unassigned: "pending" });
    expect(againRunning.of("need_candidate").at(-1)?.exclude).toEqual(["w1"]);
  });

  it("cancels before assignment at once, and after assignment through the worker", () => {
    const early = start();
    early.send({ type: "cancel" });
    expect(early.value()).toBe("cancelled");

    const viaReport = toAssigned();
    viaReport.send({ type: "cancel" });
    expect(viaReport.value()).toBe("cancelling");
    expect(viaReport.of("terminate")).toHaveLength(1);
    viaReport.send({ type: "job_update", workerId: "w1", status: "cancelled" });
    expect(viaReport.value()).toBe("cancelled");

    const viaLoss = toAssigned();
    viaLoss.send({ type: "job_update", workerId: "w1", status: "running" });
    viaLoss.send({ type: "cancel" });
    viaLoss.send({ type: "worker_gone", workerId: "w1" });
    expect(viaLoss.value()).toBe("cancelled");
    expect(viaLoss.of("finished")[0]?.output.reason).toBe("cancelled; the worker was lost");

    const viaTimeout = toAssigned();
    viaTimeout.send({ type: "cancel" });
    viaTimeout.clock.increment(300);
    expect(viaTimeout.value()).toBe("cancelled");
    expect(viaTimeout.of("finished")[0]?.output.reason).toBe("cancelled; the worker did not confirm");
  });

  it("an adopted job starts running on its worker", () => {
    const t = start({ adoptedBy: "w7" });
    expect(t.value()).toBe("running");
    expect(t.actor.getSnapshot().context).toMatchObject({ workerId: "w7", attempts: 1 });
    t.send({ type: "job_update", workerId: "w7", status: "completed" });
    expect(t.value()).toBe("completed");
  });

  it("no event in any reachable state puts it in error", () => {
    const events: DispatchEvent[] = [
      { type: "candidate", workerId: "w1" },
      { type: "no_candidate" },
      { type: "capacity_changed" },
      { type: "answer", workerId: "w1", available: true },
      { type: "answer", workerId: "w2", available: false },
      { type: "job_update", workerId: "w1", status: "running" },
      { type: "job_update", workerId: "w2", status: "completed" },
      { type: "worker_gone", workerId: "w3" },
      { type: "cancel" },
    ];
    const setups = [() => start(), () => toAssigned(), () => start({ adoptedBy: "w1" })];
    for (const setup of setups) {
      for (const event of events) {
        const t = setup();
        for (const other of events) {
          for (const e of [event, other]) {
            if (t.actor.getSnapshot().status === "active") t.send(e);
          }
          expect(t.actor.getSnapshot().status).not.toBe("error");
        }
      }
    }
  });
});
