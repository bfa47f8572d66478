import type { DispatchRequest } from "../../../src/registry/core/ports.ts";
import { isFinal } from "../../../src/registry/store.ts";
import { Invariants, type Observed } from "./checks.ts";
import { SimClock } from "./clock.ts";
import type { SimContext } from "./context.ts";
import { Network } from "./network.ts";
import { SimNode } from "./node.ts";
import { Rng } from "./random.ts";
import { SimRedis } from "./redis.ts";
import { SIM_CLUSTER_TIMING, SIM_REGISTRY_TIMING } from "./timing.ts";
import { JobStarts, SimWorker, type WorkerShape } from "./worker.ts";

/** Where the simulated time starts: far from 0, so no time reads as "unset". */
export const START_MS = 1_000_000;

export interface WorldShape {
  nodes: number;
  clustered: boolean;
  workers: WorkerShape[];
  /** How long faults and requests go on before the world is left to settle. */
  faultPhaseMs: number;
}

/** A request from an API client, to some node, with the node it went to. */
interface PendingCall {
  node: SimNode;
  what: string;
}

/**
 * One simulated cluster for one seed: registry nodes, workers, the network, Redis, the clients and
 * the fault schedule, on one clock and one PRNG.
 */
export class World implements SimContext, Observed {
  readonly clock = new SimClock(START_MS);
  readonly rng: Rng;
  readonly network: Network;
  readonly redis: SimRedis;
  readonly nodes: (SimNode | undefined)[] = [];
  readonly workers: (SimWorker | undefined)[] = [];
  readonly allWorkers: SimWorker[] = [];
  readonly starts = new JobStarts();
  readonly checks: Invariants;
  readonly traceLines: string[] = [];
  readonly violations: string[] = [];
  readonly pending = new Set<PendingCall>();
  /** Jobs the clients know of (dispatch answers), for cancels. */
  readonly knownJobs: string[] = [];
  /** When a frame from each worker (by name) last reached a node. */
  readonly lastHeard = new Map<string, number>();
  readonly shape: WorldShape;
  calm = false;
  readonly validateAll: boolean;
  #nodeIncarnations: number[] = [];
  #workerIncarnations: number[] = [];
  #ids = { job: 0, worker: 0 };
  readonly sim: SimContext = this;

  constructor(
    readonly seed: number,
    readonly tracing: boolean,
  ) {
    this.rng = new Rng(seed);
    this.validateAll = tracing || seed % 8 === 0;
    this.network = new Network(this.clock, this.rng, SIM_WORKER_CONNECT_TIMEOUT_MS, (actor, event) =>
      this.trace(actor, event),
    );
    this.redis = new SimRedis(this.clock, this.rng);
    this.checks = new Invariants(this);
    this.starts.onStart = (started) => this.checks.onStart(started);
    this.shape = randomShape(this.rng);
    this.network.slowFrameChance = this.rng.chance(0.5) ? this.rng.next() * 0.05 : 0;
    this.redis.slowCommandChance = this.rng.chance(0.5) ? this.rng.next() * 0.03 : 0;
  }

  trace(actor: string, event: string): void {
    if (!this.tracing) return;
    const t = ((this.clock.now() - START_MS) / 1000).toFixed(3).padStart(7);
    this.traceLines.push(`${t}s  ${actor.padEnd(9)} ${event}`);
  }

  violation(what: string): void {
    this.violations.push(what);
    this.trace("VIOLATION", what);
  }

  nextId(kind: "job" | "worker"): string {
    return kind === "job" ? `job-${++this.#ids.job}` : `w-${++this.#ids.worker}`;
  }

  // ------------------------------------------------------------------ nodes and workers

  /** Starts the node of a slot, unless one is serving or starting there already. */
  startNode(slot: number, newId: boolean): void {
    const current = this.nodes[slot];
    if (current?.up || current?.starting) return;
    const incarnation = this.#nodeIncarnations[slot] ?? 0;
    this.#nodeIncarnations[slot] = incarnation + 1;
    const previous = this.nodes[slot];
    const nodeId =
      newId || !previous ? `n${slot}${incarnation > 0 ? `-${incarnation}` : ""}` : previous.settings.nodeId;
    const node = new SimNode(this, {
      slot,
      nodeId,
      incarnation,
      clustered: this.shape.clustered,
      timing: SIM_REGISTRY_TIMING,
      cluster: SIM_CLUSTER_TIMING,
      onWrite: (write) => this.checks.onWrite(write),
      onGiveUp: (jobId, workerId, cause) => {
        const silentMs = this.silenceOf(workerId);
        this.trace(node.name, `gives up on ${workerId} for ${jobId} (${cause}; silent for ${silentMs} ms)`);
      },
      onHeard: (workerName) => this.lastHeard.set(workerName, this.clock.now()),
      onReap: (deadNode) => {
        if (this.nodes.some((other) => other?.up && other.settings.nodeId === deadNode)) {
          this.trace(node.name, `reaps ${deadNode}, which is alive`);
        }
      },
    });
    this.nodes[slot] = node;
    this.network.nodes[slot] = node;
    this.trace(node.name, "starting");
    node.start().then(
      (serving) => {
        // Redis was not there to join: an orchestrator starts it again.
        if (!serving && this.nodes[slot] === node) this.clock.after(500, () => this.startNode(slot, false));
      },
      (error: Error) => this.violation(`${node.name} failed to start: ${error.message}`),
    );
  }

