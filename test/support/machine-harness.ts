import { expect } from "vitest";
import {
  type ActorOptions,
  type AnyActorRef,
  type AnyEventObject,
  type AnyStateMachine,
  type EmittedFrom,
  type EventFromLogic,
  type EventObject,
  fromCallback,
  type InputFrom,
  type InspectionEvent,
  SimulatedClock,
} from "xstate";
import { createTracedActor } from "./actor.ts";
import { cooperativeBehaviour, type FakeBehaviour } from "./fake-process.ts";

/**
 * What the machine unit suites share: a machine run as a root or hosted as a child under a recording
 * parent (./host.ts), on a SimulatedClock, with coverage recording; fake process actors and their usual
 * behaviours; actors the test speaks for; and promises the test settles. Nothing here waits on time.
 */
export { cooperativeBehaviour, type FakeBehaviour, type FakeProcess, FakeProcesses } from "./fake-process.ts";
export { hostChild } from "./host.ts";

/** Lets already-settled promises (a promise actor's answer) reach the machines. */
export const flush = () => new Promise<void>((resolve) => setImmediate(resolve));

/** A promise the test resolves or rejects when it chooses. */
export function deferred<T>() {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** An event delivered to an actor of the system under test, with the session id of its sender. */
export interface Delivered {
  to: string;
  from: string | undefined;
  event: AnyEventObject;
}

export interface RunOptions<TMachine extends AnyStateMachine> {
  input: InputFrom<TMachine>;
  /**
   * Keep the root's error in `errors` for the test to check. Without it an error of the root is
   * unhandled and fails the test run on its own.
   */
  collectErrors?: boolean;
}

/**
 * Runs a machine as the root of its own system on a SimulatedClock: records what it emits, every
 * event delivered inside the system, and (with collectErrors) the error it fails with.
 */
export function runMachine<TMachine extends AnyStateMachine>(machine: TMachine, options: RunOptions<TMachine>) {
  type Emitted = EmittedFrom<TMachine>;
  const clock = new SimulatedClock();
  const emitted: Emitted[] = [];
  const delivered: Delivered[] = [];
  const errors: unknown[] = [];
  const actor = createTracedActor(machine, {
    clock,
    input: options.input,
    inspect: (event: InspectionEvent) => {
      if (event.type !== "@xstate.event") return;
      delivered.push({
        to: (event.actorRef as AnyActorRef).id,
        from: (event.sourceRef as AnyActorRef | undefined)?.sessionId,
        event: event.event as AnyEventObject,
      });
    },
  } as ActorOptions<TMachine>);
  if (options.collectErrors) actor.subscribe({ error: (error) => errors.push(error) });
  actor.on("*", (event) => emitted.push(event as Emitted));
  actor.start();
  const snapshot = () => actor.getSnapshot();
  const value = () => JSON.stringify((snapshot() as { value: unknown }).value);
  return {
    actor,
    clock,
    emitted,
    delivered,
    errors,
    snapshot,
    send: (event: EventFromLogic<TMachine>) => actor.send(event),
    /** The events of one type the machine emitted, in order. */
    emittedOf: <T extends Emitted["type"]>(type: T) =>
      emitted.filter((e): e is Extract<Emitted, { type: T }> => e.type === type),
    /** Advances a deadline in two steps, checking nothing happens a millisecond early. */
    elapse: (ms: number) => {
      const before = value();
      const count = emitted.length;
      clock.increment(ms - 1);
      expect(value()).toBe(before);
      expect(emitted.length).toBe(count);
      clock.increment(1);
    },
  };
}

/** The type of event a scripted actor's test turns into a failure of the actor. */
export const BREAK = "test.break";

/**
 * A callback actor the test speaks for: it records what the machine sends it, sends the machine
 * what the test says, and fails when it receives BREAK (an exception in receive fails the actor).
 */
export function scriptedActor<TReceived extends EventObject, TSent extends EventObject>(name: string) {
  const received: TReceived[] = [];
  let sendBack: ((event: TSent) => void) | null = null;
  const logic = fromCallback<TReceived>(({ receive, sendBack: back }) => {
    sendBack = back as (event: TSent) => void;
    receive((event) => {
      if ((event as EventObject).type === BREAK) throw new Error(`${name} broke`);
      received.push(event);
    });
  });
  return {
    logic,
    received,
    send(event: TSent) {
      if (!sendBack) throw new Error(`${name} not started`);
      sendBack(event);
    },
  };
}

// ---- how a fake child process behaves -------------------------------------------------------------

/** Spawns but never reports ready until the test says so; otherwise cooperative. */
export function warmingBehaviour(): FakeBehaviour {
  return { onStart: (p) => p.emit({ type: "proc.spawned", pid: p.pid }), onCommand: cooperativeBehaviour().onCommand };
}

/** Never even reports spawned, and answers nothing. */
export function unspawnedBehaviour(): FakeBehaviour {
  return { onStart: () => {} };
}

/** Fails to spawn. */
export function spawnFailingBehaviour(): FakeBehaviour {
  return { onStart: (p) => p.emit({ type: "proc.spawn_failed", error: { name: "Error", message: "ENOMEM" } }) };
}

/** Warms and runs jobs but ignores the shutdown request and SIGTERM: only SIGKILL ends it. */
export function slowExitBehaviour(): FakeBehaviour {
  return {
    onStart: (p) => {
      p.emit({ type: "proc.spawned", pid: p.pid });
      p.emit({ type: "proc.ready" });
    },
    onCommand: (p, command) => {
      if (command.type === "ping") p.emit({ type: "proc.pong" });
      if (command.type === "start_job") p.emit({ type: "proc.job_running" });
      if (command.type === "signal" && command.signal === "SIGKILL")
        p.emit({ type: "proc.exit", code: null, signal: "SIGKILL" });
    },
  };
}
