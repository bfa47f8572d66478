import { z } from "zod";

/**
 * The room protocol: JSON text frames over WebSocket at `/rooms/<id>?token=…`. A browser and a job's
 * JobContext speak it alike. The token (role participant with a room claim, or worker for the hub's
 * own agents) is in the query because browsers cannot set headers on a WebSocket.
 */
export const MAX_ROOM_FRAME_BYTES = 64 * 1024;
export const MAX_TEXT_CHARS = 16 * 1024;

export const roomId = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9._-]+$/, "room id may hold letters, digits, '.', '_' and '-'");

export const participantInfo = z.object({
  id: z.string(),
  name: z.string(),
  kind: z.enum(["agent", "participant"]),
  joined_at: z.number(),
});
export type ParticipantInfo = z.infer<typeof participantInfo>;

// ---- participant → hub ----
export const sendMessage = z
  .object({
    type: z.literal("message"),
    text: z.string().max(MAX_TEXT_CHARS).optional(),
    data: z.unknown().optional(),
    /** Participant ids; absent = everyone else in the room. */
    to: z.array(z.string()).max(100).optional(),
  })
  .refine((m) => m.text !== undefined || m.data !== undefined, "a message needs text or data");

export const leaveRoom = z.object({ type: z.literal("leave") });

/** Ends the room for everyone; only an agent may do it. */
export const endRoom = z.object({ type: z.literal("end"), reason: z.string().max(200).optional() });

export const clientFrame = z.union([sendMessage, leaveRoom, endRoom]);
export type ClientFrame = z.infer<typeof clientFrame>;

// ---- hub → participant ----
export const welcome = z.object({
  type: z.literal("welcome"),
  room: z.string(),
  you: participantInfo,
  participants: z.array(participantInfo),
});
export const participantJoined = z.object({ type: z.literal("participant_joined"), participant: participantInfo });
export const participantLeft = z.object({
  type: z.literal("participant_left"),
  participant: participantInfo,
});
export const roomMessage = z.object({
  type: z.literal("message"),
  from: participantInfo,
  text: z.string().optional(),
  data: z.unknown().optional(),
  at: z.number(),
});
export const roomEnded = z.object({ type: z.literal("room_ended"), reason: z.string() });
/**
 * `code`: bad_json, bad_frame, binary, too_large, forbidden, or rate_limited (the member sent faster
 * than the hub's per-member rate; that frame was dropped, the connection stays).
 */
export const roomError = z.object({ type: z.literal("error"), code: z.string(), message: z.string() });

export const hubFrame = z.discriminatedUnion("type", [
  welcome,
  participantJoined,
  participantLeft,
  roomMessage,
  roomEnded,
  roomError,
]);
export type HubFrame = z.infer<typeof hubFrame>;
export type RoomMessage = z.infer<typeof roomMessage>;

/** WebSocket close codes the hub uses beyond the standard ones. */
export const ROOM_CLOSE = {
  ended: 4000,
  replaced: 4001,
  /** The member did not read: more bytes waited for it than the hub holds for one member. */
  slow_consumer: 4002,
  /** The room filled up while this member's handshake completed; try again later. */
  room_full: 4003,
} as const;
