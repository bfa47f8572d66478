import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { SimulatedClock } from "xstate";
import type { WorkerReportedStatus } from "../../machines/registry/session.ts";
import {
  AgentLabels,
  type AutoscalingSource,
  MAX_AGENT_LABELS,
  OTHER_AGENT,
  rejectionCause,
  tallyByAgent,
  UNSERVED_AGENT,
} from "../../src/registry/autoscaling-metrics.ts";
import { place } from "../../src/registry/core/placement.ts";
import { WorkerLink } from "../../src/registry/core/worker-link.ts";
import { DEFAULT_REGISTRY_TIMING } from "../../src/registry/timing.ts";
import type { WorkerHandle } from "../../src/worker/runtime.ts";
import {
  closeRegistries,
  dispatch,
  RawConnection,
  registerMessage,
  startInProcessWorker,
  startRegistry,
  stopInProcessWorkers,
  type TestRegistry,
  tempDir,
  waitAvailableAgent,
} from "../registry/helpers.ts";
import { scrape, seriesValue, sumOf } from "../support/exposition.ts";
import { dropPrefix, REDIS_URL, redisAvailable, testPrefix } from "../support/redis.ts";
import { until } from "../support/wait.ts";

/**
 * The registry's autoscaling gauges, read at scrape time from its worker sessions and dispatch
 * machines: free slots, dispatches waiting and workers by status move as a real worker fills,
 * drains and leaves; rejections are counted by a bounded agent label and cause.
 */

// ------------------------------------------------------------------ unit level

const clock = new SimulatedClock();

/** A real worker link (its session machine started), registered and reporting as asked. */
function link(
  workerId: string,
  agentName: string,
  report: { status?: WorkerReportedStatus; jobCount?: number; maxProcesses?: number } = {},
): WorkerLink {
  const l = new WorkerLink(`conn-${workerId}`, DEFAULT_REGISTRY_TIMING, clock, 1);
  l.session.start();
  l.session.send({
    type: "registered",
    workerId,
    agentName,
    maxProcesses: report.maxProcesses ?? 4,
    loadThreshold: 0.75,
  });
  l.session.send({ type: "status", status: report.status ?? "available", load: 0, jobCount: report.jobCount ?? 0 });
  return l;
}

const source = (links: WorkerLink[], waiting: Record<string, number> = {}, remote: string[] = []) =>
  ({
    workers: () => links,
    remoteAgents: () => remote,
    waitingByAgent: () => new Map(Object.entries(waiting)),
  }) satisfies AutoscalingSource;

