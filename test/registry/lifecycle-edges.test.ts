import { afterEach, describe, expect, it } from "vitest";
import { PROTOCOL_VERSION } from "../../src/protocol/registry.ts";
import { registryInternals } from "../../src/registry/server.ts";
import { MemoryJobStore } from "../../src/registry/store.ts";
import { until } from "../support/wait.ts";
import { closeRegistries, dispatch, type Frame, RawConnection, startRegistry } from "./helpers.ts";

afterEach(closeRegistries);

/** A scripted worker on a raw connection: registers (optionally under an id), reports itself available. */
async function scriptedWorker(
  r: Awaited<ReturnType<typeof startRegistry>>,
  agentName: string,
  options: { workerId?: string; jobs?: unknown[]; loadThreshold?: number } = {},
): Promise<{ c: RawConnection; workerId: string }> {
  const c = await RawConnection.open(r);
  c.send(
    JSON.stringify({
      type: "register",
      protocol_version: PROTOCOL_VERSION,
      worker_id: options.workerId ?? "",
      agent_name: agentName,
      load_threshold: options.loadThreshold ?? 1,
      max_processes: 1,
      jobs: options.jobs ?? [],
    }),
  );
  const registered = await c.next(0, (f) => f.type === "register", "registration");
  c.send(JSON.stringify({ type: "status_update", worker_id: "", status: "available", load: 0, job_count: 0 }));
  return { c, workerId: registered.worker_id as string };
}

const offerOf = (jobId: string) => (f: Frame) => f.type === "availability_request" && f.job_id === jobId;

