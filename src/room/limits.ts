import { z } from "zod";

/**
 * What one room hub lets clients grow: rooms, members, bytes waiting for a member that does not
 * read, and frames a member may send. Each bound answers a way a single client could otherwise take
 * the whole process down (DESIGN.md §1.7); docs/rooms.md lists what a client sees at each.
 */
export const roomHubLimits = z.strictObject({
  /** Rooms open at once; the next new room is refused (503 at join, RoomAccessError 503 from createRoom). */
  maxRooms: z.number().int().positive(),
  /** Members of one room; the next identity is refused with 409 (the same identity rejoining is not). */
  maxParticipantsPerRoom: z.number().int().positive(),
  /** Bytes queued for one member and not yet written to its socket; over it, the member is dropped. */
  maxPendingBytesPerParticipant: z.number().int().positive(),
  /** Sustained frames per second one member may send; the rest get `rate_limited` and are dropped. */
  messagesPerSecondPerParticipant: z.number().positive(),
  /** Frames one member may send at once before the per-second rate applies. */
  messageBurstPerParticipant: z.number().int().positive(),
});
export type RoomHubLimits = z.infer<typeof roomHubLimits>;

export const DEFAULT_ROOM_HUB_LIMITS: Readonly<RoomHubLimits> = Object.freeze({
  maxRooms: 10_000,
  maxParticipantsPerRoom: 100,
  maxPendingBytesPerParticipant: 1024 * 1024,
  messagesPerSecondPerParticipant: 50,
  messageBurstPerParticipant: 200,
});

/**
 * How long a dropped slow member gets to receive its close frame before its socket is destroyed.
 * The close frame waits behind everything already queued, so a peer that stopped reading never sees
 * it; destroying the socket is what releases the queued bytes.
 */
export const SLOW_CONSUMER_CLOSE_GRACE_MS = 1_000;

/** The defaults overlaid with what was given; a bad value throws a TypeError naming the field. */
export function resolveRoomHubLimits(given: Partial<RoomHubLimits>): RoomHubLimits {
  const defined = Object.fromEntries(Object.entries(given).filter(([, value]) => value !== undefined));
  const parsed = roomHubLimits.safeParse({ ...DEFAULT_ROOM_HUB_LIMITS, ...defined });
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  throw new TypeError(`room hub option ${issue?.path.join(".") || "(limits)"}: ${issue?.message ?? "invalid"}`);
}
