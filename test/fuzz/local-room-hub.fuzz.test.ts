import fc from "fast-check";
import { SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mintToken } from "../../src/auth/tokens.ts";
import { JobContext } from "../../src/job/job-context.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { Options } from "../../src/options.ts";
import type { RoomMessage } from "../../src/protocol/room.ts";
import { RoomConnection } from "../../src/room/client.ts";
import { mintRoomToken } from "../../src/room/room-auth.ts";
import { runWorker, type WorkerHandle } from "../../src/worker/runtime.ts";
import { fixture } from "../integration/helpers/in-process.ts";
import { isAlive } from "../integration/helpers/processes.ts";
import { until, within } from "../support/wait.ts";
import { CrashRecorder, FUZZ, fuzzPhase, replayCommand, SteadyProbe, scaled } from "./harness.ts";
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
  roomGarbage,
  roomShaped,
  SocketPool,
  sendAndJudge,
  showFrame,
} from "./ws-frames.ts";

/**
 * A local-mode worker's room hub under fuzz (register: false: the room hub shares the worker's HTTP
 * server). A real worker runtime runs its one job, the room-echo fixture agent, in its room; raw
 * upgrades and requests hit the server, random frames hit members of other rooms, and a
 * well-behaved participant in the agent's room keeps getting its messages echoed all along.
 */
const FILE = "test/fuzz/local-room-hub.fuzz.test.ts";
const HTTP_TEST = "raw HTTP requests and upgrades";
const WS_TEST = "WebSocket frames";
const HTTP_INPUTS = scaled(1_500);
const WS_INPUTS = scaled(2_000);

const CREDS = { apiKey: "local-fuzz-key", apiSecret: "local-fuzz-secret-0123456789abcdef" };
const AGENT_ROOM = "agent-room";
const ROOMS = ["fuzz-room-1", "fuzz-room-2"];

const recorder = new CrashRecorder();
let handle: WorkerHandle;
let tess: RoomConnection;
const heard: RoomMessage[] = [];
const jobPids = new Set<number>();
const logLines: { msg: string; [key: string]: unknown }[] = [];
const ctx: RenderContext = { refs: {} };
let pings = 0;
const hubUrl = () => `http://127.0.0.1:${handle.port}`;

/** A well-behaved participant in the agent's room: every message it sends is echoed back. */
const steady = new SteadyProbe(async () => {
  const text = `ping ${pings++}`;
  tess.send(text);
  await until(() => heard.find((m) => m.text === `echo: ${text}`), {
    label: `the echo of "${text}"`,
    timeoutMs: 10_000,
  });
}, 300);

const canonical: CanonicalRequest[] = [
  { method: "GET", target: ["/healthz"], expect: [200] },
  { method: "GET", target: ["/readyz"], expect: [200] },
  { method: "GET", target: ["/worker"], expect: [200] },
  { method: "GET", target: ["/no-such-route"], expect: [404] },
  ...ROOMS.map(
    (room): CanonicalRequest => ({
      method: "GET",
      target: [`/rooms/${room}?token=`, { ref: `participant:${room}` }],
      upgrade: true,
      expect: [101],
    }),
  ),
  { method: "GET", target: ["/rooms/fuzz-room-1"], upgrade: true, auth: "participant:fuzz-room-1", expect: [101] },
  { method: "GET", target: ["/rooms/fuzz%2Droom%2D1"], upgrade: true, auth: "participant:fuzz-room-1", expect: [101] },
  { method: "GET", target: ["/rooms/fuzz-room-2"], upgrade: true, auth: "participant:fuzz-room-1", expect: [403] },
  { method: "GET", target: [`/rooms/${AGENT_ROOM}`], upgrade: true, auth: "participant:fuzz-room-1", expect: [403] },
  { method: "GET", target: ["/rooms/fuzz-room-1"], upgrade: true, expect: [401] },
  { method: "GET", target: ["/rooms/fuzz-room-1"], upgrade: true, auth: "foreign", expect: [401] },
  { method: "GET", target: ["/rooms/fuzz-room-1"], upgrade: true, auth: "expired", expect: [401] },
  { method: "GET", target: ["/rooms/fuzz-room-1"], upgrade: true, auth: "worker", expect: [401, 403] },
  { method: "GET", target: ["/rooms/bad%20id"], upgrade: true, auth: "participant:fuzz-room-1", expect: [404] },
  { method: "GET", target: ["/rooms/%E0%A4%A"], upgrade: true, auth: "participant:fuzz-room-1", expect: [400, 404] },
  { method: "GET", target: ["/rooms/%"], upgrade: true, auth: "participant:fuzz-room-1", expect: [400, 404] },
  {
    method: "GET",
    target: ["http://a:99999/rooms/fuzz-room-1"],
    upgrade: true,
    auth: "participant:fuzz-room-1",
    expect: [101, 400],
  },
  { method: "GET", target: ["/agent"], upgrade: true, auth: "participant:fuzz-room-1", expect: [404] },
];

