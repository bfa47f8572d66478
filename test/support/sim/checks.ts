import { isFinal, type JobStatus } from "../../../src/registry/store.ts";
import type { SimContext } from "./context.ts";
import type { SimNode } from "./node.ts";
import type { RecordWrite } from "./store.ts";
import type { JobHolder, JobStarts, SimWorker } from "./worker.ts";

/** What the checks read from the world. */
export interface Observed {
  readonly sim: SimContext;
  readonly nodes: (SimNode | undefined)[];
  /** The current incarnation in each worker slot. */
  readonly workers: (SimWorker | undefined)[];
  /** Every incarnation that ever ran. */
  readonly allWorkers: SimWorker[];
  readonly starts: JobStarts;
  /** When the faults stopped and the slow Redis commands sent before that had run; +∞ until then. */
  readonly healedAt: number;
}

/** A hand-off must reach its node and start its dispatch within this, counted from when the faults healed. */
export const HAND_OFF_BOUND_MS = 2_000;
/**
 * After Redis restarted empty, a node that runs a job's dispatch writes its record back within this
 * of the faults healing (it notices on its next presence renewal), not only at the job's next change.
 */
export const WRITE_BACK_BOUND_MS = 2_000;

interface LedgerEntry {
  status: JobStatus;
  /** Every status the record had, in order. */
  history: JobStatus[];
  /** The node that owns the job now. */
  node: string | undefined;
  workerId: string | undefined;
  redispatch: boolean;
  idempotencyKey: string | undefined;
  /**
   * Redis restarted empty and nothing wrote the record since: the serving nodes that held the job
   * then (its dispatch, or a hand-off they had sent), which must write it back. Once none of them is
   * up any more, only its worker may know the job, and it need not reach a final record (see
   * docs/deploying.md).
   */
  wipedWhileHeldBy?: string[];
  /** Final when Redis restarted empty: a record written again since may only end the same way. */
  finalBeforeWipe?: JobStatus;
  /**
   * The final status was written by a node other than the one running the job's dispatch (it took
   * that node for dead): the only copy was in Redis, so Redis losing it may undo it.
   */
  finalFromElsewhere?: true;
  /** Redis restarted empty and nothing has written the record since. */
  missing?: true;
}

/**
 * The safety invariants, checked after every step (and, for records, on every write): they hold at
 * every moment, faults or not. Each broken one is reported through `sim.violation`.
 */
export class Invariants {
  /** Every job record ever written, as it is now. */
  readonly ledger = new Map<string, LedgerEntry>();
  /** Idempotency key → the job ids dispatches with it were answered with. */
  readonly keys = new Map<string, Set<string>>();
  /** Hand-offs whose dispatch has not started on their node yet: job id → the node, when, and the sender (a node's name). */
  readonly handOffs = new Map<string, { to: string; at: number; from: string }>();
  /** Redis restarted empty at least once. */
  wiped = false;
  /** Idempotency keys used before Redis last restarted empty: a key whose record it lost may get a new job. */
  readonly keysBeforeWipe = new Set<string>();
  /** Per delivered hand-off sent before the faults healed, how long after that it started. */
  readonly handOffDelaysAfterCalm: number[] = [];

  constructor(private readonly world: Observed) {}

