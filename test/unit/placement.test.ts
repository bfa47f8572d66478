import { describe, expect, it } from "vitest";
import { SimulatedClock } from "xstate";
import type { WorkerReportedStatus } from "../../machines/registry/session.ts";
import type { WorkerView } from "../../src/registry/cluster/messages.ts";
import { MAX_HOPS, type Placement, type PlacementQuery, place, viewOf } from "../../src/registry/core/placement.ts";
import type { NodeBus } from "../../src/registry/core/ports.ts";
import { WorkerLink } from "../../src/registry/core/worker-link.ts";
import { DEFAULT_REGISTRY_TIMING } from "../../src/registry/timing.ts";

const FLOOR = 100;
const clock = new SimulatedClock();

interface LinkOptions {
  agentName?: string;
  maxProcesses?: number;
  loadThreshold?: number;
  status?: WorkerReportedStatus;
  jobCount?: number;
  load?: number;
  register?: boolean;
}

/** A real worker link (its session machine started), registered and reporting as asked. */
function link(workerId: string, options: LinkOptions = {}): WorkerLink {
  const l = new WorkerLink(`conn-${workerId}`, DEFAULT_REGISTRY_TIMING, clock, FLOOR);
  l.session.start();
  if (options.register === false) return l;
  l.session.send({
    type: "registered",
    workerId,
    agentName: options.agentName ?? "A",
    maxProcesses: options.maxProcesses ?? 4,
    loadThreshold: options.loadThreshold ?? 0.75,
  });
  l.session.send({
    type: "status",
    status: options.status ?? "available",
    load: options.load ?? 0,
    jobCount: options.jobCount ?? 0,
  });
  return l;
}

function view(workerId: string, overrides: Partial<WorkerView> = {}): WorkerView {
  return {
    workerId,
    nodeId: "node-2",
    agentName: "A",
    available: true,
    maxProcesses: 4,
    jobCount: 0,
    assigned: 0,
    inflight: 0,
    load: 0,
    availabilityEpoch: 5,
    state: "live.available",
    status: "available",
    jobs: [],
    at: 0,
    ...overrides,
  };
}

function bus(views: WorkerView[]): NodeBus {
  return {
    nodeId: "node-1",
    connected: true,
    heartbeatMs: 1_000,
    remoteViews: () => views,
    isLive: () => true,
    send: () => {},
    handOff: async () => undefined,
    publishView: () => {},
    publishGone: () => {},
    presenceHeldSince: () => Number.NEGATIVE_INFINITY,
  };
}

const query = (overrides: Partial<PlacementQuery> = {}): PlacementQuery => ({
  agentName: "A",
  tried: {},
  prefer: null,
  hops: 0,
  ...overrides,
});

const first = () => 0;

const placed = (p: Placement) =>
  p.kind === "local"
    ? `local:${p.link.workerId}@${p.epoch}`
    : p.kind === "remote"
      ? `remote:${p.view.workerId}`
      : p.cause;

