import type { DispatchTiming } from "../../machines/registry/dispatch.ts";
import type { SessionTiming } from "../../machines/registry/session.ts";

/** The dispatch's release timeout is not set on its own: it is the worker liveness deadline below. */
export interface RegistryTiming extends Omit<DispatchTiming, "releaseTimeoutMs">, SessionTiming {
  /** A worker not heard from for this long is pinged (within a fifth of it more, at most 1 s). */
  pingIntervalMs: number;
}

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
};
