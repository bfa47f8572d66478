import type { ChildProcess } from "node:child_process";
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { type DevSession, startDev } from "../../src/cli/dev.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { FINAL_STATUSES, type JobRecord } from "../../src/registry/store.ts";
import { isAlive } from "../integration/helpers/processes.ts";
import { until } from "../integration/helpers/recorder.ts";

/**
 * `troupe dev` end to end: an embedded registry and a worker process for an agent module in a temp
 * folder; saving the module starts a new worker, the old one drains (its running job completes,
 * then it exits) and new jobs go to the new one.
 */
const SOURCES = new URL("../../src/index.ts", import.meta.url).href;
const AGENT = `import { JobContext, Options, WorkerJob } from ${JSON.stringify(SOURCES)};
async function entrypoint(ctx: JobContext) {
  ctx.logger.info({ pid: process.pid }, "dev job started");
  await new Promise((resolve) => setTimeout(resolve, Number(ctx.metadata.holdMs ?? 10)));
}
new WorkerJob({ entrypoint, jobctx: () => new JobContext(), options: new Options({ agentId: "DevAgent", register: false, maxProcesses: 2, numIdleProcesses: 1 }) }).start();
`;

let session: DevSession | undefined;
let folder: string | undefined;
const workers: ChildProcess[] = [];
afterEach(async () => {
  await session?.stop();
  session = undefined;
  for (const child of workers.splice(0)) {
    if (child.pid !== undefined && isAlive(child.pid)) child.kill("SIGKILL");
  }
  if (folder) rmSync(folder, { recursive: true, force: true });
});

async function record(dev: DevSession, jobId: string): Promise<JobRecord | undefined> {
  return dev.registry.core.store.get(jobId);
}

const availableWorkers = (dev: DevSession) =>
  [...dev.registry.core.workers.values()].filter((w) => w.available && w.socket);

describe("troupe dev", { timeout: 90_000 }, () => {
  it("restarts the worker when the agent changes; the old worker drains its running job and exits", async () => {
    folder = mkdtempSync(join(tmpdir(), "troupe-dev-"));
    const modulePath = join(folder, "agent.ts");
    writeFileSync(modulePath, AGENT);
    const dev = await startDev({
      modulePath,
      host: "127.0.0.1",
      port: 0,
      logger: createLogger("ERROR", { write() {} }),
      workerOutput: "ignore",
      debounceMs: 100,
      drainGraceMs: 20_000,
    });
    session = dev;
    dev.onWorker((child) => workers.push(child));
    workers.push(dev.worker());
    expect(dev.playgroundUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/playground\?token=/);

    await until(() => availableWorkers(dev).length === 1, 30_000, "the first worker to register");
    const [first] = availableWorkers(dev);
    const firstProcess = dev.worker();
    const { record: held } = await dev.registry.core.dispatch({ agentName: "DevAgent", metadata: { holdMs: 4_000 } });
    await until(async () => (await record(dev, held.id))?.status === "running", 30_000, "the held job to run");

    appendFileSync(modulePath, "// saved again\n");
    await until(() => dev.worker() !== firstProcess, 10_000, "a new worker process");
    await until(
      () => availableWorkers(dev).some((w) => w.workerId !== first?.workerId),
      30_000,
      "the new worker to register",
    );
    // The old worker drains: no new offers, and its job runs to completion.
    const { record: next } = await dev.registry.core.dispatch({ agentName: "DevAgent" });
    await until(
      async () => FINAL_STATUSES.includes((await record(dev, next.id))?.status ?? "pending"),
      30_000,
      "the next job to end",
    );
    const nextRecord = await record(dev, next.id);
    expect(nextRecord).toMatchObject({ status: "completed" });
    expect(nextRecord?.workerId).not.toBe(first?.workerId);
    await until(
      async () => FINAL_STATUSES.includes((await record(dev, held.id))?.status ?? "pending"),
      30_000,
      "the held job to end",
    );
    expect(await record(dev, held.id)).toMatchObject({ status: "completed", workerId: first?.workerId });
    await until(() => firstProcess.exitCode !== null, 20_000, "the old worker to exit");
    expect(firstProcess.exitCode).toBe(0);
  });

  it("says clearly when the agent module does not exist", async () => {
    await expect(
      startDev({ modulePath: "/nonexistent/agent.ts", host: "127.0.0.1", port: 0, logger: createLogger("ERROR") }),
    ).rejects.toThrow(/no agent module at \/nonexistent\/agent\.ts/);
  });
});
