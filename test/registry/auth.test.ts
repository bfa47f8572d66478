import { SignJWT } from "jose";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { mintToken } from "../../src/auth/tokens.ts";
import { registryInternals } from "../../src/registry/server.ts";
import { until, within } from "../support/wait.ts";
import {
  api,
  CREDS,
  closeRegistries,
  ProcessGuard,
  startInProcessWorker,
  startRegistry,
  stopInProcessWorker,
  stopInProcessWorkers,
  type TestRegistry,
  token,
} from "./helpers.ts";

const guard = new ProcessGuard();

interface UpgradeResult {
  opened: boolean;
  status?: number;
  body?: string;
}

/** Opens a WebSocket to /agent with this Authorization header; reports the refusal's status if refused. */
function upgrade(r: TestRegistry, authorization: string | undefined): Promise<UpgradeResult> {
  const ws = new WebSocket(`${r.url.replace(/^http/, "ws")}/agent`, {
    headers: authorization === undefined ? {} : { authorization },
  });
  ws.on("error", () => {});
  return within(
    "the upgrade to be answered",
    new Promise<UpgradeResult>((resolve) => {
      ws.on("unexpected-response", (req, res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => {
          body += chunk;
        });
        res.on("end", () => {
          resolve({ opened: false, status: res.statusCode ?? 0, body });
          req.destroy();
        });
      });
      ws.on("open", () => {
        resolve({ opened: true });
        ws.close();
      });
    }),
    5_000,
  );
}

/** A token signed with the registry's own key and secret that expired a minute ago. */
async function expiredToken(role: "worker" | "dispatcher"): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ role })
    .setProtectedHeader({ alg: "HS256" })
    .setIssuer(CREDS.apiKey)
    .setIssuedAt(now - 120)
    .setExpirationTime(now - 60)
    .sign(new TextEncoder().encode(CREDS.apiSecret));
}

let r: TestRegistry;
let bad: Record<string, string | undefined>;

beforeAll(async () => {
  r = await startRegistry({});
  const wrongSecret = { ...CREDS, apiSecret: `${CREDS.apiSecret}-not` };
  const wrongKey = { ...CREDS, apiKey: "someone-else" };
  bad = {
    missing: undefined,
    "not bearer": `Basic ${Buffer.from("user:pass").toString("base64")}`,
    "empty bearer": "Bearer ",
    malformed: "Bearer not-a-jwt",
    "malformed, three parts": "Bearer aaa.bbb.ccc",
    "wrongly signed (worker)": `Bearer ${await mintToken(wrongSecret, { role: "worker" })}`,
    "wrongly signed (dispatcher)": `Bearer ${await mintToken(wrongSecret, { role: "dispatcher" })}`,
    "another issuer": `Bearer ${await mintToken(wrongKey, { role: "dispatcher" })}`,
    "expired (worker)": `Bearer ${await expiredToken("worker")}`,
    "expired (dispatcher)": `Bearer ${await expiredToken("dispatcher")}`,
    "unsigned (alg none)": `Bearer ${Buffer.from('{"alg":"none"}').toString("base64url")}.${Buffer.from(
      JSON.stringify({ iss: CREDS.apiKey, role: "dispatcher", exp: Math.floor(Date.now() / 1000) + 600 }),
    ).toString("base64url")}.`,
  };
});

afterEach(async () => {
  await stopInProcessWorkers();
  await guard.killAll();
});

afterAll(async () => {
  await closeRegistries();
});

const ROUTES: [string, string, unknown?][] = [
  ["POST", "/v1/jobs", { agent_name: "a" }],
  ["GET", "/v1/jobs"],
  ["GET", "/v1/jobs/job-x"],
  ["DELETE", "/v1/jobs/job-x"],
  ["GET", "/v1/workers"],
];

async function call(authorization: string | undefined, method: string, path: string, body?: unknown) {
  const bearer = authorization?.startsWith("Bearer ") ? authorization.slice("Bearer ".length) : undefined;
  const headers: Record<string, string> = authorization && !bearer ? { authorization } : {};
  return api(r.url, bearer, method, path, body, headers);
}

