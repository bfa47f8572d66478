import { describe, expect, it } from "vitest";
import { DEFAULT_REGISTRY_TIMING, registryTiming } from "../../src/registry/timing.ts";

describe("createRegistry's timing", () => {
  it("is the defaults, with each given duration in its place", () => {
    expect(registryTiming()).toEqual(DEFAULT_REGISTRY_TIMING);
    expect(registryTiming({ leaseMs: 1_500, pingIntervalMs: 1_000 })).toEqual({
      ...DEFAULT_REGISTRY_TIMING,
      leaseMs: 1_500,
      pingIntervalMs: 1_000,
    });
  });

  it.each([
    [{ leaseMs: 0 }, "timing.leaseMs"],
    [{ leaseMs: 3_600_001 }, "timing.leaseMs"],
    [{ pongTimeoutMs: -5 }, "timing.pongTimeoutMs"],
    [{ offerTimeoutMs: 1.5 }, "timing.offerTimeoutMs"],
    [{ dispatchTimeoutMs: Number.POSITIVE_INFINITY }, "timing.dispatchTimeoutMs"],
    [{ runningTimeoutMs: "15s" }, "timing.runningTimeoutMs"],
    [{ leaseMS: 1_000 }, "timing"],
    ["fast", "timing"],
  ])("refuses %j, naming %s", (overrides, where) => {
    expect(() => registryTiming(overrides)).toThrow(`createRegistry: ${where}:`);
  });
});
