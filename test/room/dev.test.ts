import { type ChildProcess, spawn } from "node:child_process";
import { appendFileSync, mkdirSync, mkdtempSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { type DevSession, type DevSettings, startDev } from "../../src/cli/dev.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { FINAL_STATUSES, type JobRecord } from "../../src/registry/store.ts";
import { readCpuUsage } from "../../src/worker/cpu-usage.ts";
import { isAlive } from "../integration/helpers/processes.ts";
import { until } from "../support/wait.ts";

/**
 * `troupe dev` end to end: an embedded registry and a worker process for an agent module in a temp
 * folder. Saving the module starts a new worker and the old one drains for real (its running job
 * completes, it leaves the registry without a "gone" warning, and it exits 0; at its drainTimeout
 * its jobs end `worker_shutdown`, never `lost`); the watcher survives atomic saves and folders
 * replaced under it; dev mode takes jobs on a machine whose CPU is saturated; the dev keys outlive
 * a restart.
 */
const SOURCES = new URL("../../src/index.ts", import.meta.url).href;
const agentSource = (
  options: Record<string, unknown> = {},
) => `import { JobContext, Options, WorkerJob } from ${JSON.stringify(SOURCES)};
async function entrypoint(ctx: JobContext) {
  ctx.logger.info({ pid: process.pid }, "dev job started");
  await new Promise((resolve) => setTimeout(resolve, Number(ctx.metadata.holdMs ?? 10)));
}
new WorkerJob({ entrypoint, jobctx: () => new JobContext(), options: new Options(${JSON.stringify({
  agentId: "DevAgent",
  register: false,
  maxProcesses: 2,
  numIdleProcesses: 1,
  ...options,
})}) }).start();
`;
/** A module that only stays alive: enough for the watcher tests, and cheap to restart. */
const IDLE_MODULE = "setInterval(() => {}, 60_000);\n";

const sessions: DevSession[] = [];
const folders: string[] = [];
const children: ChildProcess[] = [];
afterEach(async () => {
  for (const session of sessions.splice(0)) await session.stop({ killAfterMs: 3_000 });
  for (const child of children.splice(0)) {
    if (child.pid !== undefined && isAlive(child.pid)) child.kill("SIGKILL");
  }
  for (const folder of folders.splice(0)) rmSync(folder, { recursive: true, force: true });
});

function tempFolder(): string {
  const folder = mkdtempSync(join(tmpdir(), "troupe-dev-"));
  folders.push(folder);
  return folder;
}

interface Dev {
  session: DevSession;
  printed: string[];
  logs: Record<string, unknown>[];
  reloads: string[][];
  api<T>(path: string, init?: RequestInit): Promise<T>;
  workers(): Promise<{ id: string; status: string; load: number; jobs: string[] }[]>;
  job(id: string): Promise<JobRecord>;
  dispatch(metadata?: Record<string, unknown>): Promise<string>;
}

async function dev(modulePath: string, settings: Partial<DevSettings> = {}): Promise<Dev> {
  const printed: string[] = [];
  const logs: Record<string, unknown>[] = [];
  const reloads: string[][] = [];
  const session = await startDev({
    modulePath,
    host: "127.0.0.1",
    port: 0,
    logger: createLogger("INFO", { write: (line: string) => logs.push(JSON.parse(line)) }),
    workerOutput: "ignore",
    debounceMs: 100,
    print: (line) => printed.push(line),
    ...settings,
  });
  sessions.push(session);
  session.onWorker((child) => children.push(child));
  children.push(session.worker());
  session.onReload((files) => reloads.push(files));
  const api = async <T>(path: string, init: RequestInit = {}): Promise<T> => {
    const response = await fetch(`${session.registry.url}${path}`, {
      ...init,
      headers: { authorization: `Bearer ${session.dispatcherToken}`, "content-type": "application/json" },
    });
    const body = await response.json();
    if (!response.ok) throw new Error(`${path}: ${response.status} ${JSON.stringify(body)}`);
    return body as T;
  };
  return {
    session,
    printed,
    logs,
    reloads,
    api,
    workers: async () => (await api<{ workers: Awaited<ReturnType<Dev["workers"]>> }>("/v1/workers")).workers,
    job: async (id) => (await api<{ job: JobRecord }>(`/v1/jobs/${id}`)).job,
    dispatch: async (metadata = {}) =>
      (
        await api<{ job: JobRecord }>("/v1/jobs", {
          method: "POST",
          body: JSON.stringify({ agent_name: "DevAgent", metadata }),
        })
      ).job.id,
  };
}

const available = async (d: Dev) => (await d.workers()).filter((w) => w.status === "available");
const ended = async (d: Dev, id: string) => {
  const record = await d.job(id);
  return FINAL_STATUSES.includes(record.status) ? record : undefined;
};
/** WARN or worse lines saying a worker is gone (the registry's "did not reconnect in time"). */
const goneWarnings = (d: Dev, workerId: string) =>
  d.logs.filter((l) => Number(l.level) >= 40 && String(l.msg).includes("gone") && l.workerId === workerId);

describe("troupe dev", { timeout: 120_000 }, () => {
  it("on save the old worker drains for real: its job completes, it leaves without a 'gone' warning, exit 0", async () => {
    const folder = tempFolder();
    const modulePath = join(folder, "agent.ts");
    writeFileSync(modulePath, agentSource());
    const d = await dev(modulePath);
    expect(d.session.playgroundUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/playground\?token=/);

    const [first] = await until(
      async () => {
        const list = await available(d);
        return list.length === 1 && list;
      },
      { label: "the first worker to register", timeoutMs: 60_000 },
    );
    const firstProcess = d.session.worker();
    const exitedAt = new Promise<number>((resolve) => firstProcess.once("exit", () => resolve(performance.now())));
    const held = await d.dispatch({ holdMs: 2_000 });
    await until(async () => (await d.job(held)).status === "running", {
      label: "the held job to run",
      timeoutMs: 30_000,
    });

    const savedAt = performance.now();
    appendFileSync(modulePath, "// saved again\n");
    await until(() => d.session.worker() !== firstProcess, { label: "a new worker process", timeoutMs: 10_000 });
    expect(d.printed.find((line) => line.includes("reloading (agent.ts)"))).toBeDefined();
    const [second] = await until(
      async () => {
        const list = (await available(d)).filter((w) => w.id !== first?.id);
        return list.length === 1 && list;
      },
      { label: "the new worker to register", timeoutMs: 60_000 },
    );

    // New jobs go to the new worker while the old one drains.
    const next = await d.dispatch();
    const nextRecord = await until(() => ended(d, next), { label: "the next job to end", timeoutMs: 30_000 });
    expect(nextRecord).toMatchObject({ status: "completed", workerId: second?.id });

    const heldRecord = await until(() => ended(d, held), { label: "the held job to end", timeoutMs: 30_000 });
    expect(heldRecord).toMatchObject({ status: "completed", workerId: first?.id });
    const drainMs = Math.round((await exitedAt) - savedAt);
    expect(firstProcess.exitCode).toBe(0);
    expect(d.printed.find((line) => line.includes(`old worker ${firstProcess.pid} drained and exited`))).toBeDefined();
    // It left on purpose: the registry forgets it at once, not after a reconnect grace with a warning.
    await until(async () => !(await d.workers()).some((w) => w.id === first?.id), {
      label: "the registry to forget the old worker",
      timeoutMs: 3_000,
    });
    expect(goneWarnings(d, first?.id as string)).toEqual([]);
    console.info(`reload with a 2 s job running: the old worker drained and exited ${drainMs} ms after the save`);
  });

  it("at the old worker's drainTimeout its job ends failed worker_shutdown (never lost), and dev says so", async () => {
    const folder = tempFolder();
    const modulePath = join(folder, "agent.ts");
    writeFileSync(modulePath, agentSource({ drainTimeout: 1, closeTimeout: 1, killTimeout: 1 }));
    const d = await dev(modulePath);
    const [first] = await until(
      async () => {
        const list = await available(d);
        return list.length === 1 && list;
      },
      { label: "the first worker to register", timeoutMs: 60_000 },
    );
    const firstProcess = d.session.worker();
    const exitedAt = new Promise<number>((resolve) => firstProcess.once("exit", () => resolve(performance.now())));
    const held = await d.dispatch({ holdMs: 120_000 });
    await until(async () => (await d.job(held)).status === "running", {
      label: "the held job to run",
      timeoutMs: 30_000,
    });

    const savedAt = performance.now();
    appendFileSync(modulePath, "// saved again\n");
    const record = await until(() => ended(d, held), { label: "the held job to end", timeoutMs: 30_000 });
    expect(record).toMatchObject({ status: "failed", reason: "worker_shutdown", workerId: first?.id });
    const exitMs = Math.round((await exitedAt) - savedAt);
    expect(firstProcess.exitCode).toBe(2);
    await until(() => d.printed.find((line) => line.includes("reached its drainTimeout")), {
      label: "the drain timeout line",
      timeoutMs: 5_000,
    });
    await until(async () => !(await d.workers()).some((w) => w.id === first?.id), {
      label: "the registry to forget the old worker",
      timeoutMs: 3_000,
    });
    expect(goneWarnings(d, first?.id as string)).toEqual([]);
    console.info(`drainTimeout 1 s: the old worker exited ${exitMs} ms after the save`);
  });

  it("one Ctrl-C while an old worker drains stops nothing early: both workers drain, exit 0", async () => {
    const folder = tempFolder();
    const modulePath = join(folder, "agent.ts");
    writeFileSync(modulePath, agentSource());
    const d = await dev(modulePath);
    await until(async () => (await available(d)).length === 1, {
      label: "the first worker to register",
      timeoutMs: 60_000,
    });
    const firstProcess = d.session.worker();
    const held = await d.dispatch({ holdMs: 3_000 });
    await until(async () => (await d.job(held)).status === "running", {
      label: "the held job to run",
      timeoutMs: 30_000,
    });
    appendFileSync(modulePath, "// saved again\n");
    await until(() => d.session.worker() !== firstProcess, { label: "a new worker process", timeoutMs: 10_000 });
    const secondProcess = d.session.worker();
    // The terminal's Ctrl-C, and npm's copy of it 20 ms later: one gesture.
    d.session.signal("SIGINT");
    await new Promise((resolve) => setTimeout(resolve, 20));
    d.session.signal("SIGINT");
    expect(await d.session.closed).toBe(0);
    expect(firstProcess.exitCode).toBe(0);
    // The new worker drained too, or was still loading the module and just ended by the signal.
    expect([0, "SIGINT"]).toContain(secondProcess.exitCode ?? secondProcess.signalCode);
    expect(d.printed.filter((line) => line.includes("stopping now"))).toEqual([]);
  });

  it("reloads on every atomic save (write a temp file, rename it over), and after folders are replaced", async () => {
    const folder = tempFolder();
    const modulePath = join(folder, "agent.ts");
    writeFileSync(modulePath, IDLE_MODULE);
    const d = await dev(modulePath);
    for (let save = 1; save <= 3; save++) {
      const before = d.session.worker();
      writeFileSync(`${modulePath}.tmp`, `${IDLE_MODULE}// save ${save}\n`);
      renameSync(`${modulePath}.tmp`, modulePath);
      await until(() => d.reloads.length === save, { label: `reload ${save}`, timeoutMs: 10_000 });
      expect(d.session.worker()).not.toBe(before);
      expect(d.printed.filter((line) => line.includes("reloading (agent.ts)"))).toHaveLength(save);
    }
    // What `git checkout` does to a folder: gone, then back with new files; edits inside still count.
    mkdirSync(join(folder, "lib"));
    writeFileSync(join(folder, "lib", "helper.ts"), "export const a = 1;\n");
    await until(() => d.reloads.length === 4, { label: "the reload for lib/helper.ts", timeoutMs: 10_000 });
    rmSync(join(folder, "lib"), { recursive: true });
    await until(() => d.reloads.length === 5, { label: "the reload for the removed folder", timeoutMs: 10_000 });
    mkdirSync(join(folder, "lib"));
    writeFileSync(join(folder, "lib", "helper.ts"), "export const a = 2;\n");
    await until(() => d.reloads.length === 6, { label: "the reload for the folder back", timeoutMs: 10_000 });
    writeFileSync(join(folder, "lib", "helper.ts"), "export const a = 3;\n");
    await until(() => d.reloads.length === 7, { label: "the reload for an edit in the new folder", timeoutMs: 10_000 });
    expect(d.reloads.at(-1)).toEqual([join(folder, "lib", "helper.ts")]);
    // Files that are not code (notes, editors' swap and temp files, logs) do not reload.
    writeFileSync(join(folder, "notes.txt"), "hello\n");
    writeFileSync(join(folder, ".agent.ts.swp"), "x");
    writeFileSync(join(folder, "agent.ts~"), "x");
    await new Promise((resolve) => setTimeout(resolve, 800));
    expect(d.reloads).toHaveLength(7);
  });

  it("takes and completes a job while every core is saturated (dev mode ignores CPU load)", async () => {
    const folder = tempFolder();
    const modulePath = join(folder, "agent.ts");
    writeFileSync(modulePath, agentSource({ maxProcesses: 1 }));
    const d = await dev(modulePath, { watch: false });
    await until(async () => (await available(d)).length === 1, { label: "the worker to register", timeoutMs: 60_000 });
    const cores = Math.max(1, Math.ceil(readCpuUsage().cores ?? availableParallelism()));
    const burners = Array.from({ length: cores }, () =>
      spawn(process.execPath, ["-e", "for (;;) {}"], { stdio: "ignore" }),
    );
    try {
      for (const burner of burners) children.push(burner);
      const before = readCpuUsage();
      // Long enough for the load sampler (every 2 s, smoothed) to pass loadThreshold 0.75 were it counted.
      await new Promise((resolve) => setTimeout(resolve, 10_000));
      const after = readCpuUsage();
      const machineLoad =
        (after.usageMicros - before.usageMicros) / ((after.atMs - before.atMs) * 1000 * (after.cores ?? cores));
      expect(machineLoad).toBeGreaterThan(0.75);
      const [worker] = await d.workers();
      expect(worker).toMatchObject({ status: "available", load: 0 });
      const id = await d.dispatch({ holdMs: 200 });
      const record = await until(() => ended(d, id), { label: "the job under load to end", timeoutMs: 30_000 });
      expect(record.status).toBe("completed");
      console.info(`dev dispatch with the machine's CPU at ${machineLoad.toFixed(2)}: completed`);
    } finally {
      for (const burner of burners) burner.kill("SIGKILL");
    }
  });

  it("keeps its keys across restarts: a token from one run still works on the next", async () => {
    const folder = tempFolder();
    const modulePath = join(folder, "agent.ts");
    writeFileSync(modulePath, IDLE_MODULE);
    const credentialsFile = join(folder, "home", "dev-credentials.json");
    const first = await dev(modulePath, { watch: false, credentialsFile });
    const token = first.session.dispatcherToken;
    await first.session.stop({ killAfterMs: 3_000 });
    expect(statSync(credentialsFile).mode & 0o777).toBe(0o600);
    const second = await dev(modulePath, { watch: false, credentialsFile });
    const response = await fetch(`${second.session.registry.url}/v1/jobs`, {
      headers: { authorization: `Bearer ${token}` },
    });
    expect(response.status).toBe(200);
  });

  it("says clearly when the agent module does not exist", async () => {
    await expect(
      startDev({ modulePath: "/nonexistent/agent.ts", host: "127.0.0.1", port: 0, logger: createLogger("ERROR") }),
    ).rejects.toThrow(/no agent module at \/nonexistent\/agent\.ts/);
  });
});
