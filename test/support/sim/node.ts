import type { InspectionEvent } from "xstate";
import type { Logger } from "../../../src/observability/logger.ts";
import { type WorkerMessage, workerMessage } from "../../../src/protocol/registry.ts";
import type { RegistryDeps } from "../../../src/registry/core/ports.ts";
import { RegistryCore } from "../../../src/registry/core/registry-core.ts";
import type { RegistryMetrics } from "../../../src/registry/metrics.ts";
import type { RegistryTiming } from "../../../src/registry/timing.ts";
import { type ClusterTiming, SimCluster } from "./cluster.ts";
import type { SimContext } from "./context.ts";
import { traceTransitions, watchGiveUps } from "./inspect.ts";
import type { NodeEndpoint } from "./network.ts";
import { RedisClient } from "./redis.ts";
import { type RecordWrite, SimStore } from "./store.ts";
import { describeFrame } from "./worker.ts";

/** Metrics that count nothing: the simulation checks outcomes, and prom-client would cost time per seed. */
const noMetric: Record<string, unknown> = new Proxy(
  {},
  { get: (_target, key) => (key === "labels" ? () => noMetric : key === "startTimer" ? () => () => 0 : () => {}) },
);
const noMetrics = new Proxy({}, { get: () => noMetric }) as unknown as RegistryMetrics;

/** Frames that carry no job: schema-checked only in some seeds (see SimContext.validateAll). */
const FREQUENT_FRAMES = new Set(["ping", "pong", "status_update"]);

/** A pino-shaped logger whose lines go to the trace. */
function traceLogger(sim: SimContext, name: string): Logger {
  const line = (level: string) => (fields: unknown, message?: string) => {
    if (!sim.tracing) return;
    const text = typeof fields === "string" ? fields : `${message ?? ""} ${JSON.stringify(fields)}`;
    sim.trace(name, `${level}: ${text}`);
  };
  const logger = {
    level: "debug",
    trace: () => {},
    debug: line("debug"),
    info: line("info"),
    warn: line("warn"),
    error: line("error"),
    fatal: line("fatal"),
    child: () => logger,
  };
  return logger as unknown as Logger;
}

export interface NodeSettings {
  slot: number;
  nodeId: string;
  incarnation: number;
  /** With a node bus (a cluster on the shared Redis); without, a single registry node. */
  clustered: boolean;
  timing: RegistryTiming;
  cluster: ClusterTiming;
  onWrite(write: RecordWrite): void;
  /** A dispatch machine gave up on its bound worker (to offer the job again), on this event. */
  onGiveUp(jobId: string, workerId: string, cause: string): void;
  /** A frame from this worker (by its simulation name) reached the node. */
  onHeard(workerName: string): void;
  /** This node's reaper settles the jobs of a node it found dead. */
  onReap(deadNode: string): void;
}

function combined(
  first: (event: InspectionEvent) => void,
  second: ((event: InspectionEvent) => void) | undefined,
): (event: InspectionEvent) => void {
  if (!second) return first;
  return (event) => {
    first(event);
    second(event);
  };
}

/**
 * One incarnation of a registry node: the real RegistryCore with the simulated network as its
 * transport, the shared records through its own Redis client, and (in a cluster) the simulated bus.
 * It does what the WebSocket gateway does: parses every frame with the protocol schema, hands the
 * core connections, frames and closes, and runs the liveness sweep on a timer. A crash takes all of
 * it away at once; the records stay.
 */
export class SimNode implements NodeEndpoint {
  readonly name: string;
  up = false;
  /** Joining the cluster, not serving yet. */
  starting = false;
  core: RegistryCore | undefined;
  cluster: SimCluster | undefined;
  readonly #client: RedisClient;
  readonly #store: SimStore;
  #sweepTimer: number | undefined;

  constructor(
    private readonly sim: SimContext,
    readonly settings: NodeSettings,
  ) {
    this.name = settings.incarnation === 0 ? settings.nodeId : `${settings.nodeId}#${settings.incarnation}`;
    this.#client = new RedisClient(settings.slot, this.name);
    this.#store = new SimStore(sim.redis, this.#client, sim.clock, settings.onWrite);
  }

  get slot(): number {
    return this.settings.slot;
  }

  /** Joins the cluster (when clustered), then serves. False when Redis could not be reached. */
  async start(): Promise<boolean> {
    this.starting = true;
    try {
      return await this.#start();
    } finally {
      this.starting = false;
    }
  }

