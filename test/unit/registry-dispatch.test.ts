import { describe, expect, it } from "vitest";
import {
  type DispatchEvent,
  type DispatchInput,
  type DispatchOutput,
  type DispatchTiming,
  dispatchMachine,
} from "../../machines/registry/dispatch.ts";
import { runMachine } from "../support/machine-harness.ts";

const timing: DispatchTiming = {
  offerTimeoutMs: 100,
  runningTimeoutMs: 500,
  dispatchTimeoutMs: 2_000,
  cancelTimeoutMs: 300,
  releaseTimeoutMs: 1_000,
  leaseFenceMs: 1_500,
};

type Options = Partial<Omit<DispatchInput, "jobId" | "timing">>;

/** The dispatch machine alone, on a simulated clock, with every emitted event recorded in order. */
function dispatch(options: Options = {}) {
  const t = runMachine(dispatchMachine, { input: { jobId: "j1", redispatch: false, timing, ...options } });
  let mark = 0;
  return {
    ...t,
    of: t.emittedOf,
    value: () => t.snapshot().value,
    context: () => t.snapshot().context,
    status: () => t.snapshot().status,
    output: () => t.snapshot().output as DispatchOutput | undefined,
    /** What was emitted since the previous call (or the start). */
    fresh: () => {
      const out = t.emitted.slice(mark);
      mark = t.emitted.length;
      return out;
    },
  };
}
type Dispatch = ReturnType<typeof dispatch>;

const EPOCH = 3;

function offering(options: Options = {}, workerId = "w1", epoch = EPOCH) {
  const t = dispatch(options);
  t.send({ type: "candidate", workerId, epoch });
  return t;
}

function assigned(options: Options = {}, workerId = "w1", epoch = EPOCH) {
  const t = offering(options, workerId, epoch);
  t.send({ type: "answer", workerId, available: true });
  return t;
}

function running(options: Options = {}, workerId = "w1") {
  const t = assigned(options, workerId);
  t.send({ type: "job_update", workerId, status: "running" });
  return t;
}

function cancelling(options: Options = {}) {
  const t = assigned(options);
  t.send({ type: "cancel", reason: "user" });
  return t;
}

/** The worker missed its running deadline and was told to let go. */
function releasing(options: Options = {}) {
  const t = assigned(options);
  t.clock.increment(timing.runningTimeoutMs);
  return t;
}

/** With redispatch, its worker lost while running: it waits out the worker's lease before moving on. */
function fencing(options: Options = {}, fenceMs?: number) {
  const t = running({ redispatch: true, ...options });
  t.send({ type: "worker_gone", workerId: "w1", ...(fenceMs === undefined ? {} : { fenceMs }) });
  return t;
}

/** With redispatch, its worker never confirmed letting go by the release deadline: fenced, still marked released. */
function fencingReleased() {
  const t = releasing({ redispatch: true });
  t.clock.increment(timing.releaseTimeoutMs);
  return t;
}

/** Taken over from a dead node with redispatch: its worker is nowhere, but may still run the job. */
function fenced(ms = 400, options: Options = {}) {
  return dispatch({ redispatch: true, fence: { workerId: "w5", ms }, ...options });
}

const status = (s: string, workerId: string | null, attempts: number) => ({
  type: "status",
  jobId: "j1",
  status: s,
  workerId,
  attempts,
});
const needCandidate = (tried: Record<string, number>, prefer: string | null = null, hops = 0) => ({
  type: "need_candidate",
  jobId: "j1",
  tried,
  prefer,
  hops,
});
const ev = (type: string, workerId = "w1") => ({ type, jobId: "j1", workerId });

/** It ended as `status`, announced once, with the machine's output equal to the announcement. */
function expectFinal(t: Dispatch, output: Partial<DispatchOutput> & { status: DispatchOutput["status"] }) {
  expect(t.value()).toBe(output.status);
  expect(t.status()).toBe("done");
  const announced = t.of("finished");
  expect(announced).toHaveLength(1);
  expect(announced[0]?.output).toEqual(t.output());
  expect(t.output()).toMatchObject({ jobId: "j1", ...output });
  expect(t.of("handed_over")).toEqual([]);
}

/**
 * Every reserve has its release, every bind its unbind and every waiting its waiting_over, except
 * the one of the state it is in now.
 */
function expectBalanced(t: Dispatch, open: { offering?: string; bound?: string; waiting?: boolean } = {}) {
  expect(t.of("waiting_over")).toHaveLength(t.of("waiting").length - (open.waiting ? 1 : 0));
  const reserves = t.of("reserve").map((e) => e.workerId);
  const releases = t.of("release").map((e) => e.workerId);
  expect(releases).toEqual(open.offering ? reserves.slice(0, -1) : reserves);
  if (open.offering) expect(reserves.at(-1)).toBe(open.offering);
  const binds = t.of("bind").map((e) => e.workerId);
  const unbinds = t.of("unbind").map((e) => e.workerId);
  expect(unbinds).toEqual(open.bound ? binds.slice(0, -1) : binds);
  if (open.bound) expect(binds.at(-1)).toBe(open.bound);
}