  crashNode(slot: number, loud: boolean): void {
    const node = this.nodes[slot];
    if (!node?.up) return;
    this.trace(node.name, `crashes (${loud ? "connections reset" : "silently"})`);
    node.crash(loud);
    for (const call of this.pending) if (call.node === node) this.pending.delete(call);
  }

  startWorker(slot: number): void {
    const shape = this.shape.workers[slot] as WorkerShape;
    const incarnation = this.#workerIncarnations[slot] ?? 0;
    this.#workerIncarnations[slot] = incarnation + 1;
    const worker = new SimWorker(this, slot, incarnation, shape, this.starts);
    this.workers[slot] = worker;
    this.allWorkers.push(worker);
    this.trace(worker.name, `starts (${shape.agentName}, max ${shape.maxProcesses}, idle ${shape.numIdleProcesses})`);
    worker.actor.subscribe({ complete: () => this.#workerStopped(worker) });
    worker.start();
  }

  /** A worker that drained (or gave up) exits; its orchestrator starts a new one. */
  #workerStopped(worker: SimWorker): void {
    if (worker.crashed) return;
    this.trace(worker.name, `exits with code ${worker.actor.getSnapshot().output?.exitCode}`);
    this.clock.after(this.calm ? 0 : this.rng.int(200, 2_000), () => {
      if (this.workers[worker.slot] === worker) this.startWorker(worker.slot);
    });
  }

  /** How long no node has heard from the worker known by this registry id (its latest incarnation under it). */
  /** When the faults stopped and the slow Redis commands sent before that had run (see Observed). */
  healedAt = Number.POSITIVE_INFINITY;

  silenceOf(workerId: string): number {
    let silent = Number.POSITIVE_INFINITY;
    for (const worker of this.allWorkers) {
      if (!worker.registeredIds.has(workerId) && worker.workerId !== workerId) continue;
      const heard = this.lastHeard.get(worker.name);
      silent = Math.min(silent, heard === undefined ? Number.POSITIVE_INFINITY : this.clock.now() - heard);
    }
    return silent;
  }

  // ------------------------------------------------------------------ clients

  upNodes(): SimNode[] {
    return this.nodes.filter((node): node is SimNode => node?.up === true && node.core !== undefined);
  }

  dispatch(request: DispatchRequest): void {
    const node = this.rng.pick(this.upNodes());
    if (!node?.core) return;
    const call = { node, what: `dispatch ${JSON.stringify(request)}` };
    this.pending.add(call);
    this.trace("client", `dispatch to ${node.name} ${JSON.stringify(request)}`);
    node.core.dispatch(request).then(
      ({ record, created }) => {
        this.pending.delete(call);
        this.trace("client", `dispatched ${record.id}${created ? "" : " (existing)"} ${record.status}`);
        this.knownJobs.push(record.id);
        this.checks.onDispatched(request.idempotencyKey, record.id);
      },
      (error: Error) => {
        this.pending.delete(call);
        this.trace("client", `dispatch failed: ${error.message}`);
      },
    );
  }

  cancel(jobId: string): void {
    const node = this.rng.pick(this.upNodes());
    if (!node?.core) return;
    const call = { node, what: `cancel ${jobId}` };
    this.pending.add(call);
    this.trace("client", `cancel ${jobId} at ${node.name}`);
    node.core.cancel(jobId).then(
      (record) => {
        this.pending.delete(call);
        this.trace("client", `cancel ${jobId} answered ${record?.status ?? "unknown"}`);
      },
      (error: Error) => {
        this.pending.delete(call);
        this.trace("client", `cancel failed: ${error.message}`);
      },
    );
  }

  /**
   * Redis restarts empty. What a serving node holds in memory it writes back (its dispatches, the
   * hand-offs it sent); a job whose holders all went down before writing it back is known to its
   * worker at most, and is exempt from reaching a final record (see lostWithRedis).
   */
  wipeRedis(): void {
    const up = this.upNodes();
    for (const [jobId, entry] of this.checks.ledger) {
      if (isFinal(entry.status)) continue;
      const handOff = this.checks.handOffs.get(jobId);
      entry.wipedWhileHeldBy = up
        .filter((node) => node.core?.dispatcher.has(jobId) || node.name === handOff?.from)
        .map((node) => node.name);
    }
    this.checks.onWipe();
    this.redis.wipe();
  }

  /** Redis lost the job's record, and every node that held the job then went down before writing it back. */
  lostWithRedis(jobId: string): boolean {
    const holders = this.checks.ledger.get(jobId)?.wipedWhileHeldBy;
    return holders !== undefined && !this.upNodes().some((node) => holders.includes(node.name));
  }

  // ------------------------------------------------------------------ settling

  /** Faults end: the network heals, Redis is back, and whatever is down starts again. */
  becomeCalm(): void {
    this.calm = true;
    this.trace("world", "faults stop");
    this.network.healAll();
    // Commands held by a hanging outage wait for its end, even now.
    const hungUntil = Math.max(
      this.redis.outage?.until ?? 0,
      ...[...this.redis.linkOutages.values()].map((outage) => outage.until),
    );
    this.redis.outage = undefined;
    this.redis.linkOutages.clear();
    this.redis.busFaults = undefined;
    this.redis.slowCommandChance = 0;
    this.healedAt = Math.max(this.redis.backlogClearsAt(), hungUntil);
    this.network.slowFrameChance = 0;
    for (let slot = 0; slot < this.shape.nodes; slot++) if (!this.nodes[slot]?.up) this.startNode(slot, false);
    for (let slot = 0; slot < this.shape.workers.length; slot++) {
      if (!this.workers[slot]?.alive) this.startWorker(slot);
    }
  }

  /** Why the world has not settled yet, or undefined once it has. */
  unsettled(): string | undefined {
    for (let slot = 0; slot < this.shape.nodes; slot++) {
      if (!this.nodes[slot]?.up) return `node slot ${slot} is not serving`;
    }
    for (const call of this.pending) return `a client call is unanswered: ${call.what} at ${call.node.name}`;
    for (const [id, entry] of this.checks.ledger) {
      if (!isFinal(entry.status) && !this.lostWithRedis(id)) return `job ${id} is ${entry.status}`;
    }
    for (const node of this.upNodes()) {
      const live = [...(node.core?.dispatcher.values() ?? [])][0];
      if (live) return `${node.name} still runs the dispatch of ${live.record.id}`;
    }
    for (const worker of this.workers) {
      if (!worker?.alive) return `${worker?.name ?? "a worker"} is not running`;
      const id = worker.workerId;
      const connection = worker.currentConnection;
      if (!worker.registered || !id || !connection) return `${worker.name} is not registered`;
      const link = (connection.node as SimNode).core?.directory.get(id);
      if (!connection.node.up || !link?.connected || link.connectionId !== connection.id) {
        return `${worker.name} (${id}) is not registered with the node it is connected to (${connection.node.name})`;
      }
      const context = worker.actor.getSnapshot().context;
      const idle = Object.values(context.slots).filter((s) => s.phase === "idle").length;
      const want = Math.min(worker.shape.numIdleProcesses, worker.shape.maxProcesses);
      if (Object.keys(context.jobs).length > 0) return `${worker.name} still has jobs ${Object.keys(context.jobs)}`;
      if (idle !== want) return `${worker.name} has ${idle} idle processes, wants ${want}`;
    }
    for (const [key, ids] of this.checks.keys) {
      if (this.checks.keysBeforeWipe.has(key)) continue;
      const records = [...this.checks.ledger.values()].filter((entry) => entry.idempotencyKey === key);
      if (records.length !== 1 || ids.size !== 1) {
        this.violation(`idempotency key ${key} has ${records.length} records and answered ${ids.size} ids`);
      }
    }
    return undefined;
  }

  describeState(): string[] {
    const lines: string[] = [];
    for (const node of this.nodes) {
      if (!node) continue;
      const dispatches = [...(node.core?.dispatcher.values() ?? [])]
        .map((live) => `${live.record.id}:${JSON.stringify(live.actor.getSnapshot().value)}`)
        .join(" ");
      const sessions = [...(node.core?.directory.workers() ?? [])]
        .map((link) => `${link.workerId}:${link.state}`)
        .join(" ");
      lines.push(`${node.name} ${node.up ? "up" : "down"} dispatches[${dispatches}] sessions[${sessions}]`);
    }
    for (const worker of this.workers)
      if (worker) lines.push(`${worker.name} (${worker.workerId ?? "-"}) ${worker.describe()}`);
    for (const [id, entry] of this.checks.ledger)
      lines.push(`record ${id} ${entry.status}${entry.redispatch ? " (redispatch)" : ""}`);
    return lines;
  }
}

/** The worker's connect deadline: the real socket uses its registration deadline. */
const SIM_WORKER_CONNECT_TIMEOUT_MS = 2_000;

/** Sizes lean small (most bugs need two or three actors; big worlds cost the most time), up to 3 nodes and 6 workers. */
function randomShape(rng: Rng): WorldShape {
  const nodes = rng.int(1, 3);
  const workers: WorkerShape[] = [];
  const count = 1 + Math.floor(rng.next() ** 1.5 * 6);
  for (let i = 0; i < count; i++) {
    const maxProcesses = rng.int(1, 4);
    workers.push({
      agentName: i > 0 && rng.chance(0.15) ? "other" : "agent",
      maxProcesses,
      numIdleProcesses: rng.int(0, maxProcesses),
    });
  }
  return { nodes, clustered: nodes > 1 || rng.chance(0.5), workers, faultPhaseMs: rng.int(2_500, 10_000) };
}
