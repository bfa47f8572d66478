import { randomUUID } from "node:crypto";
import fc from "fast-check";
import { SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mintToken } from "../../src/auth/tokens.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { createRegistry, type Registry } from "../../src/registry/server.ts";
import { mintRoomToken } from "../../src/room/room-auth.ts";
import { within } from "../support/wait.ts";
import { GoodWorker } from "./good-worker.ts";
import { CrashRecorder, FUZZ, fuzzPhase, httpRequest, scaled } from "./harness.ts";
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
import {
  type FuzzFrame,
  FuzzSocket,
  fuzzFrame,
  registryGarbage,
  registryShaped,
  roomGarbage,
  roomShaped,
  SocketPool,
  sendAndJudge,
  showFrame,
} from "./ws-frames.ts";

/**
 * The registry under fuzz: raw bytes on a TCP socket to every HTTP route and to both WebSocket
 * endpoints (/agent, /rooms/<id>), then random frames over connections a valid token opened. It must
 * answer everything below 500 (or close), never crash, and keep dispatching jobs to a well-behaved
 * worker all along.
 */
const FILE = "test/fuzz/registry.fuzz.test.ts";
const HTTP_TEST = "raw HTTP requests";
const WS_TEST = "WebSocket frames";
const HTTP_INPUTS = scaled(7_000);
const WS_INPUTS = scaled(5_000);
const MAX_FRAME_BYTES = 16 * 1024;

const CREDS = { apiKey: "registry-fuzz-key", apiSecret: "registry-fuzz-secret-0123456789abcdef" };
const ROOMS = ["fuzz-room-1", "fuzz-room-2"];
const GOOD_AGENT = `good-${randomUUID()}`;

const recorder = new CrashRecorder();
let registry: Registry;
let good: GoodWorker;
const ctx: RenderContext = { refs: {} };
const dispatched: string[] = [];
const dispatchProblems: string[] = [];
let dispatching: NodeJS.Timeout | undefined;

async function signed(payload: Record<string, unknown>, options: { secret?: string; alg?: string; exp?: number } = {}) {
  const jwt = new SignJWT(payload).setProtectedHeader({ alg: options.alg ?? "HS256" }).setIssuedAt();
  if (options.exp !== undefined) jwt.setExpirationTime(options.exp);
  return jwt.sign(new TextEncoder().encode(options.secret ?? CREDS.apiSecret));
}

async function mintRefs(host: string): Promise<Record<string, string>> {
  const now = Math.floor(Date.now() / 1000);
  const unsigned = (payload: Record<string, unknown>) =>
    `${Buffer.from(JSON.stringify({ alg: "none" })).toString("base64url")}.${Buffer.from(JSON.stringify(payload)).toString("base64url")}.`;
  const refs: Record<string, string> = {
    host,
    dispatcher: await mintToken(CREDS, { role: "dispatcher" }),
    worker: await mintToken(CREDS, { role: "worker" }),
    expired: await signed({ iss: CREDS.apiKey, role: "dispatcher" }, { exp: now - 60 }),
    wrongSecret: await mintToken(
      { ...CREDS, apiSecret: "another-secret-0123456789abcdef0123" },
      { role: "dispatcher" },
    ),
    wrongIssuer: await mintToken({ ...CREDS, apiKey: "someone-else" }, { role: "dispatcher" }),
    algNone: unsigned({ iss: CREDS.apiKey, role: "dispatcher", exp: now + 3600 }),
    noRole: await signed({ iss: CREDS.apiKey, exp: now + 3600 }),
    badRole: await signed({ iss: CREDS.apiKey, role: "admin", exp: now + 3600 }),
  };
  for (const room of ROOMS) {
    refs[`participant:${room}`] = await mintRoomToken(CREDS, { room, name: "Fuzz" });
    refs[`plain:${room}`] = await mintToken(CREDS, { role: "participant", room });
  }
  return refs;
}

