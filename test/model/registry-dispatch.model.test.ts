import { describe, expect, it } from "vitest";
import { assign, SimulatedClock, type SnapshotFrom, setup } from "xstate";
import { createTestModel } from "xstate/graph";
import {
  type DispatchEmitted,
  type DispatchFinal,
  type DispatchInput,
  type DispatchOutput,
  type DispatchTiming,
  dispatchMachine,
} from "../../machines/registry/dispatch.ts";
import { createTracedActor } from "../support/actor.ts";
import { modelTransitions } from "../support/model-transitions.ts";

const timing: DispatchTiming = {
  offerTimeoutMs: 1_000,
  runningTimeoutMs: 5_000,
  dispatchTimeoutMs: 30_000,
  cancelTimeoutMs: 3_000,
  releaseTimeoutMs: 14_000,
  leaseFenceMs: 12_000,
};
const JOB_ID = "j1";
/** The fence a lost running worker's job gets from the registry (its lease's remaining time). */
const GONE_FENCE_MS = 4_000;
/** The fence of a job taken over from a dead node. */
const START_FENCE_MS = 7_000;
const CAUSE = "1 worker, all full (4 of 4 jobs)";

interface ModelContext {
  redispatch: boolean;
  /** A search for a worker came back empty at some point: a rejection carries its cause. */
  sawNoCandidate: boolean;
  /** The outcome the dispatch must end with (set on the way into a final state). */
  outcome: { status: DispatchFinal; reason: string | null } | null;
  /** While fencing: how long the fence lasts. */
  fenceMs: number | null;
  /**
   * How often the bound worker was told to let go of the job that never started (until the job goes
   * back to pending): 1 at the running deadline; 2 once it came back from fencing saying it runs the
   * job and was told again (counted no further: it changes nothing more).
   */
  released: 0 | 1 | 2;
}

type ModelEvent =
  | { type: "START" }
  | { type: "START_REDISPATCH" }
  | { type: "ADOPT" }
  | { type: "ADOPT_REDISPATCH" }
  | { type: "ADOPT_ASSIGNED" }
  | { type: "ADOPT_ASSIGNED_REDISPATCH" }
  | { type: "CANDIDATE" }
  | { type: "REMOTE_CANDIDATE" }
  | { type: "NO_CANDIDATE" }
  | { type: "CAPACITY" }
  | { type: "YES" }
  | { type: "NO" }
  | { type: "OFFER_TIMEOUT" }
  | { type: "CANDIDATE_GONE" }
  | { type: "RUNNING" }
  | { type: "COMPLETED" }
  | { type: "FAILED" }
  | { type: "CANCELLED" }
  | { type: "BOUND_GONE" }
  | { type: "CANCEL" }
  | { type: "RUNNING_TIMEOUT" }
  | { type: "RELEASE_TIMEOUT" }
  | { type: "CANCEL_TIMEOUT" }
  | { type: "DISPATCH_TIMEOUT" }
  | { type: "TAKEN_OVER" }
  | { type: "FENCED" }
  /** Taken over from a dead node with redispatch: its worker is nowhere, but may still run the job. */
  | { type: "START_FENCED" }
  /** The fence passed: the lost worker's lease has surely run out. */
  | { type: "FENCE_PASSED" }
  /** The bound worker stopped the job because its lease there ran out. */
  | { type: "LEASE_LAPSED" };

const end = (status: DispatchFinal, reason: string | null) => ({ type: "end", params: { status, reason } }) as const;
/** The worker's own final report decides the outcome (its reason is the one the driver sends). */
const reports = {
  COMPLETED: { target: "completed", actions: end("completed", null) },
  FAILED: { target: "failed", actions: end("failed", "entrypoint_error") },
  CANCELLED: { target: "cancelled", actions: end("cancelled", "cancelled") },
} as const;
const NOT_STARTED = "did not start in time";
const LEASE_LAPSED = "lease_lapsed";
const UNREACHABLE = "cancelled while its worker was unreachable";
const redispatch = ({ context }: { context: ModelContext }) => context.redispatch;

