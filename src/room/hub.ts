import { EventEmitter } from "node:events";
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { type RawData, type WebSocket, WebSocketServer } from "ws";
import type { Logger } from "../observability/logger.ts";
import { clientFrame, MAX_ROOM_FRAME_BYTES, ROOM_CLOSE, roomId } from "../protocol/room.ts";
import { Room, send } from "./room.ts";

/** Who a token lets in: checked by the hub's owner (registry credentials, or a local-mode secret). */
export interface RoomGrant {
  identity: string;
  name: string;
  kind: "agent" | "participant";
}

export type AuthorizeRoom = (token: string, roomId: string) => Promise<RoomGrant>;

export class RoomAccessError extends Error {
  override readonly name = "RoomAccessError";
  constructor(
    message: string,
    readonly status: 401 | 403 = 401,
  ) {
    super(message);
  }
}

export interface RoomHubOptions {
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
 * Every frame is parsed; a participant's bad frame gets an error frame and hurts no one else.
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

  constructor(private readonly options: RoomHubOptions) {
    super();
    this.#maxFrameBytes = options.maxFrameBytes ?? MAX_ROOM_FRAME_BYTES;
    this.#emptyRoomTtlMs = options.emptyRoomTtlMs ?? 5 * 60_000;
    // The hard cap only guards memory; frames between the two limits get a polite error.
    this.#wss = new WebSocketServer({ noServer: true, maxPayload: this.#maxFrameBytes * 16, perMessageDeflate: false });
  }

  /** True when the path is a room path, so the server can route upgrades. */
  static matches(pathname: string): boolean {
    return pathname.startsWith("/rooms/");
  }

  createRoom(id: string): RoomSummary {
    const parsed = roomId.safeParse(id);
    if (!parsed.success) throw new RoomAccessError(parsed.error.issues[0]?.message ?? "bad room id", 403);
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

  async handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const refuse = (status: number, message: string) => {
      const text = status === 401 ? "Unauthorized" : status === 403 ? "Forbidden" : "Not Found";
      socket.write(
        `HTTP/1.1 ${status} ${text}\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: ${Buffer.byteLength(message)}\r\n\r\n${message}`,
      );
      socket.destroy();
    };
    const url = new URL(req.url ?? "/", "http://hub");
    const id = roomId.safeParse(decodeURIComponent(url.pathname.slice("/rooms/".length)));
    if (!id.success) return refuse(404, "no such room path: use /rooms/<id>");
    const token = url.searchParams.get("token") ?? bearer(req.headers.authorization);
    if (!token) return refuse(401, "missing token: pass ?token=<participant token>");
    let grant: RoomGrant;
    try {
      grant = await this.options.authorize(token, id.data);
    } catch (error) {
      const status = error instanceof RoomAccessError ? error.status : 401;
      return refuse(status, error instanceof RoomAccessError ? error.message : "invalid token");
    }
    const name = url.searchParams.get("name")?.slice(0, 100) || grant.name;
    this.#wss.handleUpgrade(req, socket, head, (ws) => this.#join(id.data, ws, { ...grant, name }));
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
    const room = this.#room(id);
    const replaced = room.join(grant, ws);
    if (replaced) replaced.close(ROOM_CLOSE.replaced, "joined again elsewhere");
    ws.on("message", (raw: RawData, isBinary: boolean) => {
      const bytes = byteLength(raw);
      if (isBinary) return send(ws, { type: "error", code: "binary", message: "send JSON text frames" });
      if (bytes > this.#maxFrameBytes) {
        return send(ws, {
          type: "error",
          code: "too_large",
          message: `frame of ${bytes} bytes is over the limit of ${this.#maxFrameBytes}`,
        });
      }
      let json: unknown;
      try {
        json = JSON.parse(raw.toString());
      } catch {
        return send(ws, { type: "error", code: "bad_json", message: "frame is not valid JSON" });
      }
      const frame = clientFrame.safeParse(json);
      if (!frame.success) {
        const issue = frame.error.issues[0];
        const where = issue?.path.length ? `${issue.path.join(".")}: ` : "";
        return send(ws, { type: "error", code: "bad_frame", message: `${where}${issue?.message ?? "invalid frame"}` });
      }
      const value = frame.data;
      if (value.type === "leave") {
        ws.close(1000, "left");
        return;
      }
      if (value.type === "end") {
        if (grant.kind !== "agent") {
          return send(ws, { type: "error", code: "forbidden", message: "only an agent can end the room" });
        }
        room.end(value.reason ?? "ended_by_agent");
        return;
      }
      room.broadcast(grant.identity, value);
    });
    ws.on("close", () => room.leave(grant.identity, ws));
    ws.on("error", (error) => this.options.logger.debug({ room: id, err: error.message }, "room socket error"));
  }

  async close(): Promise<void> {
    for (const room of [...this.#rooms.values()]) room.end("hub_closed");
    for (const client of this.#wss.clients) client.terminate();
    await new Promise<void>((resolve) => this.#wss.close(() => resolve()));
  }
}

function byteLength(raw: RawData): number {
  if (Array.isArray(raw)) return raw.reduce((n, b) => n + b.length, 0);
  return raw instanceof ArrayBuffer ? raw.byteLength : raw.length;
}

function bearer(header: string | undefined): string | undefined {
  const match = header ? /^Bearer\s+(\S+)$/i.exec(header.trim()) : null;
  return match?.[1];
}
