import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, type ExpectStatic, it, type TestContext } from "vitest";
import { STRIPPED_ENV_NAMES } from "../../src/worker/job-env.ts";
import { within } from "../support/wait.ts";
import { fixture } from "./helpers/in-process.ts";
import { FAST_LOCAL_OPTIONS, spawnWorker } from "./helpers/out-of-process.ts";
import { MARKER_VARIABLE, ProcessScope } from "./helpers/processes.ts";

/**
 * Agent code never sees the registry's secret or the worker's token (DESIGN.md §1, principle 7): a
 * real worker started with them in its environment runs a job that writes out its own environment.
 */

const SECRETS = {
  TROUPE_API_KEY: `key-${randomUUID()}`,
  TROUPE_API_SECRET: `secret-${randomUUID()}`,
  TROUPE_AUTH_TOKEN: `token-${randomUUID()}`,
  TROUPE_REDIS_URL: `redis://:password-${randomUUID()}@127.0.0.1:1`,
};
const CUSTOM = { name: "TROUPE_IT_HARMLESS_VARIABLE", value: `harmless-${randomUUID()}` };

/** A temporary directory that goes when the test ends. */
function tempDir(ctx: Pick<TestContext, "onTestFinished">): string {
  const dir = mkdtempSync(join(tmpdir(), "troupe-child-env-"));
  ctx.onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** What the job saw: no secret by name or by value, the custom variable, the job's marker. */
function expectCleanJobEnvironment(envFile: string, expect: ExpectStatic): void {
  const seen = JSON.parse(readFileSync(envFile, "utf8")) as Record<string, string>;
  for (const name of STRIPPED_ENV_NAMES) expect(seen[name], `${name} reached the job`).toBeUndefined();
  const leaked = Object.entries(seen).filter(([, value]) => Object.values(SECRETS).some((s) => value.includes(s)));
  expect(
    leaked.map(([name]) => name),
    "a secret's value reached the job under another name",
  ).toEqual([]);
  expect(seen[CUSTOM.name]).toBe(CUSTOM.value);
  expect(seen.TROUPE_JOB_PROCESS).toMatch(/^[0-9a-f-]{36}$/);
}

describe.concurrent("a job process's environment", { timeout: 60_000 }, () => {
  it("holds none of the worker's secrets, and everything else", async (ctx) => {
    const { expect } = ctx;
    const envFile = join(tempDir(ctx), "env.json");
    // spawnWorker starts the worker with this process's environment: set it for that one call only.
    const saved = Object.fromEntries([...Object.keys(SECRETS), CUSTOM.name].map((n) => [n, process.env[n]]));
    Object.assign(process.env, SECRETS, { [CUSTOM.name]: CUSTOM.value });
    let worker: ReturnType<typeof spawnWorker>;
    try {
      worker = spawnWorker(ctx, "reports-env", { metadata: { envFile } });
    } finally {
      for (const [name, value] of Object.entries(saved)) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    }
    // The worker itself has them (it needs them): the job must not.
    const workerEnv = readFileSync(`/proc/${worker.pid}/environ`, "utf8");
    expect(workerEnv).toContain(`TROUPE_API_SECRET=${SECRETS.TROUPE_API_SECRET}`);
    expect(await worker.exited(30_000)).toEqual({ code: 0, signal: null });
    expectCleanJobEnvironment(envFile, expect);
  });

  it("does not read the worker's --env-file back", async (ctx) => {
    const { expect } = ctx;
    const dir = tempDir(ctx);
    const envFile = join(dir, "env.json");
    const dotenv = join(dir, "worker.env");
    writeFileSync(
      dotenv,
      `${Object.entries(SECRETS)
        .map(([name, value]) => `${name}=${value}`)
        .join("\n")}\n${CUSTOM.name}=${CUSTOM.value}\n`,
    );
    // spawnWorker cannot pass node flags: the same start, by hand, with the same cleanup.
    const marker = `${process.pid}-env-file-${randomUUID()}`;
    const scope = new ProcessScope(marker);
    const child = spawn(process.execPath, [`--env-file=${dotenv}`, "--import", "tsx", fixture("reports-env")], {
      cwd: fileURLToPath(new URL("../../", import.meta.url)),
      env: {
        ...process.env,
        [MARKER_VARIABLE]: marker,
        TROUPE_TEST_OPTIONS: JSON.stringify(FAST_LOCAL_OPTIONS),
        TROUPE_TEST_METADATA: JSON.stringify({ envFile }),
      },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    scope.track(child.pid);
    let output = "";
    const collect = (chunk: Buffer) => {
      output += chunk.toString();
    };
    child.stdout?.on("data", collect);
    child.stderr?.on("data", collect);
    const exit = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    try {
      expect(await within("the worker to finish its job", exit, 30_000), output).toBe(0);
      expectCleanJobEnvironment(envFile, expect);
    } finally {
      const survivors = await scope.cleanup(2_000);
      expect(survivors, "processes outlived the worker").toEqual([]);
    }
  });
});
