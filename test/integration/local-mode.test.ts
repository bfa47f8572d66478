import { createServer, type Server } from "node:net";
import { describe, it } from "vitest";
import { SIGNAL_GESTURE_WINDOW_MS } from "../../src/util/signal-gestures.ts";
import { until } from "../support/wait.ts";
import { spawnWorker } from "./helpers/out-of-process.ts";
import { isAlive } from "./helpers/processes.ts";

/**
 * A fixture agent run as its own worker process in local mode (`node --import tsx fixture.ts`): one
 * job, JSON logs on stdout, and an exit code that says how the job ended. Every test has its own
 * worker process (and environment marker), so they run concurrently.
 */
describe.concurrent("a local-mode worker process", { timeout: 60_000 }, () => {
  it("exits 0 when its job completes", async (ctx) => {
    const { expect } = ctx;
    const worker = spawnWorker(ctx, "completes", { metadata: { delayMs: 100, tag: "local" } });
    const port = await worker.port(30_000);
    expect(port).toBeGreaterThan(0);
    const exit = await worker.exited(40_000);
    expect(exit).toEqual({ code: 0, signal: null });
    const started = worker.lines.find((l) => l.msg === "job started");
    expect(started?.jobId).toMatch(/^local-/);
    expect(started).toMatchObject({ metadata: { delayMs: 100, tag: "local" } });
    expect(started?.jobPid).toBeTypeOf("number");
    expect(worker.lines.find((l) => l.msg === "job completed")).toMatchObject({
      jobId: started?.jobId,
      status: "completed",
    });
    expect(worker.lines.find((l) => l.msg === "worker stopped")).toMatchObject({ exitCode: 0 });
  });

  it("exits 1 when its job throws, logging the failure with its message", async (ctx) => {
    const { expect } = ctx;
    const worker = spawnWorker(ctx, "throws", { metadata: { tag: "out-of-process" } });
    const exit = await worker.exited(40_000);
    expect(exit).toEqual({ code: 1, signal: null });
    expect(worker.lines.find((l) => l.msg === "job failed")).toMatchObject({
      jobId: expect.stringMatching(/^local-/),
      status: "failed",
      reason: "entrypoint_error",
      error: { message: "boom out-of-process" },
      exitCode: 1,
    });
  });

  it("exits 1 when its job process crashes with process.exit(3)", async (ctx) => {
    const { expect } = ctx;
    const worker = spawnWorker(ctx, "exits", { metadata: { exitCode: 3 } });
    const exit = await worker.exited(40_000);
    expect(exit).toEqual({ code: 1, signal: null });
    expect(worker.lines.find((l) => l.msg === "job failed")).toMatchObject({
      status: "failed",
      reason: "crashed",
      exitCode: 3,
      signal: null,
    });
    expect(worker.lines.find((l) => l.msg === "job completed")).toBeUndefined();
  });

  it("drains on SIGTERM: the running job finishes, then the worker exits 0", async (ctx) => {
    const { expect } = ctx;
    const worker = spawnWorker(ctx, "completes", { metadata: { delayMs: 1_500 } });
    const started = await worker.line("job started", 30_000);
    process.kill(worker.pid, "SIGTERM");
    const exit = await worker.exited(20_000);
    expect(exit).toEqual({ code: 0, signal: null });
    // In order: the drain, the job finishing its work by itself, its completion. ("worker stopped" is
    // left out: written by process.exit's synchronous flush, it can overtake the asynchronous write of
    // the line before it.)
    const order = ["draining: no new jobs; a second signal stops at once", "job finishing", "job completed"];
    const positions = order.map((msg) => worker.lines.items.findIndex((l) => l.msg === msg));
    const seen = worker.lines.items.map((l) => `${l.time} ${l.msg}`).join("\n");
    expect(
      positions.every((p) => p >= 0),
      seen,
    ).toBe(true);
    expect(positions, seen).toEqual([...positions].sort((a, b) => a - b));
    expect(worker.lines.find((l) => l.msg === "worker stopped")).toMatchObject({ exitCode: 0 });
    expect(worker.lines.find((l) => l.msg === "job completed")).toMatchObject({
      jobId: started.jobId,
      status: "completed",
    });
    expect(worker.lines.find((l) => l.msg === "shutdown callback ran")).toMatchObject({
      reason: "entrypoint returned",
    });
  });

  it("exits 2 when drainTimeout passes before the job ends: the job fails worker_shutdown", async (ctx) => {
    const { expect } = ctx;
    const worker = spawnWorker(ctx, "waits-forever", { options: { drainTimeout: 0.5 } });
    await worker.line("job started", 30_000);
    process.kill(worker.pid, "SIGTERM");
    const exit = await worker.exited(15_000);
    expect(exit).toEqual({ code: 2, signal: null });
    expect(worker.lines.find((l) => l.msg === "job failed")).toMatchObject({
      status: "failed",
      reason: "worker_shutdown",
    });
    expect(worker.lines.find((l) => l.msg === "shutdown callback ran")).toMatchObject({ reason: "worker_shutdown" });
    expect(worker.lines.find((l) => l.msg === "worker stopped")).toMatchObject({ exitCode: 2 });
  });

  it("stops at once on a second SIGTERM while draining: exit 2", async (ctx) => {
    const { expect } = ctx;
    const worker = spawnWorker(ctx, "waits-forever", { options: { drainTimeout: 60 } });
    await worker.line("job started", 30_000);
    process.kill(worker.pid, "SIGTERM");
    await worker.line("draining: no new jobs; a second signal stops at once", 5_000);
    // A signal within a second of the first is a copy of the same Ctrl-C (test/terminal/): wait past it.
    await new Promise((resolve) => setTimeout(resolve, SIGNAL_GESTURE_WINDOW_MS + 100));
    const secondAt = Date.now();
    process.kill(worker.pid, "SIGTERM");
    await worker.line("stopping now", 5_000);
    const exit = await worker.exited(10_000);
    expect(exit).toEqual({ code: 2, signal: null });
    // It does not wait out drainTimeout (60 s): the job process is asked to stop, and does.
    expect(Date.now() - secondAt).toBeLessThan(10_000);
    expect(worker.lines.find((l) => l.msg === "shutdown callback ran")).toMatchObject({ reason: "worker_shutdown" });
    expect(worker.lines.find((l) => l.msg === "job failed")).toMatchObject({ reason: "worker_shutdown" });
  });

  it("fails fast with a clear error naming the port when the port is taken", async (ctx) => {
    const { expect } = ctx;
    const server: Server = createServer();
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    ctx.onTestFinished(() => new Promise<void>((resolve) => server.close(() => resolve())));
    const address = server.address();
    const port = typeof address === "object" && address ? address.port : 0;
    const worker = spawnWorker(ctx, "completes", { options: { port } });
    const exit = await worker.exited(20_000);
    expect(exit.code).not.toBe(0);
    expect(exit.code).toBe(1);
    expect(worker.stderr()).toContain(`port ${port}`);
    expect(worker.stderr()).toMatch(/already in use/);
    expect(worker.lines.find((l) => l.msg === "worker started")).toBeUndefined();
    expect(worker.lines.find((l) => typeof l.jobPid === "number")).toBeUndefined();
  });

  it("leaves no job process behind when the worker itself is SIGKILLed mid-job", async (ctx) => {
    const { expect } = ctx;
    const worker = spawnWorker(ctx, "waits-forever", { options: { maxProcesses: 3, numIdleProcesses: 2 } });
    await worker.line("job started", 30_000);
    type Slot = { id: string; state: string; pid: number | null; jobId: string | null };
    const slots = await until(
      async () => {
        const body = (await worker.get("/worker")).json() as { slots: Slot[] };
        const warm = body.slots.filter((s) => s.pid !== null && /work\.(idle|busy)/.test(s.state));
        return warm.length === 3 ? warm : undefined;
      },
      { label: "one busy and two idle job processes", timeoutMs: 30_000 },
    );
    expect(slots.filter((s) => s.jobId !== null)).toHaveLength(1);
    const pids = slots.map((s) => s.pid as number);
    for (const pid of pids) expect(isAlive(pid)).toBe(true);

    process.kill(worker.pid, "SIGKILL");
    expect(await worker.exited(5_000)).toEqual({ code: null, signal: "SIGKILL" });
    const killedAt = Date.now();
    await until(() => pids.every((pid) => !isAlive(pid)), {
      label: `job processes ${pids.join(", ")} to exit`,
      timeoutMs: 2_000,
      intervalMs: 25,
    });
    expect(Date.now() - killedAt).toBeLessThan(2_000);
  });
});