describe("registry auth", () => {
  it("refuses bad tokens with 401 at the WebSocket upgrade", async () => {
    for (const [name, authorization] of Object.entries(bad)) {
      const result = await upgrade(r, authorization);
      expect({ name, ...result, body: undefined }).toEqual({ name, opened: false, status: 401, body: undefined });
    }
    expect(registryInternals(r.registry).core.directory.size).toBe(0);
    expect(registryInternals(r.registry).gateway.connections).toBe(0);
  });

  it("refuses bad tokens with 401 on every HTTP route", async () => {
    for (const [name, authorization] of Object.entries(bad)) {
      for (const [method, path, body] of ROUTES) {
        const response = await call(authorization, method, path, body);
        expect({ name, method, path, status: response.status }).toEqual({ name, method, path, status: 401 });
        expect(typeof response.body.error).toBe("string");
      }
    }
    expect(await r.store.list()).toEqual([]);
  });

  it("gives each role only its own rights", async () => {
    const worker = await token("worker");
    const dispatcher = await token("dispatcher");
    const participant = await token("participant");

    // Only a worker token opens the worker socket.
    expect(await upgrade(r, `Bearer ${worker}`)).toEqual({ opened: true });
    for (const other of [dispatcher, participant]) {
      const result = await upgrade(r, `Bearer ${other}`);
      expect(result.opened).toBe(false);
      expect(result.status).toBe(403);
      expect(result.body).toMatch(/cannot/);
    }
    // Only a dispatcher token uses the HTTP API.
    for (const other of [worker, participant]) {
      for (const [method, path, body] of ROUTES) {
        const response = await call(`Bearer ${other}`, method, path, body);
        expect({ method, path, status: response.status }).toEqual({ method, path, status: 403 });
      }
    }
    expect(await r.store.list()).toEqual([]);
    const created = await call(`Bearer ${dispatcher}`, "POST", "/v1/jobs", { agent_name: "a", metadata: { x: 1 } });
    expect(created.status).toBe(201);
    expect((await call(`Bearer ${dispatcher}`, "GET", "/v1/workers")).status).toBe(200);
    expect((await call(`Bearer ${dispatcher}`, "GET", `/v1/jobs/${created.body.job.id}`)).status).toBe(200);
    // Health endpoints need no token.
    expect((await api(r.url, undefined, "GET", "/healthz")).status).toBe(200);
  });

  it("refuses a token that expired after it was accepted (the verified-token cache checks expiry)", async () => {
    const shortLived = await mintToken(CREDS, { role: "dispatcher", ttl: 1 });
    const workerShortLived = await mintToken(CREDS, { role: "worker", ttl: 1 });
    expect((await call(`Bearer ${shortLived}`, "GET", "/v1/workers")).status).toBe(200);
    expect(await upgrade(r, `Bearer ${workerShortLived}`)).toEqual({ opened: true });
    const refused = await until(
      async () => {
        const response = await call(`Bearer ${shortLived}`, "GET", "/v1/workers");
        return response.status === 401 ? response : undefined;
      },
      { label: "the token to expire", timeoutMs: 5_000, intervalMs: 100 },
    );
    expect(refused.body.error).toMatch(/expired/);
    expect(await upgrade(r, `Bearer ${workerShortLived}`)).toMatchObject({ opened: false, status: 401 });
  });

  it("a worker refused at the upgrade (401) gives up at once, without retrying (exit code 1)", async () => {
    const handle = await startInProcessWorker(r.url, {
      agentId: "refused",
      apiSecret: `${CREDS.apiSecret}-not`,
      maxRetry: 16,
      reconnectBackoffBase: 0.05,
      reconnectBackoffMax: 0.1,
    });
    const said: { type: string; reason?: string; problem?: string | null }[] = [];
    handle.actor.getSnapshot().children.registryLink?.on("*", (event: (typeof said)[number]) => said.push(event));
    let code: number | undefined;
    try {
      code = await within("the refused worker to give up", handle.done, 5_000);
    } catch (error) {
      const link = handle.actor.getSnapshot().children.registryLink?.getSnapshot() as { value?: unknown } | undefined;
      await stopInProcessWorker(handle);
      throw new Error(`${(error as Error).message}; its registry link is still in ${JSON.stringify(link?.value)}`);
    }
    expect(code).toBe(1);
    expect(registryInternals(r.registry).core.directory.size).toBe(0);
    expect(said).toEqual([
      {
        type: "link.gave_up",
        reason: "unauthorized",
        retries: 0,
        problem: expect.stringMatching(/^registry refused the worker's credentials: 401 /),
      },
    ]);
  });
});
