import { describe, expect, it } from "vitest";
import { HAND_OFF_WATCH_MS, HandOffWatch, MAX_WATCHED_HAND_OFFS } from "../../src/registry/core/hand-off-watch.ts";
import type { JobRecord } from "../../src/registry/store.ts";

/**
 * The hand-offs a node made lately (src/registry/core/hand-off-watch.ts), with a fake clock: kept
 * for HAND_OFF_WATCH_MS, at most MAX_WATCHED_HAND_OFFS of them (oldest evicted first), and forgotten
 * once their record shows the node they went to has taken them.
 */

class FakeClock {
  t = 1_000_000;
  readonly now = () => this.t;
}

/** A record as a claim for node `to` returns it: owned by `to`, status and updatedAt unchanged. */
function claimed(id: string, to = "node-b", over: Partial<JobRecord> = {}): JobRecord {
  return {
    id,
    agentName: "watched",
    metadata: {},
    roomOptions: {},
    redispatch: false,
    status: "pending",
    attempts: 0,
    node: to,
    createdAt: 500,
    updatedAt: 600,
    ...over,
  };
}

const ids = (watch: HandOffWatch) => watch.recent().map((handOff) => handOff.record.id);

/** A reader over a fixed set of records, counting its reads. */
function reader(records: Record<string, JobRecord | undefined>) {
  const reads: string[] = [];
  const read = async (jobId: string) => {
    reads.push(jobId);
    const record = records[jobId];
    return record ? { ...record } : undefined;
  };
  return { read, reads };
}

