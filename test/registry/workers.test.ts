import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import type { RegistryMessage } from "../../src/protocol/registry.ts";
import { registryInternals } from "../../src/registry/server.ts";
import type { JobRecord } from "../../src/registry/store.ts";
import { until, within } from "../support/wait.ts";
import {
  api,
  closeRegistries,
  dispatch,
  ProcessGuard,
  readRunLog,
  spawnWorker,
  startRegistry,
  stopWorker,
  tempDir,
  waitAvailable,
  workerState,
} from "./helpers.ts";

const guard = new ProcessGuard();
const temp = tempDir();

afterEach(async () => {
  await closeRegistries();
  await guard.killAll();
});

afterAll(() => temp.remove());

describe.sequential("registry with worker processes", () => {
  it("spreads 200 dispatches over three equal workers; every job completes, exactly once", {
    timeout: 400_000,
  }, async () => {
    const TOTAL = Number(process.env.SPREAD_JOBS ?? 200);
    const r = await startRegistry({
      offerTimeoutMs: 3_000,
      runningTimeoutMs: 30_000,
      dispatchTimeoutMs: 60_000,
      cancelTimeoutMs: 5_000,
      pingIntervalMs: 2_000,
      pongTimeoutMs: 15_000,
      reconnectGraceMs: 5_000,
    });
    const runLog = join(temp.dir, "spread.jsonl");
    const workers = [1, 2, 3].map((n) =>
      spawnWorker(guard, {
        registryUrl: r.url,
        name: `w${n}`,
        maxProcesses: 3,
        idleProcesses: 1,
        loadThreshold: 0.99 + n / 1000,
        env: { FIXTURE_AGENT: "spread", FIXTURE_RUN_LOG: runLog, FIXTURE_JOB_MS: "30" },
      }),
    );
    const workerIds = await Promise.all(workers.map((w) => waitAvailable(r, w)));
    expect(new Set(workerIds).size).toBe(3);

    // A dispatcher keeping a window of jobs open: more than the 9 processes, so some wait.
    const WINDOW = 12;
    const open = new Set<Promise<JobRecord>>();
    const finals: Promise<JobRecord>[] = [];
    const t0 = Date.now();
    for (let i = 0; i < TOTAL; i++) {
      while (open.size >= WINDOW) await Promise.race(open);
      const job = await dispatch(r, { agent_name: "spread", metadata: { n: i } });
      const final: Promise<JobRecord> = r.store.untilFinal(job.id, 90_000).finally(() => open.delete(final));
      open.add(final);
      finals.push(final);
    }
    const records = await Promise.all(finals);
    console.log(`spread: ${TOTAL} jobs in ${Date.now() - t0} ms`);
    const runs = readRunLog(runLog);

    // Every job ended completed (a failure names what its process did).
    const notCompleted = records.filter((rec) => rec.status !== "completed");
    expect
      .soft(
        notCompleted.map((rec) => ({
          id: rec.id,
          status: rec.status,
          reason: rec.reason,
          runsOfIt: runs.filter((run) => run.jobId === rec.id).length,
        })),
        "jobs that did not end completed",
      )
      .toEqual([]);
    // No record ended twice, and none was ever bound to two workers.
    expect.soft(records.filter((rec) => r.store.finalPatches(rec.id) !== 1).map((rec) => rec.id)).toEqual([]);
    expect.soft(records.filter((rec) => r.store.workersOf(rec.id).size !== 1).map((rec) => rec.id)).toEqual([]);
    // Each job's entrypoint ran exactly once, in the worker its record names.
    const runsPerJob = new Map<string, number>();
    for (const run of runs) runsPerJob.set(run.jobId, (runsPerJob.get(run.jobId) ?? 0) + 1);
    expect.soft([...runsPerJob].filter(([, n]) => n !== 1)).toEqual([]);
    expect.soft(runsPerJob.size).toBe(TOTAL);
    const processOf = new Map<string, Set<string>>();
    for (const run of runs) {
      const workerId = records.find((rec) => rec.id === run.jobId)?.workerId ?? "none";
      processOf.set(workerId, (processOf.get(workerId) ?? new Set()).add(run.worker));
    }
    for (const [workerId, names] of processOf) expect.soft(names.size, `processes behind ${workerId}`).toBe(1);

    // Spread: equal capacities, so no worker gets more than twice the jobs of another.
    const perWorker = new Map<string, number>(workerIds.map((id) => [id, 0]));
    for (const rec of records) perWorker.set(rec.workerId ?? "none", (perWorker.get(rec.workerId ?? "none") ?? 0) + 1);
    console.log("spread per worker:", Object.fromEntries(perWorker));
    expect([...perWorker.keys()].sort()).toEqual([...workerIds].sort());
    const counts = [...perWorker.values()];
    expect(Math.max(...counts)).toBeLessThanOrEqual(2 * Math.min(...counts));

    // Drained workers exit cleanly and take their job processes with them.
    const exits = await Promise.all(workers.map((w) => stopWorker(w, "SIGTERM")));
    expect(exits.map((e) => e.code)).toEqual([0, 0, 0]);
    expect(await guard.leftoversAfterExit()).toEqual([]);
  });

  it("a worker killed mid-job: its jobs end lost within the liveness deadline; a redispatch job completes elsewhere", {
    timeout: 60_000,
  }, async () => {
    const timing = {
      offerTimeoutMs: 2_000,
      runningTimeoutMs: 15_000,
      dispatchTimeoutMs: 20_000,
      cancelTimeoutMs: 3_000,
      pingIntervalMs: 300,
      pongTimeoutMs: 1_000,
      reconnectGraceMs: 800,
    };
    // A killed worker is gone once it misses a pong or, its socket closed, does not come back in time.
    const livenessDeadline = Math.max(timing.pingIntervalMs + timing.pongTimeoutMs, timing.reconnectGraceMs);
    const r = await startRegistry(timing);
    const runLog = join(temp.dir, "kill.jsonl");
    const env = { FIXTURE_AGENT: "kill", FIXTURE_RUN_LOG: runLog };
    const doomed = spawnWorker(guard, {
      registryUrl: r.url,
      name: "doomed",
      maxProcesses: 3,
      loadThreshold: 0.981,
      env: { ...env, FIXTURE_JOB_MODE: "hang" },
    });
    const doomedId = await waitAvailable(r, doomed);

    // All three at once: the worker's capacity is reserved offer by offer, so they all land on it.
    const started = await Promise.all(
      [false, false, true].map(async (redispatch) => {
        const job = await dispatch(r, { agent_name: "kill", redispatch });
        const record = await r.store.until(job.id, (rec) => rec.status === "running", 15_000, "running");
        expect(record.workerId).toBe(doomedId);
        return job;
      }),
    );
    const [plainA, plainB, rescued] = started as [JobRecord, JobRecord, JobRecord];
    const plain = [plainA, plainB];
    await until(() => readRunLog(runLog).length === 3, { label: "three entrypoints to start", timeoutMs: 10_000 });
    const survivor = spawnWorker(guard, { registryUrl: r.url, name: "survivor", loadThreshold: 0.982, env });
    const survivorId = await waitAvailable(r, survivor);
    const jobPids = (await workerState(guard, doomed)).slots.flatMap((slot) => (slot.pid ? [slot.pid] : []));
    expect(jobPids).toHaveLength(3);

    const killedAt = Date.now();
    await stopWorker(doomed, "SIGKILL");

    for (const job of plain) {
      const record = await r.store.untilFinal(job.id, livenessDeadline + 5_000);
      expect(record.status).toBe("lost");
      expect(record.workerId).toBe(doomedId);
      expect((record.endedAt ?? Infinity) - killedAt).toBeLessThanOrEqual(livenessDeadline + 1_000);
    }
    const again = await r.store.untilFinal(rescued.id, 20_000);
    expect(again).toMatchObject({ status: "completed", workerId: survivorId, attempts: 2 });
    expect([...r.store.workersOf(rescued.id)].sort()).toEqual([doomedId, survivorId].sort());
    expect(
      readRunLog(runLog)
        .filter((run) => run.jobId === rescued.id)
        .map((run) => run.worker),
    ).toEqual(["doomed", "survivor"]);
    // No record is left in a live state.
    const { body } = await api(r.url, r.dispatcher, "GET", "/v1/jobs?agent=kill");
    expect((body.jobs as JobRecord[]).map((job) => job.status).sort()).toEqual(["completed", "lost", "lost"]);
    expect(registryInternals(r.registry).core.hasWorker(doomedId)).toBe(false);
    // The killed worker's job processes notice their parent is gone and exit by themselves.
    await until(() => guard.leftovers().every((pid) => !jobPids.includes(pid)), {
      label: "the killed worker's job processes to exit",
      timeoutMs: 5_000,
    });

    expect((await stopWorker(survivor, "SIGTERM")).code).toBe(0);
    expect(await guard.leftoversAfterExit()).toEqual([]);
  });

  it("SIGTERM drains a worker: its session goes draining, new jobs go elsewhere, its running job completes", {
    timeout: 60_000,
  }, async () => {
    const r = await startRegistry({
      offerTimeoutMs: 2_000,
      runningTimeoutMs: 15_000,
      dispatchTimeoutMs: 20_000,
      pingIntervalMs: 500,
      pongTimeoutMs: 3_000,
      reconnectGraceMs: 3_000,
    });
    const env = { FIXTURE_AGENT: "drain" };
    const workers = [1, 2].map((n) =>
      spawnWorker(guard, { registryUrl: r.url, name: `d${n}`, maxProcesses: 2, loadThreshold: 0.97 + n / 1000, env }),
    );
    await Promise.all(workers.map((w) => waitAvailable(r, w)));
    const releaseFile = join(temp.dir, "drain.release");
    const long = await dispatch(r, { agent_name: "drain", metadata: { releaseFile } });
    const running = await r.store.until(long.id, (rec) => rec.status === "running", 15_000, "running");
    const drainedId = running.workerId as string;
    const drained = workers.find(
      (w) => registryInternals(r.registry).core.directory.get(drainedId)?.context.loadThreshold === w.loadThreshold,
    );
    const other = workers.find((w) => w !== drained);
    if (!drained || !other) throw new Error("cannot tell the workers apart");
    const otherId = await waitAvailable(r, other);

    // Everything the registry sends the drained worker from here on.
    const link = registryInternals(r.registry).core.directory.get(drainedId);
    if (!link) throw new Error("no link for the drained worker");
    const sent: RegistryMessage[] = [];
    const gateway = registryInternals(r.registry).gateway;
    const send = gateway.send.bind(gateway);
    gateway.send = (connectionId, message) => {
      if (connectionId === link.connectionId) sent.push(message);
      return send(connectionId, message);
    };

    drained.child.kill("SIGTERM");
    await until(() => link.state === "live.draining", { label: "the session to go draining", timeoutMs: 5_000 });
    const sentWhileDraining = sent.length;
    const more = [];
    for (let i = 0; i < 3; i++) more.push(await dispatch(r, { agent_name: "drain" }));
    for (const job of more) {
      const record = await r.store.untilFinal(job.id, 20_000);
      expect(record).toMatchObject({ status: "completed", workerId: otherId });
    }
    const offers = sent
      .slice(sentWhileDraining)
      .filter((m) => m.type === "availability_request" || m.type === "job_assignment");
    expect(offers).toEqual([]);
    expect(link.state).toBe("live.draining");
    expect((await r.store.get(long.id))?.status).toBe("running");

    writeFileSync(releaseFile, "");
    const done = await r.store.untilFinal(long.id, 10_000);
    expect(done).toMatchObject({ status: "completed", workerId: drainedId });
    expect(r.store.finalPatches(long.id)).toBe(1);
    // Drained, it stops by itself.
    expect((await within("the drained worker to exit", drained.exited, 10_000)).code).toBe(0);
    expect((await stopWorker(other, "SIGTERM")).code).toBe(0);
    expect(await guard.leftoversAfterExit()).toEqual([]);
  });

  it("a registry restarted mid-run adopts the running jobs its workers report; they complete once", {
    timeout: 60_000,
  }, async () => {
    const timing = {
      offerTimeoutMs: 2_000,
      runningTimeoutMs: 15_000,
      dispatchTimeoutMs: 20_000,
      pingIntervalMs: 500,
      pongTimeoutMs: 3_000,
      reconnectGraceMs: 3_000,
    };
    const first = await startRegistry(timing);
    const runLog = join(temp.dir, "restart.jsonl");
    const releaseFile = join(temp.dir, "restart.release");
    const env = { FIXTURE_AGENT: "restart", FIXTURE_RUN_LOG: runLog };
    const workers = [1, 2].map((n) =>
      spawnWorker(guard, {
        registryUrl: first.url,
        name: `r${n}`,
        maxProcesses: 2,
        loadThreshold: 0.96 + n / 1000,
        env,
      }),
    );
    const ids = await Promise.all(workers.map((w) => waitAvailable(first, w)));
    // All three at once (four processes between the two workers).
    const before = new Map<string, string>();
    const jobs = await Promise.all(
      [0, 1, 2].map(async () => {
        const job = await dispatch(first, { agent_name: "restart", metadata: { releaseFile } });
        const record = await first.store.until(job.id, (rec) => rec.status === "running", 15_000, "running");
        before.set(job.id, record.workerId as string);
        return job;
      }),
    );
    await until(() => readRunLog(runLog).length === 3, { label: "three entrypoints to start", timeoutMs: 10_000 });

    const port = first.registry.port;
    await first.close();
    const second = await startRegistry(timing, { port });
    expect(second.url).toBe(first.url);

    // The workers come back under their ids and report their running jobs, which the new registry adopts.
    await until(() => ids.every((id) => registryInternals(second.registry).core.directory.get(id)?.connected), {
      label: "both workers to re-register",
      timeoutMs: 10_000,
    });
    for (const job of jobs) {
      const adopted = await second.store.until(job.id, (rec) => rec.status === "running", 5_000, "adopted as running");
      expect(adopted.workerId).toBe(before.get(job.id));
    }
    writeFileSync(releaseFile, "");
    for (const job of jobs) {
      const record = await second.store.untilFinal(job.id, 10_000);
      expect(record).toMatchObject({ status: "completed", workerId: before.get(job.id) });
      expect(second.store.finalPatches(job.id)).toBe(1);
    }
    // Each ran once: no second start anywhere.
    expect(
      readRunLog(runLog)
        .map((run) => run.jobId)
        .sort(),
    ).toEqual(jobs.map((job) => job.id).sort());
    // And the new registry dispatches to them as usual.
    const fresh = await dispatch(second, { agent_name: "restart", metadata: { holdMs: 1 } });
    expect((await second.store.untilFinal(fresh.id, 15_000)).status).toBe("completed");

    const exits = await Promise.all(workers.map((w) => stopWorker(w, "SIGTERM")));
    expect(exits.map((e) => e.code)).toEqual([0, 0]);
    expect(await guard.leftoversAfterExit()).toEqual([]);
  });
});
