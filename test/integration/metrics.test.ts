import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  countSlotPhases,
  createWorkerMetrics,
  reasonLabel,
  SLOT_PHASES,
  type WorkerMetrics,
} from "../../src/observability/metrics.ts";
import { Options } from "../../src/options.ts";
import { PROTOCOL_VERSION } from "../../src/protocol/registry.ts";
import { createRegistryMetrics, dispatchReasonLabel } from "../../src/registry/metrics.ts";
import { ProcessTracker } from "../../src/worker/process-tracker.ts";
import { runWorker, type WorkerHandle } from "../../src/worker/runtime.ts";
import {
  api,
  CREDS,
  closeRegistries,
  dispatch,
  ProcessGuard,
  RawConnection,
  silent,
  startInProcessWorker,
  startRegistry,
  stopInProcessWorkers,
  type TestRegistry,
  waitAvailableAgent,
} from "../registry/helpers.ts";
import { parseFamilies, type Sample, samplesOf, seriesValue, sumOf } from "../support/exposition.ts";
import { until, within } from "../support/wait.ts";

/**
 * Both /metrics as an operator's Prometheus sees them: promtool's lint passes, no series outlives
 * the process or job it describes, the registry's counters agree, and docs/health-and-metrics.md
 * lists exactly what is exposed.
 *
 * Without promtool the lint checks are skipped with a notice, except under CI=true, where that is
 * an error (.ci/run installs it).
 */
const promtoolAvailable = spawnSync("promtool", ["--version"], { encoding: "utf8" }).status === 0;
if (!promtoolAvailable) {
  if (process.env.CI === "true") throw new Error("no promtool: .ci/run should have installed it");
  console.warn("promtool checks skipped: no promtool (apt-get install prometheus, or see .ci/run)");
}

const DOC = fileURLToPath(new URL("../../docs/health-and-metrics.md", import.meta.url));
const EXITS_AGENT = fileURLToPath(new URL("../fixtures/agents/exits.ts", import.meta.url));

interface DocumentedMetric {
  type: string;
  labels: string[];
  linuxOnly: boolean;
}