const json = (value: unknown) => JSON.stringify(value);
const canonical: CanonicalRequest[] = [
  { method: "GET", target: ["/healthz"], expect: [200] },
  { method: "HEAD", target: ["/healthz"], expect: [200] },
  { method: "GET", target: ["/readyz"], expect: [200] },
  { method: "GET", target: ["/metrics"], expect: [200] },
  { method: "GET", target: ["/dashboard"], expect: [200] },
  { method: "GET", target: ["/playground"], expect: [200] },
  { method: "GET", target: ["/web/dashboard.js"], expect: [200] },
  { method: "GET", target: ["/visualizations/worker.svg"], expect: [200] },
  { method: "GET", target: ["/no-such-route"], expect: [404] },
  { method: "GET", target: ["/events?token=", { ref: "dispatcher" }], expect: [200] },
  { method: "GET", target: ["/events"], expect: [401] },
  { method: "GET", target: ["/v1/jobs"], expect: [401] },
  { method: "GET", target: ["/v1/jobs"], auth: "dispatcher", expect: [200] },
  { method: "GET", target: ["/v1/jobs"], auth: "worker", expect: [403] },
  { method: "GET", target: ["/v1/jobs"], auth: "expired", expect: [401] },
  { method: "GET", target: ["/v1/jobs?limit=0"], auth: "dispatcher", expect: [400] },
  { method: "GET", target: ["/v1/jobs/job-none"], auth: "dispatcher", expect: [404] },
  { method: "PUT", target: ["/v1/jobs/job-none"], auth: "dispatcher", expect: [405] },
  { method: "GET", target: ["/v1/jobs/%E0%A4%A"], auth: "dispatcher", expect: [400, 404] },
  { method: "DELETE", target: ["/v1/jobs/%"], auth: "dispatcher", expect: [400, 404] },
  {
    method: "POST",
    target: ["/v1/jobs"],
    auth: "dispatcher",
    body: json({ agent_name: "fuzz-canonical" }),
    expect: [201],
  },
  { method: "POST", target: ["/v1/jobs"], auth: "dispatcher", body: "{", expect: [400] },
  { method: "POST", target: ["/v1/jobs"], auth: "dispatcher", body: json({ agent: "x" }), expect: [400] },
  { method: "POST", target: ["/v1/jobs"], body: json({ agent_name: "x" }), expect: [401] },
  { method: "GET", target: ["/v1/workers"], auth: "dispatcher", expect: [200] },
  { method: "GET", target: ["/v1/rooms"], auth: "dispatcher", expect: [200] },
  { method: "POST", target: ["/v1/rooms"], auth: "dispatcher", body: json({ room_id: "made-here" }), expect: [201] },
  { method: "POST", target: ["/v1/rooms/fuzz-room-1/tokens"], auth: "dispatcher", body: "{}", expect: [201] },
  { method: "GET", target: ["/v1/rooms/no-such-room"], auth: "dispatcher", expect: [404] },
  { method: "GET", target: ["/v1/rooms/%E0%A4%A"], auth: "dispatcher", expect: [400, 404] },
  { method: "GET", target: ["/agent"], upgrade: true, auth: "worker", expect: [101] },
  { method: "GET", target: ["/agent"], upgrade: true, expect: [401] },
  { method: "GET", target: ["/agent"], upgrade: true, auth: "dispatcher", expect: [403] },
  { method: "GET", target: ["http://a:99999/agent"], upgrade: true, auth: "worker", expect: [101, 400, 404] },
  {
    method: "GET",
    target: ["/rooms/fuzz-room-1?token=", { ref: "participant:fuzz-room-1" }],
    upgrade: true,
    expect: [101],
  },
  { method: "GET", target: ["/rooms/fuzz-room-2"], upgrade: true, auth: "participant:fuzz-room-1", expect: [403] },
  { method: "GET", target: ["/rooms/bad%20id"], upgrade: true, auth: "participant:fuzz-room-1", expect: [404] },
  { method: "GET", target: ["/rooms/%E0%A4%A"], upgrade: true, auth: "participant:fuzz-room-1", expect: [400, 404] },
  { method: "GET", target: ["/nowhere"], upgrade: true, expect: [404] },
];

