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
  /** How a failed job's process ended, as its worker reported: exit code (null when a signal ended it)… */
  exitCode?: number | null;
  /** …and the signal's name, such as "SIGSEGV" (null when it exited by itself). */
  signal?: string | null;
  workerId?: string;
  attempts: number;
  /** The registry node whose dispatch owns the job (several nodes share one Redis store). */
  node?: string;
  createdAt: number;
  updatedAt: number;
  endedAt?: number;
  /**
   * W3C trace context of the job's `troupe.dispatch` span (when tracing is on, or the request carried
   * one): a node that takes the dispatch over continues the same trace under it.
   */
  traceparent?: string;
  tracestate?: string;
  /** Earlier outcomes this record was corrected from (a `lost` job whose worker later reported its end). */
  history?: { status: JobStatus; reason?: string; at: number }[];
}

export interface JobFilter {
  status?: JobStatus;
  agentName?: string;
  limit?: number;
}

/**
 * Writes a record again that the store lost (Redis restarted without its data), unless it is there.
 * A client may have used its idempotency key for a new job since: then it is written without it.
 */
export async function writeBack(store: JobStore, record: JobRecord): Promise<void> {
  const { record: found, created } = await store.create(record);
  if (created || found.id === record.id || !record.idempotencyKey) return;
  const { idempotencyKey: _taken, ...withoutKey } = record;
  await store.create(withoutKey);
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
   * with `ifNode`, unless the job belongs to another node by now, or, with `ifWorker`, unless it is
   * bound to another worker by now. Returns the record as it is after.
   */
  update(id: string, patch: Partial<JobRecord>, ifNode?: string, ifWorker?: string): Promise<JobRecord | undefined>;
  /**
   * The one exception to "a final status is never overwritten": a record marked `lost` whose worker
   * turns out to have finished the job takes the worker's outcome. Applied only while the record is
   * `lost`; the caller puts the lost outcome in `history`. Returns the record as it is after.
   */
  correctLost(
    id: string,
    patch: Pick<JobRecord, "status" | "history"> & Partial<JobRecord>,
  ): Promise<JobRecord | undefined>;
  list(filter?: JobFilter): Promise<JobRecord[]>;
  /** Every record that is not final yet, oldest first. */
  listActive(): Promise<JobRecord[]>;
  /**
   * Moves the job to node `to` only if it is not final and its owner is still `from` (undefined =
   * no owner): the one step by which registry nodes hand jobs over, so exactly one of two racing
   * nodes wins. Returns the claimed record, or undefined when the claim lost.
   */
  claim(id: string, from: string | undefined, to: string): Promise<JobRecord | undefined>;
  /** The final records kept now and their total size, for reporting; optional for other stores. */
  retained?(): Promise<RetainedStats>;
  close(): Promise<void>;
}

/** Final records kept by default; live records are never evicted and do not count. */
export const DEFAULT_RETAIN_RECORDS = 100_000;
/**
 * Bytes of final records kept by default. The count alone would let 100,000 records with 60 KiB of
 * metadata each hold about 7 GB; this keeps the history well under a gigabyte whatever the records hold.
 */
export const DEFAULT_RETAIN_BYTES = 256 * 1024 * 1024;

/**
 * How many final records a store keeps. Both limits hold at once: after a record turns final, the
 * final records that ended first are evicted until the count is at most `retainRecords` and their
 * total size at most `retainBytes`. Records of live jobs are never evicted and count toward neither.
 * A record larger than `retainBytes` on its own is evicted as soon as it is final, and only it: keeping
 * it would mean deleting every older record and then it as well. `Infinity` means no limit.
 */
export interface RetentionOptions {
  /** Default DEFAULT_RETAIN_RECORDS. */
  retainRecords?: number;
  /** Default DEFAULT_RETAIN_BYTES. Size = UTF-8 byte length of the record's JSON, as `recordBytes`. */
  retainBytes?: number;
}

export interface RetainedStats {
  /** Final records kept. */
  records: number;
  /** Their total size, as `recordBytes` counts it. */
  bytes: number;
}

/**
 * The size retention counts for a record: the UTF-8 byte length of its JSON. The Redis store
 * computes the same number from the fields it stores (each one JSON-encoded), so both stores evict alike.
 */
export function recordBytes(record: JobRecord): number {
  return Buffer.byteLength(JSON.stringify(record), "utf8");
}

/** Fills in the defaults and rejects limits that would silently mean something else (negative, NaN, fractions). */
export function retentionLimits(options: RetentionOptions = {}): Required<RetentionOptions> {
  const retainRecords = options.retainRecords ?? DEFAULT_RETAIN_RECORDS;
  const retainBytes = options.retainBytes ?? DEFAULT_RETAIN_BYTES;
  for (const [name, value] of Object.entries({ retainRecords, retainBytes })) {
    if (!(value === Number.POSITIVE_INFINITY || (Number.isSafeInteger(value) && value >= 0))) {
      throw new RangeError(`${name} must be a non-negative integer or Infinity, got ${value}`);
    }
  }
  return { retainRecords, retainBytes };
}

