import { EventEmitter } from "node:events";
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { type RawData, type WebSocket, WebSocketServer } from "ws";
import { refuseUpgrade } from "../http/gateway.ts";
import { HttpError } from "../http/respond.ts";
import { decodeSegment, requestUrl } from "../http/target.ts";
import type { Logger } from "../observability/logger.ts";
import { type HubFrame, MAX_ROOM_FRAME_BYTES, ROOM_CLOSE } from "../protocol/room.ts";
import { clientFrame, roomId } from "../protocol/room-requests.ts";
import { TokenBucket } from "../util/token-bucket.ts";
import { type RoomHubLimits, resolveRoomHubLimits } from "./limits.ts";
import { Outbox } from "./outbox.ts";
import { Room } from "./room.ts";

export { DEFAULT_ROOM_HUB_LIMITS, type RoomHubLimits } from "./limits.ts";

/** Who a token lets in: checked by the hub's owner (registry credentials, or a local-mode secret). */
export interface RoomGrant {
  identity: string;
  name: string;
  kind: "agent" | "participant";
}

export type AuthorizeRoom = (token: string, roomId: string) => Promise<RoomGrant>;

/** 401/403: the token; 409: the room is full; 503: the hub holds as many rooms as it may. */
export type RoomAccessStatus = 401 | 403 | 409 | 503;

/** An HttpError, so an HTTP route that lets it through answers with its status. */
export class RoomAccessError extends HttpError {
  override readonly name = "RoomAccessError";
  declare readonly status: RoomAccessStatus;

  constructor(message: string, status: RoomAccessStatus = 401) {
    super(status, message);
  }
}

export interface RoomHubOptions extends Partial<RoomHubLimits> {
  authorize: AuthorizeRoom;
  logger: Logger;
  /** Frames above this get an error frame; the socket stays. */
  maxFrameBytes?: number;
  /** An empty room is forgotten after this long (a participant that reconnects finds it). */
  emptyRoomTtlMs?: number;
}

export interface RoomSummary {
  id: string;
  createdAt: number;
  participants: ReturnType<Room["participantList"]>;
}

/**
 * Rooms over WebSocket at `/rooms/<id>`, mounted on an HTTP server's `upgrade`. Rooms are created by
 * id (`createRoom`) or on demand at the first join, and forgotten when they end or stay empty.
 * Every frame is parsed; a participant's bad frame gets an error frame and hurts no one else. What
 * clients can grow is bounded by RoomHubLimits (rooms, members, bytes queued, frames per second).
 */
