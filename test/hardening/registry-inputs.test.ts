import { SignJWT } from "jose";
import { afterEach, describe, expect, it } from "vitest";
import { mintToken } from "../../src/auth/tokens.ts";
import { MAX_INVENTORY_ENTRIES, PROTOCOL_VERSION } from "../../src/protocol/registry.ts";
import { registryInternals } from "../../src/registry/server.ts";
import {
  api,
  CREDS,
  closeRegistries,
  dispatch,
  RawConnection,
  registerMessage,
  startRegistry,
} from "../registry/helpers.ts";
import { until } from "../support/wait.ts";
import { rawRequest, upgradeRequest } from "./raw-http.ts";

afterEach(closeRegistries);

const unsignedLifetime = (claims: Record<string, unknown>) =>
  new SignJWT({ role: "dispatcher", ...claims })
    .setProtectedHeader({ alg: "HS256" })
    .setIssuer(CREDS.apiKey)
    .sign(new TextEncoder().encode(CREDS.apiSecret));

describe("requests that used to crash a registry or get a 500", () => {
  it("a room upgrade with bad percent-encoding is a 400 and the registry keeps serving", async () => {
    const r = await startRegistry({});
    const port = r.registry.port;
    const answer = await rawRequest(port, upgradeRequest("/rooms/%E0%A4%A?token=x"));
    expect(answer.status).toBe(400);
    expect((await api(r.url, undefined, "GET", "/healthz")).status).toBe(200);
  });

  it("an absolute-form target with a bad port is a 400, for an upgrade and a plain request", async () => {
    const r = await startRegistry({});
    const port = r.registry.port;
    expect((await rawRequest(port, upgradeRequest("http://a:99999/agent"))).status).toBe(400);
    expect((await rawRequest(port, "GET http://a:99999/healthz HTTP/1.1\r\nHost: a\r\n\r\n")).status).toBe(400);
    // Origin-form that looks like an authority is a path on this server, not a host.
    expect(
      (await rawRequest(port, "GET //a:99999/healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")).status,
    ).toBe(404);
    // A well-formed absolute-form target (what a proxy sends) is served.
    const proxied = await rawRequest(
      port,
      `GET http://127.0.0.1:${port}/healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n`,
    );
    expect(proxied.status).toBe(200);
  });

  it("bad percent-encoding in /v1/jobs/<id> and /v1/rooms/<id> is a 400, not a 500", async () => {
    const r = await startRegistry({});
    for (const path of ["/v1/jobs/%E0%A4%A", "/v1/rooms/%E0%A4%A", "/v1/rooms/%zz/tokens"]) {
      const method = path.endsWith("tokens") ? "POST" : "GET";
      const answer = await api(r.url, r.dispatcher, method, path);
      expect(answer.status, path).toBe(400);
      expect(answer.body.error).toMatch(/percent-encoding/);
    }
  });

  it("an upgrade to a path with no WebSocket endpoint is a 404 with a JSON reason", async () => {
    const r = await startRegistry({});
    const answer = await rawRequest(r.registry.port, upgradeRequest("/nowhere"));
    expect(answer.status).toBe(404);
    expect(answer.text).toMatch(/"error":"no WebSocket endpoint/);
  });
});

describe("a worker token cannot create job records", () => {
  it("a job_update for a job never assigned to that worker is refused and records nothing", async () => {
    const r = await startRegistry({});
    const c = await RawConnection.open(r);
    c.send(registerMessage("intruder", 4));
    await c.next(0, (f) => f.type === "register", "registration");
    for (let i = 0; i < 50; i++)
      c.send(JSON.stringify({ type: "job_update", job_id: `made-up-${i}`, status: "running" }));
    await until(() => c.frames.filter((f) => f.code === "unknown_job").length === 50, {
      label: "50 refusals",
      timeoutMs: 5_000,
    });
    expect(await r.store.list({ limit: 1_000 })).toEqual([]);
    expect(registryInternals(r.registry).core.dispatcher.size).toBe(0);
    c.close();
  });

  it("an inventory over the limit, or with more running jobs than max_processes, is refused", async () => {
    const r = await startRegistry({});
    const c = await RawConnection.open(r);
    const inventory = (count: number, status: string) =>
      Array.from({ length: count }, (_, i) => ({ job_id: `inv-${i}`, status }));
    const register = (maxProcesses: number, jobs: unknown[]) =>
      JSON.stringify({
        type: "register",
        protocol_version: PROTOCOL_VERSION,
        worker_id: "",
        agent_name: "hoarder",
        load_threshold: 1,
        max_processes: maxProcesses,
        jobs,
      });
    const tooMany = await c.errorFor(register(1, inventory(MAX_INVENTORY_ENTRIES + 1, "completed")));
    expect(tooMany.code).toBe("invalid_message");
    const overCapacity = await c.errorFor(register(2, inventory(3, "running")));
    expect(overCapacity.code).toBe("invalid_message");
    expect(overCapacity.message).toMatch(/jobs/);
    expect(await r.store.list({ limit: 10_000 })).toEqual([]);
    expect(registryInternals(r.registry).core.directory.size).toBe(0);
    c.close();
  });

  it("a worker that reports a job assigned to it is still heard", async () => {
    const r = await startRegistry({});
    const c = await RawConnection.open(r);
    c.send(registerMessage("honest", 1));
    await c.next(0, (f) => f.type === "register", "registration");
    c.send(JSON.stringify({ type: "status_update", worker_id: "", status: "available", load: 0, job_count: 0 }));
    const job = await dispatch(r, { agent_name: "honest" });
    const offer = await c.next(0, (f) => f.type === "availability_request", "an offer");
    c.send(JSON.stringify({ type: "availability_response", job_id: offer.job_id, available: true }));
    await c.next(0, (f) => f.type === "job_assignment", "the assignment");
    c.send(JSON.stringify({ type: "job_update", job_id: job.id, status: "running" }));
    c.send(JSON.stringify({ type: "job_update", job_id: job.id, status: "completed" }));
    expect(await r.store.untilFinal(job.id, 5_000)).toMatchObject({ status: "completed" });
    expect(c.frames.filter((f) => f.code === "unknown_job")).toEqual([]);
    c.close();
  });
});

describe("tokens", () => {
  it("a validly signed token without exp is refused", async () => {
    const r = await startRegistry({});
    const answer = await api(r.url, await unsignedLifetime({}), "GET", "/v1/jobs");
    expect(answer.status).toBe(401);
    expect(answer.body.error).toMatch(/no expiry/);
  });

  it("a token living longer than the configured maximum is refused, and cannot be minted", async () => {
    const r = await startRegistry({}, { maxTokenLifetimeSeconds: 600 });
    const now = Math.floor(Date.now() / 1000);
    const long = await unsignedLifetime({ iat: now, exp: now + 3_600 });
    const answer = await api(r.url, long, "GET", "/v1/jobs");
    expect(answer.status).toBe(401);
    expect(answer.body.error).toMatch(/maximum of 600 s/);
    const short = await mintToken(CREDS, { role: "dispatcher", ttl: 300 });
    expect((await api(r.url, short, "GET", "/v1/jobs")).status).toBe(200);
    await expect(
      mintToken({ ...CREDS, maxTokenLifetimeSeconds: 600 }, { role: "dispatcher", ttl: 3_600 }),
    ).rejects.toThrow(/over the maximum of 600 s/);
  });
});

describe("connection bounds", () => {
  it("a slowloris client is closed within the headers timeout, an idle one too", async () => {
    const r = await startRegistry({}, { httpLimits: { headersTimeoutMs: 400 } });
    const port = r.registry.port;
    const idle = rawRequest(port, "", 5_000);
    const slow = new Promise<number>((resolve) => {
      const started = performance.now();
      import("node:net").then(({ connect }) => {
        const socket = connect(port, "127.0.0.1", () => socket.write("GET /healthz HTTP/1.1\r\nHost: a\r\n"));
        const drip = setInterval(() => socket.write("X-Drip: 1\r\n"), 50);
        socket.on("error", () => {});
        socket.on("close", () => {
          clearInterval(drip);
          resolve(performance.now() - started);
        });
      });
    });
    const [idleAnswer, slowMs] = await Promise.all([idle, slow]);
    expect(idleAnswer.closedAfterMs).toBeLessThan(3_000);
    expect(slowMs).toBeLessThan(3_000);
    expect((await api(r.url, undefined, "GET", "/healthz")).status).toBe(200);
  });

  it("connections past maxConnections are closed at once; the server keeps serving", async () => {
    const r = await startRegistry({}, { httpLimits: { maxConnections: 3 } });
    const { connect } = await import("node:net");
    const held = await Promise.all(
      Array.from(
        { length: 3 },
        () =>
          new Promise<import("node:net").Socket>((resolve) => {
            const socket = connect(r.registry.port, "127.0.0.1", () => resolve(socket));
            socket.on("error", () => {});
          }),
      ),
    );
    const refused = await rawRequest(r.registry.port, "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n", 3_000);
    expect(refused.status).toBeUndefined();
    expect(refused.closedAfterMs).toBeLessThan(2_000);
    for (const socket of held) socket.destroy();
    await until(
      async () =>
        (await rawRequest(r.registry.port, "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")).status ===
        200,
      { label: "a free connection", timeoutMs: 5_000 },
    );
  });

  it("an unauthenticated 50 MB body is refused without being read", async () => {
    const r = await startRegistry({});
    const { connect } = await import("node:net");
    const { written, status } = await new Promise<{ written: number; status: string }>((resolve) => {
      let written = 0;
      let answer = "";
      const socket = connect(r.registry.port, "127.0.0.1", () => {
        socket.write("POST /v1/jobs HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
        const chunk = Buffer.concat([Buffer.from("10000\r\n"), Buffer.alloc(0x10000, 97), Buffer.from("\r\n")]);
        const pump = () => {
          while (written < 50e6) {
            written += 0x10000;
            if (!socket.write(chunk)) return void socket.once("drain", pump);
          }
          socket.end("0\r\n\r\n");
        };
        pump();
      });
      socket.on("data", (data) => {
        answer += data.toString("latin1");
      });
      socket.on("error", () => {});
      socket.on("close", () => resolve({ written, status: answer.slice(0, 12) }));
    });
    expect(status).toBe("HTTP/1.1 401");
    expect(written).toBeLessThan(20e6);
  });
});