const spec = (tokens: string[]): ServerSpec => ({
  routes: [
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/jobs",
    "/v1/workers",
    "/v1/rooms",
    "/dashboard",
    "/playground",
    "/web/dashboard.js",
    "/web/common.css",
    "/visualizations/worker.svg",
    "/events",
    "/agent",
    "/rooms",
    "/",
  ],
  prefixes: ["/v1/jobs/", "/v1/rooms/", "/rooms/", "/web/", "/visualizations/"],
  suffixes: ["/tokens", "/x"],
  tokens,
  roomIds: ROOMS,
  upgrades: [
    { path: fc.constant("/agent"), tokens: ["worker"] },
    ...ROOMS.map((room) => ({ path: fc.constant(`/rooms/${room}`), tokens: [`participant:${room}`, `plain:${room}`] })),
    {
      path: fc.constantFrom("/rooms/fuzz%2Droom%2D1", "/rooms/%E0%A4%A", "/rooms/", "/rooms/a%2Fb", "/rooms/%zz"),
      tokens: ["participant:fuzz-room-1"],
    },
  ],
  canonical,
});

const TOKENS = [
  "dispatcher",
  "worker",
  "expired",
  "wrongSecret",
  "wrongIssuer",
  "algNone",
  "noRole",
  "badRole",
  ...ROOMS.flatMap((room) => [`participant:${room}`, `plain:${room}`]),
];

async function dispatchGood(): Promise<void> {
  try {
    const response = await httpRequest(`${registry.url}/v1/jobs`, {
      method: "POST",
      headers: { authorization: `Bearer ${ctx.refs.dispatcher}`, "content-type": "application/json" },
      body: JSON.stringify({ agent_name: GOOD_AGENT, metadata: { during: "fuzz" } }),
    });
    const body = JSON.parse(response.body) as { job?: { id: string } };
    if (response.status !== 201 || !body.job) dispatchProblems.push(`dispatch answered ${response.status}`);
    else dispatched.push(body.job.id);
  } catch (error) {
    dispatchProblems.push(`dispatch failed: ${(error as Error).message}`);
  }
}

beforeAll(async () => {
  recorder.install();
  registry = await createRegistry({
    ...CREDS,
    host: "127.0.0.1",
    port: 0,
    logger: createLogger("ERROR", { write() {} }),
    maxFrameBytes: MAX_FRAME_BYTES,
    timing: { dispatchTimeoutMs: 3_000, offerTimeoutMs: 1_000, registrationTimeoutMs: 30_000 },
  });
  ctx.refs = await mintRefs(`127.0.0.1:${registry.port}`);
  good = await GoodWorker.start(registry.url, ctx.refs.worker as string, { agentName: GOOD_AGENT });
  // Jobs for the well-behaved worker all through the fuzz, a few a second.
  dispatching = setInterval(() => void dispatchGood(), 200);
});

afterAll(async () => {
  clearInterval(dispatching);
  destroyOpenSockets();
  good?.close();
  recorder.uninstall();
  if (registry) await within("the registry to close", registry.close(), 20_000);
}, 60_000);

