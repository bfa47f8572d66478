import { writeFileSync } from "node:fs";
import type { Server } from "node:http";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import type { JobOutput } from "../../machines/job.ts";
import { registryInternals } from "../../src/registry/server.ts";
import { until, within } from "../support/wait.ts";
import {
  api,
  closeRegistries,
  dispatch,
  isAlive,
  ProcessGuard,
  RawConnection,
  readRunLog,
  registerMessage,
  startInProcessWorker,
  startRegistry,
  stopInProcessWorker,
  stopInProcessWorkers,
  tempDir,
  waitAvailableAgent,
} from "./helpers.ts";

const guard = new ProcessGuard();
const temp = tempDir();

afterEach(async () => {
  await stopInProcessWorkers();
  await closeRegistries();
  await guard.killAll();
});

afterAll(() => temp.remove());

/** Holds every WebSocket upgrade the server gets until release(): a reconnecting worker waits in its handshake. */
function holdUpgrades(server: Server) {
  const listeners = server.listeners("upgrade") as ((...args: unknown[]) => void)[];
  server.removeAllListeners("upgrade");
  const held: unknown[][] = [];
  const hold = (...args: unknown[]) => {
    held.push(args);
  };
  server.on("upgrade", hold);
  return {
    held,
    release() {
      server.off("upgrade", hold);
      for (const listener of listeners) server.on("upgrade", listener);
      for (const args of held.splice(0)) for (const listener of listeners) listener.apply(server, args);
    },
  };
}

