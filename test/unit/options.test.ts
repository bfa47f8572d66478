import { describe, expect, it } from "vitest";
import { Options, OptionsError, RoomOptions } from "../../src/options.ts";

const noEnv = {};

function errorOf(fn: () => unknown): OptionsError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(OptionsError);
    return error as OptionsError;
  }
  throw new Error("expected an OptionsError");
}

describe("Options", () => {
  it("has the documented defaults", () => {
    const o = new Options({}, noEnv);
    expect(o).toMatchObject({
      agentId: "Agent",
      maxProcesses: 1,
      numIdleProcesses: 1,
      loadThreshold: 0.75,
      register: false,
      logLevel: "INFO",
      host: "0.0.0.0",
      port: 8081,
      memoryWarnMb: 500,
      memoryLimitMb: 0,
      pingInterval: 30,
      maxRetry: 16,
      initializeTimeout: 10,
      closeTimeout: 60,
      maxJobDuration: 0,
      inspect: false,
    });
    expect(o.drainTimeout).toBeGreaterThan(0);
    expect(o.registryUrl).toBeUndefined();
    expect(o.hasCredentials).toBe(false);
  });

  it("keeps given values and is immutable", () => {
    const o = new Options({ agentId: "MyAgent", maxProcesses: 5, numIdleProcesses: 2, register: true }, noEnv);
    expect(o.agentId).toBe("MyAgent");
    expect(o.maxProcesses).toBe(5);
    expect(Object.isFrozen(o)).toBe(true);
  });

  it("accepts a lower-case log level", () => {
    expect(new Options({ logLevel: "debug" as never }, noEnv).logLevel).toBe("DEBUG");
  });

  it("names every bad field in one error", () => {
    const error = errorOf(
      () =>
        new Options(
          {
            maxProcesses: -1,
            loadThreshold: 0,
            memoryWarnMb: 600,
            memoryLimitMb: 100,
            port: 70000,
            logLevel: "LOUD" as never,
            maxProcess: 3,
          } as never,
          noEnv,
        ),
    );
    const fields = error.problems.map((p) => p.field).sort();
    expect(fields).toEqual(["loadThreshold", "logLevel", "maxProcess", "maxProcesses", "memoryLimitMb", "port"]);
    expect(error.message).toContain("maxProcesses must be at least 1");
    expect(error.message).toContain("loadThreshold must be in (0, 1]");
    expect(error.message).toContain("port must be from 0 to 65535");
    expect(error.message).toContain("logLevel must be one of DEBUG, INFO, WARN, ERROR");
    expect(error.message).toContain('maxProcess: unknown option; did you mean "maxProcesses"?');
    expect(error.message).toContain("memoryLimitMb (100) must not be below memoryWarnMb (600)");
  });

  it.each([
    [{ loadThreshold: 1.01 }, "loadThreshold"],
    [{ loadThreshold: -0.5 }, "loadThreshold"],
    [{ port: -1 }, "port"],
    [{ port: 1.5 }, "port"],
    [{ maxProcesses: 0 }, "maxProcesses"],
    [{ maxProcesses: "5" }, "maxProcesses"],
    [{ numIdleProcesses: 3, maxProcesses: 2 }, "numIdleProcesses"],
    [{ pingInterval: 0 }, "pingInterval"],
    [{ closeTimeout: Number.NaN }, "closeTimeout"],
    [{ registryUrl: "not a url" }, "registryUrl"],
    [{ agentId: "" }, "agentId"],
    [{ apiKey: "key" }, "apiSecret"],
    [{ prewarm: "nope" }, "prewarm"],
    [{ register: "yes" }, "register"],
  ])("rejects %o naming %s", (input, field) => {
    const error = errorOf(() => new Options(input as never, noEnv));
    expect(error.problems.map((p) => p.field)).toContain(field);
  });

  it("accepts loadThreshold 1, port 0 and 65535, memory limit equal to the warning", () => {
    expect(new Options({ loadThreshold: 1 }, noEnv).loadThreshold).toBe(1);
    expect(new Options({ port: 0 }, noEnv).port).toBe(0);
    expect(new Options({ port: 65535 }, noEnv).port).toBe(65535);
    expect(new Options({ memoryWarnMb: 300, memoryLimitMb: 300 }, noEnv).memoryLimitMb).toBe(300);
  });

  it("suggests the nearest name for snake_case and typos, and nothing for nonsense", () => {
    const error = errorOf(() => new Options({ max_retry: 1, numIdleProccesses: 1, zzzzzzzzzzzz: 1 } as never, noEnv));
    const byField = Object.fromEntries(error.problems.map((p) => [p.field, p.message]));
    expect(byField.max_retry).toContain('"maxRetry"');
    expect(byField.numIdleProccesses).toContain('"numIdleProcesses"');
    expect(byField.zzzzzzzzzzzz).toBe("unknown option");
  });

  it("rejects input that is not an object", () => {
    expect(errorOf(() => new Options(null as never, noEnv)).problems[0]?.message).toBe("must be an object");
  });

  it("falls back to TROUPE_* environment variables", () => {
    const env = {
      TROUPE_URL: "ws://127.0.0.1:7880",
      TROUPE_AUTH_TOKEN: "token-from-env",
      TROUPE_API_KEY: "key",
      TROUPE_API_SECRET: "secret",
    };
    const o = new Options({}, env);
    expect(o.registryUrl).toBe("ws://127.0.0.1:7880");
    expect(o.authToken).toBe("token-from-env");
    expect(o.apiKey).toBe("key");
    expect(o.apiSecret).toBe("secret");
    expect(o.hasCredentials).toBe(true);
    expect(new Options({ registryUrl: "wss://given.example" }, env).registryUrl).toBe("wss://given.example");
  });

  it("never shows a secret in toJSON() or in an error", () => {
    const o = new Options({ authToken: "s3cr3t-token", apiKey: "k3y", apiSecret: "s3cr3t-secret" }, noEnv);
    const json = JSON.stringify(o);
    expect(json).not.toContain("s3cr3t");
    expect(json).not.toContain("k3y");
    expect(JSON.parse(json).authToken).toBe("[redacted]");
    const error = errorOf(
      () =>
        new Options(
          { authToken: "", apiSecret: "s3cr3t-secret", maxProcesses: -2, authTokn: "s3cr3t-x" } as never,
          noEnv,
        ),
    );
    expect(error.message).not.toContain("s3cr3t");
  });

  it("serializes functions as markers", () => {
    const o = new Options({ prewarm: () => 1, requestFn: () => true, loadFn: () => 0.1 }, noEnv);
    expect(o.toJSON()).toMatchObject({ prewarm: "[function]", requestFn: "[function]", loadFn: "[function]" });
    expect(typeof o.prewarm).toBe("function");
  });
});

