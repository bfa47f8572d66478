import { createServer } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { registryInternals } from "../../src/registry/server.ts";
import { until, within } from "../support/wait.ts";
import {
  CREDS,
  closeRegistries,
  ProcessGuard,
  spawnWorker,
  startRegistry,
  stopWorker,
  waitAvailable,
} from "./helpers.ts";

const guard = new ProcessGuard();

afterEach(async () => {
  await closeRegistries();
  await guard.killAll();
});

/** A loopback port nothing listens on: bound by the system, then released. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (!address || typeof address === "string") throw new Error("no port");
  return address.port;
}

const messages = (logs: Record<string, unknown>[]) => logs.map((l) => String(l.msg));
const linkLines = (logs: Record<string, unknown>[]) => logs.filter((l) => l.component === "registry-link");

describe("the worker says what its registry link does (worker processes)", () => {
  it("pointed at a closed port: logs every retry with the URL, attempt, delay and cause, then gives up, exit 1", {
    timeout: 30_000,
  }, async () => {
    const port = await closedPort();
    const url = `http://127.0.0.1:${port}`;
    const worker = spawnWorker(guard, { registryUrl: url, name: "nowhere", loadThreshold: 0.9 });
    const exit = await within("the worker to give up", worker.exited, 20_000);
    expect(exit).toEqual({ code: 1, signal: null });

    const lines = linkLines(worker.logs);
    const retries = lines.filter((l) => String(l.msg).includes("retrying"));
    // maxRetry 16: fifteen retries, then the sixteenth failure gives up.
    expect(retries).toHaveLength(15);
    expect(retries[0]).toMatchObject({
      level: 40,
      url: `${url}/`,
      attempt: 2,
      maxRetry: 16,
      delayMs: expect.any(Number),
      cause: expect.stringMatching(/^connection refused \(connect ECONNREFUSED 127\.0\.0\.1:\d+\)$/),
    });
    expect(String(retries[0]?.msg)).toMatch(
      /^registry connection failed: connection refused \(connect ECONNREFUSED .*\); retrying in \d+ ms \(attempt 2 of 16\)$/,
    );
    expect(retries.map((l) => l.attempt)).toEqual(Array.from({ length: 15 }, (_, i) => i + 2));
    const gaveUp = lines.at(-1);
    expect(gaveUp).toMatchObject({
      level: 50,
      url: `${url}/`,
      retries: 16,
      cause: expect.stringMatching(/^connection refused/),
    });
    expect(String(gaveUp?.msg)).toMatch(/^gave up connecting to the registry after 16 failed attempts/);
    // Never connected, so never lost.
    expect(messages(lines).filter((m) => m.includes("connected to") || m.includes("lost"))).toEqual([]);
  });

  it("with a bad secret against a real registry: gives up at once with a clear error and exits non-zero", {
    timeout: 30_000,
  }, async () => {
    const r = await startRegistry({});
    const started = Date.now();
    const worker = spawnWorker(guard, {
      registryUrl: r.url,
      name: "bad-secret",
      loadThreshold: 0.91,
      env: { TROUPE_API_SECRET: `${CREDS.apiSecret}-wrong` },
    });
    const exit = await within("the worker to exit", worker.exited, 15_000);
    expect(exit).toEqual({ code: 1, signal: null });
    // Process start-up (tsx) included: nowhere near the ~160 s of sixteen retries.
    expect(Date.now() - started).toBeLessThan(12_000);
    const lines = linkLines(worker.logs);
    expect(lines).toEqual([
      expect.objectContaining({
        level: 50,
        url: `${r.url}/`,
        cause: expect.stringMatching(/^registry refused the worker's credentials: 401 /),
        msg: expect.stringMatching(/not retrying: check the API key and secret \(TROUPE_API_KEY, TROUPE_API_SECRET\)/),
      }),
    ]);
    expect(registryInternals(r.registry).core.directory.size).toBe(0);
  });

  it("connected, lost (with its cause), retrying, connected again: each at INFO/WARN with the URL", {
    timeout: 60_000,
  }, async () => {
    const r = await startRegistry({ pingIntervalMs: 1_000, pongTimeoutMs: 5_000, reconnectGraceMs: 10_000 });
    const worker = spawnWorker(guard, { registryUrl: r.url, name: "flaky", loadThreshold: 0.92 });
    const workerId = await waitAvailable(r, worker);
    const connected = () => linkLines(worker.logs).filter((l) => l.msg === "connected to the registry");
    await until(() => connected().length === 1, { label: "the connected line" });
    expect(connected()[0]).toMatchObject({ level: 30, url: `${r.url}/`, workerId });

    // The registry drops the socket: the worker says it lost the link, retries, and is back.
    const link = registryInternals(r.registry).core.directory.get(workerId);
    if (link) registryInternals(r.registry).gateway.terminate(link.connectionId);
    await until(() => connected().length === 2, { label: "the worker to reconnect", timeoutMs: 15_000 });
    const lines = linkLines(worker.logs);
    const lost = lines.find((l) => l.msg === "lost the registry connection");
    expect(lost).toMatchObject({
      level: 40,
      url: `${r.url}/`,
      cause: expect.stringMatching(/^connection closed \(1006/),
    });
    expect(lines.find((l) => String(l.msg).includes("retrying"))).toMatchObject({ level: 40, attempt: 2 });
    expect(messages(lines)).toEqual([
      "connected to the registry",
      "lost the registry connection",
      expect.stringMatching(/retrying/),
      "connected to the registry",
    ]);
    expect(await stopWorker(worker, "SIGTERM")).toEqual({ code: 0, signal: null });
  });
});
