import type { SocketEvent } from "../../machines/connection.ts";
import type { RegistryMessage, WorkerMessage } from "../protocol/registry.ts";

/**
 * The worker's side of the registry's leases, in the worker's own clock (machines read no clock, so
 * the socket measures here and hands the machines durations). A lease counts from the moment the
 * worker sent what the registry answered (its `register` or a ping), never from when the answer
 * arrived: the registry answered after that moment, so the worker's lease always ends before the
 * one the registry counts, however slow the link was. One per socket (one connection). `now` must
 * be a clock that never steps back (see monotonicNow).
 */
export class LeaseClock {
  #leaseMs: number | null = null;
  #registerSentAt: number | null = null;
  /** When the newest round trip the registry answered was sent; −∞ before any. */
  #answeredSentAt = Number.NEGATIVE_INFINITY;

  /** A message leaves for the registry at `now`. */
  sent(message: WorkerMessage, now: number): void {
    if (message.type === "register") this.#registerSentAt = now;
  }

  /** The lease fields of a machine event for a message from the registry that arrived at `now`. */
  received(message: RegistryMessage, event: SocketEvent, now: number): SocketEvent {
    switch (message.type) {
      case "register": {
        if (event.type !== "registry.registered" || message.lease_ms === undefined) return event;
        this.#leaseMs = message.lease_ms;
        if (this.#registerSentAt !== null) this.#answered(this.#registerSentAt, now);
        return { ...event, leaseMs: message.lease_ms };
      }
      case "pong": {
        // Only a timestamp this worker could have sent counts: never one from the future.
        if (message.timestamp > now || event.type !== "registry.pong") return event;
        this.#answered(message.timestamp, now);
        if (this.#leaseMs === null || !message.leased) return event;
        const validForMs = message.timestamp + this.#leaseMs - now;
        return validForMs > 0 ? { ...event, lease: { jobIds: message.leased, validForMs } } : event;
      }
      case "job_assignment": {
        if (message.lease_ms === undefined || event.type !== "registry.assigned") return event;
        // The registry sent this after answering the newest round trip heard back (one ordered link),
        // and counts the job's lease from no earlier than sending it.
        const validForMs = Math.min(message.lease_ms, Math.max(0, this.#answeredSentAt + message.lease_ms - now));
        return { ...event, spec: { ...event.spec, leaseValidForMs: validForMs } };
      }
      default:
        return event;
    }
  }

  #answered(sentAt: number, now: number): void {
    if (sentAt <= now) this.#answeredSentAt = Math.max(this.#answeredSentAt, sentAt);
  }
}

/** Milliseconds on a clock that never steps back (unlike Date.now()), for pings and leases. */
export function monotonicNow(): number {
  return performance.timeOrigin + performance.now();
}
