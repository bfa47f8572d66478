import { createServer, type Server } from "node:http";
import { type AddressInfo, connect, type Socket } from "node:net";
import { type Duplex, Writable } from "node:stream";
import { afterEach, expect, it } from "vitest";
import WebSocket from "ws";
import { createLogger } from "../../src/observability/logger.ts";
import { type HubFrame, ROOM_CLOSE } from "../../src/protocol/room.ts";
import { type RoomGrant, RoomHub, type RoomHubOptions } from "../../src/room/hub.ts";
import { upgradeRequest } from "../hardening/raw-http.ts";
import { until } from "../support/wait.ts";

const silent = createLogger("ERROR", new Writable({ write: (_c, _e, done) => done() }));
const MiB = 1024 * 1024;

async function authorize(token: string): Promise<RoomGrant> {
  const identity = token.split(":")[1] ?? "nobody";
  return { identity, name: identity, kind: "participant" };
}

let server: Server | undefined;
let hub: RoomHub | undefined;
const cleanups: (() => void)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0)) cleanup();
  await hub?.close();
  server?.closeAllConnections();
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = hub = undefined;
});

/** Starts a hub on loopback and returns its port; `watch` sees each upgrade's target and socket first. */
async function startHub(options: Partial<RoomHubOptions>, watch?: (target: string, socket: Duplex) => void) {
  const started = new RoomHub({ authorize, logger: silent, ...options });
  const listening = createServer((_req, res) => res.end());
  listening.on("upgrade", (req, socket, head) => {
    watch?.(req.url ?? "", socket);
    void started.handleUpgrade(req, socket, head);
  });
  hub = started;
  server = listening;
  await new Promise<void>((resolve) => listening.listen(0, "127.0.0.1", resolve));
  return (listening.address() as AddressInfo).port;
}

/** A healthy member: reads everything, counts the flood without parsing it, parses the rest. */
async function reader(port: number, identity: string) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/rooms/flood?token=flood:${identity}`);
  cleanups.push(() => ws.terminate());
  const state = { ws, floodFrames: 0, frames: [] as HubFrame[] };
  ws.on("message", (raw: Buffer) => {
    if (raw.length > 10_000) state.floodFrames++;
    else state.frames.push(JSON.parse(raw.toString()) as HubFrame);
  });
  await until(() => state.frames.some((f) => f.type === "welcome"), {
    label: `${identity}'s welcome`,
    timeoutMs: 5_000,
    intervalMs: 5,
  });
  return state;
}

/** A member that completes the upgrade on a bare TCP socket and then never reads a byte. */
async function nonReader(port: number, identity: string): Promise<Socket> {
  const socket = connect(port, "127.0.0.1");
  cleanups.push(() => socket.destroy());
  socket.on("error", () => {});
  let received = "";
  socket.on("data", (chunk: Buffer) => {
    received += chunk.toString("latin1");
  });
  socket.write(upgradeRequest(`/rooms/flood?token=flood:${identity}`));
  await until(() => received.includes("\r\n\r\n"), { label: `${identity}'s upgrade`, timeoutMs: 5_000, intervalMs: 5 });
  expect(received).toMatch(/^HTTP\/1\.1 101/);
  socket.removeAllListeners("data");
  socket.pause();
  return socket;
}

