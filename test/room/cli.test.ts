import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../../src/observability/logger.ts";
import { createRegistry, type Registry } from "../../src/registry/server.ts";

/** The `troupe` command as users run it: help on every command, and one clear line for each mistake. */
const BIN = fileURLToPath(new URL("../../bin/troupe.mjs", import.meta.url));
const CREDS = { apiKey: "cli-test-key", apiSecret: "cli-test-secret-0123456789abcdef0123" };
/** A fixture agent whose module says `register: false` (run one job locally). */
const LOCAL_AGENT = fileURLToPath(new URL("../fixtures/agents/completes.ts", import.meta.url));

function troupe(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [BIN, ...args],
      // Generous: on a loaded 2-core box one CLI start (tsx) takes seconds.
      { timeout: 60_000, env: { ...process.env, TROUPE_URL: "" } },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === "number" ? error.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

/** A loopback port with nothing listening on it. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

let registry: Registry;
beforeAll(async () => {
  registry = await createRegistry({
    ...CREDS,
    host: "127.0.0.1",
    port: 0,
    logger: createLogger("ERROR", { write() {} }),
  });
});
afterAll(() => registry.close());

describe("the troupe command", { timeout: 180_000 }, () => {
  it("has --help on every command", async () => {
    const commands = ["dev", "start", "registry", "token", "dispatch", "jobs", "workers"];
    // One at a time: eight CLI starts at once can outlast the timeout on a loaded 2-core box.
    const results = [await troupe("--help")];
    for (const command of commands) results.push(await troupe(command, "--help"));
    expect(results[0]?.code).toBe(0);
    for (const command of commands) expect(results[0]?.stdout).toContain(command);
    results.slice(1).forEach((result, i) => {
      expect(result.code, commands[i]).toBe(0);
      expect(result.stdout, commands[i]).toContain(`Usage: troupe ${commands[i]}`);
    });
    const start = results[commands.indexOf("start") + 1]?.stdout ?? "";
    expect(start).toContain("--url <url>");
    expect(start).toContain("--log-level <level>");
    expect(results[commands.indexOf("dispatch") + 1]?.stdout).toContain("--wait");
    for (const command of ["jobs", "workers"])
      expect(results[commands.indexOf(command) + 1]?.stdout).toContain("--json");
  });

  it("says clearly what is wrong: a missing module, an unreachable registry, a bad token", async () => {
    const port = await closedPort();
    const [start, dev, unreachable, badToken] = await Promise.all([
      troupe("start", "/nonexistent/agent.ts"),
      troupe("dev", "/nonexistent/agent.ts", "--port", "0"),
      troupe("jobs", "--url", `http://127.0.0.1:${port}`, "--token", "whatever"),
      troupe("workers", "--url", registry.url, "--token", "not-a-token"),
    ]);
    expect(start).toMatchObject({ code: 1, stderr: "troupe: no agent module at /nonexistent/agent.ts\n" });
    expect(dev).toMatchObject({ code: 1, stderr: "troupe: no agent module at /nonexistent/agent.ts\n" });
    expect(unreachable.code).toBe(1);
    expect(unreachable.stderr).toMatch(/^troupe: cannot reach the registry at http:\/\/127\.0\.0\.1:\d+/);
    expect(badToken.code).toBe(1);
    expect(badToken.stderr).toMatch(/^troupe: the registry refused the token/);
  });

  it("refuses to start a registry node whose Redis does not answer", async () => {
    const port = await closedPort();
    const keys = ["--api-key", CREDS.apiKey, "--api-secret", CREDS.apiSecret];
    const node = await troupe("registry", "--port", "0", "--redis", `redis://127.0.0.1:${port}`, ...keys);
    expect(node.code).toBe(1);
    expect(node.stderr).toContain(`troupe: cannot join the registry cluster at redis://127.0.0.1:${port}`);
  });

  it("dispatches and lists jobs with a key and secret: a line, a table, one job's fields, or JSON", async () => {
    const keys = ["--url", registry.url, "--api-key", CREDS.apiKey, "--api-secret", CREDS.apiSecret];
    const dispatched = await troupe("dispatch", "NobodyRunsMe", "--room", "cli-room", "--json", ...keys);
    expect(dispatched.code).toBe(0);
    const { job } = JSON.parse(dispatched.stdout) as { job: { id: string; roomId: string } };
    expect(job.roomId).toBe("cli-room");
    const plain = await troupe("dispatch", "NobodyRunsMe", "--room", "cli-room-2", ...keys);
    expect(plain).toMatchObject({ code: 0, stderr: "" });
    expect(plain.stdout).toMatch(/^job job-\S+ (pending|offering): agent NobodyRunsMe, room cli-room-2\n$/);

    const json = await troupe("jobs", job.id, "--json", ...keys);
    const one = await troupe("jobs", job.id, ...keys);
    const list = await troupe("jobs", "--agent", "NobodyRunsMe", ...keys);
    expect(JSON.parse(json.stdout)).toMatchObject({ job: { id: job.id, agentName: "NobodyRunsMe" } });
    expect(one.code).toBe(0);
    expect(one.stdout).toMatch(new RegExp(`^job +${job.id}\nagent +NobodyRunsMe\nstatus +\\w+\n`));
    expect(one.stdout).toMatch(/\nroom +cli-room\n/);
    expect(list.code).toBe(0);
    const lines = list.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^JOB +AGENT +STATUS +ROOM +WORKER +CREATED$/);
    expect(lines).toHaveLength(3);
    expectAligned(lines);
    expect(list.stdout).toContain(job.id);
  });

  it("jobs --cancel without an id is an error, not a listing", async () => {
    const keys = ["--url", registry.url, "--api-key", CREDS.apiKey, "--api-secret", CREDS.apiSecret];
    const result = await troupe("jobs", "--cancel", ...keys);
    expect(result).toMatchObject({
      code: 1,
      stdout: "",
      stderr: "troupe: --cancel needs the job's id: troupe jobs <id> --cancel\n",
    });
  });

  it("refuses an API secret shorter than 32 bytes (the command and createRegistry)", async () => {
    const node = await troupe("registry", "--port", "0", "--api-key", "k", "--api-secret", "dev-secret-dev-secret");
    expect(node.code).toBe(1);
    expect(node.stderr).toBe(
      "troupe: the API secret (--api-secret or TROUPE_API_SECRET) is 21 bytes; a registry needs at least 32. Make one with: openssl rand -hex 32\n",
    );
    await expect(
      createRegistry({
        apiKey: "k",
        apiSecret: "x".repeat(31),
        port: 0,
        logger: createLogger("ERROR", { write() {} }),
      }),
    ).rejects.toThrow("the API secret must be at least 32 bytes");
  });
});

/** Every column of a table starts at the same offset on every line (cells hold no spaces here). */
function expectAligned(lines: string[]) {
  const starts = (line: string) => [...line.matchAll(/(?<=^| {2,})\S/g)].map((m) => m.index);
  const header = starts(lines[0] as string);
  for (const line of lines.slice(1)) expect(starts(line), line).toEqual(header);
}

describe("troupe start, workers and dispatch --wait, with a real worker", { timeout: 240_000 }, () => {
  let worker: ChildProcess | undefined;
  const stderr: string[] = [];
  const keys = () => ["--url", registry.url, "--api-key", CREDS.apiKey, "--api-secret", CREDS.apiSecret];

  afterAll(async () => {
    if (worker?.pid && worker.exitCode === null && worker.signalCode === null) {
      const exited = new Promise((resolve) => worker?.once("exit", resolve));
      process.kill(-worker.pid, "SIGKILL");
      await exited;
    }
  });

  it("start runs a registered worker although the module says register: false; workers shows it in a table", async () => {
    worker = spawn(process.execPath, [BIN, "start", LOCAL_AGENT, "--url", registry.url, "--log-level", "warn"], {
      env: {
        ...process.env,
        TROUPE_URL: "",
        TROUPE_API_KEY: CREDS.apiKey,
        TROUPE_API_SECRET: CREDS.apiSecret,
        TROUPE_TEST_IGNORE_LOAD: "1",
        // Three warm processes before it is available, one per dispatch below; warming may be slow on a busy box.
        TROUPE_TEST_OPTIONS: JSON.stringify({
          agentId: "CliAgent",
          maxProcesses: 3,
          numIdleProcesses: 3,
          initializeTimeout: 120,
        }),
      },
      stdio: ["ignore", "pipe", "pipe"],
      // Its own group, so the cleanup reaches it and nothing else.
      detached: true,
    });
    worker.stderr?.on("data", (chunk: Buffer) => stderr.push(chunk.toString()));
    const stdout: string[] = [];
    worker.stdout?.on("data", (chunk: Buffer) => stdout.push(chunk.toString()));

    let listed = await troupe("workers", ...keys());
    const deadline = Date.now() + 150_000;
    while (!/available/.test(listed.stdout) && Date.now() < deadline && worker.exitCode === null) {
      await new Promise((resolve) => setTimeout(resolve, 200));
      listed = await troupe("workers", ...keys());
    }
    expect(worker.exitCode, `the worker exited: ${stderr.join("")}${stdout.join("")}`).toBeNull();
    const lines = listed.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^WORKER +AGENT +STATUS +JOBS +LOAD +STATE$/);
    expect(lines).toHaveLength(2);
    expect(lines[1]).toMatch(/^w-\S+ +CliAgent +available +0\/3 +\d\.\d\d +\S+$/);
    expectAligned(lines);
    // --log-level warn: the INFO lines ("worker started", "connected to the registry") are not printed.
    expect(stdout.join("")).not.toContain("worker started");
    const json = await troupe("workers", "--json", ...keys());
    expect(JSON.parse(json.stdout)).toMatchObject({ workers: [{ agentName: "CliAgent", maxProcesses: 3 }] });
  });

  it("dispatch --wait prints the outcome: exit 0 when the job completed, 1 when it did not", async () => {
    const done = await troupe("dispatch", "CliAgent", "--metadata", '{"delayMs":20}', "--wait", ...keys());
    // Works until a file that never appears: the one-second limit stops it (failed: max_duration).
    const stopped = await troupe(
      "dispatch",
      "CliAgent",
      "--metadata",
      '{"releaseFile":"/nonexistent/troupe-cli-test/never"}',
      "--max-duration",
      "1",
      "--wait",
      ...keys(),
    );
    expect(done.code, done.stderr).toBe(0);
    expect(done.stdout).toMatch(/^job job-\S+ completed on w-\S+ after \d+\.\ds\n$/);
    // A 30 ms job may be over before a poll sees it running: the running line is then skipped.
    expect(done.stderr).toMatch(
      /^job job-\S+ dispatched: agent CliAgent, room \S+\n(job job-\S+ running on w-\S+\n)?$/,
    );
    expect(stopped.code).toBe(1);
    expect(stopped.stdout).toMatch(/^job job-\S+ failed: max_duration on w-\S+ after \d+\.\ds\n$/);

    const json = await troupe("dispatch", "CliAgent", "--metadata", '{"delayMs":1}', "--wait", "--json", ...keys());
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout)).toMatchObject({ job: { agentName: "CliAgent", status: "completed" } });
  });

  it("the worker started by troupe start drains and exits 0 on SIGTERM", async () => {
    if (!worker) throw new Error("no worker");
    const exited = new Promise<number | null>((resolve) => worker?.once("exit", (code) => resolve(code)));
    worker.kill("SIGTERM");
    expect(await exited).toBe(0);
  });
});
