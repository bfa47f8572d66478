import type { ResolvedRoomOptions } from "../options.ts";
import type { RoomConnection } from "../room/client.ts";

/** Why a job's session in its room ended by itself. */
export type SessionEndReason = "session_ended" | "no_participant" | "room_ended" | "room_disconnected";

type SessionOptions = Pick<
  ResolvedRoomOptions,
  "autoEndSession" | "sessionTimeoutSeconds" | "noParticipantTimeoutSeconds"
>;

/**
 * Applies RoomOptions to a connected room: with `autoEndSession`, the session ends
 * `sessionTimeoutSeconds` after the last participant leaves (0 = at once); with
 * `noParticipantTimeoutSeconds` > 0 it ends when nobody joins in time; it also ends when the room
 * ends or the connection drops. Calls `end` at most once; returns a function that stops watching.
 */
export function superviseSession(
  room: RoomConnection,
  options: SessionOptions,
  end: (reason: SessionEndReason, detail?: string) => void,
): () => void {
  let timer: NodeJS.Timeout | undefined;
  let finished = false;
  const humans = () => room.others().filter((p) => p.kind === "participant").length;
  const finish = (reason: SessionEndReason, detail?: string) => {
    if (finished) return;
    stop();
    end(reason, detail);
  };
  const arm = (seconds: number, reason: SessionEndReason) => {
    clearTimeout(timer);
    timer = setTimeout(() => finish(reason), seconds * 1000);
  };
  const onJoined = () => {
    if (humans() > 0) clearTimeout(timer);
  };
  const onLeft = () => {
    if (!options.autoEndSession || humans() > 0) return;
    if (options.sessionTimeoutSeconds === 0) finish("session_ended");
    else arm(options.sessionTimeoutSeconds, "session_ended");
  };
  const onEnded = (reason: string) => finish(reason === "disconnected" ? "room_disconnected" : "room_ended", reason);
  const stop = () => {
    finished = true;
    clearTimeout(timer);
    room.off("participant_joined", onJoined);
    room.off("participant_left", onLeft);
    room.off("ended", onEnded);
  };
  room.on("participant_joined", onJoined);
  room.on("participant_left", onLeft);
  room.on("ended", onEnded);
  if (humans() === 0 && options.noParticipantTimeoutSeconds > 0) {
    arm(options.noParticipantTimeoutSeconds, "no_participant");
  }
  return stop;
}