describe("dispatch machine: finding a worker", () => {
  it("starts pending: publishes the status and asks for a candidate with what it knows", () => {
    const t = dispatch();
    expect(t.value()).toEqual({ unassigned: "pending" });
    expect(t.fresh()).toEqual([status("pending", null, 0), needCandidate({})]);
    expect(t.context()).toMatchObject({
      jobId: "j1",
      tried: {},
      prefer: null,
      hops: 0,
      candidate: null,
      workerId: null,
      boundEpoch: 0,
      attempts: 0,
      cause: null,
      released: false,
      final: null,
    });

    const handed = dispatch({ prefer: "w9", hops: 2, tried: { w4: 7 } });
    expect(handed.of("need_candidate")).toEqual([needCandidate({ w4: 7 }, "w9", 2)]);
  });

  it("offers to a local candidate: reserve, status, offer; the preferred worker is asked once", () => {
    const t = dispatch({ prefer: "w9" });
    t.fresh();
    t.send({ type: "candidate", workerId: "w9", epoch: 4 });
    expect(t.value()).toEqual({ unassigned: "offering" });
    expect(t.fresh()).toEqual([ev("reserve", "w9"), status("offering", "w9", 0), ev("offer", "w9")]);
    expect(t.context()).toMatchObject({ candidate: { workerId: "w9", epoch: 4 }, prefer: null });
    t.send({ type: "answer", workerId: "w9", available: false });
    expect(t.of("need_candidate").at(-1)).toEqual(needCandidate({ w9: 4 }, null));
  });

  it("binds on the candidate's yes: release, bind, status assigned, assign", () => {
    const t = offering();
    t.fresh();
    // A yes from a worker it did not ask changes nothing.
    t.send({ type: "answer", workerId: "w2", available: true });
    expect(t.value()).toEqual({ unassigned: "offering" });
    expect(t.fresh()).toEqual([]);
    t.send({ type: "answer", workerId: "w1", available: true });
    expect(t.value()).toEqual({ bound: "assigned" });
    expect(t.fresh()).toEqual([ev("release"), ev("bind"), status("assigned", "w1", 1), ev("assign")]);
    expect(t.context()).toMatchObject({ workerId: "w1", boundEpoch: EPOCH, candidate: null, attempts: 1 });
    expectBalanced(t, { bound: "w1" });
  });

  it("sends the assignment once the store confirmed it, and only while still assigned to that worker", () => {
    const t = assigned();
    t.fresh();
    t.send({ type: "assignment_fenced", workerId: "w2" });
    expect(t.fresh()).toEqual([]);
    t.send({ type: "assignment_fenced", workerId: "w1" });
    expect(t.value()).toEqual({ bound: "assigned" });
    expect(t.fresh()).toEqual([ev("send_assignment")]);

    // The write came back after the running deadline: the worker was told to let go, so the job
    // must not reach it after that termination.
    const late = assigned();
    late.clock.increment(timing.runningTimeoutMs);
    expect(late.value()).toEqual({ bound: "releasing" });
    late.fresh();
    late.send({ type: "assignment_fenced", workerId: "w1" });
    expect(late.value()).toEqual({ bound: "releasing" });
    expect(late.fresh()).toEqual([]);
  });

  it("moves on after a no, an offer timeout or a lost candidate, remembering each with its epoch", () => {
    const t = offering({}, "w1", 3);
    t.send({ type: "answer", workerId: "w1", available: false, error: "busy" });
    expect(t.value()).toEqual({ unassigned: "pending" });
    expect(t.of("need_candidate").at(-1)).toEqual(needCandidate({ w1: 3 }));
    expect(t.of("status").at(-1)).toEqual(status("pending", null, 0));

    t.send({ type: "candidate", workerId: "w2", epoch: 5 });
    t.elapse(timing.offerTimeoutMs);
    expect(t.value()).toEqual({ unassigned: "pending" });
    expect(t.of("need_candidate").at(-1)).toEqual(needCandidate({ w1: 3, w2: 5 }));

    t.send({ type: "candidate", workerId: "w3", epoch: 1 });
    t.send({ type: "worker_gone", workerId: "w9" });
    expect(t.value()).toEqual({ unassigned: "offering" });
    t.send({ type: "worker_gone", workerId: "w3" });
    expect(t.value()).toEqual({ unassigned: "pending" });
    expect(t.of("need_candidate").at(-1)).toEqual(needCandidate({ w1: 3, w2: 5, w3: 1 }));

    // The same worker asked again later (its epoch moved on) is remembered at its new epoch.
    t.send({ type: "candidate", workerId: "w1", epoch: 8 });
    t.send({ type: "answer", workerId: "w1", available: false });
    expect(t.context().tried).toEqual({ w1: 8, w2: 5, w3: 1 });
    expect(t.of("offer").map((e) => e.workerId)).toEqual(["w1", "w2", "w3", "w1"]);
    expectBalanced(t);
  });

  it("hands a remote candidate over to its node with what it learnt, and stops", () => {
    const t = dispatch({ hops: 1, tried: { w1: 2 } });
    t.fresh();
    t.send({ type: "candidate", workerId: "r1", epoch: 6, remote: true });
    expect(t.value()).toBe("handedOver");
    expect(t.status()).toBe("done");
    expect(t.fresh()).toEqual([
      { type: "forward", jobId: "j1", workerId: "r1", tried: { w1: 2 }, hops: 2 },
      { type: "handed_over", jobId: "j1" },
    ]);
    expect(t.of("finished")).toEqual([]);
    expect(t.of("reserve")).toEqual([]);

    // `remote: false` is a local candidate.
    const local = dispatch();
    local.send({ type: "candidate", workerId: "w1", epoch: 1, remote: false });
    expect(local.value()).toEqual({ unassigned: "offering" });
  });

  it("waits when nobody can take it, and asks again on any capacity change", () => {
    const t = dispatch();
    t.fresh();
    t.send({ type: "no_candidate", cause: "no worker serves A" });
    expect(t.value()).toEqual({ unassigned: "waiting" });
    expect(t.context().cause).toBe("no worker serves A");
    expect(t.fresh()).toEqual([{ type: "waiting", jobId: "j1" }]);
    // While waiting, only a capacity change matters.
    for (const e of [
      { type: "candidate", workerId: "w1", epoch: 1 },
      { type: "no_candidate", cause: "other" },
      { type: "answer", workerId: "w1", available: true },
      { type: "job_update", workerId: "w1", status: "running" },
      { type: "worker_gone", workerId: "w1" },
    ] as DispatchEvent[]) {
      t.send(e);
      expect(t.value()).toEqual({ unassigned: "waiting" });
    }
    expect(t.context().cause).toBe("no worker serves A");
    expect(t.fresh()).toEqual([]);
    expectBalanced(t, { waiting: true });
    t.send({ type: "capacity_changed" });
    expect(t.value()).toEqual({ unassigned: "pending" });
    expect(t.fresh()).toEqual([{ type: "waiting_over", jobId: "j1" }, status("pending", null, 0), needCandidate({})]);
    expectBalanced(t);
  });

  it("in pending and offering, events for other states change nothing", () => {
    const t = dispatch();
    t.fresh();
    for (const e of [
      { type: "capacity_changed" },
      { type: "answer", workerId: "w1", available: true },
      { type: "job_update", workerId: "w1", status: "completed" },
      { type: "worker_gone", workerId: "w1" },
    ] as DispatchEvent[]) {
      t.send(e);
      expect(t.value()).toEqual({ unassigned: "pending" });
    }
    t.send({ type: "candidate", workerId: "w1", epoch: 1 });
    t.fresh();
    for (const e of [
      { type: "candidate", workerId: "w2", epoch: 1 },
      { type: "no_candidate", cause: "x" },
      { type: "capacity_changed" },
      { type: "answer", workerId: "w2", available: false },
      { type: "job_update", workerId: "w1", status: "running" },
      { type: "worker_gone", workerId: "w2" },
    ] as DispatchEvent[]) {
      t.send(e);
      expect(t.value()).toEqual({ unassigned: "offering" });
    }
    expect(t.fresh()).toEqual([]);
    expect(t.context().candidate).toEqual({ workerId: "w1", epoch: 1 });
    expect(t.context().cause).toBeNull();
  });
});

describe("dispatch machine: rejection (d)", () => {
  it("rejects at the dispatch deadline with the cause of the last no_candidate", () => {
    const t = dispatch();
    t.send({ type: "no_candidate", cause: "no worker serves A" });
    t.send({ type: "capacity_changed" });
    t.send({ type: "no_candidate", cause: "2 workers, all full (4 of 4 jobs)" });
    t.elapse(timing.dispatchTimeoutMs);
    expectFinal(t, { status: "rejected", reason: "2 workers, all full (4 of 4 jobs)", workerId: null, attempts: 0 });
  });

  it('rejects with "timed out" when no search ever came back empty', () => {
    const t = dispatch();
    t.elapse(timing.dispatchTimeoutMs);
    expectFinal(t, { status: "rejected", reason: "timed out", workerId: null, attempts: 0 });
  });

  it("the deadline runs across offers (not restarted by pending ⇄ offering) and releases an open offer", () => {
    const t = dispatch();
    t.send({ type: "no_candidate", cause: "offered to 1 worker, all declined" });
    t.send({ type: "capacity_changed" });
    t.clock.increment(1_950);
    t.send({ type: "candidate", workerId: "w1", epoch: 1 });
    t.clock.increment(50);
    // A worker was found after the earlier search: the deadline passed while offering, not for its cause.
    expectFinal(t, { status: "rejected", reason: "timed out" });
    expectBalanced(t);
    expect(t.of("release")).toEqual([ev("release")]);
  });
});