const TOKENS = [
  ...ROOMS.map((room) => `participant:${room}`),
  "agent:fuzz-room-2",
  "foreign",
  "expired",
  "worker",
  "noRoom",
];

const spec: ServerSpec = {
  routes: ["/healthz", "/readyz", "/worker", "/metrics", "/dashboard", "/events", "/rooms", "/", "/agent"],
  prefixes: ["/rooms/", "/web/"],
  suffixes: ["/x", "/tokens"],
  tokens: TOKENS,
  roomIds: ROOMS,
  upgrades: [
    ...ROOMS.map((room) => ({ path: fc.constant(`/rooms/${room}`), tokens: [`participant:${room}`] })),
    { path: fc.constant("/rooms/fuzz-room-2"), tokens: ["agent:fuzz-room-2"] },
    {
      path: fc.constantFrom(
        "/rooms/fuzz%2Droom%2D1",
        "/rooms/%E0%A4%A",
        "/rooms/",
        "/rooms/a%2Fb",
        "/rooms/%zz",
        "/rooms",
      ),
      tokens: ["participant:fuzz-room-1"],
    },
  ],
  canonical,
};

beforeAll(async () => {
  recorder.install();
  handle = await runWorker(
    {
      entrypoint: async () => {},
      jobctx: () =>
        new JobContext({
          roomOptions: { roomId: AGENT_ROOM, sessionTimeoutSeconds: 600, noParticipantTimeoutSeconds: 600 },
        }),
      agentModule: fixture("room-echo"),
      options: new Options({
        agentId: "FuzzEcho",
        register: false,
        host: "127.0.0.1",
        port: 0,
        maxProcesses: 1,
        numIdleProcesses: 0,
        closeTimeout: 2,
        killTimeout: 1,
        // Booting the job process (tsx, the fixture) can take many seconds on a loaded machine.
        initializeTimeout: 30,
        launchTimeout: 45,
        ...CREDS,
      }),
    },
    {
      handleSignals: false,
      logger: createLogger("INFO", {
        write(chunk: string) {
          for (const text of chunk.split("\n")) {
            if (!text) continue;
            const line = JSON.parse(text) as { msg: string; jobPid?: unknown; pid?: unknown };
            logLines.push(line);
            if (typeof line.jobPid === "number") jobPids.add(line.jobPid);
          }
        },
      }),
    },
  );
  const now = Math.floor(Date.now() / 1000);
  ctx.refs = {
    host: `127.0.0.1:${handle.port}`,
    "agent:fuzz-room-2": await handle.roomToken({ room: "fuzz-room-2", agent: true, identity: "fuzz-agent" }),
    foreign: await mintRoomToken(
      { apiKey: CREDS.apiKey, apiSecret: "not-the-secret-0123456789abcdef0" },
      { room: "fuzz-room-1" },
    ),
    expired: await new SignJWT({ role: "participant", room: "fuzz-room-1" })
      .setProtectedHeader({ alg: "HS256" })
      .setIssuer(CREDS.apiKey)
      .setExpirationTime(now - 60)
      .sign(new TextEncoder().encode(CREDS.apiSecret)),
    worker: await mintToken(CREDS, { role: "worker" }),
    noRoom: await new SignJWT({ role: "participant" })
      .setProtectedHeader({ alg: "HS256" })
      .setIssuer(CREDS.apiKey)
      .setExpirationTime(now + 3600)
      .sign(new TextEncoder().encode(CREDS.apiSecret)),
  };
  for (const room of ROOMS) ctx.refs[`participant:${room}`] = await handle.roomToken({ room, name: "Raw" });
  // The agent joins its room (its job process boots first: seconds on a busy machine).
  await until(() => logLines.find((l) => l.msg === "agent in room"), {
    label: "the agent to be in its room",
    timeoutMs: 60_000,
  }).catch((error: Error) => {
    throw new Error(`${error.message}; worker log: ${JSON.stringify(logLines.slice(-8))}`);
  });
  tess = await RoomConnection.connect(hubUrl(), AGENT_ROOM, await handle.roomToken({ room: AGENT_ROOM, name: "Tess" }));
  tess.on("message", (m) => heard.push(m));
  await steady.once();
  expect(steady.failures).toEqual([]);
  steady.start();
}, 90_000);