describe("autoscaling signals from the registry's state", () => {
  it("free slots count only available workers' spare slots; every worker status is tallied", () => {
    const tally = tallyByAgent(
      source([
        link("w1", "A", { jobCount: 1 }),
        link("w2", "A", { jobCount: 4 }),
        link("w3", "A", { status: "draining" }),
        link("w4", "B", { maxProcesses: 2 }),
      ]),
      new AgentLabels(),
    );
    expect(tally.get("A")).toEqual({
      slots: 8,
      freeSlots: 3,
      waiting: 0,
      workers: { available: 1, full: 1, draining: 1, disconnected: 0 },
    });
    expect(tally.get("B")).toMatchObject({ slots: 2, freeSlots: 2 });
  });

  it("a worker still starting counts as full but adds no slots, so slots less free slots stays the work served", () => {
    const tally = tallyByAgent(
      source([link("w1", "A", { jobCount: 1 }), link("w2", "A", { status: "starting" })]),
      new AgentLabels(),
    );
    expect(tally.get("A")).toEqual({
      slots: 4,
      freeSlots: 3,
      waiting: 0,
      workers: { available: 1, full: 1, draining: 0, disconnected: 0 },
    });
  });

  it("a dispatch waiting for an agent no worker serves counts as (unserved); one served elsewhere keeps its name", () => {
    const tally = tallyByAgent(
      source([link("w1", "A", { jobCount: 4 })], { A: 2, "made-up": 3, "on-node-2": 1 }, ["on-node-2"]),
      new AgentLabels(),
    );
    expect([...tally.keys()].sort()).toEqual(["(unserved)", "A", "on-node-2"]);
    expect(tally.get(UNSERVED_AGENT)?.waiting).toBe(3);
    expect(tally.get("A")?.waiting).toBe(2);
    expect(tally.get("on-node-2")?.waiting).toBe(1);
  });

  it("agent labels stay a bounded set: served agents up to the cap, then (other); an admitted agent keeps its name", () => {
    const labels = new AgentLabels();
    expect(labels.of("ghost", false)).toBe(UNSERVED_AGENT);
    for (let i = 0; i < MAX_AGENT_LABELS; i++) expect(labels.of(`agent-${i}`, true)).toBe(`agent-${i}`);
    expect(labels.of("one-too-many", true)).toBe(OTHER_AGENT);
    expect(labels.of("agent-0", false)).toBe("agent-0");
  });

  it("rejection causes map placement's own reasons to a fixed set", () => {
    const none = (links: WorkerLink[], tried: Record<string, number> = {}) => {
      const placement = place(links, undefined, { agentName: "A", tried, prefer: null, hops: 0 }, () => 0);
      if (placement.kind !== "none") throw new Error(`expected no placement, got ${placement.kind}`);
      return placement.cause;
    };
    expect(rejectionCause(none([link("w1", "B")]))).toBe("no_worker");
    expect(rejectionCause(none([link("w1", "A", { jobCount: 4 }), link("w2", "A", { status: "draining" })]))).toBe(
      "all_full",
    );
    const declining = link("w1", "A");
    expect(rejectionCause(none([declining], { w1: declining.context.epoch }))).toBe("all_declined");
    expect(rejectionCause("timed out")).toBe("timed_out");
    expect(rejectionCause("something new")).toBe("other");
    expect(rejectionCause(undefined)).toBe("other");
  });
});

// ------------------------------------------------------------------ a real registry and worker

const AGENT = "autoscaled";

describe("the gauges of a real registry as a worker with two processes fills, drains and leaves", () => {
  let r: TestRegistry;
  let worker: WorkerHandle;
  const files = tempDir();
  const metricsText = () => scrape(`${r.url}/metrics`);
  /** Polls /metrics until every listed series has the value given. */
  const expectSeries = (what: string, expected: Array<[string, Record<string, string>, number]>) =>
    until(
      async () => {
        const text = await metricsText();
        return expected.every(([name, labels, value]) => seriesValue(text, name, labels) === value) && text;
      },
      { label: what, timeoutMs: 30_000 },
    );

  beforeAll(async () => {
    r = await startRegistry({ dispatchTimeoutMs: 120_000 });
    worker = await startInProcessWorker(r.url, {
      agentId: AGENT,
      maxProcesses: 2,
      numIdleProcesses: 0,
      launchTimeout: 60,
    });
    await waitAvailableAgent(r, AGENT, 30_000);
  }, 60_000);

  afterAll(async () => {
    await stopInProcessWorkers();
    await closeRegistries();
    files.remove();
  });

  it("free slots 2 → 0 as two jobs run, a third waits, all back to 2 when they end", async () => {
    const agent = { agent: AGENT };
    await expectSeries("an idle worker with two free slots", [
      ["troupe_registry_slots", agent, 2],
      ["troupe_registry_free_slots", agent, 2],
      ["troupe_registry_dispatches_waiting", agent, 0],
      ["troupe_registry_workers", { ...agent, status: "available" }, 1],
      ["troupe_registry_workers", { ...agent, status: "full" }, 0],
    ]);

    const release = join(files.dir, "release-first-jobs");
    const held = [
      await dispatch(r, { agent_name: AGENT, metadata: { releaseFile: release } }),
      await dispatch(r, { agent_name: AGENT, metadata: { releaseFile: release } }),
    ];
    for (const job of held) await r.store.until(job.id, (rec) => rec.status === "running", 60_000, "running");
    await expectSeries("a full worker", [
      ["troupe_registry_slots", agent, 2],
      ["troupe_registry_free_slots", agent, 0],
      ["troupe_registry_workers", { ...agent, status: "full" }, 1],
      ["troupe_registry_workers", { ...agent, status: "available" }, 0],
    ]);

    const third = await dispatch(r, { agent_name: AGENT, metadata: { releaseFile: release } });
    await expectSeries("the third dispatch to wait", [
      ["troupe_registry_dispatches_waiting", agent, 1],
      ["troupe_registry_free_slots", agent, 0],
    ]);

    writeFileSync(release, "");
    for (const job of [...held, third]) {
      expect((await r.store.untilFinal(job.id, 60_000)).status).toBe("completed");
    }
    await expectSeries("the slots to be free again", [
      ["troupe_registry_free_slots", agent, 2],
      ["troupe_registry_dispatches_waiting", agent, 0],
      ["troupe_registry_workers", { ...agent, status: "available" }, 1],
    ]);
    const text = await metricsText();
    expect(sumOf(text, "troupe_registry_dispatches_rejected_total")).toBe(0);
    expect(seriesValue(text, "troupe_registry_offers_total", { ...agent, answer: "yes" })).toBe(3);
    // Each of the three counted once, when its job ran.
    expect(sumOf(text, "troupe_registry_dispatch_latency_seconds_count")).toBe(3);
  }, 180_000);

  it("a draining worker has no free slots and shows as draining until it leaves", async () => {
    const agent = { agent: AGENT };
    const release = join(files.dir, "release-drain-job");
    const job = await dispatch(r, { agent_name: AGENT, metadata: { releaseFile: release } });
    await r.store.until(job.id, (rec) => rec.status === "running", 60_000, "running");

    worker.drain();
    await expectSeries("the worker to show as draining", [
      ["troupe_registry_workers", { ...agent, status: "draining" }, 1],
      ["troupe_registry_workers", { ...agent, status: "available" }, 0],
      ["troupe_registry_free_slots", agent, 0],
      ["troupe_registry_slots", agent, 0],
    ]);

    writeFileSync(release, "");
    expect((await r.store.untilFinal(job.id, 60_000)).status).toBe("completed");
    await until(
      async () => {
        const text = await metricsText();
        return sumOf(text, "troupe_registry_workers") === 0 && text;
      },
      { label: "the drained worker to leave", timeoutMs: 30_000 },
    );
  }, 120_000);
});

