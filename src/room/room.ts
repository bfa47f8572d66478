import { type HubFrame, type ParticipantInfo, ROOM_CLOSE } from "../protocol/room.ts";
import type { ClientFrame } from "../protocol/room-requests.ts";
import type { RoomGrant } from "./hub.ts";
import { EncodedFrame, type Outbox } from "./outbox.ts";

export interface RoomHooks {
  emptyTtlMs: number;
  onJoined(participant: ParticipantInfo): void;
  onLeft(participant: ParticipantInfo): void;
  /** The room is forgotten: `ended` when someone ended it, not when it stayed empty. */
  onGone(reason: string, ended: boolean): void;
}

interface Member {
  info: ParticipantInfo;
  outbox: Outbox;
}

/** One room: its members, their join/leave events and their messages. */
export class Room {
  readonly createdAt = Date.now();
  readonly #members = new Map<string, Member>();
  #emptyTimer: NodeJS.Timeout | undefined;
  #ended = false;

  constructor(
    readonly id: string,
    private readonly hooks: RoomHooks,
  ) {
    this.#armEmptyTimer();
  }

  get size(): number {
    return this.#members.size;
  }

  has(identity: string): boolean {
    return this.#members.has(identity);
  }

  participantList(): ParticipantInfo[] {
    return [...this.#members.values()].map((m) => m.info);
  }

  summary() {
    return { id: this.id, createdAt: this.createdAt, participants: this.participantList() };
  }

  /** Adds the member and returns the outbox it replaces when the same identity was already in. */
  join(grant: RoomGrant, outbox: Outbox): Outbox | undefined {
    if (this.#ended) {
      outbox.send({ type: "room_ended", reason: "ended" });
      outbox.close(ROOM_CLOSE.ended, "room ended");
      return undefined;
    }
    clearTimeout(this.#emptyTimer);
    const previous = this.#members.get(grant.identity);
    const info: ParticipantInfo = { id: grant.identity, name: grant.name, kind: grant.kind, joined_at: Date.now() };
    this.#members.set(grant.identity, { info, outbox });
    outbox.send({
      type: "welcome",
      room: this.id,
      you: info,
      participants: this.participantList().filter((p) => p.id !== info.id),
    });
    if (!previous) {
      this.#toOthers(info.id, { type: "participant_joined", participant: info });
      this.hooks.onJoined(info);
    }
    return previous?.outbox;
  }

  /** Only the member's current connection leaves; a replaced one closing changes nothing. */
  leave(identity: string, outbox: Outbox): void {
    const member = this.#members.get(identity);
    if (!member || member.outbox !== outbox) return;
    this.#members.delete(identity);
    if (this.#ended) return;
    this.#toOthers(identity, { type: "participant_left", participant: member.info });
    this.hooks.onLeft(member.info);
    if (this.#members.size === 0) this.#armEmptyTimer();
  }

  broadcast(fromIdentity: string, message: Extract<ClientFrame, { type: "message" }>): void {
    const from = this.#members.get(fromIdentity)?.info;
    if (!from) return;
    const frame: HubFrame = { type: "message", from, at: Date.now() };
    if (message.text !== undefined) frame.text = message.text;
    if (message.data !== undefined) frame.data = message.data;
    const to = message.to ? new Set(message.to) : undefined;
    // Serialized once for all recipients; a recipient dropped as slow meanwhile leaves the map,
    // which iteration tolerates.
    const encoded = new EncodedFrame(frame);
    for (const [id, member] of this.#members) {
      if (id === fromIdentity || (to && !to.has(id))) continue;
      member.outbox.send(encoded);
    }
  }

  end(reason: string): void {
    if (this.#ended) return;
    this.#ended = true;
    clearTimeout(this.#emptyTimer);
    const ended = new EncodedFrame({ type: "room_ended", reason });
    for (const member of this.#members.values()) {
      member.outbox.send(ended);
      member.outbox.close(ROOM_CLOSE.ended, "room ended");
    }
    this.#members.clear();
    this.hooks.onGone(reason, true);
  }

  #toOthers(identity: string, frame: HubFrame): void {
    const encoded = new EncodedFrame(frame);
    for (const [id, member] of this.#members) if (id !== identity) member.outbox.send(encoded);
  }

  #armEmptyTimer(): void {
    clearTimeout(this.#emptyTimer);
    this.#emptyTimer = setTimeout(() => {
      if (this.#members.size === 0 && !this.#ended) this.hooks.onGone("empty", false);
    }, this.hooks.emptyTtlMs);
    this.#emptyTimer.unref();
  }
}
