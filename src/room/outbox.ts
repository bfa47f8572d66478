import type { WebSocket } from "ws";
import { type HubFrame, ROOM_CLOSE } from "../protocol/room.ts";
import { SLOW_CONSUMER_CLOSE_GRACE_MS } from "./limits.ts";

/** A frame serialized once, for a broadcast that sends the same bytes to many members. */
export class EncodedFrame {
  readonly json: string;
  readonly bytes: number;

  constructor(frame: HubFrame) {
    this.json = JSON.stringify(frame);
    this.bytes = Buffer.byteLength(this.json);
  }
}

/**
 * The way out to one member's socket, with a bound on the bytes the socket has not written yet
 * (`ws.bufferedAmount`: the socket's write queue plus ws's own). A member that stops reading makes
 * that queue grow with every frame sent to it, in the hub's memory; past the bound the member is
 * dropped instead, so what one slow peer costs is bounded and the senders are never held back.
 */
export class Outbox {
  #dropped = false;

  constructor(
    readonly ws: WebSocket,
    private readonly maxPendingBytes: number,
    /** Told once, when the member is dropped for not reading. */
    private readonly onSlowConsumer: (pendingBytes: number) => void,
  ) {}

  /** Sends the frame, or drops the member when its queue would go over the bound. */
  send(frame: HubFrame | EncodedFrame): void {
    if (this.#dropped || this.ws.readyState !== this.ws.OPEN) return;
    const encoded = frame instanceof EncodedFrame ? frame : new EncodedFrame(frame);
    const pending = this.ws.bufferedAmount;
    // An empty queue always takes one frame, so a bound below the frame size cannot drop everyone.
    if (pending > 0 && pending + encoded.bytes > this.maxPendingBytes) this.#drop(pending);
    else this.ws.send(encoded.json);
  }

  close(code: number, reason: string): void {
    this.ws.close(code, reason);
  }

  /**
   * Closes with a code that says why, for a peer that is merely slow and may still read it, then
   * destroys the socket after a grace: that discards the queued bytes even when the peer never reads.
   */
  #drop(pendingBytes: number): void {
    this.#dropped = true;
    this.ws.close(ROOM_CLOSE.slow_consumer, `send queue over ${this.maxPendingBytes} bytes: not reading`);
    const timer = setTimeout(() => this.ws.terminate(), SLOW_CONSUMER_CLOSE_GRACE_MS);
    timer.unref();
    this.ws.once("close", () => clearTimeout(timer));
    this.onSlowConsumer(pendingBytes);
  }
}
