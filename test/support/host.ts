import { type AnyActorRef, type AnyEventObject, type AnyStateMachine, SimulatedClock, setup } from "xstate";
import { createTracedActor } from "./actor.ts";

/**
 * Runs a child machine (slot, job, connection) under a minimal parent, as the worker root would,
 * so its sendParent notifications are real and recorded. One SimulatedClock drives every timer.
 */
export function hostChild<TMachine extends AnyStateMachine>(child: TMachine, input: unknown) {
  const clock = new SimulatedClock();
  const received: AnyEventObject[] = [];
  const hostMachine = setup({
    actors: { sut: child as AnyStateMachine },
    actions: {
      record: ({ event }) => {
        received.push(event as AnyEventObject);
      },
    },
  }).createMachine({
    id: "host",
    invoke: { id: "sut", src: "sut", input: () => input },
    on: { "*": { actions: "record" } },
  });
  const host = createTracedActor(hostMachine, { clock });
  host.start();
  const sut = () => host.getSnapshot().children.sut as AnyActorRef;
  return {
    clock,
    host,
    /** The child actor under test. */
    sut,
    /** Events the child sent to its parent, in order (plus its done/error event). */
    received,
    send: (event: AnyEventObject) => sut().send(event),
    snapshot: () => sut().getSnapshot(),
    ofType: (type: string) => received.filter((e) => e.type === type),
  };
}
