import { beforeAll, describe, expect, it } from "vitest";
import { KNOWN_BUGS } from "../../support/sim/known-bugs.ts";
import { runInThread } from "../../support/sim/pool.ts";
import { replayCommand, type SeedResult } from "../../support/sim/run.ts";

/**
 * Seeds pinned for the bugs the cluster simulation found in src/ (test/support/sim/known-bugs.ts
 * says what each one is). Each seed fails today: its `it.fails` turns red once the bug is fixed, and
 * then `.fails` and the bug's entry in KNOWN_BUGS go. Any change to the simulation reshuffles what a
 * seed does: if a pinned seed stops showing its bug for that reason, the main run lists others.
 */
const PINNED: Record<string, number> = {
  "assignment-after-termination": 1666,
  "reaped-while-alive": 3034,
  "redispatched-while-running": 4147,
  "lost-final-write": 5,
  "resumed-as-running": 85,
  "stale-view-after-restart": 7903,
  "adopt-after-final": 285,
};

const results = new Map<number, SeedResult>();
beforeAll(async () => {
  const seeds = Object.values(PINNED);
  for (const result of await runInThread(seeds, true)) results.set(result.seed, result);
}, 120_000);

describe("bugs the cluster simulation found", () => {
  for (const bug of KNOWN_BUGS) {
    const seed = PINNED[bug.id] as number;
    it(`seed ${seed} shows ${bug.id} today`, () => {
      const result = results.get(seed);
      expect(result?.knownBug, `${result?.failure}\nreplay: ${replayCommand(seed)}`).toBe(bug.id);
    });
    it.fails(`seed ${seed} keeps every invariant once ${bug.id} is fixed`, () => {
      expect(results.get(seed)?.failure, replayCommand(seed)).toBeUndefined();
    });
  }
});

describe("the cluster simulation is deterministic", () => {
  it("replays a seed step for step, in another thread, traced or not", { timeout: 120_000 }, async () => {
    const seeds = Object.values(PINNED);
    const [again, untraced] = await Promise.all([runInThread(seeds, true), runInThread(seeds, false)]);
    for (const [i, seed] of seeds.entries()) {
      const first = results.get(seed);
      expect(again[i]?.trace, `seed ${seed}`).toEqual(first?.trace);
      expect(untraced[i]?.steps, `seed ${seed}`).toBe(first?.steps);
      expect(untraced[i]?.failure, `seed ${seed}`).toBe(first?.failure);
    }
  });
});