describe("a dispatch for an agent no worker serves", () => {
  afterEach(closeRegistries);

  it("waits under (unserved), then is counted rejected with cause no_worker", async () => {
    const r = await startRegistry({ dispatchTimeoutMs: 2_000 });
    const job = await dispatch(r, { agent_name: "nobody-serves-this" });
    await until(
      async () =>
        seriesValue(await scrape(`${r.url}/metrics`), "troupe_registry_dispatches_waiting", {
          agent: UNSERVED_AGENT,
        }) === 1,
      { label: "the dispatch to wait under (unserved)" },
    );
    expect((await r.store.untilFinal(job.id, 10_000)).status).toBe("rejected");
    const text = await scrape(`${r.url}/metrics`);
    expect(
      seriesValue(text, "troupe_registry_dispatches_rejected_total", { agent: UNSERVED_AGENT, cause: "no_worker" }),
    ).toBe(1);
    expect(text).not.toContain("nobody-serves-this");
  });
});

describe("an offer its worker does not answer in time", () => {
  afterEach(closeRegistries);

  it("is counted once as no_answer when it times out; the worker's late answer is not counted", async () => {
    const r = await startRegistry({ offerTimeoutMs: 300, dispatchTimeoutMs: 3_000, pingIntervalMs: 30_000 });
    const agent = "slow-to-answer";
    const c = await RawConnection.open(r);
    let from = c.frames.length;
    c.send(registerMessage(agent, 1));
    const workerId = (await c.next(from, (f) => f.type === "register", "the register answer")).worker_id as string;
    c.send(JSON.stringify({ type: "status_update", worker_id: workerId, status: "available", load: 0, job_count: 0 }));
    await waitAvailableAgent(r, agent);

    from = c.frames.length;
    const job = await dispatch(r, { agent_name: agent });
    await c.next(from, (f) => f.type === "availability_request" && f.job_id === job.id, "the offer");
    const offers = async (answer: string) =>
      seriesValue(await scrape(`${r.url}/metrics`), "troupe_registry_offers_total", { agent, answer });
    await until(async () => (await offers("no_answer")) === 1, { label: "the offer to time out" });

    c.send(JSON.stringify({ type: "availability_response", job_id: job.id, available: true }));
    await c.sync("after_the_late_answer");
    expect(await offers("yes")).toBeUndefined();
    expect(await offers("no_answer")).toBe(1);
    expect((await r.store.untilFinal(job.id, 10_000)).status).toBe("rejected");
    expect(sumOf(await scrape(`${r.url}/metrics`), "troupe_registry_dispatch_latency_seconds_count")).toBe(0);
    c.close();
  });
});