describe("dispatch machine: running and ending", () => {
  it("runs once its worker reports running; reports from other workers change nothing", () => {
    const t = assigned();
    t.fresh();
    t.send({ type: "job_update", workerId: "w2", status: "running" });
    expect(t.value()).toEqual({ bound: "assigned" });
    t.send({ type: "job_update", workerId: "w1", status: "running" });
    expect(t.value()).toEqual({ bound: "running" });
    expect(t.fresh()).toEqual([status("running", "w1", 1)]);
    for (const e of [
      { type: "job_update", workerId: "w2", status: "completed" },
      { type: "job_update", workerId: "w1", status: "running" },
      { type: "worker_gone", workerId: "w2" },
      { type: "candidate", workerId: "w2", epoch: 1 },
      { type: "no_candidate", cause: "x" },
      { type: "capacity_changed" },
      { type: "answer", workerId: "w1", available: true },
    ] as DispatchEvent[]) {
      t.send(e);
      expect(t.value()).toEqual({ bound: "running" });
    }
    expect(t.fresh()).toEqual([]);
    // No running deadline once running.
    t.clock.increment(10 * timing.runningTimeoutMs);
    expect(t.value()).toEqual({ bound: "running" });
  });

  it("ends with the worker's final status, reason and error (through settling)", () => {
    const error = { name: "Error", message: "boom" };
    for (const [s, extra] of [
      ["completed", {}],
      ["failed", { reason: "entrypoint_error", error }],
      ["cancelled", { reason: "cancelled by the agent" }],
    ] as const) {
      const t = running();
      t.send({ type: "job_update", workerId: "w1", status: s, ...extra });
      expectFinal(t, { status: s, workerId: "w1", attempts: 1, ...extra });
      expect(t.of("unbind")).toEqual([ev("unbind")]);
      expectBalanced(t);
    }
  });

  it("a final report straight after assignment (never reported running) settles too", () => {
    const t = assigned();
    t.send({ type: "job_update", workerId: "w1", status: "failed", reason: "launch_failed" });
    expectFinal(t, { status: "failed", reason: "launch_failed", workerId: "w1" });
    const done = assigned();
    done.send({ type: "job_update", workerId: "w1", status: "completed" });
    expectFinal(done, { status: "completed", workerId: "w1" });
    expect(done.output()?.reason).toBeUndefined();
  });

  it("a lost worker ends the job lost, from assigned or running", () => {
    for (const t of [assigned(), running()]) {
      t.send({ type: "worker_gone", workerId: "w1" });
      expectFinal(t, { status: "lost", reason: "worker lost", workerId: "w1", attempts: 1 });
      expectBalanced(t);
    }
  });

  it("with redispatch a lost worker puts the job back after its fence: unbind, pending, the worker tried at its bound epoch", () => {
    for (const t of [assigned({ redispatch: true }), running({ redispatch: true })]) {
      t.fresh();
      t.send({ type: "worker_gone", workerId: "w1" });
      // It may still run the job there under its lease: nothing is offered until that has run out.
      expect(t.value()).toBe("fencing");
      expect(t.fresh()).toEqual([ev("unbind")]);
      t.elapse(timing.leaseFenceMs);
      expect(t.value()).toEqual({ unassigned: "pending" });
      expect(t.fresh()).toEqual([status("pending", null, 1), needCandidate({ w1: EPOCH })]);
      expect(t.context()).toMatchObject({ workerId: null, tried: { w1: EPOCH }, attempts: 1 });
      t.send({ type: "candidate", workerId: "w2", epoch: 1 });
      t.send({ type: "answer", workerId: "w2", available: true });
      expect(t.context()).toMatchObject({ workerId: "w2", attempts: 2 });
      expectBalanced(t, { bound: "w2" });
      // A new dispatch deadline started when it went back to unassigned; none while bound.
      t.clock.increment(timing.dispatchTimeoutMs);
      expect(t.status()).toBe("active");
    }
  });

  it("an adopted job starts running on its worker (bound at epoch 0, one attempt, no offer)", () => {
    const t = dispatch({ adoptedBy: "w7" });
    expect(t.value()).toEqual({ bound: "running" });
    expect(t.fresh()).toEqual([ev("bind", "w7"), status("running", "w7", 1)]);
    expect(t.context()).toMatchObject({ workerId: "w7", boundEpoch: 0, attempts: 1 });
    t.send({ type: "job_update", workerId: "w7", status: "completed" });
    expectFinal(t, { status: "completed", workerId: "w7", attempts: 1 });

    const again = dispatch({ adoptedBy: "w7", redispatch: true });
    again.send({ type: "worker_gone", workerId: "w7" });
    expect(again.value()).toBe("fencing");
    again.elapse(timing.leaseFenceMs);
    expect(again.value()).toEqual({ unassigned: "pending" });
    expect(again.of("need_candidate").at(-1)).toEqual(needCandidate({ w7: 0 }));
  });
});

describe("dispatch machine: adopted as assigned, unconfirmed", () => {
  it("sends nothing to the worker, runs once it reports running", () => {
    const t = dispatch({ adoptedBy: "w7", adoptedAs: "assigned" });
    expect(t.value()).toEqual({ bound: "unconfirmed" });
    expect(t.fresh()).toEqual([ev("bind", "w7")]);
    t.send({ type: "assignment_fenced", workerId: "w7" });
    expect(t.fresh()).toEqual([]);
    t.send({ type: "job_update", workerId: "w7", status: "running" });
    expect(t.value()).toEqual({ bound: "running" });
    expect(t.fresh()).toEqual([status("running", "w7", 1)]);
  });

  it("a worker that never got the assignment is told to let go at the running deadline", () => {
    const t = dispatch({ adoptedBy: "w7", adoptedAs: "assigned" });
    t.clock.increment(timing.runningTimeoutMs - 1);
    expect(t.value()).toEqual({ bound: "unconfirmed" });
    t.clock.increment(1);
    expect(t.value()).toEqual({ bound: "releasing" });
    expect(t.of("terminate")).toEqual([{ ...ev("terminate", "w7"), reason: "did not start in time" }]);
    t.clock.increment(timing.releaseTimeoutMs);
    expectFinal(t, { status: "failed", reason: "did not start in time", workerId: "w7" });
  });
});

