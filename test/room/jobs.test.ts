import { afterEach, describe, expect, it } from "vitest";
import { mintToken } from "../../src/auth/tokens.ts";
import { JobContext } from "../../src/job/job-context.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { Options, type OptionsInput, type RoomOptionsInput } from "../../src/options.ts";
import type { RoomMessage } from "../../src/protocol/room.ts";
import { createRegistry, type Registry, registryInternals } from "../../src/registry/server.ts";
import { RoomConnection, RoomError } from "../../src/room/client.ts";
import { mintRoomToken } from "../../src/room/room-auth.ts";
import { runWorker, type WorkerHandle } from "../../src/worker/runtime.ts";
import { fixture } from "../integration/helpers/in-process.ts";
import { Recorder } from "../integration/helpers/recorder.ts";
import { until, within } from "../support/wait.ts";

/**
 * A job is an agent in a room, the same way in local mode (the worker hosts the room) and in
 * registered mode (the registry hosts it and sends the agent's token with the assignment): a test
 * participant joins, is greeted, gets its message echoed, leaves, and the job ends with the reason the
 * RoomOptions give.
 */

const FINAL: readonly string[] = ["completed", "failed", "cancelled", "lost", "rejected"];
const CREDS = { apiKey: "room-test-key", apiSecret: "room-test-secret-0123456789abcdef0123" };
const AGENT = fixture("room-echo");

type LogLine = { msg: string; [field: string]: unknown };

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  await Promise.all(cleanups.splice(0).map((cleanup) => cleanup()));
});

function capturedLogger() {
  const lines = new Recorder<LogLine>((l) => l.msg);
  const logger = createLogger("INFO", {
    write(chunk: string) {
      for (const text of chunk.split("\n")) if (text) lines.push(JSON.parse(text) as LogLine);
    },
  });
  return { lines, logger };
}

async function startWorker(options: OptionsInput, roomOptions: RoomOptionsInput = {}) {
  const { lines, logger } = capturedLogger();
  const handle: WorkerHandle = await runWorker(
    {
      entrypoint: async () => {},
      jobctx: () => new JobContext({ roomOptions }),
      agentModule: AGENT,
      options: new Options({
        agentId: "RoomEcho",
        host: "127.0.0.1",
        port: 0,
        maxProcesses: 2,
        numIdleProcesses: 1,
        closeTimeout: 2,
        killTimeout: 1,
        ...CREDS,
        ...options,
      }),
    },
    { handleSignals: false, logger },
  );
  cleanups.push(async () => {
    handle.stop();
    await handle.done;
  });
  return { handle, lines };
}

/** Collects a participant's messages so a test can wait for the one it expects. */
function inbox(room: RoomConnection) {
  const messages = new Recorder<RoomMessage>((m) => m.text ?? "");
  room.on("message", (m) => messages.push(m));
  return (text: string) => messages.waitFor((m) => m.text === text, 10_000, `message "${text}"`);
}

async function converse(hubUrl: string, roomId: string, token: string) {
  const room = await RoomConnection.connect(hubUrl, roomId, token, { name: "Tess" });
  const heard = inbox(room);
  if (!room.others().some((p) => p.kind === "agent")) {
    await within(
      "the agent to be in the room",
      new Promise<void>((resolve) => room.on("participant_joined", (p) => p.kind === "agent" && resolve())),
      15_000,
    );
  }
  await heard("hello Tess");
  room.send("ping 1");
  await heard("echo: ping 1");
  await room.leave();
}

