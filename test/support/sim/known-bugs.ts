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

/**
 * The registry gave up on the job's worker the way the design allows once the worker's deadline has
 * passed: its dispatch left `bound` on the worker's loss or on the release timeout, or the reaper of
 * a dead node dispatched it again, and no node had heard from the worker for at least the shortest
 * of the registry's deadlines (the reconnect grace). Giving up on another event, or on a worker that
 * was still talking, is some other bug.
 */
function gaveUpAtTheDeadline(world: World, jobId: string): boolean {
  // The grace counts from the close the node saw; a frame the worker sent just before it can
  // reach a node up to a frame's delay after, so the silence measured here can be that much shorter.
  const minimum = SIM_REGISTRY_TIMING.reconnectGraceMs - 250;
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
];

export function classify(world: World, failure: string): KnownBug | undefined {
  return KNOWN_BUGS.find((bug) => bug.matches(world, failure));
}
