import { Redis } from "ioredis";
import { traceparentField, tracestateField } from "../../protocol/registry.ts";
import {
  FINAL_STATUSES,
  type JobFilter,
  type JobRecord,
  type JobStore,
  type RetainedStats,
  type RetentionOptions,
  retentionLimits,
} from "../store.ts";

/**
 * Job records in Redis, shared by every registry node and kept across restarts.
 *
 * Layout (all keys under `prefix`): `job:<id>` a hash, one JSON-encoded value per record field, so
 * scripts can read status and owner without decoding user metadata; `jobs` a sorted set of every
 * id by creation time; `active` the set of ids not final yet; `finals` a sorted set of final ids
 * by end time; `finals:bytes` a hash of each final id's size (as `recordBytes` counts it) and
 * `finals:total` their sum; `idem:<key>` the job id an idempotency key created.
 * Creating and updating are Lua scripts, so two nodes racing on one key or one record never both win,
 * and the script that makes a record final also evicts, so the limits hold with any number of nodes.
 */
const FINAL_SET = `{${FINAL_STATUSES.map((s) => `[${luaString(JSON.stringify(s))}]=true`).join(",")}}`;

function luaString(value: string): string {
  return `'${value.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;
}

// KEYS: job, idem (or the job key again when there is none), jobs, active, the cluster's members
// ARGV: id, createdAt, hasIdem ("1"/"0"), then field, value pairs. The node a record names is made a
// member, so that should it die, the reaper finds it (after Redis lost its data, a node may write
// records before its next presence renewal adds it back).
const CREATE = `
if ARGV[3] == '1' then
  local existing = redis.call('GET', KEYS[2])
  if existing then
    local found = redis.call('HGETALL', ARGV[5] .. existing)
    if #found > 0 then return {0, found} end
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, redis.call('HGETALL', KEYS[1])} end
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[3] == '1' then redis.call('SET', KEYS[2], ARGV[1]) end
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
local node = redis.call('HGET', KEYS[1], 'node')
if node then redis.call('SADD', KEYS[5], cjson.decode(node)) end
return {1, redis.call('HGETALL', KEYS[1])}
`;

// KEYS: job, active, finals, jobs, finals:bytes, finals:total
// ARGV: id, updatedAt (JSON), prefix, retainRecords, retainBytes (-1 = no limit),
//       required owner (JSON, or '' for any), '1' to correct a lost record ('' otherwise),
//       required worker (JSON, or '' for any), then field, value pairs
const UPDATE = `
local FINAL = ${FINAL_SET}
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
local status = redis.call('HGET', KEYS[1], 'status')
if ARGV[7] == '1' then
  if status ~= '"lost"' then return redis.call('HGETALL', KEYS[1]) end