export class RoomHub extends EventEmitter<{
  "room.created": [RoomSummary];
  "room.ended": [{ id: string; reason: string }];
  "participant.joined": [{ room: string; participant: RoomSummary["participants"][number] }];
  "participant.left": [{ room: string; participant: RoomSummary["participants"][number] }];
}> {
  readonly #rooms = new Map<string, Room>();
  readonly #wss: WebSocketServer;
  readonly #maxFrameBytes: number;
  readonly #emptyRoomTtlMs: number;
  readonly #limits: RoomHubLimits;

  constructor(private readonly options: RoomHubOptions) {
    super();
    this.#maxFrameBytes = options.maxFrameBytes ?? MAX_ROOM_FRAME_BYTES;
    this.#emptyRoomTtlMs = options.emptyRoomTtlMs ?? 5 * 60_000;
    this.#limits = resolveRoomHubLimits({
      maxRooms: options.maxRooms,
      maxParticipantsPerRoom: options.maxParticipantsPerRoom,
      maxPendingBytesPerParticipant: options.maxPendingBytesPerParticipant,
      messagesPerSecondPerParticipant: options.messagesPerSecondPerParticipant,
      messageBurstPerParticipant: options.messageBurstPerParticipant,
    });
    // The hard cap only guards memory; frames between the two limits get a polite error.
    this.#wss = new WebSocketServer({ noServer: true, maxPayload: this.#maxFrameBytes * 16, perMessageDeflate: false });
  }

  /** True when the path is a room path, so the server can route upgrades. */
  static matches(pathname: string): boolean {
    return pathname.startsWith("/rooms/");
  }

  /** The limits in force (the defaults overlaid with the options). */
  get limits(): Readonly<RoomHubLimits> {
    return this.#limits;
  }

  /** Throws RoomAccessError 403 for a bad id and 503 when a new room would pass `maxRooms`. */
  createRoom(id: string): RoomSummary {
    const parsed = roomId.safeParse(id);
    if (!parsed.success) throw new RoomAccessError(parsed.error.issues[0]?.message ?? "bad room id", 403);
    const full = this.#admission(parsed.data);
    if (full) throw full;
    return this.#room(parsed.data).summary();
  }

  get(id: string): RoomSummary | undefined {
    return this.#rooms.get(id)?.summary();
  }

  list(): RoomSummary[] {
    return [...this.#rooms.values()].map((room) => room.summary());
  }

  /** Ends a room for everyone in it; later joins create a fresh room of that id. */
  endRoom(id: string, reason: string): boolean {
    const room = this.#rooms.get(id);
    if (!room) return false;
    room.end(reason);
    return true;
  }

  /**
   * Joins the request's socket to its room, or answers with an HTTP status and closes it. Never
   * throws and never rejects: callers `void` it, so anything escaping would kill the process.
   */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    // Node removes its own error listener from a socket it hands to 'upgrade': a client resetting the
    // connection while its token is checked would raise an unhandled 'error' and end the process.
    socket.on("error", (error) => this.options.logger.debug({ err: error.message }, "room upgrade socket error"));
    return this.#upgrade(req, socket, head)
      .catch((error: unknown) => {
        if (error instanceof HttpError) return refuseUpgrade(socket, error.status, error.message);
        this.options.logger.error({ err: error, path: req.url?.slice(0, 200) }, "room upgrade failed");
        refuseUpgrade(socket, 500, "internal error");
      })
      .catch(() => {
        socket.destroy();
      });
  }

  async #upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const url = requestUrl(req);
    if (!RoomHub.matches(url.pathname)) throw new HttpError(404, "no such room path: use /rooms/<id>");
    const id = roomId.safeParse(decodeSegment(url.pathname.slice("/rooms/".length)));
    if (!id.success) throw new HttpError(404, "no such room path: use /rooms/<id>");
    const token = url.searchParams.get("token") ?? bearer(req.headers.authorization);
    if (!token) throw new RoomAccessError("missing token: pass ?token=<participant token>");
    const grant = await this.#authorize(token, id.data);
    const name = url.searchParams.get("name")?.slice(0, 100) || grant.name;
    // Checked after the last await: ws completes the handshake synchronously from here, so no other
    // join can take the place between this check and #join (which checks again all the same).
    const full = this.#admission(id.data, grant.identity);
    if (full) throw full;
    this.#wss.handleUpgrade(req, socket, head, (ws) => {
      try {
        this.#join(id.data, ws, { ...grant, name });
      } catch (error) {
        this.options.logger.error({ err: error, room: id.data }, "room join failed");
        ws.terminate();
      }
    });
  }

  async #authorize(token: string, id: string): Promise<RoomGrant> {
    try {
      return await this.options.authorize(token, id);
    } catch (error) {
      throw error instanceof RoomAccessError ? error : new RoomAccessError("invalid token");
    }
  }

  /** Why `identity` may not join room `id` now, or undefined; without identity, whether it may be created. */
  #admission(id: string, identity?: string): RoomAccessError | undefined {
    const room = this.#rooms.get(id);
    if (!room) {
      if (this.#rooms.size < this.#limits.maxRooms) return undefined;
      return new RoomAccessError(`hub full: ${this.#limits.maxRooms} rooms open (maxRooms); try later`, 503);
    }
    if (identity === undefined || room.has(identity) || room.size < this.#limits.maxParticipantsPerRoom) {
      return undefined;
    }
    const max = this.#limits.maxParticipantsPerRoom;
    return new RoomAccessError(`room full: ${max} participants (maxParticipantsPerRoom)`, 409);
  }

  #room(id: string): Room {
    let room = this.#rooms.get(id);
    if (room) return room;
    room = new Room(id, {
      emptyTtlMs: this.#emptyRoomTtlMs,
      onJoined: (participant) => this.emit("participant.joined", { room: id, participant }),
      onLeft: (participant) => this.emit("participant.left", { room: id, participant }),
      onGone: (reason, ended) => {
        this.#rooms.delete(id);
        if (ended) this.emit("room.ended", { id, reason });
      },
    });
    this.#rooms.set(id, room);
    this.emit("room.created", room.summary());
    return room;
  }

  #join(id: string, ws: WebSocket, grant: RoomGrant): void {
    const full = this.#admission(id, grant.identity);
    if (full) {
      ws.close(ROOM_CLOSE.room_full, full.message.slice(0, 120));
      return;
    }
    const room = this.#room(id);
    const outbox = new Outbox(ws, this.#limits.maxPendingBytesPerParticipant, (pendingBytes) => {
      this.options.logger.warn(
        { room: id, participant: grant.identity, pendingBytes },
        "participant dropped: it does not read what the room sends it",
      );
      // Gone for the others now, not when its socket finally closes.
      room.leave(grant.identity, outbox);
    });
    const replaced = room.join(grant, outbox);
    if (replaced) replaced.close(ROOM_CLOSE.replaced, "joined again elsewhere");
    const inbound = new TokenBucket(
      this.#limits.messagesPerSecondPerParticipant,
      this.#limits.messageBurstPerParticipant,
    );
    ws.on("message", (raw: RawData, isBinary: boolean) => {
      if (!inbound.take()) {
        const rate = this.#limits.messagesPerSecondPerParticipant;
        outbox.send(refusal("rate_limited", `over ${rate} frames/s: frame dropped`));
        return;
      }
      try {
        const refused = this.#receive(room, grant, outbox, raw, isBinary);
        if (refused) outbox.send(refused);
      } catch (error) {
        // A fault of ours must not escape into ws's socket handler, which would end the process.
        this.options.logger.error({ err: error, room: id }, "room frame failed");
        outbox.send({ type: "error", code: "internal", message: "the hub could not handle that frame" });
      }
    });
    ws.on("close", () => room.leave(grant.identity, outbox));
    ws.on("error", (error) => this.options.logger.debug({ room: id, err: error.message }, "room socket error"));
  }

  /** Acts on one frame from a member; returns the error frame to answer with when it is refused. */
  #receive(room: Room, grant: RoomGrant, outbox: Outbox, raw: RawData, isBinary: boolean): RoomErrorFrame | undefined {
    const bytes = byteLength(raw);
    if (isBinary) return refusal("binary", "send JSON text frames");
    if (bytes > this.#maxFrameBytes) {
      return refusal("too_large", `frame of ${bytes} bytes is over the limit of ${this.#maxFrameBytes}`);
    }
    let json: unknown;
    try {
      json = JSON.parse(raw.toString());
    } catch {
      return refusal("bad_json", "frame is not valid JSON");
    }
    const frame = clientFrame.safeParse(json);
    if (!frame.success) {
      const issue = frame.error.issues[0];
      const where = issue?.path.length ? `${issue.path.join(".")}: ` : "";
      return refusal("bad_frame", `${where}${issue?.message ?? "invalid frame"}`);
    }
    const value = frame.data;
    if (value.type === "leave") outbox.close(1000, "left");
    else if (value.type === "message") room.broadcast(grant.identity, value);
    else if (grant.kind !== "agent") return refusal("forbidden", "only an agent can end the room");
    else room.end(value.reason ?? "ended_by_agent");
    return undefined;
  }

  async close(): Promise<void> {
    for (const room of [...this.#rooms.values()]) room.end("hub_closed");
    for (const client of this.#wss.clients) client.terminate();
    await new Promise<void>((resolve) => this.#wss.close(() => resolve()));
  }
}

type RoomErrorFrame = Extract<HubFrame, { type: "error" }>;

function refusal(code: string, message: string): RoomErrorFrame {
  return { type: "error", code, message };
}

function byteLength(raw: RawData): number {
  if (Array.isArray(raw)) return raw.reduce((n, b) => n + b.length, 0);
  return raw instanceof ArrayBuffer ? raw.byteLength : raw.length;
}

function bearer(header: string | undefined): string | undefined {
  const match = header ? /^Bearer\s+(\S+)$/i.exec(header.trim()) : null;
  return match?.[1];
}
