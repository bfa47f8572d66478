import { afterAll, afterEach, describe, expect, it } from "vitest";
import { jobDetails, outcome } from "../../src/cli/format.ts";
import { Options } from "../../src/options.ts";
import { runWorker, type WorkerHandle } from "../../src/worker/runtime.ts";
import {
  api,
  CREDS,
  closeRegistries,
  dispatch,
  silent,
  startRegistry,
  type TestRegistry,
  waitAvailableAgent,
} from "../registry/helpers.ts";
import { fixture } from "./helpers/in-process.ts";
import { fileMarker, sweepFile } from "./helpers/processes.ts";

afterAll(sweepFile);

const workers: WorkerHandle[] = [];
afterEach(async () => {
  await Promise.all(
    workers.splice(0).map((handle) => {
      if (handle.actor.getSnapshot().status === "active") handle.stop();
      return handle.done;
    }),
  );
  await closeRegistries();
}, 60_000);

/** A worker in this process, registered with the registry, whose job processes run a fixture agent. */
async function startWorker(registry: TestRegistry, agentName: string, fixtureName: string): Promise<void> {
  // Job processes inherit this marker: the sweep after the file finds any that outlived its test.
  fileMarker();
  const options = new Options(
    {
      register: true,
      registryUrl: registry.url,
      ...CREDS,
      agentId: agentName,
      maxProcesses: 1,
      numIdleProcesses: 1,
      host: "127.0.0.1",
      port: 0,
      loadFn: () => 0,
      registrationTimeout: 5,
      closeTimeout: 2,
      killTimeout: 1,
      launchTimeout: 60,
    },
    {},
  );
  const handle = await runWorker(
    { entrypoint: async () => {}, jobctx: undefined, options, agentModule: fixture(fixtureName) },
    { handleSignals: false, logger: silent },
  );
  workers.push(handle);
  await waitAvailableAgent(registry, agentName, 90_000);
}

/**
 * How a job's process ended reaches the registry's record: a real worker and a real registry, and
 * fixture agents whose job processes exit with a code or die of a signal.
 */
describe("exit codes and signals in job records", { timeout: 240_000 }, () => {
  it("a job process that exits with code 3: failed, crashed, exitCode 3, no signal", async () => {
    const registry = await startRegistry({});
    await startWorker(registry, "Exits", "exits");
    const job = await dispatch(registry, { agent_name: "Exits", metadata: { exitCode: 3 } });
    const record = await registry.store.untilFinal(job.id, 90_000);
    expect(record).toMatchObject({ status: "failed", reason: "crashed", exitCode: 3, signal: null });
    const answer = await api(registry.url, registry.dispatcher, "GET", `/v1/jobs/${job.id}`);
    expect(answer.body.job).toMatchObject({ status: "failed", reason: "crashed", exitCode: 3, signal: null });
    expect(outcome(answer.body.job)).toBe("failed: crashed (exit code 3)");
    expect(jobDetails(answer.body.job)).toMatch(/^exit code +3$/m);
    expect(jobDetails(answer.body.job)).not.toMatch(/^signal/m);
  });

  it("a job process that dies of SIGSEGV: failed, crashed, signal SIGSEGV, no exit code", async () => {
    const registry = await startRegistry({});
    await startWorker(registry, "Segfaults", "segfaults");
    const job = await dispatch(registry, { agent_name: "Segfaults" });
    const record = await registry.store.untilFinal(job.id, 90_000);
    expect(record).toMatchObject({ status: "failed", reason: "crashed", exitCode: null, signal: "SIGSEGV" });
    const answer = await api(registry.url, registry.dispatcher, "GET", `/v1/jobs/${job.id}`);
    expect(answer.body.job).toMatchObject({ status: "failed", reason: "crashed", exitCode: null, signal: "SIGSEGV" });
    expect(outcome(answer.body.job)).toBe("failed: crashed (signal SIGSEGV)");
    expect(jobDetails(answer.body.job)).toMatch(/^signal +SIGSEGV$/m);
    expect(jobDetails(answer.body.job)).not.toMatch(/^exit code/m);
  });
});
