import type { AnyActorRef, InspectionEvent } from "xstate";
import { stateText } from "./state-text.ts";

/**
 * What happened to one actor: an event it took and the state it went from and to. Event types and
 * state paths only: events' payloads (metadata, tokens, errors) are never kept.
 */
export interface ActorEventEntry {
  /** clock.now() of the latest occurrence. */
  at: number;
  event: string;
  /** Null for the actor's first snapshot. */
  from: string | null;
  to: string;
  /** The same event between the same states in a row is one entry, counted (a session's status updates). */
  count: number;
}

export interface ActorEvents {
  actor: string;
  /** The actor stopped or reached a final state; its list is kept a while for the dashboard. */
  ended: boolean;
  /** Oldest first. */
  events: ActorEventEntry[];
}

export interface ActorEventLogLimits {
  /** Entries kept per actor (the oldest go first). */
  perActor: number;
  /** Actors followed at once, running or ended (the one quiet for longest goes first). */
  maxActors: number;
  /** Ended actors kept among those (the one ended longest ago goes first). */
  maxEnded: number;
}

export const DEFAULT_ACTOR_EVENT_LIMITS: ActorEventLogLimits = { perActor: 50, maxActors: 2000, maxEnded: 200 };

/** The longest event type kept; machine event types are short, this only bounds the unexpected. */
const MAX_EVENT_TYPE = 100;

/** The path both dashboards (the registry's and a worker's own) ask for one actor's recent events (`?actor=<id>`). */
export const ACTOR_EVENTS_PATH = "/dashboard/actor-events";

/**
 * Which actors a log follows and the name each is kept under; undefined leaves the actor out.
 * `rootId` is the session id of the root of the actor's system.
 */
export type FollowedActor = (actor: AnyActorRef, rootId: string) => string | undefined;

/** Root actors only, by id: the registry's sessions and dispatches (each the root of its own system). */
export const rootActors: FollowedActor = (actor, rootId) =>
  actor.sessionId === rootId ? ((actor as { id?: string }).id ?? actor.sessionId) : undefined;

interface Track {
  /** The actor instance: an id used again by a later actor (a job offered again) starts a new list. */
  sessionId: string;
  ended: boolean;
  events: ActorEventEntry[];
}

/**
 * The recent events of some actors, for a dashboard: the registry's sessions and dispatches, or a
 * worker's root with its slots and jobs. Fed by `observer`, an XState inspection observer given to
 * the actors (XState hands it every actor of their systems; `follow` picks which are kept). Bounded
 * three ways (per actor, actors in all, ended actors) so neither peers nor a long-running worker can
 * grow it without limit; each map's insertion order is its eviction order.
 */
export class ActorEventLog {
  readonly #limits: ActorEventLogLimits;
  readonly #now: () => number;
  readonly #follow: FollowedActor;
  /** Every followed actor, least recently updated first. */
  readonly #tracks = new Map<string, Track>();
  /** Ended actors' ids, ended longest ago first. */
  readonly #ended = new Set<string>();

  constructor(now: () => number, limits: Partial<ActorEventLogLimits> = {}, follow: FollowedActor = rootActors) {
    this.#now = now;
    this.#limits = { ...DEFAULT_ACTOR_EVENT_LIMITS, ...limits };
    this.#follow = follow;
  }

  /** The inspection observer: records each snapshot of a followed actor that has states. */
  readonly observer = (event: InspectionEvent): void => {
    if (event.type !== "@xstate.snapshot") return;
    const snapshot = event.snapshot as { status?: string; value?: unknown };
    if (snapshot.value === undefined) return;
    const actor = this.#follow(event.actorRef as AnyActorRef, event.rootId);
    if (actor === undefined) return;
    this.#record(
      actor,
      event.actorRef.sessionId,
      event.event.type,
      stateText(snapshot.value),
      snapshot.status !== undefined && snapshot.status !== "active",
    );
  };

  /** The actor's recent events, oldest first; undefined when it is not followed (never seen, or evicted). */
  recent(actor: string): ActorEvents | undefined {
    const track = this.#tracks.get(actor);
    if (!track) return undefined;
    return { actor, ended: track.ended, events: track.events.map((entry) => ({ ...entry })) };
  }

  /** The state the actor was last seen in. */
  lastState(actor: string): string | undefined {
    return this.#tracks.get(actor)?.events.at(-1)?.to;
  }

  get size(): number {
    return this.#tracks.size;
  }

  #record(actor: string, sessionId: string, eventType: string, to: string, ended: boolean): void {
    const event = eventType.length > MAX_EVENT_TYPE ? `${eventType.slice(0, MAX_EVENT_TYPE)}…` : eventType;
    const at = this.#now();
    let track = this.#tracks.get(actor);
    if (track && track.sessionId !== sessionId) {
      this.#forget(actor);
      track = undefined;
    }
    // Re-inserted: the map's order is least recently updated first.
    if (track) this.#tracks.delete(actor);
    else track = { sessionId, ended: false, events: [] };
    this.#tracks.set(actor, track);
    const last = track.events.at(-1);
    const from = last ? last.to : null;
    if (last && last.event === event && last.from === from && last.to === to) {
      last.count++;
      last.at = at;
    } else {
      track.events.push({ at, event, from, to, count: 1 });
      if (track.events.length > this.#limits.perActor) track.events.shift();
    }
    if (ended && !track.ended) {
      track.ended = true;
      this.#ended.add(actor);
    }
    this.#evict();
  }

  #evict(): void {
    for (const actor of this.#ended) {
      if (this.#ended.size <= this.#limits.maxEnded) break;
      this.#forget(actor);
    }
    for (const actor of this.#tracks.keys()) {
      if (this.#tracks.size <= this.#limits.maxActors) break;
      this.#forget(actor);
    }
  }

  #forget(actor: string): void {
    this.#tracks.delete(actor);
    this.#ended.delete(actor);
  }
}
