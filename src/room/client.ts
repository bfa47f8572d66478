import { EventEmitter } from "node:events";
import type WebSocket from "ws";
import { type HubFrame, hubFrame, type ParticipantInfo, type RoomMessage } from "../protocol/room.ts";
import * as v from "../vendor/valibot.ts";

export class RoomError extends Error {
  override readonly name = "RoomError";
}

export interface RoomConnectOptions {
  /** Display name; the token's name when absent. */
  name?: string;
  /** Milliseconds to wait for the hub's welcome. */
  timeoutMs?: number;
}

export interface SendOptions {
  /** Participant ids; everyone else in the room when absent. */
  to?: string[];
}

type RoomEvents = {
  participant_joined: [ParticipantInfo];
  participant_left: [ParticipantInfo];
  message: [RoomMessage];
  /** The room ended (by an agent or the hub) or the connection closed: `reason` says which. */
  ended: [string];
  error: [RoomError];
};

/** A room as one participant sees it: who is in it, their messages, and sending. */
export class RoomConnection extends EventEmitter<RoomEvents> {
  readonly participants = new Map<string, ParticipantInfo>();
  #endedReason: string | undefined;
  #finished = false;
  #close: { code: number; reason: string } | undefined;

  private constructor(
    readonly id: string,
    readonly self: ParticipantInfo,
    private readonly ws: WebSocket,
    others: ParticipantInfo[],
  ) {
    super();
    for (const p of others) this.participants.set(p.id, p);
  }

