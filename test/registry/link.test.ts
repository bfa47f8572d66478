import { createServer, type Server } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { createActor } from "xstate";
import { type ConnectionInput, connectionMachine } from "../../machines/connection.ts";
import type { WorkerStatus } from "../../machines/shared.ts";
import { mintToken } from "../../src/auth/tokens.ts";
import { registryInternals } from "../../src/registry/server.ts";
import { createRegistrySocket } from "../../src/worker/registry-socket.ts";
import { until, within } from "../support/wait.ts";
import {
  CREDS,
  closeRegistries,
  ProcessGuard,
  silent,
  startInProcessWorker,
  startRegistry,
  stopInProcessWorkers,
} from "./helpers.ts";

const guard = new ProcessGuard();
const servers = new Set<{ server: Server; sockets: Set<Socket> }>();

afterEach(async () => {
  await stopInProcessWorkers();
  await closeRegistries();
  for (const { server, sockets } of servers) {
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
  servers.clear();
  await guard.killAll();
});

/** A server that accepts TCP and the upgrade request, and never answers it. */
async function silentUpgradeServer() {
  const server = createServer((_req, res) => res.end());
  const held = new Set<Socket>();
  const closed: Socket[] = [];
  server.on("upgrade", (_req, socket: Socket) => {
    held.add(socket);
    // The client ending its side is what counts (the server keeps upgrade sockets half-open).
    socket.once("end", () => closed.push(socket));
    socket.once("close", () => {
      if (!closed.includes(socket)) closed.push(socket);
    });
    socket.on("error", () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const entry = { server, sockets: held };
  servers.add(entry);
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, held, closed };
}

const status: WorkerStatus = { status: "available", load: 0, jobCount: 0, idleProcesses: 0 };

describe("the worker's registry link, on real sockets", () => {
  it("an upgrade that is never answered times out after the registration deadline; the worker gives up", async () => {
    const target = await silentUpgradeServer();
    const started = Date.now();
    const handle = await startInProcessWorker(target.url, {
      agentId: "unanswered",
      registrationTimeout: 0.3,
      maxRetry: 2,
    });
    expect(await within("the worker to give up", handle.done, 5_000)).toBe(1);
    // Two attempts of 0.3 s each, and a short backoff between.
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(target.held.size).toBe(2);
    // Each attempt let go of its connection.
    await until(() => target.closed.length === 2, { label: "both attempts' connections to close", timeoutMs: 2_000 });
  });

  it("a socket that fails while sending is dropped; the link comes back on one fresh socket and stays", async () => {
    const r = await startRegistry({ pingIntervalMs: 30_000 });
    const socket = createRegistrySocket({
      registryUrl: r.url,
      token: () => mintToken(CREDS, { role: "worker" }),
      logger: silent,
    });
    const input: ConnectionInput = {
      agentName: "fragile",
      maxProcesses: 1,
      loadThreshold: 1,
      maxRetry: 5,
      timing: {
        registrationTimeoutMs: 2_000,
        pingIntervalMs: 30_000,
        pongTimeoutMs: 5_000,
        backoffBaseMs: 20,
        backoffMaxMs: 50,
      },
      random: () => 0.5,
    };
    const link = createActor(connectionMachine.provide({ actors: { socket } }), { input });
    const backoffs: unknown[] = [];
    link.subscribe((snapshot) => {
      if (snapshot.value === "backoff") backoffs.push(snapshot.context.lastProblem);
    });
    link.start();
    try {
      await until(() => link.getSnapshot().matches({ online: "registered" }), { label: "the link to register" });
      link.send({ type: "link.status", status });
      const workerId = link.getSnapshot().context.workerId;
      await until(() => registryInternals(r.registry).core.directory.get(workerId)?.available, {
        label: "the registry to see the worker available",
      });

      // An answer the socket cannot serialize: sending it throws inside the socket actor (once: the
      // link does not keep answers to send again).
      link.send({ type: "link.offer_answer", jobId: "job-x", accept: false, error: 1n as unknown as string });
      await until(() => backoffs.length > 0 && link.getSnapshot().matches({ online: "registered" }), {
        label: "the link to register again",
      }).catch((error: Error) => {
        throw new Error(
          `${error.message}: ${JSON.stringify(link.getSnapshot().value)} after ${backoffs.length} backoffs`,
        );
      });
      // One drop, for the failed send, not a second one for the old socket closing afterwards.
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(backoffs).toEqual([expect.stringMatching(/Do not know how to serialize a BigInt/)]);
      // Nothing of the dropped socket reaches the link afterwards: one backoff, one socket on the registry.
      await until(() => registryInternals(r.registry).gateway.connections === 1, {
        label: "the registry to let go of the old socket",
      });
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(backoffs).toHaveLength(1);
      expect(link.getSnapshot().matches({ online: "registered" })).toBe(true);
      expect([...registryInternals(r.registry).core.directory.workers()].map((w) => w.workerId)).toEqual([workerId]);
      expect(registryInternals(r.registry).gateway.connections).toBe(1);
    } finally {
      link.stop();
    }
  });
});