describe("dispatch machine: cancel", () => {
  it("before assignment it is cancelled at once (and an open offer is released)", () => {
    const pending = dispatch();
    pending.send({ type: "cancel" });
    expectFinal(pending, { status: "cancelled", reason: "cancelled before assignment", workerId: null, attempts: 0 });

    const waiting = dispatch();
    waiting.send({ type: "no_candidate", cause: "x" });
    waiting.send({ type: "cancel", reason: "user" });
    expectFinal(waiting, { status: "cancelled", reason: "cancelled before assignment" });

    const offered = offering();
    offered.send({ type: "cancel" });
    expectFinal(offered, { status: "cancelled", reason: "cancelled before assignment" });
    expectBalanced(offered);
    expect(offered.of("terminate")).toEqual([]);
  });

  it("after assignment it asks the worker to end the job, once", () => {
    for (const t of [assigned(), running()]) {
      t.fresh();
      t.send({ type: "cancel", reason: "user" });
      expect(t.value()).toEqual({ bound: "cancelling" });
      expect(t.fresh()).toEqual([{ ...ev("terminate"), reason: "cancelled" }]);
      t.send({ type: "cancel" });
      expect(t.value()).toEqual({ bound: "cancelling" });
      expect(t.fresh()).toEqual([]);
    }
  });

  it("cancelling ends with the worker's report, its loss, or the cancel deadline", () => {
    const reported = cancelling();
    reported.send({ type: "job_update", workerId: "w1", status: "running" });
    reported.send({ type: "job_update", workerId: "w2", status: "cancelled" });
    expect(reported.value()).toEqual({ bound: "cancelling" });
    reported.send({ type: "job_update", workerId: "w1", status: "cancelled", reason: "cancelled" });
    expectFinal(reported, { status: "cancelled", reason: "cancelled", workerId: "w1" });
    expectBalanced(reported);

    // The worker finished it before the termination arrived: that is what happened.
    const completed = cancelling();
    completed.send({ type: "job_update", workerId: "w1", status: "completed" });
    expectFinal(completed, { status: "completed" });

    for (const redispatch of [false, true]) {
      const lost = cancelling({ redispatch });
      lost.send({ type: "worker_gone", workerId: "w2" });
      expect(lost.value()).toEqual({ bound: "cancelling" });
      lost.send({ type: "worker_gone", workerId: "w1" });
      expectFinal(lost, { status: "cancelled", reason: "cancelled; the worker was lost" });
      expectBalanced(lost);
    }

    const silent = cancelling({ redispatch: true });
    silent.elapse(timing.cancelTimeoutMs);
    expectFinal(silent, { status: "cancelled", reason: "cancelled; the worker did not confirm", workerId: "w1" });
    expectBalanced(silent);
    expect(silent.of("need_candidate")).toHaveLength(1);
  });

  it("a cancelled job is never offered again: with redispatch, a lapsed lease while cancelling ends it failed", () => {
    const starts: [string, () => Dispatch][] = [
      ["assigned", () => assigned({ redispatch: true })],
      ["running", () => running({ redispatch: true })],
      // Cancelled while releasing: the worker was told to let go twice over.
      ["releasing", () => releasing({ redispatch: true })],
    ];
    for (const [name, make] of starts) {
      const t = make();
      t.send({ type: "cancel", reason: "user" });
      expect(t.value(), name).toEqual({ bound: "cancelling" });
      t.fresh();
      // Another worker's lapsed lease changes nothing.
      t.send({ type: "job_update", workerId: "w2", status: "failed", reason: "lease_lapsed" });
      expect(t.value(), name).toEqual({ bound: "cancelling" });
      expect(t.fresh(), name).toEqual([]);
      t.send({
        type: "job_update",
        workerId: "w1",
        status: "failed",
        reason: "lease_lapsed",
        exitCode: null,
        signal: "SIGKILL",
      });
      expectFinal(t, {
        status: "failed",
        reason: "lease_lapsed",
        workerId: "w1",
        exitCode: null,
        signal: "SIGKILL",
        attempts: 1,
      });
      expect(t.fresh(), name).toEqual([ev("unbind"), { type: "finished", jobId: "j1", output: t.output() }]);
      expect(t.of("need_candidate"), name).toHaveLength(1);
      expectBalanced(t);
      // Nothing follows: no fence, no new search, however long.
      t.clock.increment(timing.leaseFenceMs + timing.dispatchTimeoutMs);
      expect(t.fresh(), name).toEqual([]);

      const confirmed = make();
      confirmed.send({ type: "cancel" });
      confirmed.send({ type: "job_update", workerId: "w1", status: "cancelled", reason: "cancelled" });
      expectFinal(confirmed, { status: "cancelled", reason: "cancelled", workerId: "w1", attempts: 1 });
      expect(confirmed.of("need_candidate"), name).toHaveLength(1);
      expectBalanced(confirmed);
    }
  });
});

describe("dispatch machine: the running deadline (a)", () => {
  it("tells the worker to let go and keeps the job bound to it: nothing is offered elsewhere", () => {
    const t = assigned({ redispatch: true });
    t.fresh();
    t.elapse(timing.runningTimeoutMs);
    expect(t.value()).toEqual({ bound: "releasing" });
    expect(t.fresh()).toEqual([{ ...ev("terminate"), reason: "did not start in time" }]);
    expect(t.context()).toMatchObject({ workerId: "w1" });
    // However long it takes short of the release deadline, whatever else happens: no new search.
    t.clock.increment(timing.releaseTimeoutMs - 1);
    for (const e of [
      { type: "capacity_changed" },
      { type: "candidate", workerId: "w2", epoch: 1 },
      { type: "no_candidate", cause: "x" },
      { type: "answer", workerId: "w2", available: true },
      { type: "job_update", workerId: "w1", status: "running" },
      { type: "job_update", workerId: "w2", status: "failed" },
      { type: "worker_gone", workerId: "w2" },
    ] as DispatchEvent[]) {
      t.send(e);
      expect(t.value()).toEqual({ bound: "releasing" });
    }
    expect(t.fresh()).toEqual([]);
    expectBalanced(t, { bound: "w1" });
  });

  it("with redispatch: offered elsewhere only after the release deadline and its fence, the worker tried at its epoch", () => {
    const t = releasing({ redispatch: true });
    t.fresh();
    t.elapse(timing.releaseTimeoutMs);
    expect(t.value()).toBe("fencing");
    expect(t.fresh()).toEqual([ev("unbind")]);
    t.elapse(timing.leaseFenceMs);
    expect(t.value()).toEqual({ unassigned: "pending" });
    expect(t.fresh()).toEqual([status("pending", null, 1), needCandidate({ w1: EPOCH })]);
    expect(t.context()).toMatchObject({ workerId: null, attempts: 1 });
  });

  it('without redispatch: the release deadline fails it "did not start in time"', () => {
    const t = releasing();
    t.elapse(timing.releaseTimeoutMs);
    expectFinal(t, { status: "failed", reason: "did not start in time", workerId: "w1", attempts: 1 });
    expect(t.of("need_candidate")).toHaveLength(1);
    expectBalanced(t);
  });

  it("the worker's confirmation ends the wait: redispatch, or failed without", () => {
    for (const s of ["failed", "cancelled"] as const) {
      const again = releasing({ redispatch: true });
      again.fresh();
      again.send({ type: "job_update", workerId: "w1", status: s, reason: "cancelled" });
      expect(again.value()).toEqual({ unassigned: "pending" });
      expect(again.fresh()).toEqual([ev("unbind"), status("pending", null, 1), needCandidate({ w1: EPOCH })]);

      const once = releasing();
      once.send({ type: "job_update", workerId: "w1", status: s, reason: "cancelled" });
      expectFinal(once, { status: "failed", reason: "did not start in time", workerId: "w1" });
      expectBalanced(once);
    }
  });

  it("the worker's loss ends the wait: redispatch after its fence, or failed without", () => {
    const again = releasing({ redispatch: true });
    again.send({ type: "worker_gone", workerId: "w1" });
    expect(again.value()).toBe("fencing");
    again.elapse(timing.leaseFenceMs);
    expect(again.value()).toEqual({ unassigned: "pending" });
    expect(again.of("need_candidate").at(-1)).toEqual(needCandidate({ w1: EPOCH }));
    expectBalanced(again);

    const once = releasing();
    once.send({ type: "worker_gone", workerId: "w1" });
    expectFinal(once, { status: "failed", reason: "did not start in time", workerId: "w1" });
    expectBalanced(once);
  });

  it("a late completed from that worker while releasing ends it completed (with or without redispatch)", () => {
    for (const redispatch of [false, true]) {
      const t = releasing({ redispatch });
      t.send({ type: "job_update", workerId: "w1", status: "running" });
      expect(t.value()).toEqual({ bound: "releasing" });
      t.send({ type: "job_update", workerId: "w1", status: "completed", reason: "done after all" });
      expectFinal(t, { status: "completed", reason: "done after all", workerId: "w1", attempts: 1 });
      expect(t.of("need_candidate")).toHaveLength(1);
      expectBalanced(t);
    }
  });

  it("a cancel while releasing waits for the worker as any cancel does", () => {
    const t = releasing({ redispatch: true });
    t.fresh();
    t.send({ type: "cancel" });
    expect(t.value()).toEqual({ bound: "cancelling" });
    // The worker was already told to end the job.
    expect(t.fresh()).toEqual([]);
    t.elapse(timing.cancelTimeoutMs);
    expectFinal(t, { status: "cancelled", reason: "cancelled; the worker did not confirm" });
    expect(t.of("need_candidate")).toHaveLength(1);
  });
});