describe("HandOffWatch", () => {
  it("lists the hand-offs of the last minute, oldest first, with where and when they went", () => {
    const clock = new FakeClock();
    const watch = new HandOffWatch(clock.now);
    const first = claimed("job-1", "node-b");
    watch.sent(first, "node-b");
    clock.t += 10_000;
    watch.sent(claimed("job-2", "node-c"), "node-c");
    clock.t += 10_000;

    expect(watch.recent()).toEqual([
      { record: first, to: "node-b", at: 1_000_000 },
      { record: claimed("job-2", "node-c"), to: "node-c", at: 1_010_000 },
    ]);
  });

  it("starts empty", () => {
    expect(new HandOffWatch(() => 0).recent()).toEqual([]);
  });

  it("forgets a hand-off once it is older than HAND_OFF_WATCH_MS", () => {
    const clock = new FakeClock();
    const watch = new HandOffWatch(clock.now);
    watch.sent(claimed("job-1"), "node-b");
    clock.t += 1_000;
    watch.sent(claimed("job-2"), "node-b");

    // job-1 is exactly HAND_OFF_WATCH_MS old: still watched.
    clock.t += HAND_OFF_WATCH_MS - 1_000;
    expect(ids(watch)).toEqual(["job-1", "job-2"]);

    clock.t += 1;
    expect(ids(watch)).toEqual(["job-2"]);

    clock.t += 1_000;
    expect(ids(watch)).toEqual([]);
  });

  it("forgets the expired ones when a new hand-off is made, too", () => {
    const clock = new FakeClock();
    const watch = new HandOffWatch(clock.now);
    watch.sent(claimed("job-1"), "node-b");
    clock.t += HAND_OFF_WATCH_MS + 1;
    watch.sent(claimed("job-2"), "node-b");
    expect(ids(watch)).toEqual(["job-2"]);
  });

  it("keeps at most MAX_WATCHED_HAND_OFFS, evicting the oldest first", () => {
    const clock = new FakeClock();
    const watch = new HandOffWatch(clock.now);
    for (let i = 0; i < MAX_WATCHED_HAND_OFFS; i++) {
      watch.sent(claimed(`job-${i}`), "node-b");
      clock.t += 1;
    }
    expect(watch.recent()).toHaveLength(MAX_WATCHED_HAND_OFFS);
    expect(watch.recent()[0]?.record.id).toBe("job-0");

    watch.sent(claimed("job-extra-1"), "node-b");
    watch.sent(claimed("job-extra-2"), "node-b");
    const recent = ids(watch);
    expect(recent).toHaveLength(MAX_WATCHED_HAND_OFFS);
    expect(recent.slice(0, 2)).toEqual(["job-2", "job-3"]);
    expect(recent.slice(-3)).toEqual([`job-${MAX_WATCHED_HAND_OFFS - 1}`, "job-extra-1", "job-extra-2"]);
    expect(recent).not.toContain("job-0");
    expect(recent).not.toContain("job-1");
  });

  it("moves a job handed off again to the end, with its new record, node and time", () => {
    const clock = new FakeClock();
    const watch = new HandOffWatch(clock.now);
    watch.sent(claimed("job-1", "node-b"), "node-b");
    clock.t += 1_000;
    watch.sent(claimed("job-2", "node-b"), "node-b");
    clock.t += 1_000;
    const again = claimed("job-1", "node-c", { updatedAt: 700 });
    watch.sent(again, "node-c");

    expect(watch.recent()).toEqual([
      { record: claimed("job-2", "node-b"), to: "node-b", at: 1_001_000 },
      { record: again, to: "node-c", at: 1_002_000 },
    ]);

    // Its time is the new one: it outlives job-2.
    clock.t = 1_001_000 + HAND_OFF_WATCH_MS + 1;
    expect(ids(watch)).toEqual(["job-1"]);
  });

  it("counts a job handed off again once towards the limit, and evicts by its new place", () => {
    const clock = new FakeClock();
    const watch = new HandOffWatch(clock.now);
    for (let i = 0; i < MAX_WATCHED_HAND_OFFS; i++) watch.sent(claimed(`job-${i}`), "node-b");
    // job-0 sent again: now the newest, so job-1 is the oldest and goes first.
    watch.sent(claimed("job-0"), "node-c");
    expect(watch.recent()).toHaveLength(MAX_WATCHED_HAND_OFFS);
    watch.sent(claimed("job-new"), "node-b");
    const recent = ids(watch);
    expect(recent).toHaveLength(MAX_WATCHED_HAND_OFFS);
    expect(recent[0]).toBe("job-2");
    expect(recent.slice(-2)).toEqual(["job-0", "job-new"]);
  });

  describe("dropTaken", () => {
    it("keeps a hand-off whose record is missing (Redis lost it) and one whose record has not moved", async () => {
      const watch = new HandOffWatch(() => 0);
      watch.sent(claimed("missing"), "node-b");
      watch.sent(claimed("untouched"), "node-b");
      const { read, reads } = reader({ untouched: claimed("untouched") });

      await watch.dropTaken(read);
      expect(ids(watch)).toEqual(["missing", "untouched"]);
      expect(reads).toEqual(["missing", "untouched"]);
    });

    it("keeps a record that changed only in fields the claim does not watch", async () => {
      const watch = new HandOffWatch(() => 0);
      watch.sent(claimed("job-1"), "node-b");
      const { read } = reader({ "job-1": claimed("job-1", "node-b", { attempts: 3, metadata: { other: true } }) });
      await watch.dropTaken(read);
      expect(ids(watch)).toEqual(["job-1"]);
    });

    it.each([
      ["its status changed", { status: "offering" as const }],
      ["its updatedAt changed", { updatedAt: 601 }],
      ["it is owned by another node", { node: "node-c" }],
      ["it has no owner any more", { node: undefined }],
      ["it ended", { status: "completed" as const, updatedAt: 900, endedAt: 900 }],
    ])("drops a hand-off when %s", async (_what, change) => {
      const watch = new HandOffWatch(() => 0);
      watch.sent(claimed("moved"), "node-b");
      watch.sent(claimed("kept"), "node-b");
      const { read } = reader({ moved: claimed("moved", "node-b", change), kept: claimed("kept") });

      await watch.dropTaken(read);
      expect(ids(watch)).toEqual(["kept"]);
    });

    it("drops only the taken ones among several", async () => {
      const watch = new HandOffWatch(() => 0);
      for (const id of ["a", "b", "c", "d"]) watch.sent(claimed(id), "node-b");
      const { read } = reader({
        a: claimed("a", "node-b", { status: "running", updatedAt: 700 }),
        b: claimed("b"),
        d: claimed("d", "node-a"),
      });
      await watch.dropTaken(read);
      expect(ids(watch)).toEqual(["b", "c"]);
    });

    it("keeps a hand-off made again while its record was being read", async () => {
      const watch = new HandOffWatch(() => 0);
      watch.sent(claimed("job-1", "node-b"), "node-b");
      const again = claimed("job-1", "node-c", { updatedAt: 700 });
      // The record read shows the first hand-off taken; meanwhile the job went out again.
      await watch.dropTaken(async () => {
        watch.sent(again, "node-c");
        return claimed("job-1", "node-b", { status: "running", updatedAt: 650 });
      });
      expect(watch.recent().map(({ record, to }) => ({ record, to }))).toEqual([{ record: again, to: "node-c" }]);
    });

    it("propagates a failed read, keeping what it had not looked at", async () => {
      const watch = new HandOffWatch(() => 0);
      watch.sent(claimed("a"), "node-b");
      watch.sent(claimed("b"), "node-b");
      await expect(
        watch.dropTaken(async (jobId) => {
          if (jobId === "a") return claimed("a", "node-c");
          throw new Error("redis unreachable");
        }),
      ).rejects.toThrow("redis unreachable");
      expect(ids(watch)).toEqual(["b"]);
    });
  });
});
