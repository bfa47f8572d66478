import type { SimClock } from "./clock.ts";
import type { Network } from "./network.ts";
import type { Rng } from "./random.ts";
import type { SimRedis } from "./redis.ts";

/** What every simulated part shares: the one clock, the one PRNG, the network, Redis and the trace. */
export interface SimContext {
  readonly seed: number;
  readonly clock: SimClock;
  readonly rng: Rng;
  readonly network: Network;
  readonly redis: SimRedis;
  /** Record the trace (a replay); off for the bulk run, where it would only cost time. */
  readonly tracing: boolean;
  /**
   * Parse every frame and view with its schema. Always for job traffic; for the frequent pings,
   * status updates and worker views only in traced runs and one seed in eight, where they cost a
   * tenth of the run and are the same frames every time.
   */
  readonly validateAll: boolean;
  trace(actor: string, event: string): void;
  /** An invariant broke: the run stops at the end of this step and reports it. */
  violation(what: string): void;
  /** Ids the registry hands out: counted per seed, so they replay. */
  nextId(kind: "job" | "worker"): string;
  /** Faults are over: processes behave, nothing new goes wrong. */
  readonly calm: boolean;
}
