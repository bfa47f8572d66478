import { describe, expect, it } from "vitest";
import { Presence } from "../../src/registry/cluster/presence.ts";

/**
 * A node's presence key as the node can vouch for it (src/registry/cluster/presence.ts), with a fake
 * clock: a renewal holds the key for ttl − margin (margin = min(1 s, ttl / 4)) from when it was
 * *sent*, and only once Redis confirmed it.
 */

interface Renewal {
  /** Confirms the renewal at `at` (the write resolves then). */
  confirm(at: number): Promise<void>;
  /** Refuses the renewal at `at` (the write rejects then); resolves once `renew` has rejected. */
  refuse(at: number): Promise<void>;
}

class FakeClock {
  t = 0;
  readonly now = () => this.t;
}

/** Starts a renewal at `sentAt` whose Redis command completes only when the test says so. */
function startRenewal(presence: Presence, clock: FakeClock, sentAt: number): Renewal {
  clock.t = sentAt;
  let settle: (ok: boolean) => void = () => {};
  const write = new Promise<unknown>((resolve, reject) => {
    settle = (ok) => (ok ? resolve("OK") : reject(new Error("redis refused")));
  });
  const renewed = presence.renew(() => write);
  return {
    async confirm(at) {
      clock.t = at;
      settle(true);
      await renewed;
    },
    async refuse(at) {
      clock.t = at;
      settle(false);
      await expect(renewed).rejects.toThrow("redis refused");
    },
  };
}

/** One renewal sent at `sentAt` and confirmed at `confirmedAt`. */
function renew(presence: Presence, clock: FakeClock, sentAt: number, confirmedAt: number): Promise<void> {
  return startRenewal(presence, clock, sentAt).confirm(confirmedAt);
}

/** held() and heldSince() at time `at`. */
function at(presence: Presence, clock: FakeClock, t: number): { held: boolean; since: number } {
  clock.t = t;
  return { held: presence.held(), since: presence.heldSince() };
}

const NOT_HELD = { held: false, since: Number.POSITIVE_INFINITY };