const fence = (ms: number) => ({ type: "fence", params: { ms } }) as const;
/**
 * With redispatch, a lost worker's job waits out its lease there (fencing) before it is offered
 * again: the whole lease, unless the registry says how long it still runs (it does for a running job).
 */
const boundGone = (ms: number) =>
  [
    { guard: redispatch, target: "fencing", actions: fence(ms) },
    { target: "lost", actions: end("lost", "worker lost") },
  ] as const;
/** The worker confirmed it stopped the job (its lease ran out): with redispatch it is offered again at once. */
const leaseLapsed = [
  { guard: redispatch, target: "pending" },
  { target: "failed", actions: end("failed", LEASE_LAPSED) },
] as const;

/** What an assigned job's dispatch does, whether its assignment went out yet or not. */
const boundToWorker = {
  RUNNING: "running",
  ...reports,
  BOUND_GONE: boundGone(timing.leaseFenceMs),
  LEASE_LAPSED: leaseLapsed,
  CANCEL: "cancelling",
  RUNNING_TIMEOUT: { target: "releasing", actions: "markReleased" },
  TAKEN_OVER: "handedOver",
} as const;

/**
 * A dispatch as the registry sees it. No timers: each deadline, each worker's answer or report and
 * each search result is an abstract event that the driver performs on the real machine. Which
 * worker it concerns is the driver's business (a new worker for every candidate).
 */