describe("dispatch machine: fencing (the lost worker may still run the job under its lease)", () => {
  it("worker_gone with fenceMs 0 moves on at once, after a 0 ms delay", () => {
    const t = running({ redispatch: true });
    t.fresh();
    t.send({ type: "worker_gone", workerId: "w1", fenceMs: 0 });
    expect(t.value()).toBe("fencing");
    expect(t.context()).toMatchObject({ fenceMs: 0, workerId: "w1" });
    expect(t.fresh()).toEqual([ev("unbind")]);
    t.clock.increment(0);
    expect(t.value()).toEqual({ unassigned: "pending" });
    expect(t.fresh()).toEqual([status("pending", null, 1), needCandidate({ w1: EPOCH })]);
    expect(t.context()).toMatchObject({ workerId: null, tried: { w1: EPOCH }, attempts: 1 });
  });

  it("worker_gone with fenceMs N: still fencing at N − 1, pending at N", () => {
    const t = fencing({}, 700);
    expect(t.value()).toBe("fencing");
    expect(t.context().fenceMs).toBe(700);
    t.fresh();
    // elapse: nothing at all happens at N − 1.
    t.elapse(700);
    expect(t.value()).toEqual({ unassigned: "pending" });
    expect(t.fresh()).toEqual([status("pending", null, 1), needCandidate({ w1: EPOCH })]);
  });

  it("worker_gone without fenceMs waits leaseFenceMs, whether assigned, running or adopted unconfirmed", () => {
    const cases: [string, () => Dispatch, string, number][] = [
      ["assigned", () => assigned({ redispatch: true }), "w1", EPOCH],
      ["running", () => running({ redispatch: true }), "w1", EPOCH],
      ["unconfirmed", () => dispatch({ redispatch: true, adoptedBy: "w7", adoptedAs: "assigned" }), "w7", 0],
    ];
    for (const [name, make, workerId, epoch] of cases) {
      const t = make();
      t.send({ type: "worker_gone", workerId });
      expect(t.value(), name).toBe("fencing");
      expect(t.context().fenceMs, name).toBe(timing.leaseFenceMs);
      t.fresh();
      t.elapse(timing.leaseFenceMs);
      expect(t.value(), name).toEqual({ unassigned: "pending" });
      expect(t.fresh(), name).toEqual([status("pending", null, 1), needCandidate({ [workerId]: epoch })]);
      expectBalanced(t);
    }
  });

  it("the release deadline fences for the whole leaseFenceMs", () => {
    const t = releasing({ redispatch: true });
    t.fresh();
    t.elapse(timing.releaseTimeoutMs);
    expect(t.value()).toBe("fencing");
    expect(t.context()).toMatchObject({ fenceMs: timing.leaseFenceMs, workerId: "w1" });
    expect(t.fresh()).toEqual([ev("unbind")]);
    t.elapse(timing.leaseFenceMs);
    expect(t.value()).toEqual({ unassigned: "pending" });
    expect(t.fresh()).toEqual([status("pending", null, 1), needCandidate({ w1: EPOCH })]);
  });

  it("releasing, then the worker is gone: fenced for the event's fenceMs (leaseFenceMs without)", () => {
    for (const fenceMs of [250, undefined]) {
      const t = releasing({ redispatch: true });
      t.fresh();
      t.send({ type: "worker_gone", workerId: "w1", ...(fenceMs === undefined ? {} : { fenceMs }) });
      expect(t.value()).toBe("fencing");
      expect(t.fresh()).toEqual([ev("unbind")]);
      t.elapse(fenceMs ?? timing.leaseFenceMs);
      expect(t.value()).toEqual({ unassigned: "pending" });
      expect(t.fresh()).toEqual([status("pending", null, 1), needCandidate({ w1: EPOCH })]);
    }
  });

  it("the worker coming back and reporting running keeps the job there: bound.running, bind again", () => {
    const t = fencing({}, 700);
    t.clock.increment(699);
    t.fresh();
    t.send({ type: "job_update", workerId: "w1", status: "running" });
    expect(t.value()).toEqual({ bound: "running" });
    expect(t.fresh()).toEqual([ev("bind"), status("running", "w1", 1)]);
    expect(t.context()).toMatchObject({ workerId: "w1", attempts: 1 });
    expect(t.of("bind").map((e) => e.workerId)).toEqual(["w1", "w1"]);
    expectBalanced(t, { bound: "w1" });
    // The fence timer went with the state: nothing happens when it would have passed.
    t.clock.increment(timing.leaseFenceMs + timing.dispatchTimeoutMs);
    expect(t.value()).toEqual({ bound: "running" });
    expect(t.fresh()).toEqual([]);
    t.send({ type: "job_update", workerId: "w1", status: "completed" });
    expectFinal(t, { status: "completed", workerId: "w1", attempts: 1 });
    expectBalanced(t);
    expect(t.of("need_candidate")).toHaveLength(1);
  });

  it("not told to let go (lost while assigned, unconfirmed or running, or a fenced start): its running report keeps it running", () => {
    const cases: [string, () => Dispatch, string, number][] = [
      ["assigned", () => assigned({ redispatch: true }), "w1", 1],
      ["unconfirmed", () => dispatch({ redispatch: true, adoptedBy: "w7", adoptedAs: "assigned" }), "w7", 1],
      ["running", () => running({ redispatch: true }), "w1", 1],
      ["fenced start", () => fenced(), "w5", 1],
    ];
    for (const [name, make, workerId, attempts] of cases) {
      const t = make();
      if (name !== "fenced start") t.send({ type: "worker_gone", workerId });
      expect(t.value(), name).toBe("fencing");
      expect(t.context().released, name).toBe(false);
      t.fresh();
      t.send({ type: "job_update", workerId, status: "running" });
      expect(t.value(), name).toEqual({ bound: "running" });
      expect(t.fresh(), name).toEqual([ev("bind", workerId), status("running", workerId, attempts)]);
      expect(t.of("terminate"), name).toEqual([]);
    }
  });

  it("the running deadline marks the worker released; letting it go clears the mark", () => {
    const t = assigned({ redispatch: true });
    expect(t.context().released).toBe(false);
    t.clock.increment(timing.runningTimeoutMs);
    expect(t.value()).toEqual({ bound: "releasing" });
    expect(t.context().released).toBe(true);
    t.clock.increment(timing.releaseTimeoutMs);
    expect(t.value()).toBe("fencing");
    expect(t.context().released).toBe(true);
    t.clock.increment(timing.leaseFenceMs);
    expect(t.value()).toEqual({ unassigned: "pending" });
    expect(t.context()).toMatchObject({ released: false, workerId: null });
    // The next worker, lost while assigned, runs the job when it comes back: it was never told to let go.
    t.send({ type: "candidate", workerId: "w2", epoch: 1 });
    t.send({ type: "answer", workerId: "w2", available: true });
    t.send({ type: "worker_gone", workerId: "w2" });
    t.send({ type: "job_update", workerId: "w2", status: "running" });
    expect(t.value()).toEqual({ bound: "running" });
    expect(t.of("terminate").map((e) => e.workerId)).toEqual(["w1"]);

    // The worker's final report (with redispatch) and a final report while fenced clear it too.
    const confirmed = releasing({ redispatch: true });
    confirmed.send({ type: "job_update", workerId: "w1", status: "cancelled" });
    expect(confirmed.value()).toEqual({ unassigned: "pending" });
    expect(confirmed.context().released).toBe(false);
    const stopped = fencingReleased();
    stopped.send({ type: "job_update", workerId: "w1", status: "failed", reason: "lease_lapsed" });
    expect(stopped.value()).toEqual({ unassigned: "pending" });
    expect(stopped.context().released).toBe(false);

    // An adopted unconfirmed job's worker is marked too.
    const adopted = dispatch({ redispatch: true, adoptedBy: "w7", adoptedAs: "assigned" });
    adopted.clock.increment(timing.runningTimeoutMs);
    expect(adopted.context()).toMatchObject({ released: true, workerId: "w7" });
  });

  it("a released worker coming back running is told again to let go: back to releasing, not running", () => {
    const ways: [string, (t: Dispatch) => void][] = [
      ["release deadline", (t) => t.clock.increment(timing.releaseTimeoutMs)],
      ["lost while releasing", (t) => t.send({ type: "worker_gone", workerId: "w1", fenceMs: 700 })],
    ];
    for (const [name, into] of ways) {
      const t = releasing({ redispatch: true });
      into(t);
      expect(t.value(), name).toBe("fencing");
      expect(t.context().released, name).toBe(true);
      t.clock.increment(100);
      t.fresh();
      t.send({ type: "job_update", workerId: "w2", status: "running" });
      expect(t.value(), name).toBe("fencing");
      t.send({ type: "job_update", workerId: "w1", status: "running" });
      expect(t.value(), name).toEqual({ bound: "releasing" });
      // Its first termination may have gone with its connection: it is sent again. No status: it is
      // not running as far as the dispatch is concerned.
      expect(t.fresh(), name).toEqual([{ ...ev("terminate"), reason: "did not start in time" }, ev("bind")]);
      expect(t.context(), name).toMatchObject({ workerId: "w1", released: true, attempts: 1 });
      expectBalanced(t, { bound: "w1" });
      // Running again changes nothing; the fence timer went with fencing; the release deadline runs again, whole.
      t.send({ type: "job_update", workerId: "w1", status: "running" });
      t.elapse(timing.releaseTimeoutMs);
      expect(t.value(), name).toBe("fencing");
      expect(t.fresh(), name).toEqual([ev("unbind")]);
      expect(t.context(), name).toMatchObject({ workerId: "w1", released: true, fenceMs: timing.leaseFenceMs });
      t.elapse(timing.leaseFenceMs);
      expect(t.value(), name).toEqual({ unassigned: "pending" });
      expect(t.fresh(), name).toEqual([status("pending", null, 1), needCandidate({ w1: EPOCH })]);
      expectBalanced(t);
    }
  });

  it("from releasing re-entered from fencing, the worker's cancelled report puts the job back as in releasing", () => {
    const t = fencingReleased();
    t.send({ type: "job_update", workerId: "w1", status: "running" });
    expect(t.value()).toEqual({ bound: "releasing" });
    t.fresh();
    t.send({ type: "job_update", workerId: "w1", status: "cancelled", reason: "did not start in time" });
    expect(t.value()).toEqual({ unassigned: "pending" });
    expect(t.fresh()).toEqual([ev("unbind"), status("pending", null, 1), needCandidate({ w1: EPOCH })]);
    expect(t.context()).toMatchObject({ workerId: null, released: false, final: null, tried: { w1: EPOCH } });
    expect(t.of("finished")).toEqual([]);
    expectBalanced(t);

    // Or it ran the job after all and says it completed: that is what happened.
    const done = fencingReleased();
    done.send({ type: "job_update", workerId: "w1", status: "running" });
    done.send({ type: "job_update", workerId: "w1", status: "completed" });
    expectFinal(done, { status: "completed", workerId: "w1", attempts: 1 });
    expectBalanced(done);
  });

  it("the worker reporting completed while fenced ends it completed (through settling)", () => {
    const t = fencing();
    t.send({ type: "job_update", workerId: "w1", status: "completed", reason: "done while cut off" });
    expectFinal(t, { status: "completed", reason: "done while cut off", workerId: "w1", attempts: 1 });
    expectBalanced(t);
    expect(t.of("need_candidate")).toHaveLength(1);
    expect(t.of("bind")).toHaveLength(1);
  });

  it("any other final report from it while fenced: it stopped, offered elsewhere at once, tried at its epoch", () => {
    for (const s of ["failed", "cancelled"] as const) {
      const t = fencing({}, 700);
      t.clock.increment(100);
      t.fresh();
      t.send({ type: "job_update", workerId: "w1", status: s, reason: "lease_lapsed" });
      expect(t.value(), s).toEqual({ unassigned: "pending" });
      expect(t.fresh(), s).toEqual([status("pending", null, 1), needCandidate({ w1: EPOCH })]);
      expect(t.context(), s).toMatchObject({ workerId: null, tried: { w1: EPOCH }, final: null, attempts: 1 });
      // The fence timer went with the state: no second search when it would have passed.
      t.clock.increment(600);
      expect(t.fresh(), s).toEqual([]);
      expectBalanced(t);
    }
  });

  it('a cancel while fenced ends it cancelled "cancelled while its worker was unreachable"', () => {
    const t = fencing();
    t.fresh();
    t.send({ type: "cancel", reason: "user" });
    expectFinal(t, {
      status: "cancelled",
      reason: "cancelled while its worker was unreachable",
      workerId: "w1",
      attempts: 1,
    });
    // Nothing can reach the worker: no termination is sent.
    expect(t.fresh()).toEqual([{ type: "finished", jobId: "j1", output: t.output() }]);
    t.clock.increment(timing.leaseFenceMs + timing.dispatchTimeoutMs);
    expect(t.fresh()).toEqual([]);
    expectBalanced(t);
  });

  it("while fenced, worker_gone (even with a shorter fenceMs) and other workers' reports change nothing", () => {
    const t = fencing({}, 700);
    t.fresh();
    t.clock.increment(100);
    for (const e of [
      { type: "worker_gone", workerId: "w1" },
      { type: "worker_gone", workerId: "w1", fenceMs: 0 },
      { type: "worker_gone", workerId: "w2", fenceMs: 0 },
      { type: "job_update", workerId: "w2", status: "running" },
      { type: "job_update", workerId: "w2", status: "completed" },
      { type: "job_update", workerId: "w2", status: "failed" },
      { type: "candidate", workerId: "w2", epoch: 1 },
      { type: "no_candidate", cause: "x" },
      { type: "capacity_changed" },
      { type: "answer", workerId: "w1", available: true },
      { type: "assignment_fenced", workerId: "w1" },
    ] as DispatchEvent[]) {
      t.send(e);
      t.clock.increment(0);
      expect(t.value()).toBe("fencing");
    }
    expect(t.fresh()).toEqual([]);
    expect(t.context()).toMatchObject({ workerId: "w1", fenceMs: 700, candidate: null });
    // The fence still ends when it was first due.
    t.elapse(600);
    expect(t.value()).toEqual({ unassigned: "pending" });
  });

  it("input fence: starts fencing its worker (nothing emitted, one attempt: the dead node's), then offers the job after ms", () => {
    const t = fenced(400, { prefer: "w9", hops: 1, tried: { w4: 2 } });
    expect(t.value()).toBe("fencing");
    expect(t.fresh()).toEqual([]);
    expect(t.context()).toMatchObject({
      workerId: "w5",
      adoptedAs: null,
      boundEpoch: 0,
      attempts: 1,
      fenceMs: 400,
      released: false,
      tried: { w4: 2 },
    });
    t.elapse(400);
    expect(t.value()).toEqual({ unassigned: "pending" });
    expect(t.fresh()).toEqual([status("pending", null, 1), needCandidate({ w4: 2, w5: 0 }, "w9", 1)]);
    expect(t.context().workerId).toBeNull();
    expectBalanced(t);
    // The next worker is its second attempt.
    t.send({ type: "candidate", workerId: "w9", epoch: 1 });
    t.send({ type: "answer", workerId: "w9", available: true });
    expect(t.of("status").at(-1)).toEqual(status("assigned", "w9", 2));
  });

  it("input fence: its worker reporting running binds it; cancel ends it; adoptedBy wins over fence", () => {
    const back = fenced();
    back.send({ type: "job_update", workerId: "w5", status: "running" });
    expect(back.value()).toEqual({ bound: "running" });
    expect(back.fresh()).toEqual([ev("bind", "w5"), status("running", "w5", 1)]);
    back.clock.increment(400);
    expect(back.value()).toEqual({ bound: "running" });

    const cancelled = fenced();
    cancelled.send({ type: "cancel" });
    expectFinal(cancelled, {
      status: "cancelled",
      reason: "cancelled while its worker was unreachable",
      workerId: "w5",
      attempts: 1,
    });

    const adopted = dispatch({ redispatch: true, adoptedBy: "w7", fence: { workerId: "w5", ms: 400 } });
    expect(adopted.value()).toEqual({ bound: "running" });
    expect(adopted.context()).toMatchObject({ workerId: "w7", fenceMs: 0 });
  });

  it("the dispatch deadline starts counting only once the fence has passed", () => {
    // A fence longer than the dispatch deadline: had the deadline run during it, it would be rejected.
    const fenceMs = timing.dispatchTimeoutMs + 500;
    const cases: [string, () => Dispatch][] = [
      ["lost worker", () => fencing({}, fenceMs)],
      ["fenced start", () => fenced(fenceMs)],
    ];
    for (const [name, make] of cases) {
      const t = make();
      t.elapse(fenceMs);
      expect(t.value(), name).toEqual({ unassigned: "pending" });
      t.send({ type: "no_candidate", cause: "no worker serves A" });
      t.elapse(timing.dispatchTimeoutMs);
      expect(t.value(), name).toBe("rejected");
      expect(t.output(), name).toMatchObject({ status: "rejected", reason: "no worker serves A", workerId: null });
    }
  });
});

