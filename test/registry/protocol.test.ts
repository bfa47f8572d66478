import { request } from "node:http";
import fc from "fast-check";
import { afterEach, describe, expect, it } from "vitest";
import { PROTOCOL_VERSION, workerMessage } from "../../src/protocol/registry.ts";
import { registryInternals } from "../../src/registry/server.ts";
import { until } from "../support/wait.ts";
import {
  api,
  closeRegistries,
  dispatch,
  ProcessGuard,
  RawConnection,
  registerMessage,
  startInProcessWorker,
  startRegistry,
  stopInProcessWorker,
  stopInProcessWorkers,
  type TestRegistry,
  waitAvailableAgent,
} from "./helpers.ts";

const guard = new ProcessGuard();

afterEach(async () => {
  await stopInProcessWorkers();
  await closeRegistries();
  await guard.killAll();
});

const KNOWN_TYPES = ["register", "status_update", "availability_response", "job_update", "ping", "pong"] as const;
const MAX_FRAME_BYTES = 16 * 1024;

describe("bad input on the worker socket", () => {
  it("answers malformed, unknown and invalid frames with error codes and keeps the connection", async () => {
    const r = await startRegistry({ registrationTimeoutMs: 30_000, pingIntervalMs: 30_000 });
    const c = await RawConnection.open(r);

    expect(await c.errorFor("{not json")).toMatchObject({ code: "bad_json" });
    expect(await c.errorFor("")).toMatchObject({ code: "bad_json" });
    expect(await c.errorFor(Buffer.from([1, 2, 3]).toString("latin1"))).toMatchObject({ code: "bad_json" });
    const binary = c.frames.length;
    c.ws.send(Buffer.from('{"type":"ping","timestamp":1}'), { binary: true });
    expect(await c.next(binary, (f) => f.type === "error", "an error frame")).toMatchObject({ code: "bad_frame" });
    for (const raw of ["null", "42", '"register"', "[]", "{}", '{"type":7}', '{"type":"hello"}', '{"type":"error"}']) {
      expect(await c.errorFor(raw), raw).toMatchObject({ code: "unknown_type" });
    }
    const invalid = await c.errorFor(
      JSON.stringify({ type: "register", protocol_version: 0, agent_name: "", max_processes: 1.5, load_threshold: 2 }),
    );
    expect(invalid.code).toBe("invalid_message");
    for (const field of ["protocol_version", "worker_id", "agent_name", "load_threshold", "max_processes"]) {
      expect(invalid.message).toContain(field);
    }
    // Valid, but not before registering.
    expect(await c.errorFor(JSON.stringify({ type: "ping", timestamp: 1 }))).toMatchObject({ code: "not_registered" });
    expect(c.open).toBe(true);

    const from = c.frames.length;
    c.send(registerMessage("bad-input"));
    const registered = await c.next(from, (f) => f.type === "register", "the register answer");
    expect(registered).toMatchObject({ success: true, protocol_version: PROTOCOL_VERSION });
    expect(typeof registered.worker_id).toBe("string");
    expect(await c.errorFor(registerMessage("bad-input"))).toMatchObject({ code: "already_registered" });
    const badUpdate = await c.errorFor(JSON.stringify({ type: "job_update", job_id: "", status: "exploded" }));
    expect(badUpdate).toMatchObject({ code: "invalid_message" });
    expect(badUpdate.message).toMatch(/job_id.*status/);
    const badStatus = await c.errorFor(
      JSON.stringify({ type: "status_update", worker_id: "x", status: "available", load: 7, job_count: -1 }),
    );
    expect(badStatus.message).toMatch(/load.*job_count/);
    const pongFrom = c.frames.length;
    c.send(JSON.stringify({ type: "ping", timestamp: 12345 }));
    expect(await c.next(pongFrom, (f) => f.type === "pong", "a pong")).toMatchObject({ timestamp: 12345 });
    expect(c.open).toBe(true);
    expect(registryInternals(r.registry).core.directory.size).toBe(1);
    c.close();
  });

  it("closes a connection that sends a frame over maxFrameBytes with 1009", async () => {
    const r = await startRegistry({ pingIntervalMs: 30_000 }, { maxFrameBytes: MAX_FRAME_BYTES });
    const c = await RawConnection.open(r);
    c.send(registerMessage("big"));
    await until(() => registryInternals(r.registry).core.directory.size === 1, { label: "registration" });
    c.send(JSON.stringify({ type: "ping", timestamp: 1, pad: "x".repeat(MAX_FRAME_BYTES) }));
    await until(() => c.closed, { label: "the connection to close" });
    expect(c.closed?.code).toBe(1009);
    // Its session is disconnected, not gone: a real worker could reconnect within the grace.
    await until(() => [...registryInternals(r.registry).core.directory.workers()][0]?.state === "disconnected", {
      label: "the session to see the close",
    });
    // A frame just under the limit is fine.
    const d = await RawConnection.open(r);
    const ok = await d.errorFor(JSON.stringify({ type: "nope", pad: "x".repeat(MAX_FRAME_BYTES - 100) }));
    expect(ok.code).toBe("unknown_type");
    expect(d.open).toBe(true);
    d.close();
  });

  it("survives 10,000 random frames and still serves a real worker", { timeout: 120_000 }, async () => {
    const r = await startRegistry(
      {
        registrationTimeoutMs: 120_000,
        pingIntervalMs: 120_000,
        pongTimeoutMs: 10_000,
        reconnectGraceMs: 500,
        offerTimeoutMs: 2_000,
        runningTimeoutMs: 15_000,
        dispatchTimeoutMs: 10_000,
      },
      { maxFrameBytes: MAX_FRAME_BYTES },
    );
    // Two connections registered up front, one that starts unregistered (and may register mid-way).
    const connections = [await RawConnection.open(r), await RawConnection.open(r), await RawConnection.open(r)];
    const registered = [true, true, false];
    for (const [i, c] of connections.slice(0, 2).entries()) {
      const from = c.frames.length;
      c.send(registerMessage(`fuzz-${i}`));
      await c.next(from, (f) => f.type === "register", "the register answer");
    }

    const anyText = fc.oneof(
      fc.string(),
      fc.string({ unit: "grapheme" }),
      fc.string({ unit: "binary", maxLength: 40 }),
    );
    const fieldValue = fc.oneof(
      fc.jsonValue({ maxDepth: 2 }),
      fc.constantFrom("running", "completed", "failed", "cancelled", "available", "full", "draining", "offline", ""),
      fc.double(),
      fc.integer(),
      fc.boolean(),
    );
    // Fields of the real messages, each usually a plausible value and sometimes anything at all; a few
    // dropped. Job ids come from a small set, so jobs get adopted, finished and contested.
    const usually = <T>(valid: fc.Arbitrary<T>) =>
      fc.oneof({ weight: 6, arbitrary: valid as fc.Arbitrary<unknown> }, { weight: 1, arbitrary: fieldValue });
    const jobIdArb = fc.oneof(
      fc.constantFrom("j1", "j2", "j3", "j4", "j5"),
      fc.string({ minLength: 1, maxLength: 12 }),
    );
    const FIELD_NAMES = [
      "protocol_version",
      "worker_id",
      "agent_name",
      "capabilities",
      "load_threshold",
      "max_processes",
      "jobs",
      "status",
      "load",
      "job_count",
      "job_id",
      "available",
      "timestamp",
      "reason",
      "error",
    ] as const;
    const plausible = fc
      .tuple(
        fc.record({
          protocol_version: usually(fc.constant(PROTOCOL_VERSION)),
          worker_id: usually(fc.string({ maxLength: 8 })),
          agent_name: usually(fc.constantFrom("fuzz-0", "fuzz-1", "fuzz-x")),
          capabilities: usually(fc.array(fc.string(), { maxLength: 2 })),
          load_threshold: usually(fc.double({ min: 0.01, max: 1, noNaN: true })),
          max_processes: usually(fc.integer({ min: 1, max: 8 })),
          jobs: usually(
            fc.array(
              fc.record({ job_id: jobIdArb, status: fc.constantFrom("running", "completed", "failed", "cancelled") }),
              { maxLength: 3 },
            ),
          ),
          status: usually(
            fc.constantFrom(
              "starting",
              "available",
              "full",
              "draining",
              "offline",
              "running",
              "completed",
              "failed",
              "cancelled",
            ),
          ),
          load: usually(fc.double({ min: 0, max: 1, noNaN: true })),
          job_count: usually(fc.nat({ max: 8 })),
          job_id: usually(jobIdArb),
          available: usually(fc.boolean()),
          timestamp: usually(fc.double({ noNaN: true, noDefaultInfinity: true })),
          reason: usually(fc.string()),
          error: usually(fc.record({ name: fc.string(), message: fc.string() })),
        }),
        fc.subarray([...FIELD_NAMES], { maxLength: 2 }),
      )
      .map(([fields, dropped]) => {
        const out: Record<string, unknown> = { ...fields };
        for (const name of dropped) delete out[name];
        return out;
      });
    const typed = fc
      .tuple(
        fc.oneof(
          { weight: 6, arbitrary: fc.constantFrom(...KNOWN_TYPES) },
          { weight: 1, arbitrary: fc.constantFrom("error", "job_assignment", "hello", "REGISTER") },
          { weight: 1, arbitrary: fc.string() },
        ),
        plausible,
        fc.dictionary(fc.string({ maxLength: 10 }), fieldValue, { maxKeys: 3 }),
      )
      .map(([type, fields, extra]) => JSON.stringify({ ...extra, ...fields, type }));
    const frame = fc
      .oneof(
        { weight: 5, arbitrary: typed },
        { weight: 2, arbitrary: fc.jsonValue().map((value) => JSON.stringify(value) ?? "null") },
        { weight: 1, arbitrary: anyText },
      )
      // Oversized frames close the connection by design (tested above); the fuzzing stays under the limit.
      .filter((text) => Buffer.byteLength(text) < MAX_FRAME_BYTES);

    /** What the registry must answer: one error frame with this code, or none. */
    const expectedCode = (text: string, isRegistered: boolean): string | null => {
      let raw: unknown;
      try {
        raw = JSON.parse(text);
      } catch {
        return "bad_json";
      }
      const parsed = workerMessage.safeParse(raw);
      if (!parsed.success) {
        const type = (raw as { type?: unknown } | null)?.type;
        return typeof type === "string" && (KNOWN_TYPES as readonly string[]).includes(type)
          ? "invalid_message"
          : "unknown_type";
      }
      if (parsed.data.type === "register") return isRegistered ? "already_registered" : null;
      return isRegistered ? null : "not_registered";
    };

    let sent = 0;
    let batchNumber = 0;
    const tally: Record<string, number> = {};
    await fc.assert(
      fc.asyncProperty(fc.array(frame, { minLength: 100, maxLength: 100 }), async (batch) => {
        const index = batchNumber++ % connections.length;
        const c = connections[index] as RawConnection;
        const expected: string[] = [];
        for (const text of batch) {
          const code = expectedCode(text, registered[index] as boolean);
          tally[code ?? "valid"] = (tally[code ?? "valid"] ?? 0) + 1;
          if (code) expected.push(code);
          if (code === null && (JSON.parse(text) as { type: string }).type === "register") registered[index] = true;
          c.send(text);
        }
        sent += batch.length;
        const answers = await c.sync(`marker-${batchNumber}-${Math.random()}`);
        expect(c.open, `connection ${index} is open`).toBe(true);
        // `unknown_job` answers a job_update for a job not assigned to that worker; whether it is
        // depends on which fuzzed inventories were adopted, so it is counted, not predicted.
        const errors = answers.filter((f) => f.type === "error");
        tally.unknown_job = (tally.unknown_job ?? 0) + errors.filter((f) => f.code === "unknown_job").length;
        expect(errors.filter((f) => f.code !== "unknown_job").map((f) => f.code)).toEqual(expected);
      }),
      { numRuns: 100, seed: Number(process.env.FUZZ_SEED ?? 20_251_119), endOnFailure: true },
    );
    const strayCount = (await r.store.list({ limit: 10_000 })).length;
    console.log(
      `fuzz: ${sent} frames`,
      tally,
      `adopted stray jobs: ${strayCount}`,
      `third connection registered: ${registered[2]}`,
    );
    expect(sent).toBeGreaterThanOrEqual(10_000);
    for (const c of connections) expect(c.open).toBe(true);
    expect((await api(r.url, undefined, "GET", "/healthz")).status).toBe(200);

    // Every adopted stray job ends once the fuzzing connections are gone.
    for (const c of connections) c.close();
    await until(() => registryInternals(r.registry).core.directory.size === 0, {
      label: "the fuzzing sessions to be gone",
      timeoutMs: 5_000,
    });
    await until(() => registryInternals(r.registry).core.dispatcher.size === 0, {
      label: "stray jobs to settle",
      timeoutMs: 5_000,
    });
    const strays = await r.store.list({ limit: 10_000 });
    expect(strays.filter((job) => !["lost", "completed", "failed", "cancelled"].includes(job.status))).toEqual([]);

    // The registry still serves a real worker.
    const worker = await startInProcessWorker(r.url, { agentId: "after-fuzz" });
    const workerId = await waitAvailableAgent(r, "after-fuzz");
    const job = await dispatch(r, { agent_name: "after-fuzz", metadata: { holdMs: 1 } });
    expect(await r.store.untilFinal(job.id, 15_000)).toMatchObject({ status: "completed", workerId });
    expect(await stopInProcessWorker(worker)).toBe(0);
  });
});

