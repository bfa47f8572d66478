import type { JobInventoryEntry } from "../../protocol/registry.ts";
import { isFinal, type JobRecord } from "../store.ts";
import type { Dispatcher } from "./dispatcher.ts";
import type { NodeStrategy } from "./node-strategy.ts";
import type { RegistryDeps } from "./ports.ts";
import { retryWrite } from "./retry-write.ts";
import type { WorkerLink } from "./worker-link.ts";

/** At most this many final reports are retried at once (a worker holds at most 1,024 jobs). */
const MAX_REPORT_RETRIES = 10_000;

interface FinalReport {
  job_id: string;
  status: "completed" | "failed" | "cancelled";
  reason?: string;
  error?: JobRecord["error"];
  exit_code?: number | null;
  signal?: string | null;
}

/** What a worker's final report adds to a job record: its reason, error, exit code and signal. */
function outcomeOf(report: FinalReport): Pick<JobRecord, "reason" | "error" | "exitCode" | "signal"> {
  return {
    ...(report.reason ? { reason: report.reason } : {}),
    ...(report.error ? { error: report.error } : {}),
    ...(report.exit_code !== undefined ? { exitCode: report.exit_code } : {}),
    ...(report.signal !== undefined ? { signal: report.signal } : {}),
  };
}

/**
 * What a worker says it runs or ran, set against what the registry believes: on registration (its
 * inventory) and whenever it reports a job no dispatch here is running. Records catch up, a `lost`
 * record whose worker finished the job after all is corrected, a job that is someone else's is
 * terminated on the worker, and a running job is taken back only when it is this worker's by
 * record, or (after a registry restart) from the bounded inventory of a registration.
 */
export class Reconciler {
  /** Jobs whose worker's final report is being written (and retried while the store refuses it). */
  readonly #retryingReports = new Set<string>();

  constructor(
    private readonly deps: RegistryDeps,
    private readonly dispatcher: Dispatcher,
    private readonly node: NodeStrategy,
    private readonly persist: (work: Promise<unknown>) => void,
  ) {}

  inventory(link: WorkerLink, inventory: JobInventoryEntry[]): void {
    link.takeInventory(inventory);
    for (const entry of inventory) {
      if (entry.status === "running") this.#reportedRunning(link, entry.job_id, { fromInventory: true });
      else this.reportedFinal(link, entry as FinalReport);
    }
  }

  /** A job_update for a job no dispatch here runs. */
  unknownJobUpdate(
    link: WorkerLink,
    report: Omit<FinalReport, "status"> & { status: JobInventoryEntry["status"] },
  ): void {
    if (report.status === "running") this.#reportedRunning(link, report.job_id, { fromInventory: false });
    else this.reportedFinal(link, report as FinalReport);
  }

  /** The worker says it finished a job: its dispatch hears it, or its record does. */
  reportedFinal(link: WorkerLink, report: FinalReport): void {
    const update = {
      type: "job_update" as const,
      workerId: link.workerId,
      status: report.status,
      ...outcomeOf(report),
    };
    if (this.dispatcher.send(report.job_id, update)) return;
    // The worker reports an end once: when the store refuses it for a while, it is written again.
    // Once per job, and for a bounded number of jobs: a worker naming endless ids while Redis is
    // down must not grow this node's retries without limit (past the bound, one attempt each).
    const retrying = this.#retryingReports;
    if (retrying.has(report.job_id)) return;
    const mayRetry = retrying.size < MAX_REPORT_RETRIES;
    if (mayRetry) retrying.add(report.job_id);
    this.persist(
      retryWrite({
        write: () => this.#recordFinalReport(link, report),
        clock: this.deps.clock,
        stopped: () => this.dispatcher.closed || !mayRetry,
        onRefused: (error, retryInMs) =>
          this.deps.logger.warn(
            { jobId: report.job_id, status: report.status, err: error.message, retryInMs },
            "recording a worker's final report failed; retrying",
          ),
      }).finally(() => {
        if (mayRetry) retrying.delete(report.job_id);
      }),
    );
  }