describe("dispatch machine: the worker's lease lapsed", () => {
  const lapsed = { type: "job_update", workerId: "w1", status: "failed", reason: "lease_lapsed" } as const;

  it("with redispatch, its report from assigned or running puts the job back at once: no fence", () => {
    for (const [name, make] of [
      ["assigned", () => assigned({ redispatch: true })],
      ["running", () => running({ redispatch: true })],
    ] as const) {
      const t = make();
      t.fresh();
      t.send(lapsed);
      expect(t.value(), name).toEqual({ unassigned: "pending" });
      expect(t.fresh(), name).toEqual([ev("unbind"), status("pending", null, 1), needCandidate({ w1: EPOCH })]);
      expect(t.context(), name).toMatchObject({ workerId: null, tried: { w1: EPOCH }, final: null });
      expectBalanced(t);
    }
  });

  it("from another worker it changes nothing", () => {
    const t = running({ redispatch: true });
    t.fresh();
    t.send({ ...lapsed, workerId: "w2" });
    expect(t.value()).toEqual({ bound: "running" });
    expect(t.fresh()).toEqual([]);
  });

  it("without redispatch it is recorded as it is: failed, lease_lapsed", () => {
    for (const make of [assigned, running]) {
      const t = make();
      t.send({ ...lapsed, exitCode: null, signal: "SIGKILL" });
      expectFinal(t, {
        status: "failed",
        reason: "lease_lapsed",
        workerId: "w1",
        exitCode: null,
        signal: "SIGKILL",
        attempts: 1,
      });
      expect(t.of("need_candidate")).toHaveLength(1);
      expectBalanced(t);
    }
  });
});

