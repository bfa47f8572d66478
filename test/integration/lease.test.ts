import { createConnection, createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { registryInternals } from "../../src/registry/server.ts";
import { LEASE_MARGIN_MS, type RegistryTiming } from "../../src/registry/timing.ts";
import {
  closeRegistries,
  dispatch,
  isAlive,
  ProcessGuard,
  type RunLogEntry,
  readRunLog,
  registeredId,
  spawnWorker,
  startRegistry,
  type TestRegistry,
  tempDir,
  type WorkerProcess,
  waitAvailable,
  workerState,
} from "../registry/helpers.ts";
import { until } from "../support/wait.ts";

/**
 * Leases end to end: a real registry, real worker processes running the registry fixture agent, and
 * between one worker and the registry a TCP proxy that can stall the link (no byte forwarded either
 * way, no socket closed), as a network partition would. A `redispatch` job on the stalled worker
 * must be killed there once its lease lapses, and run elsewhere only after the registry's fence, so
 * that it never runs in two places at once; a job without `redispatch` holds no lease and runs on.
 */

const LEASE_MS = 1_500;
const TIMING: Partial<RegistryTiming> = {
  leaseMs: LEASE_MS,
  pingIntervalMs: 1_000,
  pongTimeoutMs: 1_500,
  reconnectGraceMs: 1_000,
  offerTimeoutMs: 3_000,
  runningTimeoutMs: 30_000,
  dispatchTimeoutMs: 60_000,
};
/** How long after the registry's last renewal the job may still run on the stalled worker. */
const FENCE_MS = LEASE_MS + LEASE_MARGIN_MS;
/** Timers and Date.now() may disagree by a millisecond or so. */
const CLOCK_SLACK_MS = 15;

// ------------------------------------------------------------------ a stallable TCP proxy

/**
 * Forwards TCP connections from 127.0.0.1:<port> to the registry. While stalled it forwards nothing,
 * in either direction, on existing and new connections alike: bytes, ends and closes are held (in
 * order, per direction) until `resume`. Sockets stay open, so neither side sees anything happen.
 */
class StallingProxy {
  #stalled = false;
  /** Actions held while stalled, in the order they arrived. */
  #held: (() => void)[] = [];
  readonly #sockets = new Set<Socket>();
  /** Bytes that arrived while stalled (and so were held back). */
  heldBytes = 0;
  connections = 0;

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async start(targetPort: number): Promise<StallingProxy> {
    let proxy: StallingProxy | undefined;
    const server = createServer((client) => proxy?.accept(client, targetPort));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => resolve());
    });
    const address = server.address();
    if (address === null || typeof address === "string") throw new Error("the proxy has no port");
    proxy = new StallingProxy(server, address.port);
    return proxy;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get stalled(): boolean {
    return this.#stalled;
  }

  stall(): void {
    this.#stalled = true;
  }

  /** Forwards everything held, in order, and forwards as it comes from here on. */
  resume(): void {
    this.#stalled = false;
    for (const action of this.#held.splice(0)) action();
  }

  async close(): Promise<void> {
    this.#held = [];
    for (const socket of this.#sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  accept(client: Socket, targetPort: number): void {
    this.connections++;
    const upstream = createConnection({ host: "127.0.0.1", port: targetPort });
    for (const socket of [client, upstream]) {
      this.#sockets.add(socket);
      socket.on("error", () => {});
      socket.once("close", () => this.#sockets.delete(socket));
    }
    this.#relay(client, upstream);
    this.#relay(upstream, client);
  }

  #relay(from: Socket, to: Socket): void {
    from.on("data", (chunk: Buffer) => {
      if (this.#stalled) this.heldBytes += chunk.length;
      this.#forward(() => {
        if (!to.destroyed) to.write(chunk);
      });
    });
    from.on("end", () => this.#forward(() => to.end()));
    from.on("close", () => this.#forward(() => to.destroy()));
  }

  #forward(action: () => void): void {
    if (this.#stalled) this.#held.push(action);
    else action();
  }
}

// ------------------------------------------------------------------ bookkeeping

const guard = new ProcessGuard();
const temp = tempDir();
const proxies = new Set<StallingProxy>();

afterEach(async () => {
  await Promise.all([...proxies].map((proxy) => proxy.close()));
  proxies.clear();
  await closeRegistries();
  await guard.killAll();
});

afterAll(() => temp.remove());

async function startProxy(r: TestRegistry): Promise<StallingProxy> {
  const proxy = await StallingProxy.start(Number(new URL(r.url).port));
  proxies.add(proxy);
  return proxy;
}

/**
 * Watches a process from now on, every few milliseconds: `diedBy` is a moment by which it was surely
 * dead (the end of the first check that found it gone), `aliveAt` the start of the last check that
 * found it alive.
 */
function watchProcess(pid: number) {
  let aliveAt = Date.now();
  let diedBy: number | undefined;
  const check = () => {
    const before = Date.now();
    if (isAlive(pid)) aliveAt = before;
    else diedBy ??= Date.now();
  };
  check();
  const timer = setInterval(check, 5);
  return {
    get aliveAt() {
      return aliveAt;
    },
    get diedBy() {
      return diedBy;
    },
    stop() {
      clearInterval(timer);
    },
  };
}

function runOf(runLog: string, jobId: string, worker: string): RunLogEntry | undefined {
  return readRunLog(runLog).find((run) => run.jobId === jobId && run.worker === worker);
}

function waitRun(runLog: string, jobId: string, worker: string, timeoutMs: number): Promise<RunLogEntry> {
  return until(() => runOf(runLog, jobId, worker), {
    label: `job ${jobId} to start on ${worker}`,
    timeoutMs,
    intervalMs: 10,
  });
}

/** The worker's log line for the end of a job, once it is logged. */
function jobEndLine(worker: WorkerProcess, jobId: string): Record<string, unknown> | undefined {
  return worker.logs.find((line) => line.jobId === jobId && typeof line.msg === "string" && /^job /.test(line.msg));
}

function describeFailure(worker: WorkerProcess): string {
  return `\nlogs of ${worker.name}: ${JSON.stringify(worker.logs.slice(-15))}\nstderr: ${worker.stderr.join("\n")}`;
}

// ------------------------------------------------------------------ the tests

describe.sequential("leases across a stalled link", () => {
  it("a redispatch job: killed on the stalled worker once its lease lapses, then run elsewhere only after the fence", {
    timeout: 90_000,
  }, async () => {
    const r = await startRegistry(TIMING);
    const proxy = await startProxy(r);
    const runLog = join(temp.dir, "redispatch.jsonl");
    const env = { FIXTURE_AGENT: "leased", FIXTURE_RUN_LOG: runLog };

    // Worker A, behind the proxy, is the only worker when the job is dispatched.
    const a = spawnWorker(guard, { registryUrl: proxy.url, name: "A", maxProcesses: 1, loadThreshold: 0.961, env });
    const aId = await waitAvailable(r, a);
    const job = await dispatch(r, { agent_name: "leased", redispatch: true, metadata: { hang: true } });
    const onA = await r.store.until(job.id, (rec) => rec.status === "running", 30_000, "running on A");
    expect(onA.workerId).toBe(aId);
    const runA = await waitRun(runLog, job.id, "A", 10_000);
    guard.track(runA.pid);

    // Worker B connects directly, with a warm process, once the job is A's.
    const b = spawnWorker(guard, {
      registryUrl: r.url,
      name: "B",
      maxProcesses: 1,
      idleProcesses: 1,
      loadThreshold: 0.962,
      env,
    });
    const bId = await waitAvailable(r, b);

    // The lease is renewed while the link is up: the job outlives several leases on A.
    await until(() => Date.now() >= runA.at + 2 * LEASE_MS, { label: "two leases to pass", timeoutMs: 10_000 });
    expect(isAlive(runA.pid), `A's job process after two leases${describeFailure(a)}`).toBe(true);
    expect(jobEndLine(a, job.id)).toBeUndefined();
    const linkA = registryInternals(r.registry).core.directory.get(aId);
    if (!linkA) throw new Error("no link for worker A");
    expect(linkA.lastLeaseAt).toBeGreaterThan(runA.at);

    // The partition.
    const watchA = watchProcess(runA.pid);
    let runB: RunLogEntry | undefined;
    const stalledAt = Date.now();
    proxy.stall();
    try {
      // A stops its job: SIGKILL at once, and the job fails with reason lease_lapsed.
      const ended = await until(() => jobEndLine(a, job.id), {
        label: `worker A to end job ${job.id}`,
        timeoutMs: 10_000,
      }).catch((error: Error) => {
        throw new Error(`${error.message}${describeFailure(a)}`);
      });
      expect(ended).toMatchObject({ msg: "job failed", status: "failed", reason: "lease_lapsed", signal: "SIGKILL" });
      await until(() => watchA.diedBy, { label: "A's job process to be gone", timeoutMs: 5_000 });

      // The registry gives the job to B.
      const onB = await r.store.until(
        job.id,
        (rec) => rec.status === "running" && rec.workerId === bId,
        20_000,
        "running on B",
      );
      runB = await waitRun(runLog, job.id, "B", 10_000);
      guard.track(runB.pid);
      const lastLeaseAt = linkA.lastLeaseAt;
      const diedBy = watchA.diedBy as number;

      // A's job was gone before the registry's fence ran out...
      expect(diedBy).toBeGreaterThan(stalledAt);
      expect(diedBy, "A's job process gone before the fence ended").toBeLessThan(lastLeaseAt + FENCE_MS);
      // ...the registry did not so much as offer the job to B before then...
      const history = r.store.history.get(job.id) ?? [];
      const firstForB = history.find((patch) => patch.workerId === bId);
      expect(firstForB, JSON.stringify(history)).toBeDefined();
      expect((firstForB?.at ?? 0) + CLOCK_SLACK_MS).toBeGreaterThanOrEqual(lastLeaseAt + FENCE_MS);
      // ...and B's entrypoint started only after A's job process was gone: never both at once.
      expect(runB.at, "B started after A's job process was gone").toBeGreaterThan(diedBy);
      expect(runB.pid).not.toBe(runA.pid);

      // The record: running on B, its second attempt, never final in between.
      expect(onB).toMatchObject({ status: "running", workerId: bId, attempts: 2, redispatch: true });
      expect([...r.store.workersOf(job.id)].sort()).toEqual([aId, bId].sort());
      expect(r.store.finalPatches(job.id)).toBe(0);
      expect(
        readRunLog(runLog)
          .filter((run) => run.jobId === job.id)
          .map((run) => run.worker),
      ).toEqual(["A", "B"]);
      expect(isAlive(runA.pid)).toBe(false);
      expect(isAlive(runB.pid)).toBe(true);
      // The link really was stalled: A kept trying to talk (pings, its failed report) and nothing got through.
      expect(proxy.heldBytes).toBeGreaterThan(0);
      console.log(
        `lease: stalled at +0 ms; A's job gone by +${diedBy - stalledAt} ms; ` +
          `fence ended at +${lastLeaseAt + FENCE_MS - stalledAt} ms; offered to B at +${(firstForB?.at ?? 0) - stalledAt} ms; ` +
          `B started at +${runB.at - stalledAt} ms`,
      );
    } finally {
      watchA.stop();
    }

    // The partition heals: A comes back, reports the job it stopped, and B keeps the job.
    const healedAt = Date.now();
    proxy.resume();
    const backId = await until(
      () => {
        const id = registeredId(r, a);
        const link = id ? registryInternals(r.registry).core.directory.get(id) : undefined;
        // Registered again, and a ping of the new connection answered since: its inventory was read.
        return link?.connected && link.lastLeaseAt > healedAt ? id : undefined;
      },
      { label: "worker A to register again after the partition", timeoutMs: 30_000 },
    ).catch((error: Error) => {
      throw new Error(`${error.message}${describeFailure(a)}`);
    });
    // The registry heard what A did with the job (its inventory, or its held-back report)...
    const backLink = registryInternals(r.registry).core.directory.get(backId);
    expect(backLink?.reported(job.id)).toMatchObject({ status: "failed", reason: "lease_lapsed" });
    // ...and, the job being B's now, that changed nothing.
    const after = await r.store.get(job.id);
    expect(after).toMatchObject({ status: "running", workerId: bId, attempts: 2 });
    expect(r.store.finalPatches(job.id)).toBe(0);
    expect(runB && isAlive(runB.pid)).toBe(true);
    const stateA = await workerState(guard, a);
    expect(stateA.jobs.filter((j) => j.id === job.id && j.state.startsWith("running"))).toEqual([]);
  });

  it("a job without redispatch holds no lease: it runs on while its worker's link is stalled past the lease", {
    timeout: 60_000,
  }, async () => {
    const r = await startRegistry(TIMING);
    const proxy = await startProxy(r);
    const runLog = join(temp.dir, "plain.jsonl");
    const a = spawnWorker(guard, {
      registryUrl: proxy.url,
      name: "A",
      maxProcesses: 1,
      loadThreshold: 0.971,
      env: { FIXTURE_AGENT: "unleased", FIXTURE_RUN_LOG: runLog },
    });
    const aId = await waitAvailable(r, a);
    const job = await dispatch(r, { agent_name: "unleased", metadata: { hang: true } });
    expect(job.redispatch).toBe(false);
    const onA = await r.store.until(job.id, (rec) => rec.status === "running", 30_000, "running on A");
    expect(onA.workerId).toBe(aId);
    const runA = await waitRun(runLog, job.id, "A", 10_000);
    guard.track(runA.pid);

    const watchA = watchProcess(runA.pid);
    const stalledAt = Date.now();
    proxy.stall();
    try {
      // The registry declares A gone (the job ends lost there, as a job without redispatch does)...
      const lost = await r.store.until(job.id, (rec) => rec.status === "lost", 20_000, "lost");
      expect(lost).toMatchObject({ workerId: aId, reason: "worker lost" });
      // ...while on A the job runs on, well past any lease the registry could have granted.
      await until(() => Date.now() >= stalledAt + 2 * FENCE_MS || watchA.diedBy, {
        label: "two fences to pass",
        timeoutMs: 20_000,
      });
      expect(watchA.diedBy, `A's job process died while stalled${describeFailure(a)}`).toBeUndefined();
      expect(isAlive(runA.pid)).toBe(true);
      expect(jobEndLine(a, job.id)).toBeUndefined();
      expect(a.logs.filter((line) => line.reason === "lease_lapsed")).toEqual([]);
      // The worker itself (its health port is not behind the proxy) still has the job running.
      const state = await workerState(guard, a);
      expect(state.jobs).toEqual([expect.objectContaining({ id: job.id, state: expect.stringMatching(/^running/) })]);
      expect(proxy.heldBytes).toBeGreaterThan(0);
      expect(proxy.stalled).toBe(true);
    } finally {
      watchA.stop();
    }
  });
});
