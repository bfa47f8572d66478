import { type ActorOptions, type AnyActorLogic, type AnyActorRef, createActor, fromPromise } from "xstate";
import { jobMachine } from "../../machines/job.ts";
import type { JobSpec } from "../../machines/shared.ts";
import type { ProcessCommand, ProcessEvent, ProcessInput } from "../../machines/slot.ts";
import { slotMachine } from "../../machines/slot.ts";
import { workerMachine } from "../../machines/worker.ts";
import { ActorEventLog, type FollowedActor } from "../observability/actor-events.ts";
import { combineInspectors, inspectorFor } from "../observability/inspect.ts";
import type { Logger } from "../observability/logger.ts";
import type { Options } from "../options.ts";
import { workerInputFrom } from "./machine-input.ts";

/** The actors that touch the world, provided to the pure machines. */
export interface WorkerImplementations {
  /** One child process per slot (a fork in production, a fake in tests). */
  process: AnyActorLogic & { __process?: [ProcessCommand, ProcessInput, ProcessEvent] };
  /** The registry link (the connection machine with a real socket) or a local stand-in. */
  registryLink?: AnyActorLogic;
  /** Sends `worker.load` samples (CPU or the user's loadFn). */
  loadSampler?: AnyActorLogic;
}

export interface WorkerActorSettings {
  logger: Logger;
  clock?: ActorOptions<AnyActorLogic>["clock"];
  random?: () => number;
  linkInput?: unknown;
  /** Keeps the recent events of the root, its slots and its jobs for the worker's dashboard. */
  actorEvents?: ActorEventLog;
}

/** The worker root's id: the name its events are kept under and the dashboard asks for. */
export const WORKER_ACTOR_ID = "worker";

/** A slot's or a job's actor id, as the worker machine names its children. */
export const WORKER_CHILD_ID = /^(slot\.\d+|job\.\S+)$/;

/**
 * The actors a worker's dashboard lists: the root and its slot and job children, by id. Their own
 * children (a slot's process, a job's offer decision) and the registry link are left out.
 */
export const workerDashboardActors: FollowedActor = (actor, rootId) => {
  if (actor.sessionId === rootId) return actor.id;
  const parent = (actor as AnyActorRef & { _parent?: AnyActorRef })._parent;
  return parent?.sessionId === rootId && WORKER_CHILD_ID.test(actor.id) ? actor.id : undefined;
};

/** A log of the worker's own actors' recent events, bounded as ActorEventLog's defaults say. */
export function createWorkerActorEvents(now: () => number = Date.now): ActorEventLog {
  return new ActorEventLog(now, {}, workerDashboardActors);
}

/** The user's requestFn as the job machine's decideOffer actor: only a literal `true` accepts. */
function decideWith(options: Options) {
  const requestFn = options.requestFn;
  return fromPromise<boolean, JobSpec>(async ({ input }) => {
    if (!requestFn) return true;
    const answer = await requestFn({
      jobId: input.jobId,
      ...(input.agentName ? { agentName: input.agentName } : {}),
      ...(input.roomId ? { roomId: input.roomId } : {}),
      ...(input.metadata ? { metadata: input.metadata } : {}),
    });
    return answer === true;
  });
}

/**
 * Builds the worker root actor from Options: the machine with its real actors provided, every delay
 * from the options, and `options.inspect` attached: `true` logs every transition at debug level, an
 * observer gets every inspection event. XState inspects at the level of the actor system, so the
 * root's inspector also sees every slot, job and registry link the worker spawns or invokes.
 * `settings.actorEvents`, when given, is fed from the same events (the dashboard's event lists).
 */
export function createWorkerActor(options: Options, impl: WorkerImplementations, settings: WorkerActorSettings) {
  const machine = workerMachine.provide({
    actors: {
      slot: slotMachine.provide({ actors: { process: impl.process as never } }),
      ...(options.requestFn ? { job: jobMachine.provide({ actors: { decideOffer: decideWith(options) } }) } : {}),
      ...(impl.registryLink ? { registryLink: impl.registryLink as never } : {}),
      ...(impl.loadSampler ? { loadSampler: impl.loadSampler as never } : {}),
    },
  });
  // The dashboard's log and the user's inspect option each see every event; neither changes the other.
  const inspect = combineInspectors(
    settings.logger,
    settings.actorEvents?.observer,
    inspectorFor(options.inspect, settings.logger),
  );
  return createActor(machine, {
    id: WORKER_ACTOR_ID,
    systemId: "worker",
    input: workerInputFrom(options, settings.random ?? Math.random, settings.linkInput),
    ...(settings.clock ? { clock: settings.clock } : {}),
    ...(inspect ? { inspect } : {}),
  });
}