/**
 * The embedded default. Keeps final records within the limits of `RetentionOptions`, evicting the ones
 * that ended first. `new MemoryJobStore(n)` (a count alone, the older form) still works.
 */
export class MemoryJobStore implements JobStore {
  readonly retention: Required<RetentionOptions>;
  readonly #jobs = new Map<string, JobRecord>();
  readonly #byKey = new Map<string, string>();
  /** Final records by end time, then id (the order of the Redis store's sorted set), oldest first. */
  readonly #finals: { id: string; endedAt: number }[] = [];
  /** Size counted for each final record, so a record written again replaces its size instead of adding to it. */
  readonly #finalBytes = new Map<string, number>();
  #retainedBytes = 0;

  constructor(retention: number | RetentionOptions = {}) {
    this.retention = retentionLimits(typeof retention === "number" ? { retainRecords: retention } : retention);
  }

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

  async update(id: string, patch: Partial<JobRecord>, ifNode?: string, ifWorker?: string) {
    const record = this.#jobs.get(id);
    if (!record) return undefined;
    const elsewhere =
      (ifNode !== undefined && record.node !== ifNode) || (ifWorker !== undefined && record.workerId !== ifWorker);
    if (isFinal(record.status) || elsewhere) return { ...record };
    const next = { ...record, ...patch, id: record.id, updatedAt: patch.updatedAt ?? Date.now() };
    if (isFinal(next.status)) next.endedAt ??= next.updatedAt;
    // Stored before retention runs, so a record evicted at once (over a limit on its own) is really gone.
    this.#jobs.set(id, next);
    if (isFinal(next.status)) this.#retainFinal(next);
    return { ...next };
  }

  async correctLost(id: string, patch: Pick<JobRecord, "status" | "history"> & Partial<JobRecord>) {
    const record = this.#jobs.get(id);
    if (!record) return undefined;
    if (record.status !== "lost") return { ...record };
    const next = { ...record, ...patch, id: record.id, updatedAt: patch.updatedAt ?? Date.now() };
    this.#jobs.set(id, next);
    this.#retainFinal(next);
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

  async retained(): Promise<RetainedStats> {
    return { records: this.#finals.length, bytes: this.#retainedBytes };
  }

  async close() {}

  /** Counts a record that is final now, then evicts until both limits hold. */
  #retainFinal(record: JobRecord) {
    const { retainRecords, retainBytes } = this.retention;
    const size = recordBytes(record);
    // Written again while final (no path does so today): its old size and place go first.
    if (this.#finalBytes.has(record.id)) this.#forgetFinal(record.id);
    if (size > retainBytes) {
      this.#drop(record.id);
      return;
    }
    const endedAt = record.endedAt ?? record.updatedAt;
    const at = this.#insertionPoint(endedAt, record.id);
    this.#finals.splice(at, 0, { id: record.id, endedAt });
    this.#finalBytes.set(record.id, size);
    this.#retainedBytes += size;
    while (this.#finals.length > retainRecords || this.#retainedBytes > retainBytes) {
      const oldest = this.#finals[0];
      if (!oldest) break;
      this.#forgetFinal(oldest.id);
      this.#drop(oldest.id);
    }
  }

  /** Where (endedAt, id) goes in #finals; new records usually end last, so that is tried first. */
  #insertionPoint(endedAt: number, id: string): number {
    const before = (entry: { id: string; endedAt: number }) =>
      entry.endedAt < endedAt || (entry.endedAt === endedAt && entry.id < id);
    const last = this.#finals[this.#finals.length - 1];
    if (!last || before(last)) return this.#finals.length;
    let lo = 0;
    let hi = this.#finals.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (before(this.#finals[mid] as { id: string; endedAt: number })) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Takes a final record out of the retention accounting (not out of the store). */
  #forgetFinal(id: string) {
    const index = this.#finals[0]?.id === id ? 0 : this.#finals.findIndex((entry) => entry.id === id);
    if (index === 0) this.#finals.shift();
    else if (index > 0) this.#finals.splice(index, 1);
    this.#retainedBytes -= this.#finalBytes.get(id) ?? 0;
    this.#finalBytes.delete(id);
  }

  /** Deletes a record and the idempotency key that points at it, so the key can create a new job. */
  #drop(id: string) {
    const record = this.#jobs.get(id);
    if (record?.idempotencyKey && this.#byKey.get(record.idempotencyKey) === id) {
      this.#byKey.delete(record.idempotencyKey);
    }
    this.#jobs.delete(id);
  }
}
