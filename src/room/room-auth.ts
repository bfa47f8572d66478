import { randomUUID } from "node:crypto";
import { decodeJwt, SignJWT } from "jose";
import { z } from "zod";
import { AuthError, type Credentials, checkTtl, verifyToken } from "../auth/tokens.ts";
import { type AuthorizeRoom, RoomAccessError } from "./hub.ts";

export interface RoomTokenRequest {
  room: string;
  /** Participant id in the room; random when absent. */
  identity?: string;
  name?: string;
  /** Agents may end the room; participants may not. */
  agent?: boolean;
  /** Seconds; default six hours (a session outlives a dispatcher token's hour). */
  ttl?: number;
}

const roomClaims = z.object({
  room: z.string(),
  sub: z.string().optional(),
  name: z.string().optional(),
  agent: z.boolean().optional(),
});

/** A participant token for one room: role participant, the room claim, and who joins. */
export async function mintRoomToken(credentials: Credentials, request: RoomTokenRequest): Promise<string> {
  checkTtl(credentials, request.ttl);
  const identity = request.identity ?? `p-${randomUUID().slice(0, 8)}`;
  return new SignJWT({
    role: "participant",
    room: request.room,
    ...(request.name ? { name: request.name } : {}),
    ...(request.agent ? { agent: true } : {}),
  })
    .setProtectedHeader({ alg: "HS256" })
    .setIssuer(credentials.apiKey)
    .setSubject(identity)
    .setIssuedAt()
    .setExpirationTime(`${Math.max(1, Math.round(request.ttl ?? 6 * 3600))}s`)
    .sign(new TextEncoder().encode(credentials.apiSecret));
}

/** Lets in participant tokens whose room claim is this room; the signature is checked first. */
export function roomAuthorizer(credentials: Credentials): AuthorizeRoom {
  return async (token, room) => {
    try {
      await verifyToken(credentials, token, ["participant"]);
    } catch (error) {
      const message = error instanceof AuthError ? error.message : "invalid token";
      throw new RoomAccessError(message, message.includes("cannot") ? 403 : 401);
    }
    const claims = roomClaims.safeParse(decodeJwt(token));
    if (!claims.success) throw new RoomAccessError("token has no room claim", 403);
    if (claims.data.room !== room) {
      throw new RoomAccessError(`token is for room ${claims.data.room}, not ${room}`, 403);
    }
    const identity = claims.data.sub ?? `p-${randomUUID().slice(0, 8)}`;
    return { identity, name: claims.data.name ?? identity, kind: claims.data.agent ? "agent" : "participant" };
  };
}