describe("registry dispatch, with an in-process worker or a scripted one", () => {
  it("a dropped connection: the worker reconnects under its id and replays the final update it could not send", async () => {
    const r = await startRegistry({
      offerTimeoutMs: 2_000,
      runningTimeoutMs: 15_000,
      dispatchTimeoutMs: 10_000,
      pingIntervalMs: 1_000,
      pongTimeoutMs: 3_000,
      reconnectGraceMs: 10_000,
    });
    const worker = await startInProcessWorker(r.url, { agentId: "drop" });
    const workerId = await waitAvailableAgent(r, "drop");
    const runLog = join(temp.dir, "drop.jsonl");
    const releaseFile = join(temp.dir, "drop.release");
    const job = await dispatch(r, { agent_name: "drop", metadata: { releaseFile, runLog } });
    await r.store.until(job.id, (rec) => rec.status === "running", 15_000, "running");
    const finished = new Promise<JobOutput>((resolve) => {
      worker.actor.on("job.finished", ({ output }) => {
        if (output.jobId === job.id) resolve(output);
      });
    });

    // Cut the connection from the registry's side, and keep the worker's reconnection waiting.
    const gate = holdUpgrades(registryInternals(r.registry).server);
    const link = registryInternals(r.registry).core.directory.get(workerId);
    if (!link?.connected) throw new Error("the worker has no socket on the registry");
    registryInternals(r.registry).gateway.terminate(link.connectionId);
    await until(() => link.state === "disconnected", { label: "the registry to see the drop" });
    await until(() => gate.held.length > 0, { label: "the worker to try to reconnect", timeoutMs: 5_000 });

    // The job finishes while the registry cannot hear about it.
    writeFileSync(releaseFile, "");
    expect((await within("the job to finish on the worker", finished, 10_000)).status).toBe("completed");
    expect((await r.store.get(job.id))?.status).toBe("running");

    gate.release();
    const record = await r.store.untilFinal(job.id, 10_000);
    expect(record).toMatchObject({ status: "completed", workerId, attempts: 1 });
    expect(r.store.finalPatches(job.id)).toBe(1);
    // Same worker, same session: nothing was lost or run again.
    expect([...registryInternals(r.registry).core.directory.workers()].map((w) => w.workerId)).toEqual([workerId]);
    expect(registryInternals(r.registry).core.directory.get(workerId)).toBe(link);
    await until(() => link.state.startsWith("live.") && link.connected, { label: "the session to be live again" });
    expect(readRunLog(runLog).map((run) => run.jobId)).toEqual([job.id]);
    const next = await dispatch(r, { agent_name: "drop", metadata: { runLog, holdMs: 1 } });
    expect(await r.store.untilFinal(next.id, 15_000)).toMatchObject({ status: "completed", workerId });

    expect(await stopInProcessWorker(worker)).toBe(0);
    expect(await guard.leftoversAfterExit()).toEqual([]);
  });

  it("DELETE /v1/jobs/:id stops a running job on its worker; the record ends cancelled", async () => {
    const r = await startRegistry({
      offerTimeoutMs: 2_000,
      runningTimeoutMs: 15_000,
      dispatchTimeoutMs: 10_000,
      cancelTimeoutMs: 5_000,
      pingIntervalMs: 1_000,
      pongTimeoutMs: 3_000,
    });
    const worker = await startInProcessWorker(r.url, { agentId: "cancel" });
    const workerId = await waitAvailableAgent(r, "cancel");
    const runLog = join(temp.dir, "cancel.jsonl");
    const job = await dispatch(r, { agent_name: "cancel", metadata: { hang: true, runLog } });
    await r.store.until(job.id, (rec) => rec.status === "running", 15_000, "running");
    const [run] = await until(
      () => {
        const runs = readRunLog(runLog);
        return runs.length > 0 ? runs : undefined;
      },
      { label: "the entrypoint to start" },
    );
    if (!run) throw new Error("no run");
    guard.track(run.pid);

    const response = await api(r.url, r.dispatcher, "DELETE", `/v1/jobs/${job.id}`);
    expect(response.status).toBe(202);
    expect(response.body.job.id).toBe(job.id);
    const record = await r.store.untilFinal(job.id, 10_000);
    // Cancelled on the worker's own confirmation, not on the registry giving up waiting for it.
    expect(record).toMatchObject({ status: "cancelled", workerId });
    expect(record.reason ?? "").not.toMatch(/did not confirm|was lost/);
    await until(() => !isAlive(run.pid), { label: "the job process to exit", timeoutMs: 5_000 });
    expect(Object.keys(worker.actor.getSnapshot().context.jobs)).toEqual([]);
    expect(r.store.finalPatches(job.id)).toBe(1);

    // Cancelling again changes nothing; an unknown job is a 404.
    const again = await api(r.url, r.dispatcher, "DELETE", `/v1/jobs/${job.id}`);
    expect(again.status).toBe(202);
    expect(again.body.job.status).toBe("cancelled");
    expect((await api(r.url, r.dispatcher, "DELETE", "/v1/jobs/job-nope")).status).toBe(404);

    expect(await stopInProcessWorker(worker)).toBe(0);
    expect(await guard.leftoversAfterExit()).toEqual([]);
  });

  it("the same idempotency key returns the same job, and only one job runs", async () => {
    const r = await startRegistry({ offerTimeoutMs: 2_000, runningTimeoutMs: 15_000, dispatchTimeoutMs: 10_000 });
    const worker = await startInProcessWorker(r.url, { agentId: "idem" });
    await waitAvailableAgent(r, "idem");
    const runLog = join(temp.dir, "idem.jsonl");
    const body = { agent_name: "idem", idempotency_key: "order-42", metadata: { runLog, holdMs: 100 } };

    const first = await api(r.url, r.dispatcher, "POST", "/v1/jobs", body);
    expect(first.status).toBe(201);
    expect(first.body.created).toBe(true);
    const id = first.body.job.id as string;
    const second = await api(r.url, r.dispatcher, "POST", "/v1/jobs", body);
    expect(second.status).toBe(200);
    expect(second.body).toMatchObject({ created: false, job: { id } });
    // The header form, and a burst of concurrent repeats, find the same job.
    const { idempotency_key: _key, ...withoutKey } = body;
    const header = await api(r.url, r.dispatcher, "POST", "/v1/jobs", withoutKey, { "idempotency-key": "order-42" });
    expect(header.status).toBe(200);
    expect(header.body.job.id).toBe(id);
    const burst = await Promise.all(
      Array.from({ length: 8 }, () => api(r.url, r.dispatcher, "POST", "/v1/jobs", body)),
    );
    expect(burst.map((b) => [b.status, b.body.created, b.body.job.id])).toEqual(burst.map(() => [200, false, id]));

    expect((await r.store.untilFinal(id, 15_000)).status).toBe("completed");
    const after = await api(r.url, r.dispatcher, "POST", "/v1/jobs", body);
    expect(after.body).toMatchObject({ created: false, job: { id, status: "completed" } });
    expect(r.store.created).toEqual([id]);
    expect(readRunLog(runLog).map((run) => run.jobId)).toEqual([id]);
    expect(await stopInProcessWorker(worker)).toBe(0);
  });

  it("a dispatch nobody can take waits, then ends rejected after dispatchTimeoutMs", async () => {
    const dispatchTimeoutMs = 600;
    const r = await startRegistry({ offerTimeoutMs: 500, dispatchTimeoutMs });
    const worker = await startInProcessWorker(r.url, { agentId: "someone" });
    await waitAvailableAgent(r, "someone");
    const job = await dispatch(r, { agent_name: "nobody" });
    expect(job.status).toBe("pending");
    // Waiting: no worker for it, and nobody was offered it.
    expect(registryInternals(r.registry).core.dispatcher.get(job.id)?.actor.getSnapshot().value).toEqual({
      unassigned: "waiting",
    });
    const record = await r.store.untilFinal(job.id, dispatchTimeoutMs + 5_000);
    expect(record).toMatchObject({ status: "rejected", attempts: 0 });
    expect(record.reason).toBe("no worker serves nobody");
    const waited = (record.endedAt ?? 0) - record.createdAt;
    expect(waited).toBeGreaterThanOrEqual(dispatchTimeoutMs);
    expect(waited).toBeLessThan(dispatchTimeoutMs + 2_000);
    expect(r.store.workersOf(job.id).size).toBe(0);
    expect(await stopInProcessWorker(worker)).toBe(0);
  });

  it("a dispatch declined just as its worker frees capacity is offered again (no lost wake-up)", async () => {
    const r = await startRegistry({ offerTimeoutMs: 2_000, dispatchTimeoutMs: 4_000, pingIntervalMs: 30_000 });
    // A scripted worker with one process, on a raw connection.
    const c = await RawConnection.open(r);
    let from = c.frames.length;
    c.send(registerMessage("wake", 1));
    const workerId = (await c.next(from, (f) => f.type === "register", "the register answer")).worker_id as string;
    const status = (state: string, jobs: number) =>
      JSON.stringify({ type: "status_update", worker_id: workerId, status: state, load: jobs, job_count: jobs });
    c.send(status("available", 0));
    const link = registryInternals(r.registry).core.directory.get(workerId);
    await until(() => link?.available, { label: "the scripted worker to be available" });

    from = c.frames.length;
    const job = await dispatch(r, { agent_name: "wake" });
    const isOffer = (f: { type: string; job_id?: unknown }) => f.type === "availability_request" && f.job_id === job.id;
    await c.next(from, isOffer, "the offer");
    // One burst, read by the registry at once: the worker filled up, said no, and had room again.
    from = c.frames.length;
    c.send(status("full", 1));
    c.send(
      JSON.stringify({
        type: "availability_response",
        job_id: job.id,
        available: false,
        error: "worker not available",
      }),
    );
    c.send(status("available", 0));
    // It has room for the job at a new availability epoch: the job must be offered again, not left waiting.
    await c.next(from, isOffer, "the job to be offered again", 2_500).catch(async (error: Error) => {
      const state = registryInternals(r.registry).core.dispatcher.get(job.id)?.actor.getSnapshot().value;
      throw new Error(
        `${error.message}: the dispatch sits in ${JSON.stringify(state)} while its only worker is ${link?.state} with ` +
          `${link?.context.jobCount} of ${link?.context.maxProcesses} processes busy; it ends ` +
          `${(await r.store.untilFinal(job.id, 5_000)).status}`,
      );
    });
    c.send(JSON.stringify({ type: "availability_response", job_id: job.id, available: true }));
    await c.next(from, (f) => f.type === "job_assignment" && f.job_id === job.id, "the assignment");
    c.send(JSON.stringify({ type: "job_update", job_id: job.id, status: "running" }));
    c.send(JSON.stringify({ type: "job_update", job_id: job.id, status: "completed" }));
    expect(await r.store.untilFinal(job.id, 5_000)).toMatchObject({ status: "completed", workerId });
    c.close();
  });

  it("a dispatch that waited only on another job's unanswered offer is offered once that offer is answered", async () => {
    // Its one process is promised to the unanswered offer: the second job waits. The worker declines
    // the first job: its process is free, and the second job was never asked.
    await secondJobOfferedOnceFirstIsAnswered("inflight", 1, {
      answer: { available: false, error: "declined" },
    });
  });

  it("a dispatch that waited while the worker counted an offer twice (its job count and the offer) is offered once the offer is taken", async () => {
    // The worker reserves a process for the offer and reports it busy before it answers (as a real
    // worker does): one job counted, and one offer out, for the same process. The yes turns the
    // offer into the job already counted: one process of two is free, and nothing else will change
    // (no status, no epoch).
    await secondJobOfferedOnceFirstIsAnswered("double", 2, {
      beforeSecond: async (c, status) => {
        c.send(status(1));
        await c.sync("reported");
      },
      answer: { available: true },
    });
  });

  it("a job assigned to a worker counts against it before the worker reports it: the next job goes elsewhere", async () => {
    // random() = 0 makes the picker prefer the first worker whenever both look equally free.
    const r = await startRegistry(
      { offerTimeoutMs: 2_000, dispatchTimeoutMs: 4_000, pingIntervalMs: 30_000 },
      { random: () => 0 },
    );
    const workers = await Promise.all([openScripted(r, "reserve", 1), openScripted(r, "reserve", 1)]);
    const first = await dispatch(r, { agent_name: "reserve" });
    const offered = await until(() => workers.find((w) => w.offers().includes(first.id)), { label: "the first offer" });
    const other = workers.find((w) => w !== offered) as Scripted;
    // It says yes and gets the job, but its status (one job busy) is still on its way.
    let from = offered.c.frames.length;
    offered.answer(first.id, true);
    await offered.c.next(from, (f) => f.type === "job_assignment" && f.job_id === first.id, "the assignment");
    expect(registryInternals(r.registry).core.directory.get(offered.workerId)?.context.jobCount).toBe(0);

    from = other.c.frames.length;
    const second = await dispatch(r, { agent_name: "reserve" });
    await other.c.next(from, (f) => f.type === "availability_request" && f.job_id === second.id, "the second offer");
    expect(offered.offers()).toEqual([first.id]);
    for (const w of workers) w.c.close();
  });

  it("a burst of dispatches is offered by free capacity: no worker is offered more than it can take", async () => {
    const r = await startRegistry({ offerTimeoutMs: 5_000, dispatchTimeoutMs: 6_000, pingIntervalMs: 30_000 });
    const workers = await Promise.all([openScripted(r, "burst", 2), openScripted(r, "burst", 2)]);
    // Five at once, none answered yet: two offers each, and the fifth waits for capacity.
    const jobs = await Promise.all(Array.from({ length: 5 }, () => dispatch(r, { agent_name: "burst" })));
    await until(() => workers.flatMap((w) => w.offers()).length === 4, { label: "four offers" });
    expect(workers.map((w) => w.offers().length)).toEqual([2, 2]);
    const offeredIds = new Set(workers.flatMap((w) => w.offers()));
    const waiting = jobs.filter((job) => !offeredIds.has(job.id));
    expect(waiting).toHaveLength(1);
    const late = (waiting[0] as { id: string }).id;
    expect(registryInternals(r.registry).core.dispatcher.get(late)?.actor.getSnapshot().value).toEqual({
      unassigned: "waiting",
    });
    // One worker declines one of its offers: the waiting job gets that capacity at once.
    const [decliner] = workers as [Scripted, Scripted];
    const declined = decliner.offers()[0] as string;
    const from = decliner.c.frames.length;
    decliner.answer(declined, false);
    await decliner.c.next(from, (f) => f.type === "availability_request" && f.job_id === late, "the late job's offer");
    for (const w of workers) w.c.close();
  });
});

