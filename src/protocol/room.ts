import * as v from "../vendor/valibot.ts";

/**
 * The room protocol: JSON text frames over WebSocket at `/rooms/<id>?token=…`. A browser and a job's
 * JobContext speak it alike. The token (role participant with a room claim, or worker for the hub's
 * own agents) is in the query because browsers cannot set headers on a WebSocket.
 *
 * This module holds what a participant parses (hub → participant frames), with valibot: a job
 * process loads it through its RoomConnection and must not load zod. What the hub parses
 * (participant → hub frames, room ids) is in room-requests.ts, with zod.
 */
export const MAX_ROOM_FRAME_BYTES = 64 * 1024;
export const MAX_TEXT_CHARS = 16 * 1024;

/** A finite number (JSON has no NaN or Infinity). */
const finiteNumber = v.pipe(v.number(), v.finite());

export const participantInfo = v.object({
  id: v.string(),
  name: v.string(),
  kind: v.picklist(["agent", "participant"]),
  joined_at: finiteNumber,
});
export type ParticipantInfo = v.InferOutput<typeof participantInfo>;

// ---- hub → participant ----
export const welcome = v.object({
  type: v.literal("welcome"),
  room: v.string(),
  you: participantInfo,
  participants: v.array(participantInfo),
});
export const participantJoined = v.object({ type: v.literal("participant_joined"), participant: participantInfo });
export const participantLeft = v.object({
  type: v.literal("participant_left"),
  participant: participantInfo,
});
export const roomMessage = v.object({
  type: v.literal("message"),
  from: participantInfo,
  text: v.optional(v.string()),
  data: v.optional(v.unknown()),
  at: finiteNumber,
});
export const roomEnded = v.object({ type: v.literal("room_ended"), reason: v.string() });
/**
 * `code`: bad_json, bad_frame, binary, too_large, forbidden, or rate_limited (the member sent faster
 * than the hub's per-member rate; that frame was dropped, the connection stays).
 */
export const roomError = v.object({ type: v.literal("error"), code: v.string(), message: v.string() });

export const hubFrame = v.variant("type", [
  welcome,
  participantJoined,
  participantLeft,
  roomMessage,
  roomEnded,
  roomError,
]);
export type HubFrame = v.InferOutput<typeof hubFrame>;
export type RoomMessage = v.InferOutput<typeof roomMessage>;

/** WebSocket close codes the hub uses beyond the standard ones. */
export const ROOM_CLOSE = {
  ended: 4000,
  replaced: 4001,
  /** The member did not read: more bytes waited for it than the hub holds for one member. */
  slow_consumer: 4002,
  /** The room filled up while this member's handshake completed; try again later. */
  room_full: 4003,
} as const;
