import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, it } from "vitest";
import { until } from "../support/wait.ts";
import { startInProcessWorker } from "./helpers/in-process.ts";
import { sweepFile } from "./helpers/processes.ts";

afterAll(sweepFile);

const SECRETS = { authToken: "tok-SECRET-7f3a91", apiKey: "key-SECRET-22b0", apiSecret: "secret-SECRET-9c1d" };

interface WorkerStatus {
  agentId: string;
  state: string;
  ready: boolean;
  degraded: boolean;
  registry: { state: string } | null;
  options: Record<string, unknown>;
  slots: { id: string; state: string; pid: number | null; jobId: string | null; memoryMb: number | null }[];
  jobs: { id: string; state: string; slotId: string | null; roomId: string | null; runningSeconds: number | null }[];
}

describe("the worker's HTTP server with real job processes", { timeout: 60_000 }, () => {
  it("serves /healthz, /readyz, /worker and /metrics through warm-up, a job and a drain", async (ctx) => {
    const { expect } = ctx;
    const dir = mkdtempSync(join(tmpdir(), "troupe-it-"));
    ctx.onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    const releaseFile = join(dir, "release");
    const worker = await startInProcessWorker(ctx, "completes", {
      agentId: "HttpAgent",
      maxProcesses: 2,
      numIdleProcesses: 1,
      ...SECRETS,
    });
    // Just started: no process is warm yet, so alive but not ready.
    const notReady = await worker.get("/readyz");
    expect(notReady.status).toBe(503);
    expect(notReady.json()).toEqual({ ready: false });
    const health = await worker.get("/healthz");
    expect(health.status).toBe(200);
    expect(health.json()).toEqual({ ok: true });

    await worker.waitForIdle(1, 30_000);
    const ready = await worker.get("/readyz");
    expect(ready.status).toBe(200);
    expect(ready.json()).toEqual({ ready: true });

    worker.registry.assign("job-http", { releaseFile });
    await worker.registry.waitForUpdate("job-http", "running", 30_000);
    const pid = worker.pidOfJob("job-http");
    // The pool warms a spare process next to the busy one; the busy one's memory gets sampled.
    await worker.waitForIdle(1, 30_000);
    const body = await until(
      async () => {
        const status = (await worker.get("/worker")).json() as WorkerStatus;
        const busy = status.slots.find((s) => s.jobId === "job-http");
        return typeof busy?.memoryMb === "number" ? status : undefined;
      },
      { label: "/worker to report the busy process's memory", timeoutMs: 10_000 },
    );
    expect(body).toMatchObject({
      agentId: "HttpAgent",
      ready: true,
      degraded: false,
      registry: { state: "online.registered" },
    });
    expect(body.state).toContain("running");
    const busy = body.slots.find((s) => s.jobId === "job-http");
    expect(busy).toMatchObject({ pid, state: expect.stringContaining("work.busy") });
    expect(busy?.memoryMb).toBeGreaterThan(5);
    const idle = body.slots.find((s) => s.jobId === null);
    expect(idle).toMatchObject({ state: expect.stringContaining("work.idle") });
    expect(idle?.pid).toBeTypeOf("number");
    expect(idle?.pid).not.toBe(pid);
    expect(body.jobs).toEqual([
      expect.objectContaining({ id: "job-http", state: "running", slotId: busy?.id, roomId: "room-job-http" }),
    ]);
    expect(body.jobs[0]?.runningSeconds).toBeGreaterThanOrEqual(0);
    // Options are there, secrets are not.
    expect(body.options).toMatchObject({ agentId: "HttpAgent", maxProcesses: 2, closeTimeout: 1, register: true });
    for (const key of ["authToken", "apiKey", "apiSecret"]) expect(body.options[key]).toBe("[redacted]");
    const { text } = await worker.get("/worker");
    for (const secret of Object.values(SECRETS)) expect(text).not.toContain(secret);

    const metrics = await worker.get("/metrics");
    expect(metrics.status).toBe(200);
    expect(metrics.text).toMatch(/troupe_slots\{phase="busy"\} 1/);
    expect(metrics.text).toMatch(/troupe_slots\{phase="idle"\} 1/);
    expect(metrics.text).toMatch(/troupe_process_spawn_duration_seconds_count [1-9]/);
    expect(metrics.text).toMatch(/troupe_process_spawn_duration_seconds_bucket\{le="\+Inf"\} [1-9]/);
    expect(metrics.text).toMatch(/troupe_job_start_latency_seconds_count 1/);
    expect(metrics.text).toMatch(/troupe_jobs_started_total 1/);
    expect(metrics.text).toMatch(new RegExp(`troupe_job_memory_bytes\\{slot="${busy?.id}",job_id="job-http"\\} \\d+`));
    expect(metrics.text).toMatch(/troupe_worker_process_/);

    expect((await worker.get("/nowhere")).status).toBe(404);
    const post = await fetch(`http://127.0.0.1:${worker.handle.port}/worker`, { method: "POST" });
    expect(post.status).toBe(405);

    // Draining: not ready any more, the spare process goes, the running job goes on.
    worker.handle.drain();
    await worker.waitForWorker(
      (s) => Object.values(s.context.slots).every((slot) => slot.phase === "busy"),
      15_000,
      "the idle process to go",
    );
    const draining = await worker.get("/readyz");
    expect(draining.status).toBe(503);
    expect(
      worker.registry.commands.find((c) => c.type === "link.status" && c.status.status === "draining"),
    ).toBeTruthy();
    // The job finishes; the drained worker then stops by itself, cleanly.
    writeFileSync(releaseFile, "");
    expect(await worker.finishedJob("job-http", 15_000)).toEqual({ jobId: "job-http", status: "completed" });
    expect(await worker.stop()).toBe(0);
    const ended = (await worker.get("/metrics").catch(() => undefined))?.text;
    expect(ended, "the server is closed once the worker stopped").toBeUndefined();
    const logText = JSON.stringify(worker.logs.items);
    for (const secret of Object.values(SECRETS)) expect(logText).not.toContain(secret);
  });
});