/** The metric tables of docs/health-and-metrics.md: one row per metric (or per worker/registry pair). */
function documentedMetrics(): Map<string, DocumentedMetric> {
  const documented = new Map<string, DocumentedMetric>();
  for (const line of readFileSync(DOC, "utf8").split("\n")) {
    if (!line.startsWith("| `troupe_")) continue;
    const [names, type, labels, meaning] = line.split(" | ").map((cell) => cell.replace(/^\| |\|$/g, "").trim());
    const metric = {
      type: type as string,
      labels: [...(labels ?? "").matchAll(/`([^`]+)`/g)].map((m) => m[1] as string),
      linuxOnly: (meaning ?? "").includes("(Linux only)"),
    };
    for (const [, name] of (names ?? "").matchAll(/`([^`]+)`/g)) documented.set(name as string, metric);
  }
  return documented;
}

/** promtool's verdict on an exposition: its exit status and whatever it printed. */
function promtool(text: string): { status: number | null; output: string } {
  const result = spawnSync("promtool", ["check", "metrics"], { input: text, encoding: "utf8" });
  return { status: result.status, output: `${result.stdout}${result.stderr}`.trim() };
}

async function fetchText(url: string): Promise<string> {
  const response = await fetch(url);
  expect(response.status).toBe(200);
  return response.text();
}

// ------------------------------------------------------------------ unit level

describe("metric helpers", () => {
  it("reason labels stay in a fixed set: machine reasons as they are, free text as other", () => {
    expect(reasonLabel(undefined)).toBe("");
    expect(reasonLabel("memory_limit")).toBe("memory_limit");
    expect(reasonLabel("cancelled")).toBe("cancelled");
    expect(reasonLabel("the user said goodbye")).toBe("other");
    expect(reasonLabel("requestFn failed: boom 1234")).toBe("other");
    expect(dispatchReasonLabel("did not start in time")).toBe("did not start in time");
    expect(dispatchReasonLabel("no worker serves ghost")).toBe("other");
    expect(dispatchReasonLabel("1 worker, all full (load 0.98 ≥ 0.75)")).toBe("other");
  });

  it("troupe_slots counts the slots' phases, every phase always present", async () => {
    const metrics = createWorkerMetrics();
    countSlotPhases(metrics, [
      { phase: "busy", jobId: "a" },
      { phase: "busy", jobId: "b" },
      { phase: "idle", jobId: null },
    ]);
    countSlotPhases(metrics, [{ phase: "busy", jobId: "a" }]);
    const text = await metrics.registry.metrics();
    expect(samplesOf(text, "troupe_slots").map((s) => [s.labels.phase, s.value])).toEqual(
      SLOT_PHASES.map((phase) => [phase, phase === "busy" ? 1 : 0]),
    );
  });

  it("one memory series per live job process: the idle one gives way to the job's, and exit removes it", async () => {
    const metrics: WorkerMetrics = createWorkerMetrics();
    const tracker = new ProcessTracker(metrics);
    const memory = async () =>
      samplesOf(await metrics.registry.metrics(), "troupe_job_memory_bytes").map((s) => [s.labels, s.value]);
    tracker.spawned("slot.0", 100);
    tracker.memory("slot.0", 1);
    expect(await memory()).toEqual([[{ slot: "slot.0", job_id: "" }, 1024 * 1024]]);
    tracker.jobRunning("slot.0", "job-1", 0.001);
    expect(await memory()).toEqual([[{ slot: "slot.0", job_id: "job-1" }, 1024 * 1024]]);
    tracker.memory("slot.0", 2);
    expect(await memory()).toEqual([[{ slot: "slot.0", job_id: "job-1" }, 2 * 1024 * 1024]]);
    tracker.exited("slot.0", 100, 0, null);
    tracker.memory("slot.0", 3);
    expect(await memory()).toEqual([]);
  });

  it("the process metrics have one prefix and no gauge ends in _total", async () => {
    for (const registry of [createWorkerMetrics().registry, createRegistryMetrics().registry]) {
      const families = parseFamilies(await registry.metrics());
      for (const [name, family] of families) {
        expect(name, name).not.toMatch(/process_process_|_process_nodejs_/);
        if (family.type !== "counter") expect(name, name).not.toMatch(/_total$/);
        else expect(name, name).toMatch(/_total$/);
      }
    }
  });
});

// ------------------------------------------------------------------ a real registry and workers

const guard = new ProcessGuard();

/** A worker whose every job process exits with metadata.exitCode (test/fixtures/agents/exits.ts). */
async function startExitingWorker(registryUrl: string): Promise<WorkerHandle> {
  const options = new Options(
    {
      register: true,
      registryUrl,
      ...CREDS,
      agentId: "metrics-exits",
      maxProcesses: 1,
      numIdleProcesses: 0,
      port: 0,
      host: "127.0.0.1",
      loadFn: () => 0,
      registrationTimeout: 5,
      closeTimeout: 2,
      killTimeout: 1,
      launchTimeout: 60,
    },
    {},
  );
  return runWorker(
    { entrypoint: async () => {}, jobctx: undefined, options, agentModule: EXITS_AGENT },
    { handleSignals: false, logger: silent },
  );
}

interface SlotState {
  id: string;
  jobId: string | null;
}

const slotsOf = async (port: number) =>
  ((await (await fetch(`http://127.0.0.1:${port}/worker`)).json()) as { slots: SlotState[] }).slots;

describe("/metrics of a registry and its workers after jobs complete, fail and are cancelled", () => {
  let r: TestRegistry;
  let fixture: WorkerHandle;
  let exiting: WorkerHandle | undefined;
  const jobs: string[] = [];
  let workerText = "";
  let exitingText = "";
  let registryText = "";
  /** The memory series while a job ran on a process that had been waiting warm. */
  let whileRunning: Sample[] = [];
  let runningSlot = "";

  beforeAll(async () => {
    r = await startRegistry({});
    fixture = await startInProcessWorker(r.url, {
      agentId: "metrics-fixture",
      numIdleProcesses: 1,
      memorySampleInterval: 0.1,
      launchTimeout: 60,
    });
    exiting = await startExitingWorker(r.url);
    const fixtureMetrics = `http://127.0.0.1:${fixture.port}/metrics`;
    await waitAvailableAgent(r, "metrics-fixture", 30_000);
    await waitAvailableAgent(r, "metrics-exits", 30_000);

    const completes = await dispatch(r, { agent_name: "metrics-fixture", metadata: { holdMs: 30 } });
    const fails = await dispatch(r, { agent_name: "metrics-exits", metadata: { exitCode: 3, delayMs: 10 } });
    jobs.push(completes.id, fails.id);
    await r.store.untilFinal(completes.id, 60_000);

    // A warm process has been sampled idle; the next job takes it.
    await until(
      async () => samplesOf(await fetchText(fixtureMetrics), "troupe_job_memory_bytes").some((s) => !s.labels.job_id),
      { label: "an idle process's memory series", timeoutMs: 60_000 },
    );
    const cancelled = await dispatch(r, { agent_name: "metrics-fixture", metadata: { hang: true } });
    jobs.push(cancelled.id);
    whileRunning = await until(
      async () => {
        const memory = samplesOf(await fetchText(fixtureMetrics), "troupe_job_memory_bytes");
        return memory.some((s) => s.labels.job_id === cancelled.id) && memory;
      },
      { label: "the running job's memory series", timeoutMs: 60_000 },
    );
    runningSlot = whileRunning.find((s) => s.labels.job_id === cancelled.id)?.labels.slot as string;
    expect((await api(r.url, r.dispatcher, "DELETE", `/v1/jobs/${cancelled.id}`)).status).toBe(202);
    for (const id of jobs) await r.store.untilFinal(id, 30_000);

    // The slots that ran the jobs are gone, and each pool is back to what it keeps warm.
    for (const [port, warm] of [
      [fixture.port, 1],
      [exiting.port, 0],
    ] as const) {
      await until(
        async () => {
          const slots = await slotsOf(port);
          const text = await fetchText(`http://127.0.0.1:${port}/metrics`);
          const idle = seriesValue(text, "troupe_slots", { phase: "idle" });
          return slots.length === warm && slots.every((slot) => slot.jobId === null) && idle === warm;
        },
        { label: `worker on ${port} to recycle its slots`, timeoutMs: 30_000 },
      );
    }
    workerText = await fetchText(fixtureMetrics);
    exitingText = await fetchText(`http://127.0.0.1:${exiting.port}/metrics`);
    registryText = await fetchText(`${r.url}/metrics`);
  }, 180_000);

  afterAll(async () => {
    if (exiting) {
      exiting.stop();
      await within("the exiting worker to stop", exiting.done, 15_000).catch(() => {});
    }
    await stopInProcessWorkers();
    await closeRegistries();
    await guard.killAll();
  });

  it.skipIf(!promtoolAvailable)("promtool check metrics passes on the worker's and the registry's /metrics", () => {
    for (const [what, text] of [
      ["worker", workerText],
      ["exiting worker", exitingText],
      ["registry", registryText],
    ]) {
      expect(promtool(text as string), what).toEqual({ status: 0, output: "" });
    }
  });

  it("the job records say what the metrics count", async () => {
    const statuses = await Promise.all(jobs.map(async (id) => (await r.store.get(id))?.status));
    expect(statuses).toEqual(["completed", "failed", "cancelled"]);
    expect(seriesValue(workerText, "troupe_jobs_ended_total", { status: "completed" })).toBe(1);
    expect(seriesValue(workerText, "troupe_jobs_ended_total", { status: "cancelled" })).toBe(1);
    expect(seriesValue(exitingText, "troupe_jobs_ended_total", { status: "failed" })).toBe(1);
    expect(seriesValue(exitingText, "troupe_process_exits_total", { kind: "error" })).toBe(1);
  });

  it("while a job runs, its process has one memory series, not an idle one beside it", () => {
    expect(runningSlot).not.toBe("");
    expect(whileRunning.filter((s) => s.labels.slot === runningSlot).map((s) => s.labels.job_id)).toEqual([jobs[2]]);
  });

  it("no memory series outlives its job or its process; slot phases are a fixed set", async () => {
    const live = new Set((await slotsOf(fixture.port)).map((slot) => slot.id));
    const memory = samplesOf(workerText, "troupe_job_memory_bytes");
    for (const series of memory) {
      expect(live.has(series.labels.slot as string), `slot ${series.labels.slot} is gone`).toBe(true);
      expect(jobs).not.toContain(series.labels.job_id);
    }
    expect(memory.map((s) => s.labels.slot)).not.toContain(runningSlot);
    expect(samplesOf(exitingText, "troupe_job_memory_bytes")).toEqual([]);
    for (const text of [workerText, exitingText]) {
      expect(samplesOf(text, "troupe_slots").map((s) => s.labels.phase)).toEqual([...SLOT_PHASES]);
    }
    expect(seriesValue(workerText, "troupe_slots", { phase: "idle" })).toBe(1);
  });

  it("the registry finished no more jobs than it dispatched", () => {
    expect(seriesValue(registryText, "troupe_registry_dispatches_total", { origin: "created" })).toBe(3);
    expect(sumOf(registryText, "troupe_registry_jobs_finished_total")).toBe(3);
    expect(sumOf(registryText, "troupe_registry_jobs_finished_total")).toBeLessThanOrEqual(
      sumOf(registryText, "troupe_registry_dispatches_total"),
    );
  });

  it("docs/health-and-metrics.md lists exactly the exposed metrics, with their types and labels", () => {
    const exposed = new Map([...parseFamilies(workerText), ...parseFamilies(registryText)]);
    const documented = documentedMetrics();
    for (const [name, family] of exposed) {
      const doc = documented.get(name);
      expect(doc, `${name} is not documented`).toBeDefined();
      expect(doc?.type, name).toBe(family.type);
      for (const label of family.labelNames) expect(doc?.labels, name).toContain(label);
    }
    for (const [name, doc] of documented) {
      if (doc.linuxOnly && process.platform !== "linux") continue;
      expect(exposed.has(name), `${name} is documented but not exposed`).toBe(true);
    }
  });
});

// ------------------------------------------------------------------ adoption

describe("a registry adopting a job its worker reports running", () => {
  afterEach(closeRegistries);

  it("counts the adoption as a dispatch, so finished never exceeds dispatched; a free-text reason is 'other'", async () => {
    const r = await startRegistry({ pingIntervalMs: 60_000 });
    const c = await RawConnection.open(r);
    c.send(
      JSON.stringify({
        type: "register",
        protocol_version: PROTOCOL_VERSION,
        worker_id: "",
        agent_name: "metrics-adopted",
        load_threshold: 1,
        max_processes: 1,
        jobs: [{ job_id: "job-adopted", status: "running" }],
      }),
    );
    await c.next(0, (f) => f.type === "register", "registration");
    await r.store.until("job-adopted", (record) => record.status === "running", 5_000, "adopted");
    c.send(JSON.stringify({ type: "job_update", job_id: "job-adopted", status: "failed", reason: "a story" }));
    await r.store.untilFinal("job-adopted", 5_000);
    const text = await until(
      async () => {
        const body = await fetchText(`${r.url}/metrics`);
        return sumOf(body, "troupe_registry_jobs_finished_total") > 0 && body;
      },
      { label: "the finished job to be counted" },
    );
    c.close();
    expect(seriesValue(text, "troupe_registry_dispatches_total", { origin: "adopted" })).toBe(1);
    expect(seriesValue(text, "troupe_registry_dispatches_total", { origin: "created" })).toBe(0);
    expect(seriesValue(text, "troupe_registry_jobs_finished_total", { status: "failed", reason: "other" })).toBe(1);
    expect(sumOf(text, "troupe_registry_jobs_finished_total")).toBeLessThanOrEqual(
      sumOf(text, "troupe_registry_dispatches_total"),
    );
    if (promtoolAvailable) expect(promtool(text)).toEqual({ status: 0, output: "" });
  });
});