elseif FINAL[status] then return redis.call('HGETALL', KEYS[1]) end
if ARGV[6] ~= '' and (redis.call('HGET', KEYS[1], 'node') or '') ~= ARGV[6] then return redis.call('HGETALL', KEYS[1]) end
if ARGV[8] ~= '' and (redis.call('HGET', KEYS[1], 'workerId') or '') ~= ARGV[8] then return redis.call('HGETALL', KEYS[1]) end
for i = 9, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'updatedAt', ARGV[2])
if not FINAL[redis.call('HGET', KEYS[1], 'status')] then return redis.call('HGETALL', KEYS[1]) end
if redis.call('HEXISTS', KEYS[1], 'endedAt') == 0 then redis.call('HSET', KEYS[1], 'endedAt', ARGV[2]) end
redis.call('SREM', KEYS[2], ARGV[1])
local out = redis.call('HGETALL', KEYS[1])
-- The record's JSON is '{' .. '"field":value' joined by ',' .. '}' with every value stored JSON-encoded
-- already, so its UTF-8 length (# counts bytes) is 1 + the sum of (#field + #value + 4).
local size = 1
for i = 1, #out, 2 do size = size + #out[i] + #out[i + 1] + 4 end
-- A missing total (the key lost alone, say) is rebuilt from the sizes; a Redis restarted empty has
-- neither, so both start at 0. Records a store without byte retention made final have no size: they
-- count 0 until evicted, and they ended first, so they go first.
local total = tonumber(redis.call('GET', KEYS[6]) or '')
if not total then
  total = 0
  for _, bytes in ipairs(redis.call('HVALS', KEYS[5])) do total = total + tonumber(bytes) end
end
local prefix = ARGV[3]
local function drop(id)
  local job = prefix .. 'job:' .. id
  local key = redis.call('HGET', job, 'idempotencyKey')
  if key then
    local idem = prefix .. 'idem:' .. cjson.decode(key)
    -- Only while the key still names this job: never the key of a newer job that reused it.
    if redis.call('GET', idem) == id then redis.call('DEL', idem) end
  end
  redis.call('DEL', job)
  redis.call('ZREM', KEYS[4], id)
  redis.call('ZREM', KEYS[3], id)
  total = total - tonumber(redis.call('HGET', KEYS[5], id) or '0')
  redis.call('HDEL', KEYS[5], id)
end
local retainRecords = tonumber(ARGV[4])
local retainBytes = tonumber(ARGV[5])
local overBytes = function(bytes) return retainBytes >= 0 and bytes > retainBytes end
if overBytes(size) then
  -- Larger than the whole budget on its own: only it goes, not every older record before it.
  drop(ARGV[1])
else
  -- A record counted before (written again while final) replaces its size instead of adding to it.
  total = total - tonumber(redis.call('HGET', KEYS[5], ARGV[1]) or '0') + size
  redis.call('HSET', KEYS[5], ARGV[1], size)
  redis.call('ZADD', KEYS[3], tonumber(redis.call('HGET', KEYS[1], 'endedAt')), ARGV[1])
  while (retainRecords >= 0 and redis.call('ZCARD', KEYS[3]) > retainRecords) or overBytes(total) do
    local oldest = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
    if not oldest then break end
    drop(oldest)
  end
end
if total < 0 then total = 0 end
redis.call('SET', KEYS[6], string.format('%d', total))
return out
`;

// KEYS: finals, finals:bytes, finals:total. Returns the count and total bytes of the final records kept.
const RETAINED = `
local total = tonumber(redis.call('GET', KEYS[3]) or '')
if not total then
  total = 0
  for _, bytes in ipairs(redis.call('HVALS', KEYS[2])) do total = total + tonumber(bytes) end
end
return {redis.call('ZCARD', KEYS[1]), string.format('%d', total)}
`;

// KEYS: job, the cluster's members. ARGV: from (JSON, or '' for no owner), to (JSON). The new owner is
// made a member (see CREATE).
const CLAIM = `
local FINAL = ${FINAL_SET}
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
if FINAL[redis.call('HGET', KEYS[1], 'status')] then return nil end
local owner = redis.call('HGET', KEYS[1], 'node') or ''
if owner ~= ARGV[1] then return nil end
redis.call('HSET', KEYS[1], 'node', ARGV[2])
redis.call('SADD', KEYS[#KEYS], cjson.decode(ARGV[2]))
return redis.call('HGETALL', KEYS[1])
`;

// KEYS: job, inbox stream, members. ARGV: from (JSON, or ''), to (JSON), message text, inbox length bound.
// The claim and the message to the new owner in one step: no moment where the record names a node
// that has not been told (a sender dying between the two would leave the job to the sweep).
const CLAIM_AND_SEND = `${CLAIM.replace("return redis.call('HGETALL', KEYS[1])", "")}
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'message', ARGV[3])
return redis.call('HGETALL', KEYS[1])
`;

// KEYS: job, the presence key of the node it is claimed from, members. ARGV: as CLAIM. A node found dead that
// renewed its presence since (it was only slow) keeps its jobs.
const CLAIM_FROM_DEAD = `
if redis.call('EXISTS', KEYS[2]) == 1 then return nil end
${CLAIM}`;

interface ScriptedRedis extends Redis {
  troupeCreate(...args: (string | number)[]): Promise<[number, string[]]>;
  troupeUpdate(...args: (string | number)[]): Promise<string[] | null>;
  troupeClaim(...args: (string | number)[]): Promise<string[] | null>;
  troupeClaimAndSend(...args: (string | number)[]): Promise<string[] | null>;
  troupeClaimFromDead(...args: (string | number)[]): Promise<string[] | null>;
  troupeRetained(...args: string[]): Promise<[number, string]>;
}

/** Retention is as in MemoryJobStore: see RetentionOptions. */
export interface RedisJobStoreOptions extends RetentionOptions {
  /** Key prefix, so several registries (or tests) can share one Redis. Default "troupe:". */
  prefix?: string;
  /** The older name of `retainRecords`, still accepted; `retainRecords` wins when both are given. */
  retain?: number;
}

export class RedisJobStore implements JobStore {
  readonly redis: ScriptedRedis;
  readonly prefix: string;
  /** Applied by whichever node finalises a record: nodes sharing a prefix should share these limits. */
  readonly retention: Required<RetentionOptions>;

  constructor(redis: Redis | string, options: RedisJobStoreOptions = {}) {
    // Checked first: a bad limit must not leave a connection open behind the error.
    this.retention = retentionLimits({
      retainRecords: options.retainRecords ?? options.retain,
      retainBytes: options.retainBytes,
    });
    const client = typeof redis === "string" ? new Redis(redis, { lazyConnect: false }) : redis;
    client.defineCommand("troupeCreate", { numberOfKeys: 5, lua: CREATE });
    client.defineCommand("troupeUpdate", { numberOfKeys: 6, lua: UPDATE });
    client.defineCommand("troupeClaim", { numberOfKeys: 2, lua: CLAIM });
    client.defineCommand("troupeClaimAndSend", { numberOfKeys: 3, lua: CLAIM_AND_SEND });
    client.defineCommand("troupeClaimFromDead", { numberOfKeys: 3, lua: CLAIM_FROM_DEAD });
    client.defineCommand("troupeRetained", { numberOfKeys: 3, lua: RETAINED });
    this.redis = client as ScriptedRedis;
    this.prefix = options.prefix ?? "troupe:";
  }

  #key(name: string) {
    return `${this.prefix}${name}`;
  }

  async create(record: JobRecord) {
    const jobKey = this.#key(`job:${record.id}`);
    const idemKey = record.idempotencyKey ? this.#key(`idem:${record.idempotencyKey}`) : jobKey;
    const [created, fields] = await this.redis.troupeCreate(
      jobKey,
      idemKey,
      this.#key("jobs"),
      this.#key("active"),
      this.#key("nodes"),
      record.id,
      record.createdAt,
      record.idempotencyKey ? "1" : "0",
      "",
      this.#key("job:"),
      ...encodeFields(record),
    );
    return { record: decodeRecord(fields) as JobRecord, created: created === 1 };
  }

  async get(id: string) {
    return decodeRecord(await this.redis.hgetall(this.#key(`job:${id}`)));
  }

  async update(id: string, patch: Partial<JobRecord>, ifNode?: string, ifWorker?: string) {
    return this.#update(id, patch, ifNode, "", ifWorker);
  }

  async correctLost(id: string, patch: Pick<JobRecord, "status" | "history"> & Partial<JobRecord>) {
    return this.#update(id, patch, undefined, "1");
  }

  async #update(
    id: string,
    patch: Partial<JobRecord>,
    ifNode: string | undefined,
    correctLost: "" | "1",
    ifWorker?: string,
  ) {
    const { id: _ignored, updatedAt, ...rest } = patch;
    const fields = await this.redis.troupeUpdate(
      this.#key(`job:${id}`),
      this.#key("active"),
      this.#key("finals"),
      this.#key("jobs"),
      this.#key("finals:bytes"),
      this.#key("finals:total"),
      id,
      JSON.stringify(updatedAt ?? Date.now()),
      this.prefix,
      luaLimit(this.retention.retainRecords),
      luaLimit(this.retention.retainBytes),
      ifNode === undefined ? "" : JSON.stringify(ifNode),
      correctLost,
      ifWorker === undefined ? "" : JSON.stringify(ifWorker),
      ...encodeFields(rest),
    );
    return fields ? decodeRecord(fields) : undefined;
  }

  async list(filter: JobFilter = {}) {
    const limit = filter.limit ?? 1000;
    const out: JobRecord[] = [];
    const batch = 200;
    for (let start = 0; out.length < limit; start += batch) {
      const ids = await this.redis.zrevrange(this.#key("jobs"), start, start + batch - 1);
      if (ids.length === 0) break;
      for (const record of await this.#getMany(ids)) {
        if (filter.status && record.status !== filter.status) continue;
        if (filter.agentName && record.agentName !== filter.agentName) continue;
        out.push(record);
        if (out.length >= limit) break;
      }
    }
    return out;
  }

  async listActive() {
    const ids = await this.redis.smembers(this.#key("active"));
    return (await this.#getMany(ids)).sort((a, b) => a.createdAt - b.createdAt);
  }

  async claim(id: string, from: string | undefined, to: string) {
    const fields = await this.redis.troupeClaim(
      this.#key(`job:${id}`),
      this.#key("nodes"),
      from === undefined ? "" : JSON.stringify(from),
      JSON.stringify(to),
    );
    return fields ? decodeRecord(fields) : undefined;
  }

  /** Claims the job from a node found dead (as `claim`), only while its presence key `aliveKey` is absent. */
  async claimFromDead(id: string, from: string, to: string, aliveKey: string) {
    const fields = await this.redis.troupeClaimFromDead(
      this.#key(`job:${id}`),
      aliveKey,
      this.#key("nodes"),
      JSON.stringify(from),
      JSON.stringify(to),
    );
    return fields ? decodeRecord(fields) : undefined;
  }

  /**
   * Claims the job for `to` (as `claim`) and, only if the claim wins, appends `message` to the stream
   * `inboxKey` (bounded to about `inboxLength` entries), atomically.
   */
  async claimAndSend(
    id: string,
    from: string | undefined,
    to: string,
    inboxKey: string,
    message: string,
    inboxLength: number,
  ) {
    const fields = await this.redis.troupeClaimAndSend(
      this.#key(`job:${id}`),
      inboxKey,
      this.#key("nodes"),
      from === undefined ? "" : JSON.stringify(from),
      JSON.stringify(to),
      message,
      inboxLength,
    );
    return fields ? decodeRecord(fields) : undefined;
  }

  async retained(): Promise<RetainedStats> {
    const [records, bytes] = await this.redis.troupeRetained(
      this.#key("finals"),
      this.#key("finals:bytes"),
      this.#key("finals:total"),
    );
    return { records: Number(records), bytes: Number(bytes) };
  }

  async close() {
    if (this.redis.status !== "end") await this.redis.quit().catch(() => this.redis.disconnect());
  }

  async #getMany(ids: string[]): Promise<JobRecord[]> {
    if (ids.length === 0) return [];
    const pipeline = this.redis.pipeline();
    for (const id of ids) pipeline.hgetall(this.#key(`job:${id}`));
    const results = (await pipeline.exec()) ?? [];
    const out: JobRecord[] = [];
    for (const [error, fields] of results) {
      const record = error ? undefined : decodeRecord(fields as Record<string, string>);
      if (record) out.push(record);
    }
    return out;
  }
}

/** A limit as the scripts read it: Infinity becomes -1 (no limit), which tonumber reads reliably. */
function luaLimit(limit: number): string {
  return limit === Number.POSITIVE_INFINITY ? "-1" : String(limit);
}

/** Field, JSON value, field, JSON value…; undefined fields are left out, as in a JSON record. */
function encodeFields(record: Partial<JobRecord>): string[] {
  const out: string[] = [];
  for (const [field, value] of Object.entries(record)) {
    if (value !== undefined) out.push(field, JSON.stringify(value));
  }
  return out;
}

function decodeRecord(fields: Record<string, string> | string[]): JobRecord | undefined {
  const entries: [string, string][] = [];
  if (Array.isArray(fields)) {
    for (let i = 0; i + 1 < fields.length; i += 2) entries.push([fields[i] as string, fields[i + 1] as string]);
  } else {
    entries.push(...Object.entries(fields));
  }
  if (entries.length === 0) return undefined;
  const record: Record<string, unknown> = {};
  for (const [field, value] of entries) record[field] = JSON.parse(value);
  dropInvalidTraceContext(record);
  return record as unknown as JobRecord;
}

/**
 * The trace context fields as the dispatch span wrote them, or gone: whatever else sits in Redis
 * under those names (another version's, a hand edit) must not reach an assignment or a span.
 */
function dropInvalidTraceContext(record: Record<string, unknown>): void {
  const traceparent = traceparentField.parse(record.traceparent);
  const tracestate = traceparent === undefined ? undefined : tracestateField.parse(record.tracestate);
  if (traceparent === undefined) delete record.traceparent;
  if (tracestate === undefined) delete record.tracestate;
}
