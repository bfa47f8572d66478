import { z } from "zod";
import type { DispatchTiming } from "../../machines/registry/dispatch.ts";
import type { SessionTiming } from "../../machines/registry/session.ts";

/**
 * The dispatch's release timeout is not set on its own: it is the worker liveness deadline below;
 * its lease fence is the lease plus LEASE_MARGIN_MS.
 */
export interface RegistryTiming extends Omit<DispatchTiming, "releaseTimeoutMs" | "leaseFenceMs">, SessionTiming {
  /** A worker not heard from for this long is pinged (within a fifth of it more, at most 1 s). */
  pingIntervalMs: number;
  /**
   * How long a lease on a `redispatch` job lasts from the worker's round trip that renewed it. The
   * worker renews three times per lease; a worker cut off for longer stops such jobs, and the
   * registry offers them elsewhere only once the lease has run out.
   */
  leaseMs: number;
}

/**
 * What the registry allows, past a lease, for a worker to kill a job whose lease ran out (it
 * SIGKILLs at once) and for the two machines' clocks to run at slightly different rates.
 */
export const LEASE_MARGIN_MS = 2_000;

/**
 * Defaults: a silent worker is declared gone within pingInterval + ping sweep + pongTimeout =
 * 5 + 1 + 9 = 15 s.
 */
export const DEFAULT_REGISTRY_TIMING: RegistryTiming = {
  offerTimeoutMs: 2_000,
  runningTimeoutMs: 15_000,
  dispatchTimeoutMs: 30_000,
  cancelTimeoutMs: 10_000,
  registrationTimeoutMs: 10_000,
  pingIntervalMs: 5_000,
  pongTimeoutMs: 9_000,
  reconnectGraceMs: 10_000,
  leaseMs: 10_000,
};

const duration = z
  .number()
  .int()
  .positive()
  .max(24 * 3_600_000);

/** `timing` as createRegistry takes it: any of the durations, whole milliseconds, up to a day. */
const timingOverrides = z
  .object({
    offerTimeoutMs: duration,
    runningTimeoutMs: duration,
    dispatchTimeoutMs: duration,
    cancelTimeoutMs: duration,
    registrationTimeoutMs: duration,
    pingIntervalMs: duration,
    pongTimeoutMs: duration,
    reconnectGraceMs: duration,
    // It travels to workers, whose protocol takes at most an hour.
    leaseMs: duration.max(3_600_000),
  })
  .partial()
  .strict();

/** The defaults with the caller's overrides; a value that is not a sensible duration is refused with its name. */
export function registryTiming(overrides: unknown = {}): RegistryTiming {
  const parsed = timingOverrides.safeParse(overrides ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue?.path.length ? `timing.${issue.path.join(".")}` : "timing";
    throw new Error(`createRegistry: ${where}: ${issue?.message ?? "invalid"}`);
  }
  return { ...DEFAULT_REGISTRY_TIMING, ...parsed.data };
}