// The exact messages zod gave before options moved to valibot (so a job process does not load zod);
// the move kept them, field by field and in order, for every input.
describe("OptionsError messages, exactly", () => {
  it.each([
    [
      "a non-finite number has the wrong type; a fraction stops a count's range checks, not a huge integer's",
      { pingInterval: Infinity, loadThreshold: Number.NaN, port: 1e20, maxProcesses: 0.5, numIdleProcesses: 3 },
      [
        "maxProcesses: maxProcesses must be a whole number",
        "loadThreshold: loadThreshold must be a number",
        "port: port must be a whole number",
        "port: port must be from 0 to 65535",
        "pingInterval: pingInterval must be a number of seconds",
      ],
    ],
    [
      "out of range values, then unknown keys, then the checks that relate two fields",
      { spawnBackoffMax: 0, prt: 1, numIdleProcesses: 3, maxProcesses: 2 },
      [
        "spawnBackoffMax: spawnBackoffMax must be greater than 0 seconds",
        'prt: unknown option; did you mean "port"?',
        "numIdleProcesses: numIdleProcesses (3) must not exceed maxProcesses (2)",
        "spawnBackoffMax: spawnBackoffMax must not be below spawnBackoffBase",
      ],
    ],
    [
      "after a wrong type, a relation is checked only for fields not already named",
      { spawnBackoffMax: 0, maxProcesses: 1.5, numIdleProcesses: 3 },
      [
        "maxProcesses: maxProcesses must be a whole number",
        "spawnBackoffMax: spawnBackoffMax must be greater than 0 seconds",
        "numIdleProcesses: numIdleProcesses (3) must not exceed maxProcesses (1.5)",
      ],
    ],
    [
      "an empty array where a string belongs is also empty",
      { apiKey: [], logLevel: "verbose", inspect: "yes", metadata: {} },
      [
        "logLevel: logLevel must be one of DEBUG, INFO, WARN, ERROR",
        "apiKey: apiKey must be a string",
        "apiKey: apiKey must not be empty",
        "inspect: inspect must be true, false, a function or an observer object with a next(event) method",
        "metadata: unknown option",
        "apiSecret: apiKey and apiSecret must be given together",
      ],
    ],
  ])("%s", (_label, input, lines) => {
    const error = errorOf(() => new Options(input as never, noEnv));
    expect(error.message).toBe(`Invalid Options:\n${lines.map((line) => `  - ${line}`).join("\n")}`);
  });

  it("RoomOptions: an empty agentParticipantId, -Infinity, an array for metadata", () => {
    const error = errorOf(
      () => new RoomOptions({ agentParticipantId: "", metadata: [], sessionTimeoutSeconds: -Infinity } as never),
    );
    expect(error.message).toBe(
      [
        "Invalid RoomOptions:",
        "  - agentParticipantId: agentParticipantId must be a string",
        "  - sessionTimeoutSeconds: sessionTimeoutSeconds must be a number of seconds",
        "  - metadata: metadata must be an object",
      ].join("\n"),
    );
  });

  it("RoomOptions copies metadata, keeping keys such as constructor", () => {
    const metadata = { constructor: "kept", a: 1 };
    const r = new RoomOptions({ metadata });
    expect(r.metadata).toEqual({ constructor: "kept", a: 1 });
    expect(r.metadata).not.toBe(metadata);
  });
});

describe("RoomOptions", () => {
  it("has defaults and keeps values", () => {
    const r = new RoomOptions({ name: "My Agent" });
    expect(r).toMatchObject({
      name: "My Agent",
      autoEndSession: true,
      sessionTimeoutSeconds: 5,
      noParticipantTimeoutSeconds: 90,
    });
    expect(r.toJSON().name).toBe("My Agent");
  });

  it("names every bad field, with suggestions for unknown keys", () => {
    const error = errorOf(() => new RoomOptions({ name: "", sessionTimeoutSeconds: -1, room_id: "x" } as never));
    const byField = Object.fromEntries(error.problems.map((p) => [p.field, p.message]));
    expect(Object.keys(byField).sort()).toEqual(["name", "room_id", "sessionTimeoutSeconds"]);
    expect(byField.room_id).toContain('"roomId"');
    expect(error.message.startsWith("Invalid RoomOptions")).toBe(true);
  });
});