describe("dispatch machine: taken over", () => {
  it("lets go from any live state without recording an outcome, releasing or unbinding what it held", () => {
    const cases: [string, () => Dispatch, { offering?: string; bound?: string; waiting?: boolean }][] = [
      ["pending", () => dispatch(), {}],
      [
        "waiting",
        () => {
          const t = dispatch();
          t.send({ type: "no_candidate", cause: "x" });
          return t;
        },
        { waiting: true },
      ],
      ["offering", () => offering(), { offering: "w1" }],
      ["assigned", () => assigned(), { bound: "w1" }],
      ["running", () => running(), { bound: "w1" }],
      ["cancelling", () => cancelling(), { bound: "w1" }],
      ["releasing", () => releasing(), { bound: "w1" }],
      ["adopted", () => dispatch({ adoptedBy: "w1" }), { bound: "w1" }],
      ["fencing", () => fencing(), {}],
      ["fencing, released", fencingReleased, {}],
      ["fenced start", () => fenced(), {}],
    ];
    for (const [name, make, held] of cases) {
      const t = make();
      expectBalanced(t, held);
      t.fresh();
      t.send({ type: "taken_over" });
      expect(t.value(), name).toBe("handedOver");
      expect(t.status()).toBe("done");
      const released = held.offering ? [ev("release", held.offering)] : [];
      const unbound = held.bound ? [ev("unbind", held.bound)] : [];
      const waited = held.waiting ? [{ type: "waiting_over", jobId: "j1" }] : [];
      expect(t.fresh(), name).toEqual([...released, ...unbound, ...waited, { type: "handed_over", jobId: "j1" }]);
      expect(t.of("finished")).toEqual([]);
      expectBalanced(t);
    }
  });
});

