import type { AnyActorRef, AnyMachineSnapshot, StateValue } from "xstate";
import type { WorkerContext } from "../../machines/worker.ts";
import { jobActorId, loadOf } from "../../machines/worker.ts";
import { stateText } from "../observability/state-text.ts";
import type { Options } from "../options.ts";
import type { ProcessTracker } from "./process-tracker.ts";
import { WORKER_ACTOR_ID } from "./worker-actor.ts";

/**
 * A state value as text: every active region's full path from the root (`active.lifecycle.running.available
 * | active.pool.ready`), so the dashboard can find each one in the machine's diagram.
 */
export function flattenState(value: StateValue): string {
  return stateText(value);
}

type WorkerSnapshot = AnyMachineSnapshot & { context: WorkerContext };

function childrenOf(snapshot: WorkerSnapshot): [string, AnyActorRef][] {
  return Object.entries(snapshot.children as Record<string, AnyActorRef | undefined>).filter(
    (entry): entry is [string, AnyActorRef] => entry[1] !== undefined,
  );
}

/** Ready: warm and running (not starting, draining or stopping), and registered when registering. */
export function isReady(snapshot: WorkerSnapshot, options: Options): boolean {
  if (snapshot.status !== "active" || !snapshot.matches({ active: { lifecycle: "running" } })) return false;
  if (!options.register) return true;
  const link = snapshot.children.registryLink as AnyActorRef | undefined;
  const linkSnapshot = link?.getSnapshot() as AnyMachineSnapshot | undefined;
  return Boolean(linkSnapshot?.matches?.({ online: "registered" }));
}

/** The whole worker as JSON: options without secrets, every slot and job with its machine state. */
export function describeWorker(actor: AnyActorRef, options: Options, tracker: ProcessTracker, startedAt: number) {
  const snapshot = actor.getSnapshot() as WorkerSnapshot;
  const now = Date.now();
  const slots = [];
  const jobs = [];
  for (const [id, child] of childrenOf(snapshot)) {
    const childSnapshot = child.getSnapshot() as AnyMachineSnapshot;
    if (id.startsWith("slot.")) {
      const record = tracker.bySlot.get(id);
      slots.push({
        id,
        state: flattenState(childSnapshot.value),
        pid: childSnapshot.context.pid ?? record?.pid ?? null,
        jobId: childSnapshot.context.job?.jobId ?? null,
        memoryMb: record?.memoryMb ?? childSnapshot.context.memoryMb ?? null,
        uptimeSeconds: record ? (now - record.spawnedAt) / 1000 : null,
      });
    } else if (id.startsWith("job.")) {
      const context = childSnapshot.context;
      const record = [...tracker.bySlot.values()].find((r) => r.jobId === context.spec.jobId);
      jobs.push({
        id: context.spec.jobId,
        state: flattenState(childSnapshot.value),
        slotId: context.slotId,
        roomId: context.spec.roomId ?? null,
        runningSeconds: record?.jobStartedAt ? (now - record.jobStartedAt) / 1000 : null,
      });
    } else if (id === "registryLink" && options.register) {
      // the link's state is reported separately below
    }
  }
  const link = snapshot.children.registryLink as AnyActorRef | undefined;
  const linkValue = options.register ? (link?.getSnapshot() as AnyMachineSnapshot | undefined)?.value : undefined;
  return {
    agentId: options.agentId,
    state: flattenState(snapshot.value),
    status: snapshot.status,
    ready: isReady(snapshot, options),
    degraded: snapshot.status === "active" && snapshot.matches({ active: { pool: "backingOff" } }),
    load: snapshot.context ? loadOf(snapshot.context) : 0,
    uptimeSeconds: (now - startedAt) / 1000,
    registry: options.register ? { state: linkValue ? flattenState(linkValue) : "stopped" } : null,
    options: options.toJSON(),
    slots,
    jobs,
  };
}

/**
 * The worker's own view, shaped for the dashboard: itself, its slots and its jobs with machine states,
 * each with `actor`, the id its recent events are kept under (`/dashboard/actor-events?actor=`).
 */
export function workerDashboard(view: ReturnType<typeof describeWorker>) {
  const workerId = `${view.agentId} (this worker)`;
  return {
    workers: [
      {
        id: workerId,
        agentName: view.agentId,
        machine: "worker",
        actor: WORKER_ACTOR_ID,
        state: view.state,
        status: view.ready ? "available" : view.status === "active" ? "not ready" : view.status,
        load: view.load,
        jobCount: view.jobs.length,
        maxProcesses: view.options.maxProcesses,
      },
    ],
    slots: view.slots.map((slot) => ({ ...slot, workerId, actor: slot.id })),
    jobs: view.jobs.map((job) => ({
      id: job.id,
      machine: "job",
      actor: jobActorId(job.id),
      state: job.state,
      status: job.state.split(".")[0],
      roomId: job.roomId,
      agentName: view.agentId,
      workerId,
    })),
  };
}