describe(`registry fuzz (seed ${FUZZ.seed})`, { timeout: 180_000 }, () => {
  it(HTTP_TEST, async () => {
    const stats = new AnswerStats();
    const result = await fuzzPhase({
      file: FILE,
      testName: HTTP_TEST,
      arbitrary: httpInput(spec(TOKENS), { fuzz: 12, upgrade: 4, canonical: 2 }),
      count: HTTP_INPUTS,
      concurrency: 24,
      recorder,
      check: rawHttpCheck(
        () => registry.port,
        () => ctx,
        stats,
      ),
      show: showHttp(() => ctx),
    }).finally(() => console.log(`registry answers: ${stats.summary()}; slowest: ${JSON.stringify(stats.slow)}`));
    console.log(`registry: ${result.ran} raw HTTP inputs in ${result.ms} ms`);
    expect(result.ran).toBe(FUZZ.path ? 1 : HTTP_INPUTS);
  });

  it(WS_TEST, async () => {
    const wsUrl = registry.url.replace(/^http/, "ws");
    // Worker connections, replaced after 80 checks: a connection's frames stay a short burst.
    const agents = new SocketPool(
      () => FuzzSocket.open(`${wsUrl}/agent`, { authorization: `Bearer ${ctx.refs.worker}` }),
      6,
      80,
    );
    let roomTurn = 0;
    // Each connection its own member (one identity joining again would replace the other), and a
    // fresh one after 80 checks: a member may send 200 frames at once before the hub's rate applies.
    const rooms = new SocketPool(
      async () => {
        const n = roomTurn++;
        const room = ROOMS[n % ROOMS.length] as string;
        const token = await mintRoomToken(CREDS, { room, identity: `fuzz-${n}`, name: "Fuzz" });
        return FuzzSocket.open(`${wsUrl}/rooms/${room}?token=${token}`, {});
      },
      6,
      80,
    );
    type Input = { to: "agent" | "room"; frame: FuzzFrame };
    const arbitrary = fc.oneof(
      {
        weight: 3,
        arbitrary: fuzzFrame(registryShaped, fc.integer({ min: MAX_FRAME_BYTES + 1, max: 4 * MAX_FRAME_BYTES })).map(
          (frame): Input => ({ to: "agent", frame }),
        ),
      },
      {
        weight: 2,
        arbitrary: fuzzFrame(
          roomShaped,
          fc.oneof(
            { weight: 6, arbitrary: fc.integer({ min: 64 * 1024 + 1, max: 100 * 1024 }) },
            { weight: 1, arbitrary: fc.integer({ min: 1024 * 1024 + 1, max: 1100 * 1024 }) },
          ),
        ).map((frame): Input => ({ to: "room", frame })),
      },
    );
    let probes = 0;
    const check = async ({ to, frame }: Input) => {
      const pool = to === "agent" ? agents : rooms;
      const socket = await pool.acquire();
      try {
        if (to === "agent") {
          const marker = `fuzz-probe-${probes++}`;
          return await sendAndJudge(socket, frame, {
            garbage: registryGarbage(frame, MAX_FRAME_BYTES),
            probe: { kind: "text", data: JSON.stringify({ type: marker }), size: 0 },
            isProbeAnswer: (f) => f.type === "error" && String(f.message).includes(JSON.stringify(marker)),
            timeoutMs: 8_000,
          });
        }
        return await sendAndJudge(socket, frame, {
          garbage: roomGarbage(frame),
          probe: { kind: "binary", data: "\u0001", size: 0 },
          isProbeAnswer: (f, errorsBefore) =>
            f.type === "error" && f.code === "binary" && (frame.kind !== "binary" || errorsBefore >= 1),
          timeoutMs: 8_000,
        });
      } finally {
        pool.release(socket);
      }
    };
    try {
      const result = await fuzzPhase({
        file: FILE,
        testName: WS_TEST,
        arbitrary,
        count: WS_INPUTS,
        concurrency: 12,
        recorder,
        check,
        show: ({ to, frame }) => `to ${to === "agent" ? "/agent" : "/rooms/<id>"}: ${showFrame(frame)}`,
      });
      console.log(
        `registry: ${result.ran} WebSocket frames in ${result.ms} ms (${agents.opened} /agent and ${rooms.opened} room connections; closes ${JSON.stringify([...agents.closes, ...rooms.closes])})`,
      );
      expect(result.ran).toBe(FUZZ.path ? 1 : WS_INPUTS);
    } finally {
      agents.closeAll();
      rooms.closeAll();
    }
  });

  it("kept dispatching jobs to the well-behaved worker through the fuzz", async () => {
    clearInterval(dispatching);
    for (let i = 0; i < 5; i++) await dispatchGood();
    expect(dispatchProblems).toEqual([]);
    expect(dispatched.length).toBeGreaterThanOrEqual(FUZZ.path ? 5 : 20);
    const deadline = Date.now() + 20_000;
    const unfinished = async () => {
      const left: string[] = [];
      for (const id of dispatched) {
        const record = await registry.job(id);
        if (record?.status !== "completed" || record.workerId !== good.workerId) left.push(id);
      }
      return left;
    };
    let left = await unfinished();
    while (left.length > 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      left = await unfinished();
    }
    const states = await Promise.all(left.slice(0, 5).map((id) => registry.job(id)));
    expect(left, `jobs not completed by the good worker: ${JSON.stringify(states)}`).toEqual([]);
    // And the HTTP API says so too.
    const last = dispatched.at(-1) as string;
    const response = await httpRequest(`${registry.url}/v1/jobs/${last}`, {
      headers: { authorization: `Bearer ${ctx.refs.dispatcher}` },
    });
    expect(response.status).toBe(200);
    expect((JSON.parse(response.body) as { job: { status: string } }).job.status).toBe("completed");
    expect(good.completed.size).toBeGreaterThanOrEqual(dispatched.length);
    expect(good.problems).toEqual([]);
    expect(good.open).toBe(true);
    expect(recorder.count, `crashes:\n  ${recorder.describe()}`).toBe(0);
  });
});
