import { isFinal } from "../../../src/registry/store.ts";
import { SIM_REGISTRY_TIMING } from "./timing.ts";
import type { World } from "./world.ts";

/**
 * Bugs in src/ the simulation found and that are not fixed yet. A failing seed that matches one is
 * counted and named instead of failing the run, so that any other failure still does; each has a
 * pinned seed in test/sim/cluster/regressions.test.ts. The matchers look at what went wrong, not at
 * the failure's wording alone, so that another bug with a similar message is not hidden.
 */
export interface KnownBug {
  id: string;
  title: string;
  matches(world: World, failure: string): boolean;
}

/** Jobs whose record is not final yet. */
function unfinished(world: World): string[] {
  return [...world.checks.ledger].filter(([, entry]) => !isFinal(entry.status)).map(([id]) => id);
}

/** No worker holds the job: no job machine for it, no process running it. */
function heldByNoWorker(world: World, jobId: string): boolean {
  const inMachine = world.workers.some((worker) => worker?.alive && worker.actor.getSnapshot().context.jobs[jobId]);
  const inProcess = [...world.starts.holders].some(
    (holder) => holder.jobId === jobId && !holder.process.exited && !holder.process.disposed,
  );
  return !inMachine && !inProcess;
}

/** Some node runs the job's dispatch in bound.running. */
function waitsAsRunning(world: World, jobId: string): boolean {
  return world.upNodes().some((node) => {
    const value = node.core?.dispatcher.get(jobId)?.actor.getSnapshot().value;
    return typeof value === "object" && (value as { bound?: string }).bound === "running";
  });
}

/**
 * The registry gave up on the job's worker the way the design allows once the worker's deadline has
 * passed: its dispatch left `bound` on the worker's loss or on the release timeout, or the reaper of
 * a dead node dispatched it again, and no node had heard from the worker for at least the shortest
 * of the registry's deadlines (the reconnect grace). Giving up on another event, or on a worker that
 * was still talking, is some other bug.
 */
function gaveUpAtTheDeadline(world: World, jobId: string): boolean {
  const minimum = SIM_REGISTRY_TIMING.reconnectGraceMs;
  const giveUps = world.giveUps.get(jobId) ?? [];
  const requeued = world.checks.ledger.get(jobId)?.requeued ?? [];
  return (
    giveUps.some(
      ({ cause, silentMs }) =>
        (cause === "worker_gone" || cause.startsWith("xstate.after.releaseTimeout")) && silentMs >= minimum,
    ) ||
    requeued.some(
      ({ reason, silentMs }) => reason.includes("worker lost with its registry node") && silentMs >= minimum,
    )
  );
}

export const KNOWN_BUGS: KnownBug[] = [
  {
    id: "assignment-after-termination",
    title:
      "the assignment goes out when the store has confirmed the record says `assigned`, without asking the " +
      "dispatch whether it still wants it: when that write is slow, the running deadline passes first, the " +
      "termination goes out, and the assignment arrives after it; the worker starts the job, `releasing` takes " +
      "its `running` report as nothing, and at the release timeout the job is offered to a second worker",
    matches: (world, failure) => {
      const match = /job (\S+) starts on \S+ while it runs on (\S+)/.exec(failure);
      if (!match) return false;
      const first = world.allWorkers.find((worker) => worker.name === match[2]);
      const seen = first?.received.get(match[1] as string) ?? [];
      const terminated = seen.indexOf("job_termination");
      return terminated >= 0 && seen.indexOf("job_assignment", terminated) > terminated;
    },
  },
  {
    id: "reaped-while-alive",
    title:
      "a node whose presence key lapsed only because its Redis commands were held up (Redis unreachable for it, " +
      "or slow) is taken for dead: another node claims its jobs and, finding their workers on no live node, " +
      "dispatches them again (with `redispatch`) while they still run on their workers, connected to the live node",
    matches: (world, failure) => {
      const match = /job (\S+) starts on \S+ while it runs on/.exec(failure);
      const entry = match ? world.checks.ledger.get(match[1] as string) : undefined;
      return entry?.claimedFrom.some((node) => world.reapedAlive.has(node)) === true;
    },
  },
  {
    id: "redispatched-while-running",
    title:
      "with `redispatch`, a job goes to a second worker once its worker's liveness deadline passes (the release " +
      "timeout, the worker declared gone, or the reaper of a dead node), but a worker cut off from the registry " +
      "keeps running its jobs: both run the job at once. With the defaults a worker notices a silently dead node " +
      "only after pingInterval + pingTimeout = 40 s, while the cluster gives up on it after 5 + 9 = 14 s",
    matches: (world, failure) => {
      const jobId = /job (\S+) starts on \S+ while it runs on/.exec(failure)?.[1];
      return (
        jobId !== undefined && world.checks.ledger.get(jobId)?.redispatch === true && gaveUpAtTheDeadline(world, jobId)
      );
    },
  },
  {
    id: "lost-final-write",
    title:
      "the write of a dispatch's final status is not retried when the store refuses it (Redis unavailable): the " +
      "record keeps `running`/`offering` for ever on a single node; in a cluster the sweep later resumes the job " +
      "as running on its worker, which no longer has it, and that dispatch waits in bound.running for ever",
    matches: (world, failure) =>
      failure.startsWith("liveness") && unfinished(world).some((jobId) => world.failedFinalWrites.has(jobId)),
  },
  {
    id: "resumed-as-running",
    title:
      "the reaper or the sweep resumes a job recorded `assigned`/`running` on a worker as running there, without " +
      "asking the worker: when the worker never got the assignment (lost with a crashed node) or already ended " +
      "the job (its report went to the dead node), the resumed dispatch waits in bound.running for ever",
    matches: (world, failure) =>
      failure.startsWith("liveness") &&
      unfinished(world).some(
        (jobId) => !world.failedFinalWrites.has(jobId) && waitsAsRunning(world, jobId) && heldByNoWorker(world, jobId),
      ),
  },
  {
    id: "stale-view-after-restart",
    title:
      "a node that restarts under the same id (before the others take it for dead) leaves its previous life's " +
      "worker views in Redis; the other nodes then believe a worker that is gone is still connected to it, so " +
      "the sweep sends a job bound to that worker to it for adoption again and again (it ignores the adopt: it " +
      "does not know the worker), and the job's record stays `assigned`/`running` for ever",
    matches: (world, failure) =>
      failure.startsWith("liveness") &&
      unfinished(world).some((jobId) => {
        const workerId = world.checks.ledger.get(jobId)?.workerId;
        if (!workerId) return false;
        const nodes = world.upNodes();
        const connected = nodes.some((node) => node.core?.directory.get(workerId));
        const believed = nodes.some((node) => {
          const view = node.cluster?.remote.get(workerId);
          return view !== undefined && nodes.some((other) => other.settings.nodeId === view.nodeId);
        });
        return !connected && believed;
      }),
  },
  {
    id: "adopt-after-final",
    title:
      "a worker's final report and its inventory's `running` for the same job race through the reconciler: " +
      "the report writes the final record, the adoption (which read the record before) starts a dispatch anyway, " +
      "and that dispatch waits in bound.running for ever, holding a process of the worker",
    matches: (world, failure) => {
      const match = /still runs the dispatch of (\S+)/.exec(failure);
      const entry = match ? world.checks.ledger.get(match[1] as string) : undefined;
      return entry !== undefined && isFinal(entry.status) && unfinished(world).length === 0;
    },
  },
];

export function classify(world: World, failure: string): KnownBug | undefined {
  return KNOWN_BUGS.find((bug) => bug.matches(world, failure));
}
