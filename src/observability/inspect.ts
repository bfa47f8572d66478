import type { AnyActorRef, InspectionEvent, StateValue } from "xstate";
import type { Logger } from "./logger.ts";

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