it("a member that stops reading is dropped before it costs more than its bound; the flooder and a healthy member carry on", async () => {
  // The hub's end of the non-reader's connection: its write queue is what an unbounded hub grows.
  let slothOnServer: Duplex | undefined;
  const port = await startHub(
    // Out of the way: this test is about what the hub holds for a reader, not about the sender's rate.
    { messagesPerSecondPerParticipant: 1e6, messageBurstPerParticipant: 1e6 },
    (target, socket) => {
      if (target.includes(":sloth")) slothOnServer = socket;
    },
  );
  const owned = hub as RoomHub;

  const carol = await reader(port, "carol");
  const sloth = await nonReader(port, "sloth");
  const fred = await reader(port, "fred");
  await until(() => owned.get("flood")?.participants.length === 3, {
    label: "three members",
    timeoutMs: 5_000,
    intervalMs: 5,
  });

  const frame = JSON.stringify({ type: "message", data: "x".repeat(60_000) });
  const total = Math.ceil((200 * MiB) / frame.length);
  const rssBefore = process.memoryUsage().rss;
  let rssPeak = rssBefore;
  let queuePeak = 0;
  let sent = 0;
  while (sent < total) {
    // Paced by the healthy reader (at most ~2 MB in flight), so nothing but the hub's queue for the
    // member that does not read could grow.
    await until(() => carol.floodFrames >= sent - 32, { label: "carol to keep up", timeoutMs: 30_000, intervalMs: 5 });
    for (let i = 0; i < 16 && sent < total; i++, sent++) fred.ws.send(frame);
    rssPeak = Math.max(rssPeak, process.memoryUsage().rss);
    queuePeak = Math.max(queuePeak, slothOnServer?.writableLength ?? 0);
  }
  await until(() => carol.floodFrames === total, {
    label: "carol to get the whole flood",
    timeoutMs: 30_000,
    intervalMs: 5,
  });
  rssPeak = Math.max(rssPeak, process.memoryUsage().rss);

  // 200 MB went to a member that read none of it; without a bound the hub held almost all of it
  // (RSS grew by over 250 MB). The rest of the growth is garbage from parsing and re-sending.
  expect(queuePeak).toBeLessThanOrEqual(owned.limits.maxPendingBytesPerParticipant);
  expect(rssPeak - rssBefore).toBeLessThan(100 * MiB);
  const left = carol.frames.find((f) => f.type === "participant_left" && f.participant.id === "sloth");
  expect(left).toBeDefined();
  expect(owned.get("flood")?.participants.map((p) => p.id)).toEqual(["carol", "fred"]);

  // The hub closed the non-reader's connection: once it reads again it finds the end of the stream.
  let slothClosed = false;
  sloth.once("close", () => {
    slothClosed = true;
  });
  sloth.resume();
  await until(() => slothClosed, { label: "the non-reader's connection to end", timeoutMs: 10_000, intervalMs: 5 });

  // The flooder was never the one punished: it is still in and still heard.
  expect(fred.ws.readyState).toBe(WebSocket.OPEN);
  fred.ws.send(JSON.stringify({ type: "message", text: "still here" }));
  await until(() => carol.frames.some((f) => f.type === "message" && f.text === "still here"), {
    label: "carol to hear fred after the flood",
    timeoutMs: 5_000,
    intervalMs: 5,
  });
}, 120_000);

it("a member that falls behind but reads again within the grace gets close code slow_consumer and why", async () => {
  const port = await startHub({
    maxPendingBytesPerParticipant: 256 * 1024,
    messagesPerSecondPerParticipant: 1e6,
    messageBurstPerParticipant: 1e6,
  });
  const owned = hub as RoomHub;
  const fred = await reader(port, "fred");
  const slow = await reader(port, "slow");
  let closed: { code: number; reason: string } | undefined;
  slow.ws.on("close", (code, reason) => {
    closed = { code, reason: reason.toString() };
  });
  const slowSocket = (slow.ws as unknown as { _socket: Socket })._socket;
  slowSocket.pause();
  const frame = JSON.stringify({ type: "message", data: "x".repeat(60_000) });
  const inRoom = () => owned.get("flood")?.participants.some((p) => p.id === "slow") ?? false;
  // Kernel buffers take a few MB before anything queues in the hub; 200 MB is far past that.
  for (let sent = 0; inRoom() && sent < (200 * MiB) / frame.length; sent += 16) {
    for (let i = 0; i < 16; i++) fred.ws.send(frame);
    await until(() => fred.ws.bufferedAmount === 0, {
      label: "fred's frames to leave",
      timeoutMs: 5_000,
      intervalMs: 5,
    });
  }
  expect(inRoom()).toBe(false);
  slowSocket.resume();
  await until(() => closed !== undefined, { label: "the slow member's close", timeoutMs: 10_000, intervalMs: 5 });
  expect(closed).toEqual({ code: ROOM_CLOSE.slow_consumer, reason: "send queue over 262144 bytes: not reading" });
  expect(fred.ws.readyState).toBe(WebSocket.OPEN);
}, 60_000);