describe("place()", () => {
  it("picks an available local worker, with its availability epoch now", () => {
    const w1 = link("w1");
    expect(w1.context.epoch).toBe(FLOOR + 1);
    const p = place([w1], undefined, query(), first);
    expect(p).toEqual({ kind: "local", link: w1, epoch: FLOOR + 1 });
    expect(viewOf(w1)).toMatchObject({ workerId: "w1", available: true, availabilityEpoch: FLOOR + 1, inflight: 0 });
  });

  it("a tried worker is skipped while its epoch has not moved past the one it was tried at", () => {
    const w1 = link("w1");
    const epoch = w1.context.epoch;
    expect(placed(place([w1], undefined, query({ tried: { w1: epoch } }), first))).toBe(
      "offered to 1 worker, all declined",
    );
    // A later epoch than the worker's (another node saw more) excludes too.
    expect(place([w1], undefined, query({ tried: { w1: epoch + 5 } }), first).kind).toBe("none");
    // Tried at an older epoch: it may say yes now.
    expect(placed(place([w1], undefined, query({ tried: { w1: epoch - 1 } }), first))).toBe(`local:w1@${epoch}`);

    // Its epoch moves on when a job ends there...
    w1.session.send({ type: "status", status: "available", load: 0, jobCount: 2 });
    w1.session.send({ type: "status", status: "available", load: 0, jobCount: 1 });
    expect(w1.context.epoch).toBe(epoch + 1);
    expect(placed(place([w1], undefined, query({ tried: { w1: epoch } }), first))).toBe(`local:w1@${epoch + 1}`);

    // ...or when it becomes available again.
    const w2 = link("w2");
    const before = w2.context.epoch;
    const tried = { w2: before };
    w2.session.send({ type: "status", status: "full", load: 0, jobCount: 0 });
    expect(place([w2], undefined, query({ tried }), first).kind).toBe("none");
    w2.session.send({ type: "status", status: "available", load: 0, jobCount: 0 });
    expect(placed(place([w2], undefined, query({ tried }), first))).toBe(`local:w2@${before + 1}`);
  });

  it("an excluded worker leaves the others eligible", () => {
    const w1 = link("w1");
    const w2 = link("w2");
    expect(placed(place([w1, w2], undefined, query({ tried: { w1: w1.context.epoch } }), first))).toBe(
      `local:w2@${w2.context.epoch}`,
    );
  });

  it("asks the preferred worker first, unless it is excluded or cannot take it", () => {
    const roomy = link("w1", { maxProcesses: 8 });
    const preferred = link("w2", { maxProcesses: 2, jobCount: 1 });
    const links = [roomy, preferred];
    // Without a preference the roomier worker wins.
    expect(placed(place(links, undefined, query(), first))).toBe(`local:w1@${roomy.context.epoch}`);
    expect(placed(place(links, undefined, query({ prefer: "w2" }), first))).toBe(`local:w2@${preferred.context.epoch}`);
    expect(
      placed(place(links, undefined, query({ prefer: "w2", tried: { w2: preferred.context.epoch } }), first)),
    ).toBe(`local:w1@${roomy.context.epoch}`);
    preferred.session.send({ type: "status", status: "full", load: 0, jobCount: 2 });
    expect(placed(place(links, undefined, query({ prefer: "w2" }), first))).toBe(`local:w1@${roomy.context.epoch}`);
    expect(placed(place(links, undefined, query({ prefer: "nobody" }), first))).toBe(`local:w1@${roomy.context.epoch}`);
  });

  it("ignores unregistered links and workers of other agents", () => {
    expect(placed(place([link("w1", { register: false })], undefined, query(), first))).toBe("no worker serves A");
    expect(placed(place([link("w1", { agentName: "B" })], undefined, query(), first))).toBe("no worker serves A");
    expect(placed(place([], undefined, query(), first))).toBe("no worker serves A");
  });

  it("says why every worker that serves the agent is full", () => {
    const reasons = [
      link("w1", { status: "draining" }),
      link("w2", { status: "starting" }),
      link("w3", { load: 0.9 }),
      link("w4", { jobCount: 4 }),
    ];
    expect(placed(place(reasons.slice(0, 1), undefined, query(), first))).toBe("1 worker, all full (draining)");
    expect(placed(place(reasons, undefined, query(), first))).toBe(
      "4 workers, all full (draining; starting; load 0.90 ≥ 0.75)",
    );
    expect(placed(place(reasons.slice(3), undefined, query(), first))).toBe("1 worker, all full (4 of 4 jobs)");
    const offline = link("w5", { status: "offline" });
    expect(placed(place([offline], undefined, query(), first))).toBe("1 worker, all full (offline)");
    // Offers out count against capacity.
    const reserved = link("w6", { maxProcesses: 1 });
    reserved.session.send({ type: "offer_reserved" });
    expect(placed(place([reserved], undefined, query(), first))).toBe("1 worker, all full (1 of 1 jobs)");
    // Jobs bound here count even before the worker reports them.
    const bound = link("w7", { maxProcesses: 2 });
    bound.jobs.add("j1");
    bound.jobs.add("j2");
    expect(placed(place([bound], undefined, query(), first))).toBe("1 worker, all full (2 of 2 jobs)");
    // The declined are not counted as full.
    const declined = link("w8");
    expect(
      placed(
        place([declined, reasons[0] as WorkerLink], undefined, query({ tried: { w8: declined.context.epoch } }), first),
      ),
    ).toBe("1 worker, all full (draining)");
  });

  it("takes a worker of another node when none here fits, while the dispatch may still hop", () => {
    const remote = view("r1", { availabilityEpoch: 9 });
    expect(placed(place([], bus([remote]), query(), first))).toBe("remote:r1");
    expect(place([], bus([remote]), query({ hops: MAX_HOPS - 1 }), first)).toEqual({ kind: "remote", view: remote });
    expect(placed(place([], bus([remote]), query({ hops: MAX_HOPS }), first))).toBe("no worker serves A");
    // The same epoch rule for remote workers, on their published epoch.
    expect(placed(place([], bus([remote]), query({ tried: { r1: 9 } }), first))).toBe(
      "offered to 1 worker, all declined",
    );
    expect(placed(place([], bus([remote]), query({ tried: { r1: 8 } }), first))).toBe("remote:r1");
    expect(placed(place([], bus([view("r2", { available: false })]), query(), first))).toBe(
      "1 worker, all full (0 of 4 jobs)",
    );
  });

  it("a worker connected here wins over a stale view of it from another node", () => {
    const w1 = link("w1", { status: "full" });
    const stale = view("w1", { availabilityEpoch: 1 });
    expect(placed(place([w1], bus([stale]), query(), first))).toBe("1 worker, all full (0 of 4 jobs)");
    const local = link("w2");
    expect(placed(place([local], bus([view("w2")]), query(), first))).toBe(`local:w2@${local.context.epoch}`);
  });
});