  /** Joins `/rooms/<id>` on a hub (`http://host:port` or `ws://…`). */
  static async connect(hubUrl: string, roomId: string, token: string, options: RoomConnectOptions = {}) {
    // Loaded on the first connect, not with the module: every job process imports this module
    // (through `import "troupe"`), and ws brings Node's http, https and tls (about 6 MB) with it.
    const { WebSocket: WebSocketClient } = await import("ws");
    const url = new URL(`/rooms/${encodeURIComponent(roomId)}`, hubUrl.replace(/^http/, "ws"));
    url.searchParams.set("token", token);
    if (options.name) url.searchParams.set("name", options.name);
    return new Promise<RoomConnection>((resolve, reject) => {
      const ws = new WebSocketClient(url, { perMessageDeflate: false });
      const timer = setTimeout(() => {
        ws.terminate();
        reject(new RoomError(`room ${roomId}: no welcome within ${options.timeoutMs ?? 10_000} ms`));
      }, options.timeoutMs ?? 10_000);
      let room: RoomConnection | undefined;
      let refused = false;
      // What arrives right behind the welcome (often in the same read, so in the same tick) waits for
      // the next turn of the event loop: the caller's `await connect()` has attached its listeners by then.
      let held: (() => void)[] | undefined;
      const deliver = (event: () => void) => {
        if (held) held.push(event);
        else event();
      };
      ws.on("unexpected-response", (_req, res) => {
        refused = true;
        let body = "";
        res.on("data", (chunk: Buffer) => {
          body += chunk.toString();
        });
        res.on("end", () => {
          clearTimeout(timer);
          const said = safeJson(body) as { error?: unknown } | undefined;
          const why = typeof said?.error === "string" ? said.error : body.slice(0, 500);
          reject(new RoomError(`room ${roomId} refused (${res.statusCode}): ${why}`));
          ws.terminate();
        });
      });
      ws.on("error", (error) => {
        if (refused) return;
        clearTimeout(timer);
        const current = room;
        if (!current) reject(new RoomError(`room ${roomId}: ${error.message}`));
        // (a close follows, which ends the room; an unheard "error" would throw)
        else deliver(() => current.listenerCount("error") > 0 && current.emit("error", new RoomError(error.message)));
      });
      ws.on("message", (raw) => {
        const parsed = v.safeParse(hubFrame, safeJson(raw.toString()));
        if (!parsed.success) return;
        if (!room) {
          if (parsed.output.type !== "welcome") return;
          clearTimeout(timer);
          room = new RoomConnection(parsed.output.room, parsed.output.you, ws, parsed.output.participants);
          held = [];
          setImmediate(() => {
            const events = held ?? [];
            held = undefined;
            for (const event of events) event();
          });
          resolve(room);
          return;
        }
        const current = room;
        const frame = parsed.output;
        deliver(() => current.#receive(frame));
      });
      ws.on("close", (code, reason) => {
        if (refused) return;
        clearTimeout(timer);
        if (!room) reject(new RoomError(`room ${roomId} closed before the welcome (${code} ${reason.toString()})`));
        else {
          const current = room;
          deliver(() => {
            current.#close = { code, reason: reason.toString() };
            current.#finish(current.#endedReason ?? "disconnected");
          });
        }
      });
    });
  }

  /** Set once the connection closed: why (the room's end reason, or "disconnected"). */
  get endedReason(): string | undefined {
    return this.#finished ? this.#endedReason : undefined;
  }

  /**
   * Set once the connection closed: the WebSocket close code and reason (the hub's own codes: 4000
   * the room ended, 4001 the same identity joined elsewhere, 4002 this client did not read, 4003
   * the room filled up).
   */
  get closed(): { code: number; reason: string } | undefined {
    return this.#close;
  }

  /** Participants other than this one. */
  others(): ParticipantInfo[] {
    return [...this.participants.values()];
  }

  send(message: string | { data: unknown }, options: SendOptions = {}): void {
    if (this.ws.readyState !== this.ws.OPEN) throw new RoomError(`room ${this.id} is not connected`);
    const body = typeof message === "string" ? { text: message } : { data: message.data };
    this.ws.send(JSON.stringify({ type: "message", ...body, ...(options.to ? { to: options.to } : {}) }));
  }

  /** Resolves with the first participant (not an agent) in the room, now or when one joins. */
  waitForParticipant(options: { timeoutMs?: number } = {}): Promise<ParticipantInfo> {
    const present = this.others().find((p) => p.kind === "participant");
    if (present) return Promise.resolve(present);
    return new Promise((resolve, reject) => {
      const cleanup = () => {
        clearTimeout(timer);
        this.off("participant_joined", onJoin);
        this.off("ended", onEnd);
      };
      const onJoin = (p: ParticipantInfo) => {
        if (p.kind !== "participant") return;
        cleanup();
        resolve(p);
      };
      const onEnd = (reason: string) => {
        cleanup();
        reject(new RoomError(`room ${this.id} ended (${reason}) before a participant joined`));
      };
      const timer =
        options.timeoutMs === undefined
          ? undefined
          : setTimeout(() => {
              cleanup();
              reject(new RoomError(`no participant joined room ${this.id} within ${options.timeoutMs} ms`));
            }, options.timeoutMs);
      this.on("participant_joined", onJoin);
      this.on("ended", onEnd);
    });
  }

  /** Ends the room for everyone (agents only); resolves when the connection is closed. */
  end(reason = "ended_by_agent"): Promise<void> {
    if (this.ws.readyState === this.ws.OPEN) this.ws.send(JSON.stringify({ type: "end", reason }));
    return this.#closed();
  }

  leave(): Promise<void> {
    if (this.ws.readyState === this.ws.OPEN) this.ws.close(1000, "left");
    return this.#closed();
  }

  #closed(): Promise<void> {
    if (this.ws.readyState === this.ws.CLOSED) return Promise.resolve();
    return new Promise((resolve) => this.ws.once("close", () => resolve()));
  }

  #receive(frame: HubFrame): void {
    switch (frame.type) {
      case "participant_joined":
        this.participants.set(frame.participant.id, frame.participant);
        this.emit("participant_joined", frame.participant);
        break;
      case "participant_left":
        this.participants.delete(frame.participant.id);
        this.emit("participant_left", frame.participant);
        break;
      case "message":
        this.emit("message", frame);
        break;
      case "room_ended":
        this.#endedReason = frame.reason;
        break;
      case "error":
        if (this.listenerCount("error") > 0) this.emit("error", new RoomError(`${frame.code}: ${frame.message}`));
        break;
      case "welcome":
        break;
    }
  }

  #finish(reason: string): void {
    if (this.#finished) return;
    this.#finished = true;
    this.#endedReason = reason;
    this.participants.clear();
    this.emit("ended", reason);
  }
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
