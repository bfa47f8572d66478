import type { AnyActorRef, InspectionEvent, Observer, StateValue } from "xstate";
import type { Logger } from "./logger.ts";

/**
 * What XState's `createActor(logic, { inspect })` accepts: a callback, or an observer whose `next`
 * gets every inspection event (`@xstate.actor`, `@xstate.event`, `@xstate.snapshot`, …) of the
 * actor and of every actor it spawns or invokes. `@statelyai/inspect`'s `inspector.inspect` is one.
 */
export type InspectionObserver = Observer<InspectionEvent> | ((event: InspectionEvent) => void);

/** The `inspect` option: true logs transitions at debug level, false nothing, an observer gets every event. */
export type InspectOption = boolean | InspectionObserver;

/** The message both the worker's Options and createRegistry give for an `inspect` of the wrong kind. */
export const INSPECT_OPTION_PROBLEM =
  "inspect must be true, false, a function or an observer object with a next(event) method";

/** A callback, or an object with a `next` method: what XState calls with inspection events. */
export function isInspectionObserver(value: unknown): value is InspectionObserver {
  if (typeof value === "function") return true;
  return value !== null && typeof value === "object" && typeof (value as { next?: unknown }).next === "function";
}

export function isInspectOption(value: unknown): value is InspectOption {
  return typeof value === "boolean" || isInspectionObserver(value);
}

/**
 * One inspect callback that hands each event to every observer given, in order. XState calls
 * inspection observers inside the actor's own step, so an observer that throws would break the
 * machine it watches: its errors are caught, and the first is logged.
 */
export function combineInspectors(
  logger: Logger,
  ...observers: (InspectionObserver | undefined)[]
): ((event: InspectionEvent) => void) | undefined {
  const callbacks = observers.flatMap((observer) => (observer ? [guarded(observer, logger)] : []));
  if (callbacks.length === 0) return undefined;
  if (callbacks.length === 1) return callbacks[0];
  return (event) => {
    for (const callback of callbacks) callback(event);
  };
}

function guarded(observer: InspectionObserver, logger: Logger): (event: InspectionEvent) => void {
  const next = typeof observer === "function" ? observer : (event: InspectionEvent) => observer.next?.(event);
  let reported = false;
  return (event) => {
    try {
      next(event);
    } catch (error) {
      if (reported) return;
      reported = true;
      logger.warn(
        { err: (error as Error)?.message ?? String(error) },
        "an inspect observer threw; its errors are ignored",
      );
    }
  };
}

/** The inspect callback an `inspect` option stands for: the transition logger for true, none for false. */
export function inspectorFor(option: InspectOption, logger: Logger): ((event: InspectionEvent) => void) | undefined {
  if (option === false) return undefined;
  if (option === true) return createTransitionInspector(logger);
  return combineInspectors(logger, option);
}

export interface TransitionRecord {
  actor: string;
  from: StateValue | undefined;
  event: string;
  to: StateValue;
}

function flatten(value: StateValue | undefined): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value === "string") return value;
  return Object.entries(value)
    .map(([key, child]) => {
      const inner = flatten(child);
      return inner ? `${key}.${inner}` : key;
    })
    .join(" | ");
}

/**
 * An inspect callback that logs every state change of every actor in the system at debug level:
 * actor id, from, event, to. Actors without states (callbacks, promises) are skipped.
 */
export function createTransitionInspector(
  logger: Logger,
  onTransition?: (record: TransitionRecord) => void,
): (event: InspectionEvent) => void {
  const lastValue = new WeakMap<AnyActorRef, StateValue>();
  return (event) => {
    if (event.type !== "@xstate.snapshot") return;
    const snapshot = event.snapshot as { value?: StateValue };
    if (snapshot.value === undefined) return;
    const actor = event.actorRef as AnyActorRef;
    const from = lastValue.get(actor);
    lastValue.set(actor, snapshot.value);
    if (from !== undefined && flatten(from) === flatten(snapshot.value)) return;
    const record: TransitionRecord = { actor: actor.id, from, event: event.event.type, to: snapshot.value };
    onTransition?.(record);
    if (logger.isLevelEnabled("debug")) {
      logger.debug(
        { actor: record.actor, from: flatten(record.from) ?? null, event: record.event, to: flatten(record.to) },
        "transition",
      );
    }
  };
}