const dispatchModel = setup({
  types: { context: {} as ModelContext, events: {} as ModelEvent },
  actions: {
    end: assign({
      outcome: (_, params: { status: DispatchFinal; reason: string | null }) => params,
    }),
    fence: assign({ fenceMs: (_, params: { ms: number }) => params.ms }),
    unfence: assign({ fenceMs: null }),
    markReleased: assign({ released: 1 as const }),
    releaseAgain: assign({ released: 2 as const }),
    unrelease: assign({ released: 0 as const }),
    reject: assign({
      outcome: ({ context }) => ({
        status: "rejected" as const,
        reason: context.sawNoCandidate ? CAUSE : "timed out",
      }),
    }),
  },
}).createMachine({
  id: "dispatchModel",
  context: { redispatch: false, sawNoCandidate: false, outcome: null, fenceMs: null, released: 0 },
  initial: "idle",
  states: {
    /** Before the registry started the dispatch. */
    idle: {
      on: {
        START: "pending",
        START_REDISPATCH: { target: "pending", actions: assign({ redispatch: true }) },
        ADOPT: "running",
        ADOPT_REDISPATCH: { target: "running", actions: assign({ redispatch: true }) },
        ADOPT_ASSIGNED: "unconfirmed",
        ADOPT_ASSIGNED_REDISPATCH: { target: "unconfirmed", actions: assign({ redispatch: true }) },
        START_FENCED: { target: "fencing", actions: [assign({ redispatch: true }), fence(START_FENCE_MS)] },
      },
    },
    pending: {
      // The worker that had the job let go of it, or its lease ran out: nobody is told to let go now.
      entry: "unrelease",
      on: {
        // A worker was found: a later deadline is no longer for the reason of the earlier search.
        CANDIDATE: { target: "offering", actions: assign({ sawNoCandidate: false }) },
        REMOTE_CANDIDATE: "handedOver",
        NO_CANDIDATE: { target: "waiting", actions: assign({ sawNoCandidate: true }) },
        CANCEL: { target: "cancelled", actions: end("cancelled", "cancelled before assignment") },
        DISPATCH_TIMEOUT: { target: "rejected", actions: "reject" },
        TAKEN_OVER: "handedOver",
      },
    },
    waiting: {
      on: {
        CAPACITY: "pending",
        CANCEL: { target: "cancelled", actions: end("cancelled", "cancelled before assignment") },
        DISPATCH_TIMEOUT: { target: "rejected", actions: "reject" },
        TAKEN_OVER: "handedOver",
      },
    },
    offering: {
      on: {
        YES: "assigned",
        NO: "pending",
        OFFER_TIMEOUT: "pending",
        CANDIDATE_GONE: "pending",
        CANCEL: { target: "cancelled", actions: end("cancelled", "cancelled before assignment") },
        DISPATCH_TIMEOUT: { target: "rejected", actions: "reject" },
        TAKEN_OVER: "handedOver",
      },
    },
    /** Bound, the assignment not sent yet: the store has not confirmed the record says `assigned`. */
    assigned: {
      on: {
        FENCED: "sent",
        ...boundToWorker,
      },
    },
    /** The record says `assigned` to this worker and the assignment went out. */
    sent: {
      on: boundToWorker,
    },
    /** Adopted from a dead node as assigned, its worker silent about it: nothing is sent. */
    unconfirmed: {
      on: boundToWorker,
    },
    running: {
      on: {
        ...reports,
        BOUND_GONE: boundGone(GONE_FENCE_MS),
        LEASE_LAPSED: leaseLapsed,
        CANCEL: "cancelling",
        TAKEN_OVER: "handedOver",
      },
    },
    cancelling: {
      on: {
        ...reports,
        // The job was cancelled: whatever ended it, it is never offered again, even with redispatch.
        LEASE_LAPSED: { target: "failed", actions: end("failed", LEASE_LAPSED) },
        BOUND_GONE: { target: "cancelled", actions: end("cancelled", "cancelled; the worker was lost") },
        CANCEL_TIMEOUT: { target: "cancelled", actions: end("cancelled", "cancelled; the worker did not confirm") },
        TAKEN_OVER: "handedOver",
      },
    },
    /** Past the running deadline: the job stays with its worker until it lets go, is gone or the deadline passes. */
    releasing: {
      on: {
        COMPLETED: { target: "completed", actions: end("completed", null) },
        FAILED: [
          { guard: redispatch, target: "pending" },
          { target: "failed", actions: end("failed", NOT_STARTED) },
        ],
        CANCELLED: [
          { guard: redispatch, target: "pending" },
          { target: "failed", actions: end("failed", NOT_STARTED) },
        ],
        LEASE_LAPSED: [
          { guard: redispatch, target: "pending" },
          { target: "failed", actions: end("failed", NOT_STARTED) },
        ],
        BOUND_GONE: [
          { guard: redispatch, target: "fencing", actions: fence(timing.leaseFenceMs) },
          { target: "failed", actions: end("failed", NOT_STARTED) },
        ],
        // The worker did not let go: its lease may still run there, the whole of it.
        RELEASE_TIMEOUT: [
          { guard: redispatch, target: "fencing", actions: fence(timing.leaseFenceMs) },
          { target: "failed", actions: end("failed", NOT_STARTED) },
        ],
        CANCEL: "cancelling",
        TAKEN_OVER: "handedOver",
      },
    },
    /**
     * With redispatch, the worker is gone or did not let go, but may still run the job under its
     * lease: nothing is offered until the fence passed, unless the worker comes back first.
     */
    fencing: {
      exit: "unfence",
      on: {
        FENCE_PASSED: "pending",
        // Told to let go before it went quiet: told again (that termination may have been lost with it).
        RUNNING: [
          { guard: ({ context }) => context.released > 0, target: "releasing", actions: "releaseAgain" },
          "running",
        ],
        COMPLETED: { target: "completed", actions: end("completed", null) },
        // It says it stopped the job: offered elsewhere at once.
        FAILED: "pending",
        CANCELLED: "pending",
        CANCEL: { target: "cancelled", actions: end("cancelled", UNREACHABLE) },
        TAKEN_OVER: "handedOver",
      },
    },
    completed: { type: "final" },
    failed: { type: "final" },
    cancelled: { type: "final" },
    lost: { type: "final" },
    rejected: { type: "final" },
    handedOver: { type: "final" },
  },
});

type ModelSnapshot = SnapshotFrom<typeof dispatchModel>;
type DispatchSnapshot = SnapshotFrom<typeof dispatchMachine>;

