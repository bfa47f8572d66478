import { describe, expect, it } from "vitest";
import { DataEpoch } from "../../src/registry/cluster/data-epoch.ts";

/**
 * The cluster's epoch as a node reads it on each presence renewal (src/registry/cluster/data-epoch.ts):
 * a changed epoch means Redis lost its data, and the node's records are written back. Every recovery
 * here is a promise the test settles by hand, so the order of events is the test's, not a timer's.
 */

interface Recovery {
  resolve(): void;
  reject(error: Error): void;
}

/** A DataEpoch whose recoveries wait for the test, with every start and failure recorded. */
function harness() {
  const recoveries: Recovery[] = [];
  const failures: Error[] = [];
  const epoch = new DataEpoch(
    () =>
      new Promise<void>((resolve, reject) => {
        recoveries.push({ resolve, reject });
      }),
    (error) => failures.push(error),
  );
  return { epoch, recoveries, failures };
}

/** Lets the promise callbacks of a settled recovery run (no timers: only the microtask queue). */
async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await Promise.resolve();
}

/** The nth recovery started, or a failure naming how many did. */
function nth(recoveries: Recovery[], n: number): Recovery {
  const recovery = recoveries[n];
  if (!recovery) throw new Error(`recovery #${n} never started (${recoveries.length} did)`);
  return recovery;
}

describe("DataEpoch", () => {
  it("only records the first epoch it observes", async () => {
    const { epoch, recoveries, failures } = harness();
    epoch.observe("e1");
    await settle();
    expect(recoveries).toHaveLength(0);
    expect(failures).toHaveLength(0);
  });

  it("does nothing while the epoch stays the same", async () => {
    const { epoch, recoveries } = harness();
    for (let i = 0; i < 5; i++) epoch.observe("e1");
    await settle();
    expect(recoveries).toHaveLength(0);
  });

  it("runs one recovery for a new epoch, however often it is observed meanwhile", async () => {
    const { epoch, recoveries, failures } = harness();
    epoch.observe("e1");
    epoch.observe("e2");
    expect(recoveries).toHaveLength(1);
    for (let i = 0; i < 5; i++) epoch.observe("e2");
    await settle();
    expect(recoveries).toHaveLength(1);

    nth(recoveries, 0).resolve();
    await settle();
    expect(recoveries).toHaveLength(1);
    expect(failures).toHaveLength(0);
  });

  it("takes the new epoch as seen once its recovery succeeded", async () => {
    const { epoch, recoveries } = harness();
    epoch.observe("e1");
    epoch.observe("e2");
    nth(recoveries, 0).resolve();
    await settle();

    for (let i = 0; i < 3; i++) epoch.observe("e2");
    await settle();
    expect(recoveries).toHaveLength(1);

    // A later loss is a new epoch again: recovered once more.
    epoch.observe("e3");
    expect(recoveries).toHaveLength(2);
    nth(recoveries, 1).resolve();
    await settle();
    epoch.observe("e3");
    await settle();
    expect(recoveries).toHaveLength(2);
  });

  it("reports a failed recovery and retries it on the next observation", async () => {
    const { epoch, recoveries, failures } = harness();
    epoch.observe("e1");
    epoch.observe("e2");
    const refused = new Error("redis refused");
    nth(recoveries, 0).reject(refused);
    await settle();
    expect(failures).toEqual([refused]);
    // Nothing runs until the next renewal reads the epoch again.
    expect(recoveries).toHaveLength(1);

    epoch.observe("e2");
    expect(recoveries).toHaveLength(2);
    nth(recoveries, 1).resolve();
    await settle();
    expect(failures).toHaveLength(1);

    epoch.observe("e2");
    await settle();
    expect(recoveries).toHaveLength(2);
  });

  it("keeps retrying while recoveries keep failing, one at a time", async () => {
    const { epoch, recoveries, failures } = harness();
    epoch.observe("e1");
    for (let round = 0; round < 3; round++) {
      epoch.observe("e2");
      epoch.observe("e2");
      expect(recoveries).toHaveLength(round + 1);
      nth(recoveries, round).reject(new Error(`refused ${round}`));
      await settle();
      expect(failures).toHaveLength(round + 1);
    }
    epoch.observe("e2");
    nth(recoveries, 3).resolve();
    await settle();
    epoch.observe("e2");
    await settle();
    expect(recoveries).toHaveLength(4);
    expect(failures.map((error) => error.message)).toEqual(["refused 0", "refused 1", "refused 2"]);
  });

  it("runs exactly one more recovery when the epoch changed again during one", async () => {
    const { epoch, recoveries, failures } = harness();
    epoch.observe("e1");
    epoch.observe("e2");
    // Redis lost its data again while the first recovery ran: seen several times, and changed twice.
    epoch.observe("e3");
    epoch.observe("e3");
    epoch.observe("e4");
    epoch.observe("e4");
    await settle();
    expect(recoveries).toHaveLength(1);

    nth(recoveries, 0).resolve();
    await settle();
    expect(recoveries).toHaveLength(2);

    // The second one is for the latest epoch: once it succeeded, that epoch starts nothing more.
    epoch.observe("e4");
    await settle();
    expect(recoveries).toHaveLength(2);
    nth(recoveries, 1).resolve();
    await settle();
    expect(recoveries).toHaveLength(2);
    epoch.observe("e4");
    await settle();
    expect(recoveries).toHaveLength(2);
    expect(failures).toHaveLength(0);
  });

  it("retries for the latest epoch when a recovery failed after the epoch changed again", async () => {
    const { epoch, recoveries, failures } = harness();
    epoch.observe("e1");
    epoch.observe("e2");
    epoch.observe("e3");
    nth(recoveries, 0).reject(new Error("refused"));
    await settle();
    expect(failures).toHaveLength(1);
    expect(recoveries).toHaveLength(1);

    // The next renewal reads e3: one recovery, and once it succeeded e3 is seen.
    epoch.observe("e3");
    expect(recoveries).toHaveLength(2);
    nth(recoveries, 1).resolve();
    await settle();
    epoch.observe("e3");
    await settle();
    expect(recoveries).toHaveLength(2);
  });
});
