import { type ActorOptions, type AnyActorLogic, createActor, type InspectionEvent } from "xstate";
import { recordCoverage } from "./coverage.ts";

/** createActor with machine-coverage recording. Every test that drives a machine uses it. */
export function createTracedActor<TLogic extends AnyActorLogic>(logic: TLogic, options?: ActorOptions<TLogic>) {
  const userInspect = options?.inspect;
  const inspect = (event: InspectionEvent) => {
    recordCoverage(event);
    if (typeof userInspect === "function") userInspect(event);
    else userInspect?.next?.(event);
  };
  return createActor(logic, { ...options, inspect } as ActorOptions<TLogic>);
}
