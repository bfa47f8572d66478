import { createServer, type Server } from "node:http";
import { type AddressInfo, connect } from "node:net";
import { Writable } from "node:stream";
import { afterEach, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { createLogger } from "../../src/observability/logger.ts";
import type { HubFrame } from "../../src/protocol/room.ts";
import { RoomConnection } from "../../src/room/client.ts";
import { RoomAccessError, type RoomGrant, RoomHub, type RoomHubOptions } from "../../src/room/hub.ts";
import { DEFAULT_ROOM_HUB_LIMITS } from "../../src/room/limits.ts";
import { TokenBucket } from "../../src/util/token-bucket.ts";
import { rawRequest, upgradeRequest } from "../hardening/raw-http.ts";
import { until } from "../support/wait.ts";

const silent = createLogger("ERROR", new Writable({ write: (_c, _e, done) => done() }));

/** Tokens here are "<room>:<identity>:<kind>"; the real hub checks JWTs (see room-auth tests). */
async function authorize(token: string, room: string): Promise<RoomGrant> {
  const [tokenRoom, identity, kind] = token.split(":");
  if (!identity) throw new RoomAccessError("invalid token");
  if (tokenRoom !== room) throw new RoomAccessError(`token is for room ${tokenRoom}, not ${room}`, 403);
  return { identity, name: identity, kind: kind === "agent" ? "agent" : "participant" };
}

interface Harness {
  hub: RoomHub;
  server: Server;
  url: string;
  port: number;
}

const open: Harness[] = [];
const sockets: WebSocket[] = [];

async function startHub(options: Partial<RoomHubOptions> = {}): Promise<Harness> {
  const hub = new RoomHub({ authorize, logger: silent, ...options });
  const server = createServer((_req, res) => res.end());
  server.on("upgrade", (req, socket, head) => void hub.handleUpgrade(req, socket, head));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  const harness = { hub, server, port, url: `http://127.0.0.1:${port}` };
  open.push(harness);
  return harness;
}

afterEach(async () => {
  for (const ws of sockets.splice(0)) ws.terminate();
  for (const h of open.splice(0)) {
    await h.hub.close();
    h.server.closeAllConnections();
    await new Promise<void>((resolve) => h.server.close(() => resolve()));
  }
});

function join(h: Harness, room: string, identity: string): Promise<RoomConnection> {
  return RoomConnection.connect(h.url, room, `${room}:${identity}:participant`);
}

/** A member on a bare socket, recording every frame the hub sends it. */
async function member(h: Harness, room: string, identity: string) {
  const ws = new WebSocket(`ws://127.0.0.1:${h.port}/rooms/${room}?token=${room}:${identity}:participant`);
  sockets.push(ws);
  const frames: HubFrame[] = [];
  ws.on("message", (raw) => frames.push(JSON.parse(raw.toString()) as HubFrame));
  await until(() => frames.some((f) => f.type === "welcome"), {
    label: `${identity}'s welcome`,
    timeoutMs: 5_000,
    intervalMs: 5,
  });
  return { ws, frames };
}

const texts = (frames: HubFrame[]) => frames.flatMap((f) => (f.type === "message" && f.text ? [f.text] : []));
const errorCodes = (frames: HubFrame[]) => frames.flatMap((f) => (f.type === "error" ? [f.code] : []));

describe("room hub limits on rooms and members", () => {
  it("refuses a new identity in a full room with 409, lets the same identity rejoin, and admits again after a leave", async () => {
    const h = await startHub({ maxParticipantsPerRoom: 2 });
    await join(h, "small", "a");
    const b = await join(h, "small", "b");
    await expect(join(h, "small", "c")).rejects.toThrow(/409.*room full: 2 participants \(maxParticipantsPerRoom\)/);
    // Replacing one's own connection takes no new place.
    const bAgain = await join(h, "small", "b");
    expect(bAgain.self.id).toBe("b");
    expect(b.endedReason).toBeUndefined();
    await bAgain.leave();
    await until(() => h.hub.get("small")?.participants.length === 1, {
      label: "b to leave",
      timeoutMs: 5_000,
      intervalMs: 5,
    });
    const c = await join(h, "small", "c");
    expect(c.others().map((p) => p.id)).toEqual(["a"]);
  });

  it("refuses a new room over maxRooms with 503 at join and from createRoom; existing rooms still take members", async () => {
    const h = await startHub({ maxRooms: 2 });
    h.hub.createRoom("one");
    await join(h, "two", "alice");
    await expect(join(h, "three", "bob")).rejects.toThrow(/503.*hub full: 2 rooms open \(maxRooms\)/);
    let thrown: unknown;
    try {
      h.hub.createRoom("four");
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(RoomAccessError);
    expect(thrown).toMatchObject({ status: 503, message: expect.stringMatching(/hub full/) });
    expect(h.hub.createRoom("one").id).toBe("one");
    await join(h, "one", "bob");
    h.hub.endRoom("one", "done");
    expect((await join(h, "three", "bob")).id).toBe("three");
    expect(
      h.hub
        .list()
        .map((r) => r.id)
        .sort(),
    ).toEqual(["three", "two"]);
  });

  it("exports its defaults and rejects a limit that is not a positive number, naming it", () => {
    expect(DEFAULT_ROOM_HUB_LIMITS).toEqual({
      maxRooms: 10_000,
      maxParticipantsPerRoom: 100,
      maxPendingBytesPerParticipant: 1024 * 1024,
      messagesPerSecondPerParticipant: 50,
      messageBurstPerParticipant: 200,
    });
    expect(new RoomHub({ authorize, logger: silent }).limits).toEqual(DEFAULT_ROOM_HUB_LIMITS);
    expect(() => new RoomHub({ authorize, logger: silent, maxRooms: 0 })).toThrow(/maxRooms/);
    expect(() => new RoomHub({ authorize, logger: silent, maxPendingBytesPerParticipant: -1 })).toThrow(
      /maxPendingBytesPerParticipant/,
    );
  });
});

describe("room hub upgrades", () => {
  it("answers a bad percent-encoding or an unparsable absolute target with 400 and keeps serving", async () => {
    const h = await startHub();
    const badEncoding = await rawRequest(h.port, upgradeRequest("/rooms/%E0%A4%A?token=x:y:participant"));
    expect(badEncoding.status).toBe(400);
    expect(badEncoding.text).toMatch(/percent-encoding/);
    const badPort = await rawRequest(h.port, upgradeRequest("http://a:99999/rooms/x?token=x:y:participant"));
    expect(badPort.status).toBe(400);
    expect(badPort.text).toMatch(/malformed request target/);
    const notRooms = await rawRequest(h.port, upgradeRequest("/elsewhere"));
    expect(notRooms.status).toBe(404);
    // Same process, same server: a well-formed join still works.
    const alice = await join(h, "x", "alice");
    expect(alice.self.id).toBe("alice");
  });

  it("answers 401 when the authorizer throws, 500 when it breaks its contract, and keeps serving", async () => {
    const h = await startHub({
      authorize: async (token, room) => {
        if (token === "explode") throw new TypeError("a bug in the authorizer");
        // A fault on the hub's side of the line: no grant at all.
        if (token === "nothing") return undefined as unknown as RoomGrant;
        return authorize(token, room);
      },
    });
    const thrown = await rawRequest(h.port, upgradeRequest("/rooms/x?token=explode"));
    expect(thrown.status).toBe(401);
    expect(thrown.text).toMatch(/invalid token/);
    const fault = await rawRequest(h.port, upgradeRequest("/rooms/x?token=nothing"));
    expect(fault.status).toBe(500);
    expect(fault.text).toMatch(/internal error/);
    expect((await join(h, "x", "alice")).self.id).toBe("alice");
  });

  it("survives a client that resets its connection while its token is being checked", async () => {
    let release = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    let asked = 0;
    const h = await startHub({
      authorize: async (token, room) => {
        asked++;
        if (token.startsWith("slow")) {
          await gate;
          throw new RoomAccessError("not this one", 403);
        }
        return authorize(token, room);
      },
    });
    const uncaught: Error[] = [];
    const onUncaught = (error: Error) => uncaught.push(error);
    process.on("uncaughtException", onUncaught);
    const client = connect(h.port, "127.0.0.1");
    client.on("error", () => {});
    client.write(upgradeRequest("/rooms/x?token=slow"));
    await until(() => asked === 1, { label: "the token check to start", timeoutMs: 5_000, intervalMs: 5 });
    // Without an error listener on the upgrade socket, the reset is an uncaught ECONNRESET.
    client.resetAndDestroy();
    await until(() => client.destroyed, { label: "the reset", timeoutMs: 5_000, intervalMs: 5 });
    await new Promise((resolve) => setImmediate(resolve));
    release();
    const alice = await join(h, "x", "alice");
    process.off("uncaughtException", onUncaught);
    expect(uncaught.map((error) => error.message)).toEqual([]);
    expect(h.hub.get("x")?.participants.map((p) => p.id)).toEqual([alice.self.id]);
  });
});

describe("room hub inbound rate", () => {
  it("answers frames over the rate with rate_limited and drops them; the sender stays and is heard again later", async () => {
    const h = await startHub({ messagesPerSecondPerParticipant: 5, messageBurstPerParticipant: 10 });
    const listener = await member(h, "chatty", "listener");
    const spammer = await member(h, "chatty", "spammer");
    for (let i = 0; i < 40; i++) spammer.ws.send(JSON.stringify({ type: "message", text: `m${i}` }));
    const limited = () => errorCodes(spammer.frames).filter((code) => code === "rate_limited").length;
    await until(() => limited() + texts(listener.frames).length === 40, {
      label: "every frame delivered or limited",
      timeoutMs: 5_000,
      intervalMs: 5,
    });
    // 40 frames within far less than the second it takes to earn 5 more tokens: about 30 are refused.
    expect(limited()).toBeGreaterThanOrEqual(25);
    expect(errorCodes(spammer.frames).every((code) => code === "rate_limited")).toBe(true);
    expect(texts(listener.frames)).toEqual(texts(listener.frames).map((_, i) => `m${i}`));
    expect(spammer.ws.readyState).toBe(WebSocket.OPEN);
    // Tokens come back with time: keep trying until one frame gets through.
    const deadline = Date.now() + 5_000;
    while (!texts(listener.frames).includes("again")) {
      if (Date.now() > deadline) throw new Error("the spammer was never heard again");
      spammer.ws.send(JSON.stringify({ type: "message", text: "again" }));
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  });

  it("a token bucket gives the burst at once, then the rate", () => {
    let now = 0;
    const bucket = new TokenBucket(5, 3, () => now);
    expect([bucket.take(), bucket.take(), bucket.take(), bucket.take()]).toEqual([true, true, true, false]);
    now += 199;
    expect(bucket.take()).toBe(false);
    now += 1;
    expect(bucket.take()).toBe(true);
    now += 60_000;
    expect([bucket.take(), bucket.take(), bucket.take(), bucket.take()]).toEqual([true, true, true, false]);
  });
});
