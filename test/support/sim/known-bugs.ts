import type { World } from "./world.ts";

/**
 * Bugs in src/ the simulation found and that are not fixed yet. A failing seed that matches one is
 * counted and named instead of failing the run, so that any other failure still does; each has a
 * pinned seed in test/sim/cluster/regressions.test.ts. The matchers look at what went wrong (the
 * world's state), not at the failure's wording alone, so that another bug with a similar message is
 * not hidden. None is open now: the last two went with the leases (see regressions.test.ts).
 */
export interface KnownBug {
  id: string;
  title: string;
  matches(world: World, failure: string): boolean;
}

export const KNOWN_BUGS: KnownBug[] = [];

export function classify(world: World, failure: string): KnownBug | undefined {
  return KNOWN_BUGS.find((bug) => bug.matches(world, failure));
}