describe("a job in local mode lives in a room on its worker", { timeout: 60_000 }, () => {
  it("greets and echoes a participant, then ends session_ended after sessionTimeoutSeconds", async () => {
    const { handle, lines } = await startWorker(
      { register: false },
      { roomId: "local-room", sessionTimeoutSeconds: 0.3, noParticipantTimeoutSeconds: 30 },
    );
    const job = handle.localJob;
    expect(job?.roomId).toBe("local-room");
    await lines.waitFor((l) => l.msg === "agent in room", 30_000, "the agent to join");
    const token = await handle.roomToken({ room: "local-room", name: "Tess" });
    await converse(`http://127.0.0.1:${handle.port}`, "local-room", token);
    const finished = await lines.waitFor((l) => l.msg === "job completed", 10_000, "the job to end");
    expect(finished).toMatchObject({ jobId: job?.jobId, reason: "session_ended" });
    expect(await within("the worker to exit", handle.done, 10_000)).toBe(0);
  });

  it("ends no_participant when nobody joins within noParticipantTimeoutSeconds", async () => {
    const { handle, lines } = await startWorker({ register: false }, { noParticipantTimeoutSeconds: 0.5 });
    const finished = await lines.waitFor((l) => l.msg === "job completed", 30_000, "the job to end");
    expect(finished).toMatchObject({ jobId: handle.localJob?.jobId, reason: "no_participant" });
    expect(await within("the worker to exit", handle.done, 10_000)).toBe(0);
  });

  it("refuses a participant whose token is for another room; the agent's room goes on", async () => {
    const { handle, lines } = await startWorker(
      { register: false },
      { roomId: "guarded-room", sessionTimeoutSeconds: 0.3, noParticipantTimeoutSeconds: 30 },
    );
    await lines.waitFor((l) => l.msg === "agent in room", 30_000, "the agent to join");
    const hub = `http://127.0.0.1:${handle.port}`;
    const wrong = await handle.roomToken({ room: "another-room", name: "Mallory" });
    const refused = await RoomConnection.connect(hub, "guarded-room", wrong).catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(RoomError);
    expect((refused as RoomError).message).toMatch(/refused \(403\).*another-room/);
    // A token signed with some other secret is no better.
    const forged = await mintRoomToken(
      { apiKey: CREDS.apiKey, apiSecret: "not-the-secret-0123456789abcdef0" },
      {
        room: "guarded-room",
      },
    );
    expect(await RoomConnection.connect(hub, "guarded-room", forged).catch((e: Error) => e.message)).toMatch(
      /refused \(401\)/,
    );
    await converse(hub, "guarded-room", await handle.roomToken({ room: "guarded-room", name: "Tess" }));
    expect(await within("the worker to exit", handle.done, 10_000)).toBe(0);
  });
});

describe("a dispatched job lives in a room on the registry", { timeout: 60_000 }, () => {
  async function startRegistry(): Promise<Registry> {
    const registry = await createRegistry({
      ...CREDS,
      host: "127.0.0.1",
      port: 0,
      logger: createLogger("ERROR", { write() {} }),
    });
    cleanups.push(() => registry.close());
    return registry;
  }

  async function api(registry: Registry, method: string, path: string, body?: unknown) {
    const dispatcher = await mintToken(CREDS, { role: "dispatcher" });
    const res = await fetch(`${registry.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${dispatcher}`, "content-type": "application/json" },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    return { status: res.status, json: (await res.json()) as Record<string, unknown> };
  }

  async function finalRecord(registry: Registry, jobId: string, timeoutMs: number) {
    return until(
      async () => {
        const record = await registryInternals(registry).core.store.get(jobId);
        return record && FINAL.includes(record.status) ? record : undefined;
      },
      { label: "the job record to be final", timeoutMs, intervalMs: 25 },
    );
  }

  it("the agent joins the room the dispatch named; the record ends completed, session_ended", async () => {
    const registry = await startRegistry();
    await startWorker({ register: true, registryUrl: registry.url, registrationTimeout: 5 });
    const created = await api(registry, "POST", "/v1/jobs", {
      agent_name: "RoomEcho",
      room_id: "support-42",
      room_options: { sessionTimeoutSeconds: 0.3, noParticipantTimeoutSeconds: 30 },
    });
    expect(created.status).toBe(201);
    const jobId = (created.json.job as { id: string }).id;
    const minted = await api(registry, "POST", "/v1/rooms/support-42/tokens", { name: "Tess" });
    expect(minted.status).toBe(201);
    await converse(registry.url, "support-42", minted.json.token as string);
    const record = await finalRecord(registry, jobId, 15_000);
    expect(record).toMatchObject({ status: "completed", reason: "session_ended", roomId: "support-42" });
  });

  it("a dispatch without a room gets one of its own; nobody joins: no_participant", async () => {
    const registry = await startRegistry();
    await startWorker({ register: true, registryUrl: registry.url, registrationTimeout: 5 });
    const created = await api(registry, "POST", "/v1/jobs", {
      agent_name: "RoomEcho",
      room_options: { noParticipantTimeoutSeconds: 0.5 },
    });
    const job = created.json.job as { id: string; roomId?: string };
    expect(job.roomId).toMatch(/^room-/);
    const record = await finalRecord(registry, job.id, 30_000);
    expect(record).toMatchObject({ status: "completed", reason: "no_participant" });
  });

  it("refuses a participant token for another room, and room routes need a dispatcher token", async () => {
    const registry = await startRegistry();
    const minted = await api(registry, "POST", "/v1/rooms/room-a/tokens", { name: "Mallory" });
    const refused = await RoomConnection.connect(registry.url, "room-b", minted.json.token as string).catch(
      (e: Error) => e.message,
    );
    expect(refused).toMatch(/refused \(403\).*room-a/);
    const worker = await mintToken(CREDS, { role: "worker" });
    const res = await fetch(`${registry.url}/v1/rooms/room-a/tokens`, {
      method: "POST",
      headers: { authorization: `Bearer ${worker}` },
    });
    expect(res.status).toBe(403);
    expect((await fetch(`${registry.url}/v1/rooms`)).status).toBe(401);
  });
});
