import type { Server } from "node:http";
import { pino } from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { boundPort, closeServer, startHealthServer } from "../../src/worker/http-server.ts";
import { rawRequest, upgradeRequest } from "./raw-http.ts";

const servers: Server[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map(closeServer));
});

async function healthServer(): Promise<number> {
  const server = await startHealthServer(
    "127.0.0.1",
    0,
    {
      ready: () => true,
      worker: () => ({ id: "w" }),
      metrics: async () => ({ contentType: "text/plain", body: "" }),
    },
    pino({ level: "silent" }),
  );
  servers.push(server);
  return boundPort(server);
}

describe("the worker's health server under bad requests", () => {
  it("an absolute-form target with a bad port is a 400, and /healthz still answers", async () => {
    const port = await healthServer();
    const bad = await rawRequest(port, "GET http://a:99999/healthz HTTP/1.1\r\nHost: a\r\n\r\n");
    expect(bad.status).toBe(400);
    const good = await rawRequest(port, "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    expect(good.status).toBe(200);
  });

  it("upgrades are refused with a status, whatever their target", async () => {
    const port = await healthServer();
    expect((await rawRequest(port, upgradeRequest("/rooms/%E0%A4%A"))).status).toBe(404);
    expect((await rawRequest(port, upgradeRequest("http://a:99999/rooms/x"))).status).toBe(400);
  });

  it("a method other than GET is a 405, an unknown path a 404", async () => {
    const port = await healthServer();
    expect(
      (await rawRequest(port, "POST /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
        .status,
    ).toBe(405);
    expect((await rawRequest(port, "GET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")).status).toBe(404);
  });
});
