import type { Credentials } from "../auth/tokens.ts";
import { mintRoomToken } from "../room/room-auth.ts";

/** How long the printed links let someone in (they are checked when joining, not afterwards). */
const LINK_TTL_SECONDS = 24 * 3600;

export interface LocalRoomLinks {
  /** The worker's own playground page in "join" mode, with a participant token for the room. */
  playground: string;
  /** The same room from a terminal: a `troupe connect` command line with its own participant token. */
  connect: string;
}

/**
 * The ways into a local-mode worker's room, printed when its job starts (`RoomOptions.playground`).
 * Each link carries its own participant token (a separate identity each, so a browser tab and a
 * terminal are two participants), signed with the worker's room credentials. Tokens in printed
 * URLs are for local development only: a registered worker prints none.
 */
export async function localRoomLinks(
  baseUrl: string,
  roomId: string,
  credentials: Credentials,
): Promise<LocalRoomLinks> {
  const [browserToken, terminalToken] = await Promise.all([
    mintRoomToken(credentials, { room: roomId, ttl: LINK_TTL_SECONDS }),
    mintRoomToken(credentials, { room: roomId, ttl: LINK_TTL_SECONDS }),
  ]);
  const page = new URL("/playground", baseUrl);
  page.searchParams.set("room", roomId);
  page.searchParams.set("join", browserToken);
  return {
    playground: page.href,
    connect: `npx troupe connect --room ${roomId} --url ${baseUrl} --token ${terminalToken}`,
  };
}
