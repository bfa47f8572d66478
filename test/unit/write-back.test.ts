import { describe, expect, it } from "vitest";
import { type JobRecord, MemoryJobStore, writeBack } from "../../src/registry/store.ts";

/**
 * writeBack (src/registry/store.ts): a record the store lost (Redis restarted without its data) is
 * written again from what a node holds, unless it is there; if a client used its idempotency key
 * for another job since, it is written without the key, and the key stays the other job's.
 */

function record(id: string, over: Partial<JobRecord> = {}): JobRecord {
  return {
    id,
    agentName: "write-back",
    metadata: { n: 1, nested: { list: ["a"] } },
    roomOptions: {},
    redispatch: false,
    status: "pending",
    attempts: 0,
    node: "node-a",
    createdAt: 1_000,
    updatedAt: 1_000,
    ...over,
  };
}

/** What `create` answers for an idempotency key now: the job it belongs to, if any. */
async function holderOf(store: MemoryJobStore, key: string): Promise<string | undefined> {
  const probe = record(`probe-${key}`, { idempotencyKey: key });
  const { record: found, created } = await store.create(probe);
  return created ? undefined : found.id;
}

describe("writeBack", () => {
  it("writes a record the store does not have", async () => {
    const store = new MemoryJobStore();
    const lost = record("job-1", { status: "pending", workerId: "w-1", attempts: 2, updatedAt: 2_000 });
    await writeBack(store, lost);
    expect(await store.get("job-1")).toEqual(lost);
    expect((await store.listActive()).map((r) => r.id)).toEqual(["job-1"]);
  });

  it("writes a missing record with its idempotency key, which then finds it", async () => {
    const store = new MemoryJobStore();
    await writeBack(store, record("job-1", { idempotencyKey: "key-1" }));
    expect(await store.get("job-1")).toMatchObject({ id: "job-1", idempotencyKey: "key-1" });
    expect(await holderOf(store, "key-1")).toBe("job-1");
  });

  it("leaves a record the store has untouched", async () => {
    const store = new MemoryJobStore();
    const stored = record("job-1", { status: "running", workerId: "w-1", attempts: 1, updatedAt: 5_000 });
    const { created } = await store.create(stored);
    expect(created).toBe(true);

    await writeBack(store, record("job-1", { status: "pending", node: "node-b", updatedAt: 9_000 }));
    expect(await store.get("job-1")).toEqual(stored);
    // Still exactly one record.
    expect(await store.list()).toHaveLength(1);
    // And creating it again still finds it: nothing was created.
    const again = await store.create(record("job-1"));
    expect(again).toEqual({ record: stored, created: false });
  });

  it("leaves a record with the same idempotency key untouched", async () => {
    const store = new MemoryJobStore();
    const stored = record("job-1", { idempotencyKey: "key-1", status: "running", updatedAt: 5_000 });
    await store.create(stored);
    await writeBack(store, record("job-1", { idempotencyKey: "key-1", updatedAt: 9_000 }));
    expect(await store.get("job-1")).toEqual(stored);
    expect(await store.list()).toHaveLength(1);
    expect(await holderOf(store, "key-1")).toBe("job-1");
  });

  it("writes the record without its key when the key now belongs to another job", async () => {
    const store = new MemoryJobStore();
    // After the loss, a client sent the same key again: a new job holds it now.
    const newer = record("job-new", { idempotencyKey: "key-1", createdAt: 3_000, updatedAt: 3_000 });
    await store.create(newer);

    const lost = record("job-old", { idempotencyKey: "key-1", workerId: "w-1", attempts: 1, updatedAt: 2_000 });
    await writeBack(store, lost);

    const { idempotencyKey: _key, ...withoutKey } = lost;
    const written = await store.get("job-old");
    expect(written).toEqual(withoutKey);
    expect(written).not.toHaveProperty("idempotencyKey");
    // The other job is untouched and keeps the key.
    expect(await store.get("job-new")).toEqual(newer);
    expect(await holderOf(store, "key-1")).toBe("job-new");
    expect((await store.list()).map((r) => r.id).sort()).toEqual(["job-new", "job-old"]);
  });

  it("leaves a record written back earlier without its key untouched", async () => {
    const store = new MemoryJobStore();
    await store.create(record("job-new", { idempotencyKey: "key-1" }));
    await writeBack(store, record("job-old", { idempotencyKey: "key-1", updatedAt: 2_000 }));
    const first = await store.get("job-old");

    // Written back a second time (Redis lost its data once, two recoveries ran): nothing changes.
    await writeBack(store, record("job-old", { idempotencyKey: "key-1", status: "running", updatedAt: 4_000 }));
    expect(await store.get("job-old")).toEqual(first);
    expect(await store.list()).toHaveLength(2);
    expect(await holderOf(store, "key-1")).toBe("job-new");
  });

  it("leaves a written-back record to be updated like any other", async () => {
    const store = new MemoryJobStore();
    await writeBack(store, record("job-1", { node: "node-a" }));
    const after = await store.update("job-1", { status: "completed", updatedAt: 7_000 }, "node-a");
    expect(after).toMatchObject({ id: "job-1", status: "completed", endedAt: 7_000 });
    expect(await store.listActive()).toEqual([]);
  });
});
