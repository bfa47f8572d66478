import { execFile } from "node:child_process";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../../src/observability/logger.ts";
import { createRegistry, type Registry } from "../../src/registry/server.ts";

/** The `troupe` command as users run it: help on every command, and one clear line for each mistake. */
const BIN = fileURLToPath(new URL("../../bin/troupe.mjs", import.meta.url));
const CREDS = { apiKey: "cli-test-key", apiSecret: "cli-test-secret-0123456789abcdef0123" };

function troupe(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [BIN, ...args],
      { timeout: 30_000, env: { ...process.env, TROUPE_URL: "" } },
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

describe("the troupe command", { timeout: 60_000 }, () => {
  it("has --help on every command", async () => {
    const commands = ["dev", "start", "registry", "token", "dispatch", "jobs", "workers"];
    const results = await Promise.all([troupe("--help"), ...commands.map((c) => troupe(c, "--help"))]);
    expect(results[0]?.code).toBe(0);
    for (const command of commands) expect(results[0]?.stdout).toContain(command);
    results.slice(1).forEach((result, i) => {
      expect(result.code, commands[i]).toBe(0);
      expect(result.stdout, commands[i]).toContain(`Usage: troupe ${commands[i]}`);
    });
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

  it("dispatches and lists jobs with a key and secret", async () => {
    const keys = ["--url", registry.url, "--api-key", CREDS.apiKey, "--api-secret", CREDS.apiSecret];
    const dispatched = await troupe("dispatch", "NobodyRunsMe", "--room", "cli-room", ...keys);
    expect(dispatched.code).toBe(0);
    const { job } = JSON.parse(dispatched.stdout) as { job: { id: string; roomId: string } };
    expect(job.roomId).toBe("cli-room");
    const listed = await troupe("jobs", job.id, ...keys);
    expect(JSON.parse(listed.stdout)).toMatchObject({ job: { id: job.id, agentName: "NobodyRunsMe" } });
  });
});