afterAll(async () => {
  const problems: string[] = [];
  await steady.stop();
  destroyOpenSockets();
  await tess?.leave().catch(() => {});
  if (handle) {
    handle.stop();
    await within("the worker to stop", handle.done, 20_000).catch((error: Error) => problems.push(error.message));
  }
  recorder.uninstall();
  // Every job process is gone with the worker (give the kernel a moment to reap it).
  await until(() => ([...jobPids].some(isAlive) ? undefined : true), {
    label: "the job processes to exit",
    timeoutMs: 10_000,
  }).catch(() => {
    const left = [...jobPids].filter(isAlive);
    for (const pid of left) process.kill(pid, "SIGKILL");
    problems.push(`job processes outlived the worker and were killed: ${left.join(", ")}`);
  });
  if (problems.length > 0) throw new Error(problems.join("; "));
}, 60_000);

describe(`local-mode room hub fuzz (seed ${FUZZ.seed})`, { timeout: 180_000 }, () => {
  it(HTTP_TEST, async () => {
    const stats = new AnswerStats();
    const result = await fuzzPhase({
      file: FILE,
      testName: HTTP_TEST,
      arbitrary: httpInput(spec, { fuzz: 6, upgrade: 8, canonical: 3 }),
      count: HTTP_INPUTS,
      concurrency: 16,
      recorder,
      check: rawHttpCheck(
        () => handle.port,
        () => ctx,
        stats,
      ),
      show: showHttp(() => ctx),
    }).finally(() => console.log(`local hub answers: ${stats.summary()}; slowest: ${JSON.stringify(stats.slow)}`));
    console.log(`local room hub: ${result.ran} raw HTTP inputs in ${result.ms} ms`);
    expect(result.ran).toBe(FUZZ.path ? 1 : HTTP_INPUTS);
  });

  it(WS_TEST, async () => {
    let turn = 0;
    // Members of the fuzz rooms, each its own identity, replaced after 80 checks (two frames each):
    // the hub lets a member send 200 frames at once before its rate limit applies.
    const pool = new SocketPool(
      async () => {
        const n = turn++;
        const room = ROOMS[n % ROOMS.length] as string;
        const token = await handle.roomToken({ room, identity: `fuzz-${n}`, name: "Fuzz" });
        return FuzzSocket.open(`ws://127.0.0.1:${handle.port}/rooms/${room}?token=${token}`, {});
      },
      8,
      80,
    );
    const oversize = fc.oneof(
      { weight: 6, arbitrary: fc.integer({ min: 64 * 1024 + 1, max: 100 * 1024 }) },
      { weight: 1, arbitrary: fc.integer({ min: 1024 * 1024 + 1, max: 1100 * 1024 }) },
    );
    try {
      const result = await fuzzPhase({
        file: FILE,
        testName: WS_TEST,
        arbitrary: fuzzFrame(roomShaped, oversize),
        count: WS_INPUTS,
        concurrency: 8,
        recorder,
        async check(frame: FuzzFrame) {
          const socket = await pool.acquire();
          try {
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
        },
        show: showFrame,
      });
      console.log(
        `local room hub: ${result.ran} WebSocket frames in ${result.ms} ms (${pool.opened} connections; closes ${JSON.stringify([...pool.closes])})`,
      );
      expect(result.ran).toBe(FUZZ.path ? 1 : WS_INPUTS);
    } finally {
      pool.closeAll();
    }
  });

  it("the agent kept echoing a well-behaved participant, and its job is still running", async () => {
    await steady.stop();
    await steady.once();
    expect(steady.failures, `replay: ${replayCommand(FILE)}`).toEqual([]);
    expect(steady.ok).toBeGreaterThanOrEqual(FUZZ.path ? 2 : 5);
    expect(logLines.filter((l) => l.msg === "job completed" || l.msg === "job failed")).toEqual([]);
    expect(handle.actor.getSnapshot().status).toBe("active");
    expect(recorder.count, `crashes:\n  ${recorder.describe()}`).toBe(0);
  });
});
