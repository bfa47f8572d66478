import { randomUUID } from "node:crypto";
import type { Credentials } from "../../auth/tokens.ts";
import type { InspectionObserver } from "../../observability/inspect.ts";
import type { Logger } from "../../observability/logger.ts";
import type { RegistryMessage } from "../../protocol/registry.ts";
import type { NodeMessage, WorkerView } from "../cluster/messages.ts";
import type { RegistryMetrics } from "../metrics.ts";
import type { JobRecord, JobStore } from "../store.ts";
import type { RegistryTiming } from "../timing.ts";

/**
 * What the registry core needs from the world, in one object. The core has no sockets, servers,
 * Redis clients or timers of its own: the WebSocket gateway, the HTTP API, the Redis store and bus
 * are adapters that implement these (and a simulation implements them in memory).
 */
export interface RegistryDeps {
  credentials: Credentials;
  transport: WorkerTransport;
  store: JobStore;
  /** Absent: one registry node. Present: a node of a cluster sharing the store. */
  bus?: NodeBus;
  /** Wall time (`now()`) and the timers of every machine the core runs. */
  clock: RegistryClock;
  random: () => number;
  /** A fresh id for a job ("job-…") or a worker ("w-…"); random UUIDs in production, seeded in a simulation. */
  newId(kind: "job" | "worker"): string;
  timing: RegistryTiming;
  logger: Logger;
  metrics: RegistryMetrics;
  rooms?: RoomAccess;
  /**
   * Given to every session and dispatch actor the core creates (XState's `inspect`): it sees each
   * one's inspection events. The core adds its own recorder for the dashboard in front of it.
   */
  inspect?: InspectionObserver;
}

/** XState's clock interface (setTimeout/clearTimeout for `after` transitions), plus the time. */
export interface RegistryClock {
  setTimeout(fn: (...args: unknown[]) => void, timeout: number): unknown;
  clearTimeout(id: unknown): void;
  /** Milliseconds since the epoch (Date.now() in production). */
  now(): number;
}

/** Random UUIDs, for production. */
export const uuidIds = (kind: "job" | "worker") => `${kind === "job" ? "job" : "w"}-${randomUUID()}`;

/** Real time, for production. */
export const systemClock: RegistryClock = {
  setTimeout: (fn, timeout) => setTimeout(fn, timeout),
  clearTimeout: (id) => clearTimeout(id as NodeJS.Timeout),
  now: () => Date.now(),
};

/** The connections workers reach the registry on; ids are the transport's own. */
export interface WorkerTransport {
  /** False when the connection is gone or not open. */
  send(connectionId: string, message: RegistryMessage): boolean;
  /** Closes with a code and reason (the worker may come back). */
  close(connectionId: string, code: number, reason: string): void;
}

/** The other registry nodes of a cluster: their workers, their liveness and a channel to each. */
export interface NodeBus {
  readonly nodeId: string;
  /** Connected to the shared store and bus: the node can serve. */
  readonly connected: boolean;
  /** How often every node renews its presence (and so notices that Redis lost its data). */
  readonly heartbeatMs: number;
  /**
   * Since when this node's presence key has surely stood without a break (see
   * src/registry/cluster/presence.ts), or +∞ when it may be gone now: no other node can have taken
   * this one for dead since then.
   */
  presenceHeldSince(): number;
  /** Workers connected to other live nodes, as they last published them. */
  remoteViews(): WorkerView[];
  isLive(nodeId: string): boolean;
  /** Into the node's inbox: kept until that node has handled it, even across its restart. */
  send(nodeId: string, message: NodeMessage): void;
  /**
   * Claims the job from this node for `to` and puts the message in `to`'s inbox, in one step;
   * resolves with the claimed record, or undefined when the claim lost.
   */
  handOff(jobId: string, to: string, message: NodeMessage): Promise<JobRecord | undefined>;
  publishView(view: WorkerView): void;
  publishGone(workerId: string): void;
}

/** What a worker needs to put its job into a room: the hub's URL and the agent's token. */
export interface RoomAssignment {
  url: string;
  token: string;
}

/**
 * Rooms for dispatched jobs: a job without a room id gets a new room, and its assignment carries the
 * agent's token and the hub's URL. Absent = jobs carry only the room id they were dispatched with.
 */
export interface RoomAccess {
  newRoomId(jobId: string): string;
  forAgent(roomId: string, jobId: string, agentName: string): Promise<RoomAssignment>;
}

export interface DispatchRequest {
  agentName: string;
  roomId?: string;
  metadata?: Record<string, unknown>;
  roomOptions?: Record<string, unknown>;
  maxDuration?: number;
  idempotencyKey?: string;
  redispatch?: boolean;
  /**
   * W3C trace context of the caller (the `traceparent` and `tracestate` headers of `POST /v1/jobs`):
   * the dispatch's spans join that trace. Invalid or absent: a new trace starts.
   */
  traceparent?: string;
  tracestate?: string;
}

export type { JobRecord };
