import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mintToken } from "../../src/auth/tokens.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { Options } from "../../src/options.ts";
import { runWorker, type WorkerHandle } from "../../src/worker/runtime.ts";
import { FakeRegistry, fixture } from "../integration/helpers/in-process.ts";
import { within } from "../support/wait.ts";
import { CrashRecorder, FUZZ, fuzzPhase, httpRequest, replayCommand, SteadyProbe, scaled } from "./harness.ts";
import {
  AnswerStats,
  type CanonicalRequest,
  destroyOpenSockets,
  httpInput,
  type RenderContext,
  rawHttpCheck,
  type ServerSpec,
  showHttp,
} from "./raw-http.ts";

/**
 * A worker's own HTTP server under fuzz: /healthz, /readyz, /worker, /metrics, the dashboard and its
 * assets and event stream, and upgrades (refused: a registered worker hosts no rooms). A real worker
 * runtime in this process, its registry link a stand-in and no job processes (numIdleProcesses 0),
 * so every request meets the routes a deployment exposes to probes.
 */
const FILE = "test/fuzz/worker-health.fuzz.test.ts";
const HTTP_TEST = "raw HTTP requests";
const HTTP_INPUTS = scaled(5_000);

const CREDS = { apiKey: "worker-fuzz-key", apiSecret: "worker-fuzz-secret-0123456789abcdef" };

const recorder = new CrashRecorder();
let handle: WorkerHandle;
const ctx: RenderContext = { refs: {} };
const base = () => `http://127.0.0.1:${handle.port}`;

/** A well-behaved prober: liveness, readiness and the worker's state answer 200 all along. */
const steady = new SteadyProbe(async () => {
  for (const path of ["/healthz", "/readyz", "/worker"]) {
    const response = await httpRequest(`${base()}${path}`);
    if (response.status !== 200) throw new Error(`GET ${path} answered ${response.status}: ${response.body}`);
  }
}, 250);

const canonical: CanonicalRequest[] = [
  { method: "GET", target: ["/healthz"], expect: [200] },
  { method: "HEAD", target: ["/healthz"], expect: [200] },
  { method: "GET", target: ["/readyz"], expect: [200] },
  { method: "GET", target: ["/worker"], expect: [200] },
  { method: "GET", target: ["/metrics"], expect: [200] },
  { method: "GET", target: ["/dashboard"], expect: [200] },
  { method: "GET", target: ["/web/dashboard.js"], expect: [200] },
  { method: "GET", target: ["/visualizations/slot.svg"], expect: [200] },
  { method: "GET", target: ["/events"], expect: [200] },
  { method: "GET", target: ["/playground"], expect: [404] },
  { method: "GET", target: ["/no-such-route"], expect: [404] },
  { method: "POST", target: ["/healthz"], body: "{}", expect: [405] },
  { method: "DELETE", target: ["/worker"], expect: [405] },
  { method: "GET", target: ["http://a:99999/healthz"], expect: [200, 400] },
  { method: "GET", target: ["http://[::1/healthz"], expect: [200, 400] },
  { method: "GET", target: ["/%E0%A4%A"], expect: [400, 404] },
  { method: "GET", target: ["/rooms/r1?token=", { ref: "participant" }], upgrade: true, expect: [404] },
  { method: "GET", target: ["/agent"], upgrade: true, auth: "worker", expect: [404] },
];

const spec: ServerSpec = {
  routes: [
    "/healthz",
    "/readyz",
    "/worker",
    "/metrics",
    "/dashboard",
    "/playground",
    "/web/dashboard.js",
    "/web/common.css",
    "/visualizations/worker.svg",
    "/events",
    "/",
    "/agent",
    "/rooms",
  ],
  prefixes: ["/web/", "/visualizations/", "/rooms/", "/healthz/", "/worker/"],
  suffixes: ["/x", "/tokens"],
  tokens: ["worker", "dispatcher", "participant", "foreign"],
  roomIds: ["r1"],
  upgrades: [
    { path: fc.constantFrom("/rooms/r1", "/rooms/%E0%A4%A", "/rooms/"), tokens: ["participant"] },
    { path: fc.constant("/agent"), tokens: ["worker"] },
  ],
  canonical,
};

beforeAll(async () => {
  recorder.install();
  const registry = new FakeRegistry();
  handle = await runWorker(
    {
      entrypoint: async () => {},
      jobctx: undefined,
      agentModule: fixture("completes"),
      options: new Options({
        agentId: "FuzzHealth",
        register: true,
        host: "127.0.0.1",
        port: 0,
        maxProcesses: 1,
        numIdleProcesses: 0,
        ...CREDS,
      }),
    },
    {
      handleSignals: false,
      logger: createLogger("ERROR", { write() {} }),
      registryLink: () => ({ logic: registry.logic, input: undefined }),
    },
  );
  ctx.refs = {
    host: `127.0.0.1:${handle.port}`,
    worker: await mintToken(CREDS, { role: "worker" }),
    dispatcher: await mintToken(CREDS, { role: "dispatcher" }),
    participant: await mintToken(CREDS, { role: "participant", room: "r1" }),
    foreign: await mintToken({ apiKey: "x", apiSecret: "another-secret-0123456789abcdef0123" }, { role: "worker" }),
  };
  // Ready once its (stand-in) registry link is registered; the fuzz expects a ready worker.
  const deadline = Date.now() + 10_000;
  while ((await httpRequest(`${base()}/readyz`)).status !== 200) {
    if (Date.now() > deadline) throw new Error("the worker never became ready");
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  steady.start();
});

afterAll(async () => {
  await steady.stop();
  destroyOpenSockets();
  recorder.uninstall();
  if (handle) {
    handle.stop();
    await within("the worker to stop", handle.done, 20_000);
  }
}, 60_000);

describe(`worker health server fuzz (seed ${FUZZ.seed})`, { timeout: 180_000 }, () => {
  it(HTTP_TEST, async () => {
    const stats = new AnswerStats();
    const result = await fuzzPhase({
      file: FILE,
      testName: HTTP_TEST,
      arbitrary: httpInput(spec, { fuzz: 14, upgrade: 2, canonical: 2 }),
      count: HTTP_INPUTS,
      concurrency: 24,
      recorder,
      check: rawHttpCheck(
        () => handle.port,
        () => ctx,
        stats,
      ),
      show: showHttp(() => ctx),
    }).finally(() => console.log(`worker answers: ${stats.summary()}; slowest: ${JSON.stringify(stats.slow)}`));
    console.log(`worker health: ${result.ran} raw HTTP inputs in ${result.ms} ms`);
    expect(result.ran).toBe(FUZZ.path ? 1 : HTTP_INPUTS);
  });

  it("kept answering a well-behaved prober, and is still up and ready", async () => {
    await steady.stop();
    await steady.once();
    expect(steady.failures, `replay: ${replayCommand(FILE)}`).toEqual([]);
    expect(steady.ok).toBeGreaterThanOrEqual(FUZZ.path ? 1 : 5);
    expect(handle.actor.getSnapshot().status).toBe("active");
    expect(recorder.count, `crashes:\n  ${recorder.describe()}`).toBe(0);
  });
});