  async #recordFinalReport(link: WorkerLink, report: FinalReport): Promise<void> {
    const record = await this.deps.store.get(report.job_id);
    if (!record || record.workerId !== link.workerId) return;
    // Not the job's end: its dispatch (wherever it runs, or the reaper's) offers it elsewhere.
    if (record.redispatch && report.status === "failed" && report.reason === "lease_lapsed") return;
    if (record.status === "lost") return this.#correctLost(record, report);
    if (isFinal(record.status)) return;
    // Only while the record still names this worker: the job may have gone to another one since the read.
    const after = await this.deps.store.update(
      report.job_id,
      { status: report.status, ...outcomeOf(report) },
      undefined,
      link.workerId,
    );
    if (after?.status === report.status && after.workerId === link.workerId)
      this.node.tookOver(record.node, report.job_id);
  }

  /** The worker was declared lost, but it ran the job to its end: that is the outcome, and both facts stay. */
  async #correctLost(record: JobRecord, report: FinalReport): Promise<void> {
    const corrected = await this.deps.store.correctLost(record.id, {
      status: report.status,
      ...outcomeOf(report),
      history: [
        ...(record.history ?? []),
        { status: "lost", ...(record.reason ? { reason: record.reason } : {}), at: record.endedAt ?? record.updatedAt },
      ],
    });
    if (corrected?.status === report.status) {
      this.deps.logger.info(
        { jobId: record.id, workerId: record.workerId, status: report.status },
        "a job recorded lost was finished by its worker after all: record corrected",
      );
    }
  }

  #reportedRunning(link: WorkerLink, jobId: string, how: { fromInventory: boolean }): void {
    const live = this.dispatcher.get(jobId);
    if (live) {
      if (live.actor.getSnapshot().context.workerId === link.workerId) {
        live.actor.send({ type: "job_update", workerId: link.workerId, status: "running" });
      } else {
        this.deps.transport.send(link.connectionId, {
          type: "job_termination",
          job_id: jobId,
          reason: "job belongs to another worker",
        });
      }
      return;
    }
    this.persist(this.#adopt(link, jobId, how.fromInventory));
  }

  /**
   * A running job this node runs no dispatch for. Taken back when its record names this worker (its
   * dispatch was lost with a node or a restart), or when no record exists and it came in a
   * registration's inventory (a registry restarted without its records). Anything else is refused
   * and changes nothing, so a worker token cannot create job records by naming new ids.
   */
  async #adopt(link: WorkerLink, jobId: string, fromInventory: boolean): Promise<void> {
    const record = await this.deps.store.get(jobId);
    const assignedHere = record?.workerId === link.workerId;
    if (!assignedHere && !(fromInventory && !record)) {
      this.deps.metrics.protocolErrors.inc({ code: "unknown_job" });
      this.deps.transport.send(link.connectionId, {
        type: "error",
        code: "unknown_job",
        message: `job ${jobId} was not assigned to this worker`,
      });
      return;
    }
    if (record && isFinal(record.status)) {
      this.deps.transport.send(link.connectionId, {
        type: "job_termination",
        job_id: jobId,
        reason: `job already ${record.status}`,
      });
      return;
    }
    if (this.dispatcher.has(jobId)) return;
    let claimed = record;
    // The job belonged to another node (its worker moved here): it is this node's now, and only if
    // this claim wins, so two nodes never both run its dispatch.
    if (record && !this.node.owns(record)) {
      claimed = await this.deps.store.claim(jobId, record.node, this.node.nodeId as string);
      if (!claimed) return;
      this.node.tookOver(record.node, jobId);
    }
    const now = this.deps.clock.now();
    const base: JobRecord = claimed ?? {
      id: jobId,
      agentName: link.context.agentName,
      metadata: {},
      roomOptions: {},
      redispatch: false,
      status: "running",
      workerId: link.workerId,
      attempts: 1,
      createdAt: now,
      updatedAt: now,
      ...(this.node.nodeId ? { node: this.node.nodeId } : {}),
    };
    if (!record) await this.deps.store.create(base);
    // Another report of the same job may have adopted it while the store answered, or the worker
    // reported its end meanwhile (that report has written the record, or is writing it).
    if (this.dispatcher.has(jobId) || link.reported(jobId)?.status !== "running") return;
    this.deps.logger.info({ jobId, workerId: link.workerId }, "adopted a running job its worker reported");
    this.dispatcher.start(base, { adoptedBy: link.workerId });
  }
}