describe("dispatch machine: reserve/release, bind/unbind and waiting/waiting_over pair up (b)", () => {
  it("waiting_over is emitted once on every way out of waiting", () => {
    const ways: [string, (t: Dispatch) => void, unknown][] = [
      ["capacity changed", (t) => t.send({ type: "capacity_changed" }), { unassigned: "pending" }],
      ["cancel", (t) => t.send({ type: "cancel" }), "cancelled"],
      ["dispatch timeout", (t) => t.clock.increment(timing.dispatchTimeoutMs), "rejected"],
      ["taken over", (t) => t.send({ type: "taken_over" }), "handedOver"],
    ];
    for (const [name, leave, value] of ways) {
      const t = dispatch();
      t.send({ type: "no_candidate", cause: "x" });
      expect(t.of("waiting"), name).toEqual([{ type: "waiting", jobId: "j1" }]);
      leave(t);
      expect(t.value(), name).toEqual(value);
      expect(t.of("waiting_over"), name).toEqual([{ type: "waiting_over", jobId: "j1" }]);
      // Before anything the next state does.
      const types = t.emitted.map((e) => e.type);
      expect(types.indexOf("waiting_over"), name).toBe(types.indexOf("waiting") + 1);
    }
  });

  it("release is emitted once on every way out of offering", () => {
    const ways: [string, (t: Dispatch) => void][] = [
      ["yes", (t) => t.send({ type: "answer", workerId: "w1", available: true })],
      ["no", (t) => t.send({ type: "answer", workerId: "w1", available: false })],
      ["offer timeout", (t) => t.clock.increment(timing.offerTimeoutMs)],
      ["worker gone", (t) => t.send({ type: "worker_gone", workerId: "w1" })],
      ["cancel", (t) => t.send({ type: "cancel" })],
      [
        "dispatch timeout",
        (t) => {
          t.clock.increment(timing.dispatchTimeoutMs - timing.offerTimeoutMs / 2);
          t.send({ type: "candidate", workerId: "w1", epoch: EPOCH });
          t.clock.increment(timing.offerTimeoutMs / 2);
        },
      ],
      ["taken over", (t) => t.send({ type: "taken_over" })],
    ];
    for (const [name, leave] of ways) {
      const t = name === "dispatch timeout" ? dispatch() : offering();
      leave(t);
      expect(t.value(), name).not.toEqual({ unassigned: "offering" });
      expect(t.of("reserve"), name).toEqual([ev("reserve")]);
      expect(t.of("release"), name).toEqual([ev("release")]);
      // The release comes after the offer and before anything the next state does.
      const types = t.emitted.map((e) => e.type);
      expect(types.indexOf("release"), name).toBe(types.indexOf("offer") + 1);
    }
  });

  it("unbind is emitted once on every way out of bound", () => {
    const report = (s: "completed" | "failed" | "cancelled") => (t: Dispatch) =>
      t.send({ type: "job_update", workerId: "w1", status: s });
    const gone = (t: Dispatch) => t.send({ type: "worker_gone", workerId: "w1" });
    const ways: [string, () => Dispatch, (t: Dispatch) => void][] = [
      ["assigned: report", () => assigned(), report("failed")],
      ["assigned: lost", () => assigned(), gone],
      ["assigned: lost, redispatch", () => assigned({ redispatch: true }), gone],
      ["running: completed", () => running(), report("completed")],
      ["running: cancelled", () => running(), report("cancelled")],
      ["running: lost", () => running(), gone],
      ["running: lost, redispatch", () => running({ redispatch: true }), gone],
      [
        "running: lease lapsed, redispatch",
        () => running({ redispatch: true }),
        (t) => t.send({ type: "job_update", workerId: "w1", status: "failed", reason: "lease_lapsed" }),
      ],
      [
        "assigned: lease lapsed, redispatch",
        () => assigned({ redispatch: true }),
        (t) => t.send({ type: "job_update", workerId: "w1", status: "failed", reason: "lease_lapsed" }),
      ],
      ["cancelling: report", () => cancelling(), report("cancelled")],
      [
        "cancelling: lease lapsed, redispatch",
        () => cancelling({ redispatch: true }),
        (t) => t.send({ type: "job_update", workerId: "w1", status: "failed", reason: "lease_lapsed" }),
      ],
      ["cancelling: lost", () => cancelling(), gone],
      ["cancelling: timeout", () => cancelling(), (t) => t.clock.increment(timing.cancelTimeoutMs)],
      ["releasing: timeout", () => releasing(), (t) => t.clock.increment(timing.releaseTimeoutMs)],
      [
        "releasing: timeout, redispatch",
        () => releasing({ redispatch: true }),
        (t) => t.clock.increment(timing.releaseTimeoutMs),
      ],
      ["releasing: completed", () => releasing(), report("completed")],
      ["releasing: failed", () => releasing(), report("failed")],
      ["releasing: failed, redispatch", () => releasing({ redispatch: true }), report("failed")],
      ["releasing: lost", () => releasing(), gone],
      ["releasing: lost, redispatch", () => releasing({ redispatch: true }), gone],
      ["taken over", () => running(), (t) => t.send({ type: "taken_over" })],
      ["adopted: completed", () => dispatch({ adoptedBy: "w1" }), report("completed")],
    ];
    for (const [name, make, leave] of ways) {
      const t = make();
      expect(t.of("bind"), name).toEqual([ev("bind")]);
      expect(t.of("unbind"), name).toEqual([]);
      leave(t);
      const value = t.value();
      expect(typeof value === "object" && "bound" in value, name).toBe(false);
      expect(t.of("unbind"), name).toEqual([ev("unbind")]);
      expectBalanced(t);
    }
  });
});

describe("dispatch machine: robustness", () => {
  const events: DispatchEvent[] = [
    { type: "candidate", workerId: "w1", epoch: 1 },
    { type: "candidate", workerId: "w2", epoch: 1, remote: true },
    { type: "no_candidate", cause: "x" },
    { type: "capacity_changed" },
    { type: "answer", workerId: "w1", available: true },
    { type: "answer", workerId: "w2", available: false },
    { type: "job_update", workerId: "w1", status: "running" },
    { type: "job_update", workerId: "w1", status: "completed" },
    { type: "job_update", workerId: "w2", status: "failed" },
    { type: "worker_gone", workerId: "w1" },
    { type: "worker_gone", workerId: "w3" },
    { type: "worker_gone", workerId: "w5", fenceMs: 0 },
    { type: "job_update", workerId: "w5", status: "running" },
    { type: "job_update", workerId: "w1", status: "failed", reason: "lease_lapsed" },
    { type: "assignment_fenced", workerId: "w1" },
    { type: "cancel" },
  ];

  it("no event after any other, from any state, puts it in error; reserve/bind always pair up", () => {
    const starts: (() => Dispatch)[] = [
      () => dispatch(),
      () => offering({ redispatch: true }),
      () => assigned(),
      () => running({ redispatch: true }),
      () => releasing(),
      () => cancelling(),
      () => dispatch({ adoptedBy: "w1" }),
      () => fencing(),
      () => fencing({}, 0),
      fencingReleased,
      () => fenced(),
    ];
    const check = (t: Dispatch) => {
      expect(t.status()).not.toBe("error");
      const s = t.actor.getSnapshot();
      const open = {
        ...(s.matches({ unassigned: "offering" }) ? { offering: s.context.candidate?.workerId } : {}),
        ...(s.matches("bound") ? { bound: s.context.workerId ?? "" } : {}),
        waiting: s.matches({ unassigned: "waiting" }),
      };
      expectBalanced(t, open);
      if (t.status() === "done") expect(t.of("finished").length + t.of("handed_over").length).toBe(1);
    };
    for (const make of starts) {
      for (const first of events) {
        const t = make();
        // The first event, then every event in turn, then every timer.
        for (const e of [first, ...events]) {
          if (t.status() !== "active") break;
          t.send(e);
          check(t);
        }
        for (let i = 0; i < 3; i++) {
          t.clock.increment(timing.dispatchTimeoutMs + timing.releaseTimeoutMs);
          check(t);
        }
      }
    }
  });

  it("at most one worker is ever bound at a time", () => {
    const t = running({ redispatch: true });
    t.send({ type: "worker_gone", workerId: "w1", fenceMs: 200 });
    // No worker is asked while the lost one may still run the job.
    t.send({ type: "candidate", workerId: "w2", epoch: 1 });
    t.send({ type: "answer", workerId: "w2", available: true });
    expect(t.value()).toBe("fencing");
    t.clock.increment(200);
    t.send({ type: "candidate", workerId: "w2", epoch: 1 });
    t.send({ type: "answer", workerId: "w2", available: true });
    t.clock.increment(timing.runningTimeoutMs);
    t.send({ type: "candidate", workerId: "w3", epoch: 1 });
    expect(t.value()).toEqual({ bound: "releasing" });
    t.clock.increment(timing.releaseTimeoutMs);
    t.send({ type: "candidate", workerId: "w3", epoch: 1 });
    expect(t.value()).toBe("fencing");
    t.clock.increment(timing.leaseFenceMs);
    t.send({ type: "candidate", workerId: "w3", epoch: 1 });
    t.send({ type: "answer", workerId: "w3", available: true });
    let bound = 0;
    let max = 0;
    for (const e of t.emitted) {
      if (e.type === "bind") bound++;
      if (e.type === "unbind") bound--;
      max = Math.max(max, bound);
    }
    expect(max).toBe(1);
    expect(t.of("bind").map((e) => e.workerId)).toEqual(["w1", "w2", "w3"]);
    expect(t.context()).toMatchObject({ workerId: "w3", attempts: 3, tried: { w1: EPOCH, w2: 1 } });
  });
});