// ------------------------------------------------------------------ two registry nodes

const hasRedis = await redisAvailable();

describe.runIf(hasRedis)("two registry nodes on one Redis", () => {
  const prefix = testPrefix("autoscaling-metrics");
  const files = tempDir();

  afterAll(async () => {
    await stopInProcessWorkers();
    await closeRegistries();
    await dropPrefix(prefix);
    files.remove();
  });

  it("each node reports its own workers and waiting dispatches, under the agent's name, so a sum by agent counts each once", async () => {
    const cluster = { redis: { url: REDIS_URL, prefix, heartbeatMs: 200 } };
    const timing = { dispatchTimeoutMs: 120_000, pingIntervalMs: 1_000, pongTimeoutMs: 4_000 };
    const [nodeA, nodeB] = [await startRegistry(timing, cluster), await startRegistry(timing, cluster)];
    const agent = "clustered";
    await startInProcessWorker(nodeA.url, { agentId: agent, maxProcesses: 1, numIdleProcesses: 0, launchTimeout: 60 });
    await waitAvailableAgent(nodeA, agent, 30_000);
    await until(() => nodeB.registry.workers().some((w) => w.agentName === agent && w.state === "live.available"), {
      label: "node B to see the worker on node A",
      timeoutMs: 15_000,
    });
    const both = async () => Promise.all([scrape(`${nodeA.url}/metrics`), scrape(`${nodeB.url}/metrics`)]);
    /** Polls both nodes until `check` holds for their /metrics (node A's, node B's). */
    const untilBoth = (label: string, check: (a: string, b: string) => boolean) =>
      until(
        async () => {
          const [a, b] = await both();
          return check(a, b) && ([a, b] as const);
        },
        { label, timeoutMs: 30_000 },
      );

    await untilBoth("the worker counted on node A only", (a, b) => {
      const workers = (text: string) => sumOf(text, "troupe_registry_workers");
      return workers(a) === 1 && workers(b) === 0 && seriesValue(a, "troupe_registry_free_slots", { agent }) === 1;
    });

    // Sent to node B, the first job runs on node A's worker; the second waits on node B.
    const release = join(files.dir, "release");
    const dispatchToB = (metadata: Record<string, unknown>) => dispatch(nodeB, { agent_name: agent, metadata });
    const first = await dispatchToB({ releaseFile: release });
    await until(async () => (await nodeB.registry.job(first.id))?.status === "running", {
      label: "the first job to run",
      timeoutMs: 60_000,
    });
    const second = await dispatchToB({ releaseFile: release });
    const [a, b] = await untilBoth(
      "the second dispatch to wait on node B, under the agent's name",
      (a, b) =>
        seriesValue(b, "troupe_registry_dispatches_waiting", { agent }) === 1 &&
        seriesValue(a, "troupe_registry_free_slots", { agent }) === 0,
    );
    expect(seriesValue(a, "troupe_registry_dispatches_waiting", { agent })).toBe(0);
    expect(seriesValue(b, "troupe_registry_dispatches_waiting", { agent: UNSERVED_AGENT })).toBeUndefined();
    expect(seriesValue(b, "troupe_registry_free_slots", { agent })).toBe(0);

    writeFileSync(release, "");
    for (const job of [first, second]) {
      await until(async () => (await nodeB.registry.job(job.id))?.status === "completed", {
        label: `job ${job.id} to complete`,
        timeoutMs: 60_000,
      });
    }
    await untilBoth(
      "nothing waiting and the slot free again",
      (a, b) =>
        sumOf(a, "troupe_registry_dispatches_waiting") + sumOf(b, "troupe_registry_dispatches_waiting") === 0 &&
        seriesValue(a, "troupe_registry_free_slots", { agent }) === 1,
    );
  }, 180_000);
});