describe("bad input on the HTTP API", () => {
  /** POST /v1/jobs with a raw body, through node:http so an early 413 is read, not lost to a reset. */
  function post(
    r: TestRegistry,
    body: string,
  ): Promise<{ status: number; body: { error?: string; details?: { field: string }[] } }> {
    return new Promise((resolve, reject) => {
      const req = request(`${r.url}/v1/jobs`, {
        method: "POST",
        headers: { authorization: `Bearer ${r.dispatcher}`, "content-type": "application/json" },
      });
      req.on("response", (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => {
          text += chunk;
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
      });
      req.on("error", reject);
      req.end(body);
    });
  }

  it("answers 400 naming the bad fields, and 413 to a body over 64 KiB", async () => {
    const r = await startRegistry({ dispatchTimeoutMs: 200 });
    const notJson = await post(r, "{agent_name:");
    expect(notJson.status).toBe(400);
    expect(notJson.body.error).toMatch(/JSON/);
    const empty = await post(r, "");
    expect(empty.status).toBe(400);

    const unknown = await post(r, JSON.stringify({ agent_name: "a", agent: "b", priority: 3 }));
    expect(unknown.status).toBe(400);
    expect(unknown.body.error).toMatch(/agent, priority/);
    expect(unknown.body.details).toEqual([{ field: "agent, priority", message: "unknown field" }]);

    const wrong = await post(
      r,
      JSON.stringify({
        agent_name: 5,
        metadata: "x",
        room_options: [],
        max_duration: -1,
        idempotency_key: "",
        redispatch: "yes",
        room_id: null,
      }),
    );
    expect(wrong.status).toBe(400);
    const fields = (wrong.body.details ?? []).map((d) => d.field).sort();
    expect(fields).toEqual(
      ["agent_name", "idempotency_key", "max_duration", "metadata", "redispatch", "room_id", "room_options"].sort(),
    );
    for (const field of fields) expect(wrong.body.error).toContain(field);

    for (const body of ["[]", "null", '"job"', "42"]) {
      const response = await post(r, body);
      expect(response.status, body).toBe(400);
    }
    expect((await post(r, JSON.stringify({}))).body.details).toEqual([
      expect.objectContaining({ field: "agent_name" }),
    ]);

    const huge = await post(r, JSON.stringify({ agent_name: "a", metadata: { pad: "x".repeat(70 * 1024) } }));
    expect(huge.status).toBe(413);
    const query = await api(r.url, r.dispatcher, "GET", "/v1/jobs?status=exploded&limit=0");
    expect(query.status).toBe(400);
    expect(query.body.error).toMatch(/status/);
    expect(query.body.error).toMatch(/limit/);
    expect(await r.store.list()).toEqual([]);
    // Nothing was created, and the API still works.
    expect((await post(r, JSON.stringify({ agent_name: "fine" }))).status).toBe(201);
  });
});
