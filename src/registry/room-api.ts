import type { IncomingMessage, ServerResponse } from "node:http";
import { z } from "zod";
import type { Credentials } from "../auth/tokens.ts";
import { HttpError, invalid, readJson, send } from "../http/respond.ts";
import { decodeSegment } from "../http/target.ts";
import { roomId } from "../protocol/room-requests.ts";
import { RoomAccessError, type RoomHub } from "../room/hub.ts";
import { mintRoomToken } from "../room/room-auth.ts";
import { bearerAuthorizer } from "./http-auth.ts";

const createRoomBody = z.strictObject({ room_id: roomId.optional() }).nullable();
const tokenBody = z
  .strictObject({
    name: z.string().min(1).max(100).optional(),
    identity: z.string().min(1).max(128).optional(),
    /** Seconds the token is valid; default six hours. */
    ttl: z
      .number()
      .int()
      .min(1)
      .max(7 * 24 * 3600)
      .optional(),
  })
  .nullable();

/**
 * The registry's room routes, for dispatchers (a playground, an app server): create and list rooms,
 * mint a participant token for a room, end a room. Returns false when the path is not one of them.
 */
export function createRoomApi(hub: RoomHub, credentials: Credentials, hubUrl: () => string) {
  const authorize = bearerAuthorizer(credentials);
  return async function handle(req: IncomingMessage, res: ServerResponse, url: URL): Promise<boolean> {
    const path = url.pathname;
    if (path !== "/v1/rooms" && !path.startsWith("/v1/rooms/")) return false;
    await authorize(req, ["dispatcher"]);
    if (path === "/v1/rooms") {
      if (req.method === "GET") {
        send(res, 200, { rooms: hub.list() });
        return true;
      }
      if (req.method === "POST") {
        const parsed = createRoomBody.safeParse(await readJson(req));
        if (!parsed.success) throw invalid(parsed.error);
        const id = parsed.data?.room_id ?? `room-${Math.random().toString(36).slice(2, 10)}`;
        send(res, 201, { room: createRoom(hub, id), url: hubUrl() });
        return true;
      }
      throw new HttpError(405, "method not allowed");
    }
    const match = /^\/v1\/rooms\/([^/]+)(\/tokens)?$/.exec(path);
    const id = roomId.safeParse(decodeSegment(match?.[1] ?? ""));
    if (!match || !id.success) throw new HttpError(404, `no route ${req.method} ${path}`);
    if (match[2] && req.method === "POST") {
      const parsed = tokenBody.safeParse(await readJson(req));
      if (!parsed.success) throw invalid(parsed.error);
      const body = parsed.data ?? {};
      const token = await mintRoomToken(credentials, {
        room: id.data,
        ...(body.name ? { name: body.name } : {}),
        ...(body.identity ? { identity: body.identity } : {}),
        ...(body.ttl ? { ttl: body.ttl } : {}),
      });
      send(res, 201, { token, room: id.data, url: hubUrl() });
      return true;
    }
    if (!match[2] && req.method === "GET") {
      const room = hub.get(id.data);
      if (!room) throw new HttpError(404, `no room ${id.data}`);
      send(res, 200, { room });
      return true;
    }
    if (!match[2] && req.method === "DELETE") {
      if (!hub.endRoom(id.data, "ended_by_api")) throw new HttpError(404, `no room ${id.data}`);
      send(res, 202, { ended: id.data });
      return true;
    }
    throw new HttpError(405, "method not allowed");
  };
}

/** A room the hub refuses (bad id, a limit reached) is the client's answer, not a fault. */
function createRoom(hub: RoomHub, id: string) {
  try {
    return hub.createRoom(id);
  } catch (error) {
    if (error instanceof RoomAccessError) throw new HttpError(error.status, error.message);
    throw error;
  }
}
