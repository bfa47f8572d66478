import type { ErrorInfo } from "../../machines/shared.ts";

export const JOB_STATUSES = [
  "pending",
  "offering",
  "assigned",
  "running",
  "completed",
  "failed",
  "cancelled",
  "lost",
  "rejected",
] as const;
export type JobStatus = (typeof JOB_STATUSES)[number];
export const FINAL_STATUSES: readonly JobStatus[] = ["completed", "failed", "cancelled", "lost", "rejected"];
export const isFinal = (status: JobStatus) => FINAL_STATUSES.includes(status);

export interface JobRecord {
  id: string;
  agentName: string;
  roomId?: string;
  metadata: Record<string, unknown>;
  roomOptions: Record<string, unknown>;
  /** Seconds; absent = the worker's own limit. */
  maxDuration?: number;
  idempotencyKey?: string;
  /** Dispatch again when the worker running it is lost. */
  redispatch: boolean;
  status: JobStatus;
  reason?: string;
  error?: ErrorInfo;
  workerId?: string;
  attempts: number;
  /** The registry node whose dispatch owns the job (several nodes share one Redis store). */
  node?: string;
  createdAt: number;
  updatedAt: number;
  endedAt?: number;
}

export interface JobFilter {
  status?: JobStatus;
  agentName?: string;
  limit?: number;
}

/**
 * Where the registry keeps job records. In memory by default; a later store keeps them in Redis.
 * Every method is async so both look the same to the registry.
 */
export interface JobStore {
  /** Creates the record, or returns the existing one with the same idempotency key. */
  create(record: JobRecord): Promise<{ record: JobRecord; created: boolean }>;
  get(id: string): Promise<JobRecord | undefined>;
  /**
   * Applies the patch unless the record is already final (a final status is never overwritten) or,
   * with `ifNode`, unless the job belongs to another node by now. Returns the record as it is after.
   */
  update(id: string, patch: Partial<JobRecord>, ifNode?: string): Promise<JobRecord | undefined>;
  list(filter?: JobFilter): Promise<JobRecord[]>;
  /** Every record that is not final yet, oldest first. */
  listActive(): Promise<JobRecord[]>;
  /**
   * Moves the job to node `to` only if it is not final and its owner is still `from` (undefined =
   * no owner): the one step by which registry nodes hand jobs over, so exactly one of two racing
   * nodes wins. Returns the claimed record, or undefined when the claim lost.
   */
  claim(id: string, from: string | undefined, to: string): Promise<JobRecord | undefined>;
  close(): Promise<void>;
}

/** The embedded default. Keeps at most `retain` final records, evicting the oldest first. */
export class MemoryJobStore implements JobStore {
  readonly #jobs = new Map<string, JobRecord>();
  readonly #byKey = new Map<string, string>();
  readonly #finalOrder: string[] = [];

  constructor(private readonly retain = 100_000) {}

  async create(record: JobRecord) {
    if (record.idempotencyKey) {
      const existing = this.#byKey.get(record.idempotencyKey);
      const found = existing ? this.#jobs.get(existing) : undefined;
      if (found) return { record: { ...found }, created: false };
    }
    if (this.#jobs.has(record.id)) return { record: { ...(this.#jobs.get(record.id) as JobRecord) }, created: false };
    this.#jobs.set(record.id, { ...record });
    if (record.idempotencyKey) this.#byKey.set(record.idempotencyKey, record.id);
    return { record: { ...record }, created: true };
  }

  async get(id: string) {
    const record = this.#jobs.get(id);
    return record ? { ...record } : undefined;
  }

  async update(id: string, patch: Partial<JobRecord>, ifNode?: string) {
    const record = this.#jobs.get(id);
    if (!record) return undefined;
    if (isFinal(record.status) || (ifNode !== undefined && record.node !== ifNode)) return { ...record };
    const next = { ...record, ...patch, id: record.id, updatedAt: patch.updatedAt ?? Date.now() };
    if (isFinal(next.status)) {
      next.endedAt ??= next.updatedAt;
      this.#finalOrder.push(id);
      this.#evict();
    }
    this.#jobs.set(id, next);
    return { ...next };
  }

  async list(filter: JobFilter = {}) {
    const out: JobRecord[] = [];
    const limit = filter.limit ?? 1000;
    for (const record of this.#jobs.values()) {
      if (filter.status && record.status !== filter.status) continue;
      if (filter.agentName && record.agentName !== filter.agentName) continue;
      out.push({ ...record });
    }
    return out.sort((a, b) => b.createdAt - a.createdAt).slice(0, limit);
  }

  async listActive() {
    const out: JobRecord[] = [];
    for (const record of this.#jobs.values()) if (!isFinal(record.status)) out.push({ ...record });
    return out.sort((a, b) => a.createdAt - b.createdAt);
  }

  async claim(id: string, from: string | undefined, to: string) {
    const record = this.#jobs.get(id);
    if (!record || isFinal(record.status) || record.node !== from) return undefined;
    record.node = to;
    return { ...record };
  }

  async close() {}

  #evict() {
    while (this.#finalOrder.length > this.retain) {
      const id = this.#finalOrder.shift() as string;
      const record = this.#jobs.get(id);
      if (record?.idempotencyKey) this.#byKey.delete(record.idempotencyKey);
      this.#jobs.delete(id);
    }
  }
}
