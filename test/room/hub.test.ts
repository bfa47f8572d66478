import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Writable } from "node:stream";
import { afterEach, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { createLogger } from "../../src/observability/logger.ts";
import { type HubFrame, MAX_ROOM_FRAME_BYTES, ROOM_CLOSE } from "../../src/protocol/room.ts";
import { RoomConnection, RoomError } from "../../src/room/client.ts";
import { RoomAccessError, type RoomGrant, RoomHub } from "../../src/room/hub.ts";

const silent = createLogger("ERROR", new Writable({ write: (_c, _e, done) => done() }));

/** Tokens here are "<room>:<identity>:<kind>"; the real hub checks JWTs (see room-auth tests). */
async function authorize(token: string, room: string): Promise<RoomGrant> {
  const [tokenRoom, identity, kind] = token.split(":");
  if (!identity) throw new RoomAccessError("invalid token");
  if (tokenRoom !== room) throw new RoomAccessError(`token is for room ${tokenRoom}, not ${room}`, 403);
  return { identity, name: identity.toUpperCase(), kind: kind === "agent" ? "agent" : "participant" };
}

interface Harness {
  hub: RoomHub;
  url: string;
  server: Server;
}

const open: Harness[] = [];
const clients: RoomConnection[] = [];

async function startHub(emptyRoomTtlMs?: number): Promise<Harness> {
  const hub = new RoomHub({ authorize, logger: silent, ...(emptyRoomTtlMs ? { emptyRoomTtlMs } : {}) });
  const server = createServer((_req, res) => res.end());
  server.on("upgrade", (req, socket, head) => void hub.handleUpgrade(req, socket, head));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const harness = { hub, server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
  open.push(harness);
  return harness;
}

async function join(h: Harness, room: string, identity: string, kind = "participant") {
  const connection = await RoomConnection.connect(h.url, room, `${room}:${identity}:${kind}`);
  clients.push(connection);
  return connection;
}

function next<T>(emitter: RoomConnection, event: "message" | "participant_joined" | "participant_left" | "ended") {
  return new Promise<T>((resolve) => emitter.once(event, (value: unknown) => resolve(value as T)));
}

/** A raw socket, to send what a well-behaved client never would. */
async function rawSocket(h: Harness, room: string, identity: string) {
  const ws = new WebSocket(`${h.url.replace("http", "ws")}/rooms/${room}?token=${room}:${identity}:participant`);
  const frames: HubFrame[] = [];
  const waiters: ((f: HubFrame) => void)[] = [];
  ws.on("message", (raw) => {
    const frame = JSON.parse(raw.toString()) as HubFrame;
    const waiter = waiters.shift();
    if (waiter) waiter(frame);
    else frames.push(frame);
  });
  const nextFrame = () =>
    new Promise<HubFrame>((resolve) => {
      const queued = frames.shift();
      if (queued) resolve(queued);
      else waiters.push(resolve);
    });
  expect((await nextFrame()).type).toBe("welcome");
  return { ws, nextFrame };
}

afterEach(async () => {
  for (const c of clients.splice(0)) await c.leave();
  for (const h of open.splice(0)) {
    await h.hub.close();
    await new Promise<void>((resolve) => h.server.close(() => resolve()));
  }
});

describe("room hub", () => {
  it("participants see each other join and leave, and exchange text and JSON messages", async () => {
    const h = await startHub();
    const agent = await join(h, "r1", "agent-1", "agent");
    expect(agent.self).toMatchObject({ id: "agent-1", kind: "agent", name: "AGENT-1" });
    expect(agent.others()).toEqual([]);
    const joined = next<{ id: string }>(agent, "participant_joined");
    const alice = await join(h, "r1", "alice");
    expect((await joined).id).toBe("alice");
    expect(alice.others().map((p) => p.id)).toEqual(["agent-1"]);

    const heard = next<{ text?: string; from: { id: string } }>(agent, "message");
    alice.send("hello");
    expect(await heard).toMatchObject({ text: "hello", from: { id: "alice" } });
    const reply = next<{ data?: unknown }>(alice, "message");
    agent.send({ data: { answer: 42 } });
    expect((await reply).data).toEqual({ answer: 42 });

    const left = next<{ id: string }>(agent, "participant_left");
    await alice.leave();
    expect((await left).id).toBe("alice");
    expect(agent.others()).toEqual([]);
  });

  it("a message with `to` reaches only the named participants", async () => {
    const h = await startHub();
    const a = await join(h, "r2", "a");
    const b = await join(h, "r2", "b");
    const c = await join(h, "r2", "c");
    const cHeard: unknown[] = [];
    c.on("message", (m) => cHeard.push(m));
    const bHeard = next<{ text?: string }>(b, "message");
    a.send("only b", { to: ["b"] });
    expect((await bHeard).text).toBe("only b");
    // c gets the next broadcast, and that one only: the private message never reached it.
    const cNext = next<{ text?: string }>(c, "message");
    a.send("everyone");
    expect((await cNext).text).toBe("everyone");
    expect(cHeard).toHaveLength(1);
  });

  it("refuses a token for another room (403), a bad token (401) and a bad room path (404)", async () => {
    const h = await startHub();
    await expect(RoomConnection.connect(h.url, "mine", "other:alice:participant")).rejects.toThrow(/403.*room other/);
    await expect(RoomConnection.connect(h.url, "mine", "garbage")).rejects.toThrow(/401/);
    await expect(RoomConnection.connect(h.url, "bad room!", "x:y:participant")).rejects.toThrow(/404/);
    expect(h.hub.list()).toEqual([]);
  });

  it("malformed, invalid, binary and oversized frames get an error, and the room keeps working for everyone", async () => {
    const h = await startHub();
    const bob = await join(h, "r3", "bob");
    const bad = await rawSocket(h, "r3", "mallory");
    const cases: [string | Buffer, string][] = [
      ["{not json", "bad_json"],
      [JSON.stringify({ type: "message" }), "bad_frame"],
      [JSON.stringify({ type: "shout", text: "x" }), "bad_frame"],
      [JSON.stringify({ type: "message", text: 5 }), "bad_frame"],
      [JSON.stringify({ type: "end" }), "forbidden"],
      [JSON.stringify({ type: "message", text: "x".repeat(MAX_ROOM_FRAME_BYTES + 10) }), "too_large"],
    ];
    for (const [frame, code] of cases) {
      bad.ws.send(frame);
      expect(await bad.nextFrame()).toMatchObject({ type: "error", code });
    }
    bad.ws.send(Buffer.from([1, 2, 3]), { binary: true });
    expect(await bad.nextFrame()).toMatchObject({ type: "error", code: "binary" });
    // The misbehaving socket is still in, and so is everyone else.
    const heard = next<{ text?: string }>(bob, "message");
    bad.ws.send(JSON.stringify({ type: "message", text: "sorry" }));
    expect((await heard).text).toBe("sorry");
    bad.ws.close();
  });

  it("an agent ends the room: everyone gets room_ended and the room is gone", async () => {
    const h = await startHub();
    const agent = await join(h, "r4", "agent-1", "agent");
    const alice = await join(h, "r4", "alice");
    const aliceEnded = next<string>(alice, "ended");
    const ended = new Promise((resolve) => h.hub.once("room.ended", resolve));
    await agent.end("session_ended");
    expect(await aliceEnded).toBe("session_ended");
    expect(await ended).toEqual({ id: "r4", reason: "session_ended" });
    expect(h.hub.get("r4")).toBeUndefined();
  });

  it("the same identity joining again replaces its old connection without a leave event", async () => {
    const h = await startHub();
    const watcher = await join(h, "r5", "watcher");
    const seen = next(watcher, "participant_joined");
    const first = await join(h, "r5", "alice");
    await seen;
    const events: string[] = [];
    watcher.on("participant_left", (p) => events.push(`left ${p.id}`));
    watcher.on("participant_joined", (p) => events.push(`joined ${p.id}`));
    const firstEnded = next<string>(first, "ended");
    const second = await join(h, "r5", "alice");
    expect(await firstEnded).toBe("disconnected");
    expect(
      h.hub
        .get("r5")
        ?.participants.map((p) => p.id)
        .sort(),
    ).toEqual(["alice", "watcher"]);
    const heard = next<{ text?: string }>(watcher, "message");
    second.send("still here");
    expect((await heard).text).toBe("still here");
    expect(events).toEqual([]);
  });

  it("creates rooms by id or on demand, and forgets a room that stays empty", async () => {
    const h = await startHub(50);
    expect(h.hub.createRoom("made").participants).toEqual([]);
    expect(() => h.hub.createRoom("no spaces")).toThrow(RoomAccessError);
    const gone = new Promise<void>((resolve) => {
      const check = () => (h.hub.get("made") ? setTimeout(check, 10) : resolve());
      check();
    });
    await gone;
    const alice = await join(h, "ondemand", "alice");
    expect(h.hub.get("ondemand")?.participants.map((p) => p.id)).toEqual(["alice"]);
    await alice.leave();
  });

  it("waitForParticipant resolves on a join, times out, and rejects when the room ends", async () => {
    const h = await startHub();
    const agent = await join(h, "r6", "agent-1", "agent");
    const waiting = agent.waitForParticipant({ timeoutMs: 5_000 });
    await join(h, "r6", "alice");
    expect((await waiting).id).toBe("alice");
    expect((await agent.waitForParticipant()).id).toBe("alice");

    const lonely = await join(h, "r7", "agent-2", "agent");
    await expect(lonely.waitForParticipant({ timeoutMs: 20 })).rejects.toThrow(RoomError);
    const pending = lonely.waitForParticipant();
    h.hub.endRoom("r7", "closed_by_test");
    await expect(pending).rejects.toThrow(/closed_by_test/);
  });

  it("a socket that joins an ended room's id creates a fresh room", async () => {
    const h = await startHub();
    const a = await join(h, "r8", "agent", "agent");
    await a.end("done");
    const b = await join(h, "r8", "bob");
    expect(b.others()).toEqual([]);
    expect(ROOM_CLOSE.ended).toBe(4000);
  });
});
