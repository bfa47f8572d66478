import { z } from "zod";
import { MAX_TEXT_CHARS } from "./room.ts";

/**
 * The room protocol's side the hub parses (see room.ts for the frames and the rest): room ids, and
 * the frames a participant sends. With zod, like the registry's other schemas; a job process, which
 * only ever parses hub frames, does not load this module.
 */

export const roomId = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9._-]+$/, "room id may hold letters, digits, '.', '_' and '-'");

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