describe("lifecycle edges of a dispatch", () => {
  it("a job past its running deadline is offered elsewhere only after its worker confirms it let go", async () => {
    const r = await startRegistry({ runningTimeoutMs: 200, pingIntervalMs: 60_000, pongTimeoutMs: 60_000 });
    const first = await scriptedWorker(r, "edge");
    const job = await dispatch(r, { agent_name: "edge", redispatch: true });
    await first.c.next(0, offerOf(job.id), "the offer to the first worker");
    const second = await scriptedWorker(r, "edge");
    first.c.send(JSON.stringify({ type: "availability_response", job_id: job.id, available: true }));
    await first.c.next(0, (f) => f.type === "job_assignment", "the assignment");
    // The first worker's link stalls: it never reports running. Past the deadline it is told to let go…
    await first.c.next(0, (f) => f.type === "job_termination" && f.job_id === job.id, "the termination", 3_000);
    // …and while it has not confirmed, nobody else is offered the job.
    const from = second.c.frames.length;
    await expect(second.c.next(from, offerOf(job.id), "an early offer", 600)).rejects.toThrow(/timed out/i);
    // It confirms: now the job may go to the second worker.
    first.c.send(JSON.stringify({ type: "job_update", job_id: job.id, status: "cancelled", reason: "terminated" }));
    await second.c.next(from, offerOf(job.id), "the offer to the second worker", 3_000);
    first.c.close();
    second.c.close();
  });

  it("a dispatch whose job was cancelled behind its back stops and has its worker let go", async () => {
    // What another node that took this one for dead does: it writes the outcome to the record itself.
    const r = await startRegistry({ pingIntervalMs: 60_000, pongTimeoutMs: 60_000 });
    const only = await scriptedWorker(r, "behind");
    const job = await dispatch(r, { agent_name: "behind" });
    await only.c.next(0, offerOf(job.id), "the offer");
    await MemoryJobStore.prototype.update.call(r.store, job.id, { status: "cancelled", reason: "cancelled elsewhere" });
    only.c.send(JSON.stringify({ type: "availability_response", job_id: job.id, available: true }));
    // Its next write finds the record final: the worker is told to let go, and nothing is written over it.
    await only.c.next(0, (f) => f.type === "job_termination" && f.job_id === job.id, "the termination", 3_000);
    only.c.send(JSON.stringify({ type: "job_update", job_id: job.id, status: "cancelled", reason: "terminated" }));
    await until(() => !registryInternals(r.registry).core.dispatcher.has(job.id), { label: "the dispatch to end" });
    expect(await r.registry.job(job.id)).toMatchObject({ status: "cancelled", reason: "cancelled elsewhere" });
    only.c.close();
  });

  it("a job past its running deadline that its worker completed after all is recorded completed, once", async () => {
    const r = await startRegistry({ runningTimeoutMs: 200, pingIntervalMs: 60_000, pongTimeoutMs: 60_000 });
    const only = await scriptedWorker(r, "late");
    const job = await dispatch(r, { agent_name: "late" });
    await only.c.next(0, offerOf(job.id), "the offer");
    only.c.send(JSON.stringify({ type: "availability_response", job_id: job.id, available: true }));
    await only.c.next(0, (f) => f.type === "job_termination", "the termination", 3_000);
    only.c.send(JSON.stringify({ type: "job_update", job_id: job.id, status: "running" }));
    only.c.send(JSON.stringify({ type: "job_update", job_id: job.id, status: "completed" }));
    expect(await r.store.untilFinal(job.id, 3_000)).toMatchObject({ status: "completed", workerId: only.workerId });
    expect(r.store.finalPatches(job.id)).toBe(1);
    only.c.close();
  });

  it("without redispatch, a job whose worker never confirms fails 'did not start in time' at the liveness deadline", async () => {
    const r = await startRegistry({ runningTimeoutMs: 200, pingIntervalMs: 300, pongTimeoutMs: 500 });
    const only = await scriptedWorker(r, "silent");
    const job = await dispatch(r, { agent_name: "silent" });
    await only.c.next(0, offerOf(job.id), "the offer");
    only.c.send(JSON.stringify({ type: "availability_response", job_id: job.id, available: true }));
    const record = await r.store.untilFinal(job.id, 5_000);
    expect(record).toMatchObject({ status: "failed", reason: "did not start in time", attempts: 1 });
    only.c.close();
  });

  it("a worker that comes back under its old id is offered the dispatch it once declined", async () => {
    const r = await startRegistry({ reconnectGraceMs: 100, dispatchTimeoutMs: 10_000, pingIntervalMs: 60_000 });
    const before = await scriptedWorker(r, "again");
    const job = await dispatch(r, { agent_name: "again" });
    await before.c.next(0, offerOf(job.id), "the first offer");
    before.c.send(JSON.stringify({ type: "availability_response", job_id: job.id, available: false }));
    await until(
      () =>
        registryInternals(r.registry)
          .core.dispatcher.get(job.id)
          ?.actor.getSnapshot()
          .matches({ unassigned: "waiting" }),
      { label: "the dispatch to wait" },
    );
    // Its connection drops and its session ends; it registers again under the same id.
    before.c.close();
    await until(() => r.registry.workers().length === 0, { label: "the old session to be gone" });
    const after = await scriptedWorker(r, "again", { workerId: before.workerId });
    expect(after.workerId).toBe(before.workerId);
    await after.c.next(0, offerOf(job.id), "the offer to the worker that came back", 3_000);
    after.c.close();
  });

  it("a job recorded lost is corrected when its worker comes back and reports it finished", async () => {
    const r = await startRegistry({ reconnectGraceMs: 100, pingIntervalMs: 60_000 });
    const worker = await scriptedWorker(r, "phoenix");
    const job = await dispatch(r, { agent_name: "phoenix" });
    await worker.c.next(0, offerOf(job.id), "the offer");
    worker.c.send(JSON.stringify({ type: "availability_response", job_id: job.id, available: true }));
    await worker.c.next(0, (f) => f.type === "job_assignment", "the assignment");
    worker.c.send(JSON.stringify({ type: "job_update", job_id: job.id, status: "running" }));
    await r.store.until(job.id, (rec) => rec.status === "running", 3_000, "running");
    worker.c.close();
    const lost = await r.store.untilFinal(job.id, 3_000);
    expect(lost).toMatchObject({ status: "lost", reason: "worker lost" });
    // The worker's link recovers; the job had completed meanwhile.
    const back = await scriptedWorker(r, "phoenix", {
      workerId: worker.workerId,
      jobs: [{ job_id: job.id, status: "completed", reason: "entrypoint returned" }],
    });
    const corrected = await r.store.until(job.id, (rec) => rec.status === "completed", 3_000, "corrected");
    expect(corrected.history).toEqual([{ status: "lost", reason: "worker lost", at: lost.endedAt }]);
    expect(corrected.endedAt).toBe(lost.endedAt);
    back.c.close();
  });

  it("a rejection names its cause: nobody serves the agent, or everyone declined", async () => {
    const r = await startRegistry({ dispatchTimeoutMs: 300, pingIntervalMs: 60_000 });
    const nobody = await dispatch(r, { agent_name: "ghost" });
    expect(await r.store.untilFinal(nobody.id, 3_000)).toMatchObject({
      status: "rejected",
      reason: "no worker serves ghost",
    });
    const worker = await scriptedWorker(r, "picky", { loadThreshold: 0.75 });
    const declined = await dispatch(r, { agent_name: "picky" });
    await worker.c.next(0, offerOf(declined.id), "the offer");
    worker.c.send(JSON.stringify({ type: "availability_response", job_id: declined.id, available: false }));
    expect(await r.store.untilFinal(declined.id, 3_000)).toMatchObject({
      status: "rejected",
      reason: "offered to 1 worker, all declined",
    });
    worker.c.send(
      JSON.stringify({ type: "status_update", worker_id: "", status: "available", load: 0.98, job_count: 0 }),
    );
    await until(() => r.registry.workers()[0]?.state === "live.full", { label: "the worker to be full" });
    const full = await dispatch(r, { agent_name: "picky" });
    expect(await r.store.untilFinal(full.id, 3_000)).toMatchObject({
      status: "rejected",
      reason: "1 worker, all full (load 0.98 ≥ 0.75)",
    });
    worker.c.close();
  });
});