  /** A write reached the shared records. */
  onWrite({ op, by, record }: RecordWrite): void {
    const { sim } = this.world;
    const before = this.ledger.get(record.id);
    if (!before) {
      this.ledger.set(record.id, {
        status: record.status,
        history: [record.status],
        node: record.node,
        workerId: record.workerId,
        redispatch: record.redispatch,
        idempotencyKey: record.idempotencyKey,
      });
      if (sim.tracing) sim.trace("store", `${record.id} created ${record.status} by ${by}`);
      return;
    }
    if (op === "handOff" && record.node) {
      this.handOffs.set(record.id, { to: record.node, at: sim.clock.now(), from: by });
    }
    if (sim.tracing && before.node !== record.node) {
      sim.trace(
        "store",
        `${record.id} now ${record.node ?? "no node"}'s (${op} by ${by}, was ${before.node ?? "no node"}'s)`,
      );
    }
    before.node = record.node;
    before.workerId = record.workerId;
    before.missing = undefined;
    before.wipedWhileHeldBy = undefined;
    if (before.status === record.status) return;
    if (sim.tracing) {
      sim.trace(
        "store",
        `${record.id} ${before.status} → ${record.status} (${op} by ${by}${record.reason ? `: ${record.reason}` : ""})`,
      );
    }
    if (before.finalBeforeWipe !== undefined && isFinal(record.status)) {
      // `lost` says what is true then: the record was lost, and whether the job ran is unknown.
      // What its worker itself reported is what happened (a `lost` record is corrected so anyway).
      const asItsWorkerSaid = this.#reportedBy(record.workerId, record.id, record.status);
      const same = record.status === before.finalBeforeWipe || record.status === "lost";
      if (!same && !asItsWorkerSaid && !before.finalFromElsewhere) {
        sim.violation(
          `record ${record.id}, ${before.finalBeforeWipe} before Redis lost it, was written again and ended ${record.status}`,
        );
      }
      before.finalBeforeWipe = undefined;
    }
    if (isFinal(before.status)) {
      const corrected =
        op === "correctLost" && before.status === "lost" && this.#reportedBy(record.workerId, record.id, record.status);
      // Redis lost it, and a node that held the job wrote it again (then its outcome, checked above).
      const writtenAgain = op === "create" && before.finalBeforeWipe !== undefined;
      if (!corrected && !writtenAgain) {
        sim.violation(
          `record ${record.id} left its final status ${before.status} for ${record.status} (${op} by ${by})`,
        );
      }
    }
    if (record.status === "completed" && !this.#reportedBy(record.workerId, record.id, "completed")) {
      sim.violation(
        `record ${record.id} says completed on ${record.workerId ?? "no worker"}, whose job machine did not complete it`,
      );
    }
    if (isFinal(record.status)) {
      const owner = [...this.world.nodes].find((node) => node?.up && node.core?.dispatcher.has(record.id));
      before.finalFromElsewhere = owner !== undefined && owner.name !== by ? true : undefined;
    }
    before.status = record.status;
    before.history.push(record.status);
  }

  /** Redis restarted empty: the idempotency keys it held start afresh, and the hand-offs in it are gone. */
  onWipe(): void {
    this.wiped = true;
    for (const key of this.keys.keys()) this.keysBeforeWipe.add(key);
    this.keys.clear();
    // Their inbox entries are gone: their senders settle them (liveness checks that they do).
    this.handOffs.clear();
    for (const entry of this.ledger.values()) {
      // Its record was created before, whether or not the call that made it has been answered yet.
      if (entry.idempotencyKey) this.keysBeforeWipe.add(entry.idempotencyKey);
      entry.missing = true;
      if (isFinal(entry.status)) entry.finalBeforeWipe = entry.status;
    }
  }

  /** A dispatch call answered: one idempotency key, one job. */
  onDispatched(key: string | undefined, jobId: string): void {
    if (!key) return;
    const ids = this.keys.get(key) ?? new Set<string>();
    ids.add(jobId);
    this.keys.set(key, ids);
    if (ids.size > 1) this.world.sim.violation(`idempotency key ${key} answered with jobs ${[...ids].join(", ")}`);
  }

  /** A process was handed a job: never one running elsewhere, and a second start only with redispatch. */
  onStart(started: JobHolder): void {
    const { sim, starts } = this.world;
    for (const other of starts.holders) {
      if (other === started || other.jobId !== started.jobId || other.process.exited || other.process.disposed)
        continue;
      sim.violation(`job ${started.jobId} starts on ${started.worker.name} while it runs on ${other.worker.name}`);
    }
    const count = starts.counts.get(started.jobId) ?? 0;
    if (count > 1 && !this.ledger.get(started.jobId)?.redispatch) {
      sim.violation(`job ${started.jobId} started ${count} times, and its dispatch did not ask for redispatch`);
    }
  }