interface Scripted {
  c: RawConnection;
  workerId: string;
  /** Job ids offered to it so far, in order. */
  offers(): string[];
  answer(jobId: string, available: boolean): void;
}

/** A scripted worker on a raw connection: registered, and available with all its processes free. */
/**
 * Two jobs for one scripted worker with `processes` processes: the first is offered, `beforeSecond`
 * runs, the second is dispatched and waits; then the worker answers the first offer, and the second
 * job must be offered at once (else the error says where it sits and how it ended).
 */
async function secondJobOfferedOnceFirstIsAnswered(
  agent: string,
  processes: number,
  scenario: {
    beforeSecond?: (c: RawConnection, status: (jobs: number) => string) => Promise<void>;
    answer: { available: boolean; error?: string };
  },
): Promise<void> {
  const r = await startRegistry({ offerTimeoutMs: 2_000, dispatchTimeoutMs: 4_000, pingIntervalMs: 30_000 });
  const c = await RawConnection.open(r);
  let from = c.frames.length;
  c.send(registerMessage(agent, processes));
  const workerId = (await c.next(from, (f) => f.type === "register", "the register answer")).worker_id as string;
  const status = (jobs: number) =>
    JSON.stringify({ type: "status_update", worker_id: workerId, status: "available", load: 0, job_count: jobs });
  c.send(status(0));
  const link = registryInternals(r.registry).core.directory.get(workerId);
  await until(() => link?.available, { label: "the scripted worker to be available" });

  from = c.frames.length;
  const first = await dispatch(r, { agent_name: agent });
  await c.next(from, (f) => f.type === "availability_request" && f.job_id === first.id, "the first offer");
  await scenario.beforeSecond?.(c, status);
  const second = await dispatch(r, { agent_name: agent });
  await until(
    () =>
      registryInternals(r.registry)
        .core.dispatcher.get(second.id)
        ?.actor.getSnapshot()
        .matches({ unassigned: "waiting" }),
    { label: "the second job to wait" },
  );
  from = c.frames.length;
  c.send(JSON.stringify({ type: "availability_response", job_id: first.id, ...scenario.answer }));
  await c
    .next(from, (f) => f.type === "availability_request" && f.job_id === second.id, "the second job's offer", 2_500)
    .catch(async (error: Error) => {
      const state = registryInternals(r.registry).core.dispatcher.get(second.id)?.actor.getSnapshot().value;
      throw new Error(
        `${error.message}: it sits in ${JSON.stringify(state)} while its only worker is ${link?.state} with ` +
          `${link?.context.inflight} offers out and ${link?.context.jobCount} of ${link?.context.maxProcesses} processes ` +
          `busy; it ends ${(await r.store.untilFinal(second.id, 5_000)).status}`,
      );
    });
  c.close();
}

async function openScripted(r: Awaited<ReturnType<typeof startRegistry>>, agent: string, processes: number) {
  const c = await RawConnection.open(r);
  const from = c.frames.length;
  c.send(registerMessage(agent, processes));
  const workerId = (await c.next(from, (f) => f.type === "register", "the register answer")).worker_id as string;
  c.send(JSON.stringify({ type: "status_update", worker_id: workerId, status: "available", load: 0, job_count: 0 }));
  await until(() => registryInternals(r.registry).core.directory.get(workerId)?.available, {
    label: "the scripted worker to be available",
  });
  const scripted: Scripted = {
    c,
    workerId,
    offers: () => c.frames.filter((f) => f.type === "availability_request").map((f) => f.job_id as string),
    answer: (jobId, available) =>
      c.send(
        JSON.stringify({
          type: "availability_response",
          job_id: jobId,
          available,
          ...(available ? {} : { error: "declined" }),
        }),
      ),
  };
  return scripted;
}