describe("Presence", () => {
  it("is not held before the first renewal, nor while it is under way", () => {
    const clock = new FakeClock();
    const presence = new Presence(4_000, clock.now);
    expect(at(presence, clock, 0)).toEqual(NOT_HELD);
    expect(at(presence, clock, 1_000_000)).toEqual(NOT_HELD);
    startRenewal(presence, clock, 1_000_000);
    expect(at(presence, clock, 1_000_050)).toEqual(NOT_HELD);
  });

  it("is held for ttl − margin from the renewal's send time, since its confirmation", async () => {
    const clock = new FakeClock();
    // ttl 4 s: margin min(1 s, 1 s) = 1 s, so held until 1 000 + 3 000 = 4 000.
    const presence = new Presence(4_000, clock.now);
    await renew(presence, clock, 1_000, 1_300);
    expect(at(presence, clock, 1_300)).toEqual({ held: true, since: 1_300 });
    expect(at(presence, clock, 3_999)).toEqual({ held: true, since: 1_300 });
    // Counted from the send (1 000), not from the confirmation (1 300, which would give 4 300).
    expect(at(presence, clock, 4_000)).toEqual(NOT_HELD);
    expect(at(presence, clock, 4_200)).toEqual(NOT_HELD);
  });

  it("the margin is a quarter of a short ttl", async () => {
    const clock = new FakeClock();
    // ttl 400 ms: margin min(1 s, 100 ms) = 100 ms: held until 500 + 300 = 800.
    const presence = new Presence(400, clock.now);
    await renew(presence, clock, 500, 520);
    expect(at(presence, clock, 799).held).toBe(true);
    expect(at(presence, clock, 800)).toEqual(NOT_HELD);
  });

  it("the margin is at most a second for a long ttl", async () => {
    const clock = new FakeClock();
    // ttl 30 s: margin min(1 s, 7.5 s) = 1 s: held until 29 s after the send.
    const presence = new Presence(30_000, clock.now);
    await renew(presence, clock, 0, 10);
    expect(at(presence, clock, 28_999).held).toBe(true);
    expect(at(presence, clock, 29_000)).toEqual(NOT_HELD);
  });

  it("continuous renewals keep heldSince and extend the hold", async () => {
    const clock = new FakeClock();
    const presence = new Presence(4_000, clock.now);
    await renew(presence, clock, 0, 50);
    for (let sentAt = 1_000; sentAt <= 10_000; sentAt += 1_000) {
      await renew(presence, clock, sentAt, sentAt + 50);
      expect(at(presence, clock, sentAt + 50)).toEqual({ held: true, since: 50 });
    }
    // The last one (sent at 10 000) holds until 13 000.
    expect(at(presence, clock, 12_999)).toEqual({ held: true, since: 50 });
    expect(at(presence, clock, 13_000)).toEqual(NOT_HELD);
  });

  it("a renewal confirmed after the hold ran out starts a new heldSince at its confirmation", async () => {
    const clock = new FakeClock();
    const presence = new Presence(4_000, clock.now);
    await renew(presence, clock, 0, 100); // held until 3 000
    // Sent while still held, but Redis confirmed it only after 3 000: the key may have lapsed in between.
    await renew(presence, clock, 2_900, 3_100);
    expect(at(presence, clock, 3_100)).toEqual({ held: true, since: 3_100 });
    expect(at(presence, clock, 5_899)).toEqual({ held: true, since: 3_100 });
    expect(at(presence, clock, 5_900)).toEqual(NOT_HELD);
    // Sent after the break: since its confirmation again.
    await renew(presence, clock, 7_000, 7_040);
    expect(at(presence, clock, 7_040)).toEqual({ held: true, since: 7_040 });
  });

  it("a renewal confirmed exactly when the hold runs out starts a new heldSince", async () => {
    const clock = new FakeClock();
    const presence = new Presence(4_000, clock.now);
    await renew(presence, clock, 0, 100); // held until 3 000, exclusive
    await renew(presence, clock, 2_500, 3_000);
    expect(at(presence, clock, 3_000)).toEqual({ held: true, since: 3_000 });
  });

  it("a renewal confirmed only after its own hold ran out holds nothing", async () => {
    const clock = new FakeClock();
    const presence = new Presence(4_000, clock.now);
    // Sent at 0 (good until 3 000) but confirmed at 3 500: Redis may have run it at 0.
    await renew(presence, clock, 0, 3_500);
    expect(at(presence, clock, 3_500)).toEqual(NOT_HELD);
  });

  it("a renewal that rejects changes nothing", async () => {
    const clock = new FakeClock();
    const presence = new Presence(4_000, clock.now);
    // Before any renewal: still not held.
    await startRenewal(presence, clock, 0).refuse(10);
    expect(at(presence, clock, 10)).toEqual(NOT_HELD);

    await renew(presence, clock, 1_000, 1_100); // held until 4 000, since 1 100
    await startRenewal(presence, clock, 2_000).refuse(2_100);
    expect(at(presence, clock, 2_100)).toEqual({ held: true, since: 1_100 });
    expect(at(presence, clock, 4_000)).toEqual(NOT_HELD);
    // A refusal after the hold ran out starts nothing either...
    await startRenewal(presence, clock, 4_500).refuse(4_600);
    expect(at(presence, clock, 4_600)).toEqual(NOT_HELD);
    // ...and the next confirmed renewal starts over from its own confirmation.
    await renew(presence, clock, 5_000, 5_020);
    expect(at(presence, clock, 5_020)).toEqual({ held: true, since: 5_020 });
  });

  it("an older renewal confirmed after a newer one never shortens the hold", async () => {
    const clock = new FakeClock();
    const presence = new Presence(4_000, clock.now);
    const older = startRenewal(presence, clock, 0); // would hold until 3 000
    const newer = startRenewal(presence, clock, 500); // holds until 3 500
    await newer.confirm(600);
    await older.confirm(700);
    expect(at(presence, clock, 3_499)).toEqual({ held: true, since: 600 });
    expect(at(presence, clock, 3_500)).toEqual(NOT_HELD);
  });

  it("heldSince is +∞ whenever the key is not surely held, and back once it is", async () => {
    const clock = new FakeClock();
    const presence = new Presence(2_000, clock.now); // margin 500 ms
    expect(presence.heldSince()).toBe(Number.POSITIVE_INFINITY);
    await renew(presence, clock, 0, 5);
    expect(at(presence, clock, 1_499).since).toBe(5);
    expect(at(presence, clock, 1_500).since).toBe(Number.POSITIVE_INFINITY);
    expect(at(presence, clock, 100_000).since).toBe(Number.POSITIVE_INFINITY);
  });
});