  /**
   * Every hand-off starts its dispatch on its node (if that node is up under the same id and still
   * owns the job) within HAND_OFF_BOUND_MS of the faults healing: messages delayed, a node cut off
   * from Redis or restarted after it was handed the job, nothing is lost in an inbox.
   */
  #checkHandOffs(): void {
    const { sim, nodes, healedAt } = this.world;
    const now = sim.clock.now();
    for (const [jobId, { to, at }] of this.handOffs) {
      const entry = this.ledger.get(jobId);
      const node = nodes.find((candidate) => candidate?.up && candidate.settings.nodeId === to);
      if (!entry || isFinal(entry.status) || entry.node !== to || node?.core?.dispatcher.has(jobId)) {
        if (node?.core?.dispatcher.has(jobId) && at < healedAt && now > healedAt) {
          this.handOffDelaysAfterCalm.push(now - healedAt);
        }
        this.handOffs.delete(jobId);
        continue;
      }
      if (node && now > Math.max(at, healedAt) + HAND_OFF_BOUND_MS) {
        sim.violation(
          `the hand-off of ${jobId} to ${to} has not started its dispatch ${now - Math.max(at, healedAt)} ms after ` +
            `${at < healedAt ? "the faults healed" : "it was sent"}`,
        );
        this.handOffs.delete(jobId);
      }
    }
  }

  /** Every dispatch a serving node runs has its record in Redis again soon after Redis lost its data. */
  #checkWrittenBack(): void {
    const { sim, nodes, healedAt } = this.world;
    const late = sim.clock.now() - healedAt - WRITE_BACK_BOUND_MS;
    if (late <= 0) return;
    for (const node of nodes) {
      if (!node?.up || !node.core) continue;
      for (const live of node.core.dispatcher.values()) {
        const entry = this.ledger.get(live.record.id);
        if (!entry?.missing || live.actor.getSnapshot().status !== "active") continue;
        entry.missing = undefined;
        sim.violation(
          `${node.name} runs the dispatch of ${live.record.id}, whose record is still missing ${late + WRITE_BACK_BOUND_MS} ms after the faults healed`,
        );
      }
    }
  }

  /** After every step: bounds on each worker, no actor broken, hand-offs delivered, records written back. */
  afterStep(): void {
    const { sim, workers, nodes, starts } = this.world;
    if (this.handOffs.size > 0) this.#checkHandOffs();
    if (this.wiped) this.#checkWrittenBack();
    for (const worker of workers) {
      if (!worker || worker.crashed) continue;
      const snapshot = worker.actor.getSnapshot();
      if (snapshot.status === "error") sim.violation(`${worker.name}'s root machine failed: ${String(snapshot.error)}`);
      if (snapshot.status !== "active") continue;
      const max = worker.shape.maxProcesses;
      const jobs = Object.keys(snapshot.context.jobs).length;
      if (jobs > max) sim.violation(`${worker.name} holds ${jobs} jobs, maxProcesses ${max}`);
      const processes = worker.liveProcesses();
      if (processes > max) sim.violation(`${worker.name} runs ${processes} processes, maxProcesses ${max}`);
      if (worker.registered && worker.workerId) worker.registeredIds.add(worker.workerId);
    }
    for (const holder of starts.holders) {
      if (holder.process.exited || holder.process.disposed) starts.holders.delete(holder);
    }
    for (const node of nodes) {
      if (!node?.up || !node.core) continue;
      for (const live of node.core.dispatcher.values()) {
        if (live.actor.getSnapshot().status === "error") {
          sim.violation(`${node.name}: the dispatch machine of ${live.record.id} failed`);
        }
      }
      for (const link of node.core.directory.workers()) {
        if (link.session.getSnapshot().status === "error") sim.violation(`${node.name}: a session machine failed`);
      }
    }
  }

  /** The worker (any incarnation registered under `workerId`) ended the job with this status. */
  #reportedBy(workerId: string | undefined, jobId: string, status: string): boolean {
    if (!workerId) return false;
    return this.world.allWorkers.some(
      (worker) =>
        (worker.registeredIds.has(workerId) || worker.workerId === workerId) && worker.finished.get(jobId) === status,
    );
  }
}