  async #start(): Promise<boolean> {
    const { sim, settings } = this;
    if (settings.clustered) {
      this.cluster = new SimCluster(
        settings.nodeId,
        sim.redis,
        this.#client,
        this.#store,
        sim.clock,
        settings.cluster,
        (message) => sim.tracing && sim.trace(this.name, message),
        sim.validateAll,
        (deadNode) => settings.onReap(deadNode),
      );
      try {
        await this.cluster.join();
      } catch (error) {
        this.cluster.crash();
        this.#client.dead = true;
        if (sim.tracing) sim.trace(this.name, `cannot join the cluster: ${(error as Error).message}`);
        return false;
      }
      if (this.#client.dead) return false;
    }
    const deps: RegistryDeps = {
      credentials: { apiKey: "sim", apiSecret: "sim-secret-0123456789abcdef0123456789" },
      transport: {
        send: (connectionId, message) => {
          if (!this.#owns(connectionId)) return false;
          const sent = sim.network.sendToWorker(connectionId, message);
          if (sent && sim.tracing) sim.trace(this.name, `→ ${this.#peer(connectionId)} ${describeFrame(message)}`);
          return sent;
        },
        close: (connectionId, code, reason) => {
          if (!this.#owns(connectionId)) return;
          if (sim.tracing) sim.trace(this.name, `closes ${connectionId} (${code} ${reason})`);
          sim.network.closeFromNode(connectionId, code, reason);
        },
      },
      store: this.#store,
      ...(this.cluster ? { bus: this.cluster } : {}),
      clock: sim.clock,
      random: sim.rng.next,
      newId: (kind) => sim.nextId(kind),
      timing: settings.timing,
      logger: traceLogger(sim, this.name),
      metrics: noMetrics,
      inspect: combined(
        watchGiveUps((jobId, workerId, cause) => settings.onGiveUp(jobId, workerId, cause)),
        sim.tracing ? traceTransitions(sim, this.name) : undefined,
      ),
    };
    this.core = new RegistryCore(deps);
    this.up = true;
    this.cluster?.attach(this.core);
    const sweepMs = Math.max(10, Math.min(1_000, settings.timing.pingIntervalMs / 5));
    const sweep = () => {
      if (!this.up) return;
      this.core?.sweep();
      this.#sweepTimer = sim.clock.after(sweepMs, sweep);
    };
    this.#sweepTimer = sim.clock.after(sweepMs, sweep);
    if (sim.tracing) sim.trace(this.name, "serving");
    return true;
  }

  /** The process dies: loud, the kernel resets its connections; silent, its machine is gone. */
  crash(loud: boolean): void {
    if (this.#client.dead) return;
    this.up = false;
    this.#client.dead = true;
    this.sim.clock.clearTimeout(this.#sweepTimer);
    this.cluster?.crash(loud);
    this.sim.network.nodeDied(this, loud);
    // Its dispatches and sessions stop without a word: they were only this process's memory.
    this.core?.close();
  }

  accept(connectionId: string): void {
    this.core?.connectionOpened(connectionId);
  }

  frame(connectionId: string, message: WorkerMessage): void {
    const core = this.core;
    if (!core) return;
    const from = this.sim.network.connections.get(connectionId)?.workerName;
    if (from) this.settings.onHeard(from);
    if (this.sim.tracing) this.sim.trace(this.name, `← ${this.#peer(connectionId)} ${describeFrame(message)}`);
    if (!this.sim.validateAll && FREQUENT_FRAMES.has(message.type)) {
      core.frame(connectionId, message);
      return;
    }
    // What the gateway does with every frame: a frame the schema refuses gets an error and changes nothing.
    const parsed = workerMessage.safeParse(message);
    if (!parsed.success) {
      this.sim.violation(`${this.name} refused a frame a worker sent: ${parsed.error.issues[0]?.message}`);
      return;
    }
    core.frame(connectionId, parsed.data);
  }

  closed(connectionId: string, departed: boolean): void {
    if (this.sim.tracing) this.sim.trace(this.name, `${connectionId} closed${departed ? " (departed)" : ""}`);
    this.core?.connectionClosed(connectionId, departed);
  }

  #owns(connectionId: string): boolean {
    return this.up && this.sim.network.connections.get(connectionId)?.node === this;
  }

  #peer(connectionId: string): string {
    return this.sim.network.connections.get(connectionId)?.workerName ?? connectionId;
  }

  describeJob(jobId: string): string | undefined {
    const live = this.core?.dispatcher.get(jobId);
    return live ? JSON.stringify(live.actor.getSnapshot().value) : undefined;
  }
}