/**
 * One path's driver: the real dispatch machine (traced, simulated clock), and what the path has made
 * it do so far, kept the way the registry would see it: which worker is the candidate, which one
 * has the job, which were tried and at which epoch, how many attempts, the terminations asked for.
 */
function createDriver(path: { steps: { event: ModelEvent }[] }) {
  const clock = new SimulatedClock();
  const emitted: DispatchEmitted[] = [];
  let actor: ReturnType<typeof createTracedActor<typeof dispatchMachine>> | undefined;
  let workers = 0;
  let candidate: { workerId: string; epoch: number } | null = null;
  let bound: { workerId: string; epoch: number } | null = null;
  const tried: Record<string, number> = {};
  let attempts = 0;
  let searches = 0;
  const terminations: { workerId: string; reason: string }[] = [];
  /** When the dispatch last entered unassigned (its deadline counts from there). */
  let unassignedSince = 0;

  const sut = () => {
    if (!actor) throw new Error("the dispatch was not started yet");
    return actor;
  };
  const snap = () => sut().getSnapshot() as DispatchSnapshot;
  const of = <T extends DispatchEmitted["type"]>(type: T) =>
    emitted.filter((e): e is Extract<DispatchEmitted, { type: T }> => e.type === type);

  const startDispatch = (input: Omit<DispatchInput, "jobId" | "timing">) => {
    actor = createTracedActor(dispatchMachine, { clock, input: { jobId: JOB_ID, timing, ...input } });
    actor.on("*", (event) => emitted.push(event as DispatchEmitted));
    actor.start();
  };
  const adopt = (redispatch: boolean, adoptedAs: "running" | "assigned" = "running") => {
    bound = { workerId: "w0", epoch: 0 };
    attempts = 1;
    startDispatch({ redispatch, adoptedBy: "w0", adoptedAs });
  };
  const startFenced = () => {
    bound = { workerId: "w0", epoch: 0 };
    // The dead node's attempt.
    attempts = 1;
    startDispatch({ redispatch: true, fence: { workerId: "w0", ms: START_FENCE_MS } });
  };
  const searchAgain = () => {
    searches++;
    unassignedSince = clock.now();
  };
  /** Where the path is: the model state tested last (an event's step carries its target state only). */
  let current: ModelSnapshot | undefined;
  const from = () => current?.value;
  /** The bound worker let go (or is gone) and the job is offered elsewhere: tried at its bound epoch. */
  const letGo = (target: ModelSnapshot) => {
    if (target.value === "pending" && bound) {
      tried[bound.workerId] = bound.epoch;
      bound = null;
      searchAgain();
    }
  };
  /** The candidate said no, timed out or went away. */
  const moveOn = () => {
    if (candidate) tried[candidate.workerId] = candidate.epoch;
    candidate = null;
    searches++;
  };
  /** A deadline, played in two steps: nothing happens a millisecond early. */
  const elapse = (ms: number) => {
    const before = JSON.stringify(snap().value);
    clock.increment(ms - 1);
    expect(JSON.stringify(snap().value)).toBe(before);
    clock.increment(1);
  };
  const report = (status: "running" | "completed" | "failed" | "cancelled", workerId = bound?.workerId ?? "") => {
    const reason = status === "failed" ? "entrypoint_error" : status === "cancelled" ? "cancelled" : undefined;
    sut().send({ type: "job_update", workerId, status, ...(reason ? { reason } : {}) });
  };

  /** What every state shares: no error, offers and bindings paired, searches and terminations as played. */
  const expectCommon = (open: { offering?: boolean; bound?: boolean; waiting?: boolean }) => {
    expect(snap().status).not.toBe("error");
    expect(of("waiting_over")).toHaveLength(of("waiting").length - (open.waiting ? 1 : 0));
    const reserves = of("reserve").map((e) => e.workerId);
    const releases = of("release").map((e) => e.workerId);
    expect(releases).toEqual(open.offering ? reserves.slice(0, -1) : reserves);
    const binds = of("bind").map((e) => e.workerId);
    const unbinds = of("unbind").map((e) => e.workerId);
    expect(unbinds).toEqual(open.bound ? binds.slice(0, -1) : binds);
    if (open.bound) expect(binds.at(-1)).toBe(bound?.workerId);
    if (open.offering) expect(reserves.at(-1)).toBe(candidate?.workerId);
    expect(of("need_candidate")).toHaveLength(searches);
    expect(of("terminate")).toEqual(terminations.map((t) => ({ type: "terminate", jobId: JOB_ID, ...t })));
    expect(snap().context.attempts).toBe(attempts);
    expect(snap().context.tried).toEqual(tried);
  };
  const expectActive = (value: unknown) => {
    expect(snap().value).toEqual(value);
    expect(snap().status).toBe("active");
    expect(of("finished")).toEqual([]);
    expect(of("handed_over")).toEqual([]);
  };
  const lastStatus = () => of("status").at(-1);

  const expectFinal = (model: ModelSnapshot, value: DispatchFinal) => {
    expect(snap().value).toBe(value);
    expect(snap().status).toBe("done");
    const outcome = model.context.outcome;
    expect(outcome?.status).toBe(value);
    const output: DispatchOutput = {
      jobId: JOB_ID,
      status: value,
      workerId: bound?.workerId ?? null,
      ...(outcome?.reason ? { reason: outcome.reason } : {}),
      attempts,
    };
    expect(snap().output).toEqual(output);
    expect(of("finished")).toEqual([{ type: "finished", jobId: JOB_ID, output }]);
    expect(of("handed_over")).toEqual([]);
    expectCommon({});
  };

  const states = {
    idle: () => expect(actor).toBeUndefined(),
    pending: () => {
      expectActive({ unassigned: "pending" });
      expectCommon({});
      expect(lastStatus()).toEqual({ type: "status", jobId: JOB_ID, status: "pending", workerId: null, attempts });
      expect(of("need_candidate").at(-1)).toEqual({
        type: "need_candidate",
        jobId: JOB_ID,
        tried,
        prefer: null,
        hops: 0,
      });
      expect(emitted.at(-1)?.type).toBe("need_candidate");
    },
    waiting: () => {
      expectActive({ unassigned: "waiting" });
      expectCommon({ waiting: true });
      expect(snap().context.cause).toBe(CAUSE);
      expect(emitted.at(-1)).toEqual({ type: "waiting", jobId: JOB_ID });
    },
    offering: () => {
      expectActive({ unassigned: "offering" });
      expectCommon({ offering: true });
      const workerId = candidate?.workerId;
      expect(emitted.slice(-3)).toEqual([
        { type: "reserve", jobId: JOB_ID, workerId },
        { type: "status", jobId: JOB_ID, status: "offering", workerId, attempts },
        { type: "offer", jobId: JOB_ID, workerId },
      ]);
      expect(snap().context.candidate).toEqual(candidate);
    },
    assigned: () => {
      expectActive({ bound: "assigned" });
      expectCommon({ bound: true });
      const workerId = bound?.workerId;
      expect(emitted.slice(-4)).toEqual([
        { type: "release", jobId: JOB_ID, workerId },
        { type: "bind", jobId: JOB_ID, workerId },
        { type: "status", jobId: JOB_ID, status: "assigned", workerId, attempts },
        { type: "assign", jobId: JOB_ID, workerId },
      ]);
      expect(of("send_assignment")).toEqual([]);
      expect(snap().context).toMatchObject({ workerId, boundEpoch: bound?.epoch, candidate: null });
    },
    sent: () => {
      expectActive({ bound: "assigned" });
      expectCommon({ bound: true });
      const workerId = bound?.workerId;
      expect(emitted.at(-1)).toEqual({ type: "send_assignment", jobId: JOB_ID, workerId });
      expect(of("send_assignment")).toHaveLength(1);
    },
    unconfirmed: () => {
      expectActive({ bound: "unconfirmed" });
      expectCommon({ bound: true });
      // Nothing goes to the worker: it may already be starting the job.
      expect(of("assign")).toEqual([]);
      expect(of("send_assignment")).toEqual([]);
      expect(of("status")).toEqual([]);
      expect(snap().context.workerId).toBe(bound?.workerId);
    },
    running: () => {
      expectActive({ bound: "running" });
      expectCommon({ bound: true });
      const workerId = bound?.workerId;
      expect(lastStatus()).toEqual({ type: "status", jobId: JOB_ID, status: "running", workerId, attempts });
      expect(snap().context.workerId).toBe(workerId);
    },
    cancelling: () => {
      expectActive({ bound: "cancelling" });
      expectCommon({ bound: true });
      expect(terminations.at(-1)?.workerId).toBe(bound?.workerId);
    },
    fencing: (model: ModelSnapshot) => {
      expectActive("fencing");
      // Nothing is bound meanwhile, and nothing searched for.
      expectCommon({});
      expect(snap().context).toMatchObject({
        workerId: bound?.workerId,
        fenceMs: model.context.fenceMs,
        released: model.context.released > 0,
        candidate: null,
      });
      // Unbound on the way in (nothing at all on a fenced start), and nothing else.
      const workerId = bound?.workerId;
      expect(emitted.at(-1) ?? null).toEqual(of("bind").length ? { type: "unbind", jobId: JOB_ID, workerId } : null);
    },
    releasing: () => {
      expectActive({ bound: "releasing" });
      expectCommon({ bound: true });
      const workerId = bound?.workerId;
      expect(terminations.at(-1)).toEqual({ workerId, reason: NOT_STARTED });
      expect(snap().context).toMatchObject({ workerId, released: true });
      // The job stays with that worker: no new search until it lets go. Back from fencing, it is
      // bound again once told (again) to let go.
      const terminate = { type: "terminate", jobId: JOB_ID, workerId, reason: NOT_STARTED };
      expect(emitted.slice(from() === "fencing" ? -2 : -1)).toEqual(
        from() === "fencing" ? [terminate, { type: "bind", jobId: JOB_ID, workerId }] : [terminate],
      );
    },
    completed: (model: ModelSnapshot) => expectFinal(model, "completed"),
    failed: (model: ModelSnapshot) => expectFinal(model, "failed"),
    cancelled: (model: ModelSnapshot) => expectFinal(model, "cancelled"),
    lost: (model: ModelSnapshot) => expectFinal(model, "lost"),
    rejected: (model: ModelSnapshot) => expectFinal(model, "rejected"),
    handedOver: () => {
      expect(snap().value).toBe("handedOver");
      expect(snap().status).toBe("done");
      expect(of("finished")).toEqual([]);
      expect(of("handed_over")).toEqual([{ type: "handed_over", jobId: JOB_ID }]);
      expect(emitted.at(-1)?.type).toBe("handed_over");
      expectCommon({});
    },
  };

  type Step = { state: ModelSnapshot };
  const events = {
    START: () => {
      searches = 1;
      startDispatch({ redispatch: false });
    },
    START_REDISPATCH: () => {
      searches = 1;
      startDispatch({ redispatch: true });
    },
    ADOPT: () => adopt(false),
    ADOPT_REDISPATCH: () => adopt(true),
    ADOPT_ASSIGNED: () => adopt(false, "assigned"),
    ADOPT_ASSIGNED_REDISPATCH: () => adopt(true, "assigned"),
    START_FENCED: startFenced,
    CANDIDATE: (step: Step & { event: ModelEvent }) => {
      // An offer outlives the dispatch deadline only when it went out shortly before it: if the path
      // lets the deadline pass next, the search took until then.
      const next = path.steps[path.steps.indexOf(step) + 1]?.event.type;
      if (next === "DISPATCH_TIMEOUT") {
        clock.increment(unassignedSince + timing.dispatchTimeoutMs - timing.offerTimeoutMs / 2 - clock.now());
      }
      workers++;
      candidate = { workerId: `w${workers}`, epoch: 10 + workers };
      sut().send({ type: "candidate", ...candidate });
    },
    REMOTE_CANDIDATE: () => {
      sut().send({ type: "candidate", workerId: "r1", epoch: 7, remote: true });
      expect(of("forward")).toEqual([{ type: "forward", jobId: JOB_ID, workerId: "r1", tried, hops: 1 }]);
    },
    NO_CANDIDATE: () => sut().send({ type: "no_candidate", cause: CAUSE }),
    CAPACITY: () => {
      sut().send({ type: "capacity_changed" });
      searches++;
    },
    YES: () => {
      // A yes from another worker first: only the candidate's counts.
      sut().send({ type: "answer", workerId: "w-other", available: true });
      expect(snap().value).toEqual({ unassigned: "offering" });
      sut().send({ type: "answer", workerId: candidate?.workerId ?? "", available: true });
      bound = candidate;
      candidate = null;
      attempts++;
    },
    NO: () => {
      sut().send({ type: "answer", workerId: candidate?.workerId ?? "", available: false, error: "busy" });
      moveOn();
    },
    OFFER_TIMEOUT: () => {
      elapse(timing.offerTimeoutMs);
      moveOn();
    },
    CANDIDATE_GONE: () => {
      sut().send({ type: "worker_gone", workerId: "w-other" });
      expect(snap().value).toEqual({ unassigned: "offering" });
      sut().send({ type: "worker_gone", workerId: candidate?.workerId ?? "" });
      moveOn();
    },
    RUNNING: ({ state }: Step) => {
      // Only its worker's report counts.
      const before = snap().value;
      report("running", "w-other");
      expect(snap().value).toEqual(before);
      report("running");
      if (from() === "fencing" && state.value === "releasing") {
        terminations.push({ workerId: bound?.workerId ?? "", reason: NOT_STARTED });
      }
    },
    COMPLETED: () => report("completed"),
    FAILED: ({ state }: Step) => {
      report("failed");
      letGo(state);
    },
    CANCELLED: ({ state }: Step) => {
      report("cancelled");
      letGo(state);
    },
    BOUND_GONE: ({ state }: Step) => {
      sut().send({ type: "worker_gone", workerId: "w-other" });
      expect(snap().value).toEqual({ bound: from() === "sent" ? "assigned" : from() });
      // A running job's registry knows how long its lease there still runs; otherwise the whole lease.
      const gone = from() === "running" ? GONE_FENCE_MS : undefined;
      sut().send({
        type: "worker_gone",
        workerId: bound?.workerId ?? "",
        ...(gone === undefined ? {} : { fenceMs: gone }),
      });
      letGo(state);
    },
    LEASE_LAPSED: ({ state }: Step) => {
      sut().send({ type: "job_update", workerId: bound?.workerId ?? "", status: "failed", reason: LEASE_LAPSED });
      letGo(state);
    },
    CANCEL: () => {
      sut().send({ type: "cancel", reason: "user" });
      if (["assigned", "sent", "unconfirmed", "running"].includes(String(from()))) {
        terminations.push({ workerId: bound?.workerId ?? "", reason: "cancelled" });
      }
      candidate = null;
    },
    RUNNING_TIMEOUT: () => {
      elapse(timing.runningTimeoutMs);
      terminations.push({ workerId: bound?.workerId ?? "", reason: NOT_STARTED });
    },
    RELEASE_TIMEOUT: ({ state }: Step) => {
      elapse(timing.releaseTimeoutMs);
      letGo(state);
    },
    FENCE_PASSED: ({ state }: Step) => {
      elapse(current?.context.fenceMs ?? Number.NaN);
      letGo(state);
    },
    CANCEL_TIMEOUT: () => elapse(timing.cancelTimeoutMs),
    DISPATCH_TIMEOUT: () => {
      // The deadline counts from entering unassigned, whatever happened since.
      elapse(unassignedSince + timing.dispatchTimeoutMs - clock.now());
      candidate = null;
    },
    TAKEN_OVER: () => {
      sut().send({ type: "taken_over" });
      candidate = null;
    },
    FENCED: () => {
      // A confirmation for another worker's assignment sends nothing.
      sut().send({ type: "assignment_fenced", workerId: "w-other" });
      expect(of("send_assignment")).toEqual([]);
      sut().send({ type: "assignment_fenced", workerId: bound?.workerId ?? "" });
    },
  };

  /** After the path: late events and every timer change nothing once the dispatch is final. */
  const expectSettledAfterPath = () => {
    if (!actor || snap().status !== "done") return;
    const count = emitted.length;
    const output = snap().output;
    clock.increment(timing.dispatchTimeoutMs + timing.releaseTimeoutMs);
    expect(emitted).toHaveLength(count);
    expect(snap().output).toEqual(output);
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

  return { states: tracked, events, expectSettledAfterPath };
}

/**
 * A transition is told apart by its event and the state it leaves, as by default, out of fencing
 * also by how long the fence is, and out of a state with a worker told to let go by how often it
 * was told: each way out of fencing and releasing is played after each way into it (releasing
 * entered back from fencing too, though the job goes back to pending the same way).
 */
const model = createTestModel(dispatchModel, {
  serializeTransition: (state, event, previous) => {
    if (!event || (previous && JSON.stringify(previous.value) === JSON.stringify(state.value))) return "";
    const from = previous ? ` from ${JSON.stringify(previous.value)}` : "";
    const fence = previous?.context.fenceMs == null ? "" : ` after ${previous.context.fenceMs} ms`;
    const told = previous?.context.released ? ` told ${previous.context.released}x` : "";
    return ` via ${JSON.stringify(event)}${from}${fence}${told}`;
  },
});
const paths = model.getShortestPaths();

describe("dispatch (model-based)", () => {
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
    expect([...states].sort()).toEqual(Object.keys(dispatchModel.root.states).sort());
    expect([...edges].sort()).toEqual(modelTransitions(dispatchModel));
  });

  it("the paths reach every outcome with and without redispatch", () => {
    const seen = new Set(
      paths.flatMap((p) => p.steps.map((s) => `${s.state.value}:${s.state.context.redispatch ? "re" : "once"}`)),
    );
    for (const value of ["completed", "failed", "cancelled", "rejected", "handedOver", "releasing", "cancelling"]) {
      expect(seen.has(`${value}:once`), value).toBe(true);
      expect(seen.has(`${value}:re`), value).toBe(true);
    }
    // A lost job only without redispatch: with it, the job is fenced, then goes back to pending.
    expect(seen.has("lost:once")).toBe(true);
    expect(seen.has("lost:re")).toBe(false);
    expect(seen.has("fencing:re")).toBe(true);
    expect(seen.has("fencing:once")).toBe(false);
  });

  it("the paths play every way out of releasing after a released worker came back from fencing", () => {
    const after = new Set<string>();
    for (const path of paths) {
      const values = path.steps.map((s) => s.state.value as string);
      const back = values.findIndex((v, i) => v === "releasing" && values[i - 1] === "fencing");
      if (back >= 0 && back + 1 < path.steps.length)
        after.add(`${path.steps[back + 1]?.event.type} -> ${values[back + 1]}`);
    }
    expect([...after].sort()).toEqual(
      [
        "BOUND_GONE -> fencing",
        "CANCEL -> cancelling",
        "CANCELLED -> pending",
        "COMPLETED -> completed",
        "FAILED -> pending",
        "LEASE_LAPSED -> pending",
        "RELEASE_TIMEOUT -> fencing",
        "TAKEN_OVER -> handedOver",
      ].sort(),
    );
    // Cancelled, the lapsed lease is recorded as it is, with or without redispatch.
    const lapsedWhileCancelling = paths.filter((p) => {
      const steps = p.steps;
      return steps.at(-1)?.event.type === "LEASE_LAPSED" && steps.at(-2)?.state.value === "cancelling";
    });
    expect(
      new Set(lapsedWhileCancelling.map((p) => `${p.steps.at(-1)?.state.value}:${p.state.context.redispatch}`)),
    ).toEqual(new Set(["failed:false", "failed:true"]));
  });

  for (const path of paths) {
    it(path.description, async () => {
      const driver = createDriver(path);
      await path.test({ states: driver.states, events: driver.events });
      driver.expectSettledAfterPath();
    });
  }
});
