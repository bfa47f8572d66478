import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { createLogger, type Logger } from "../observability/logger.ts";
import { MAX_FRAME_BYTES } from "../protocol/registry.ts";
import type { Credentials } from "./auth.ts";
import { createHttpApi } from "./http-api.ts";
import { createRegistryMetrics } from "./metrics.ts";
import { RegistryCore } from "./registry.ts";
import { type JobStore, MemoryJobStore } from "./store.ts";
import { DEFAULT_REGISTRY_TIMING, type RegistryTiming } from "./timing.ts";

export interface RegistryOptions extends Credentials {
  host?: string;
  /** 0 picks a free port. Default 7880. */
  port?: number;
  store?: JobStore;
  timing?: Partial<RegistryTiming>;
  logger?: Logger;
  maxFrameBytes?: number;
  random?: () => number;
}

export interface Registry {
  core: RegistryCore;
  server: Server;
  port: number;
  /** http://host:port; workers connect to its /agent path. */
  url: string;
  close(): Promise<void>;
}

/** Starts a registry: the worker WebSocket endpoint at /agent and the HTTP API on one port. */
export async function createRegistry(options: RegistryOptions): Promise<Registry> {
  if (!options.apiKey || !options.apiSecret) throw new Error("createRegistry needs apiKey and apiSecret");
  const host = options.host ?? "127.0.0.1";
  const logger = options.logger ?? createLogger("INFO");
  const metrics = createRegistryMetrics();
  const timing = { ...DEFAULT_REGISTRY_TIMING, ...options.timing };
  const core = new RegistryCore(
    { apiKey: options.apiKey, apiSecret: options.apiSecret },
    options.store ?? new MemoryJobStore(),
    timing,
    logger,
    metrics,
    options.maxFrameBytes ?? MAX_FRAME_BYTES,
    options.random,
  );
  const api = createHttpApi(core, options, metrics);
  const server = createServer((req, res) => {
    api(req, res).then(
      (handled) => {
        if (!handled) {
          res.writeHead(404, { "content-type": "application/json" });
          res.end(JSON.stringify({ error: `no route ${req.method} ${req.url}` }));
        }
      },
      (error: Error) => {
        res.writeHead(500, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: error.message }));
      },
    );
  });
  server.on("upgrade", (req, socket, head) => {
    const path = new URL(req.url ?? "/", "http://registry").pathname;
    if (path === "/agent") {
      void core.handleUpgrade(req, socket, head);
      return;
    }
    socket.write("HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    socket.destroy();
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 7880, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const url = `http://${host.includes(":") ? `[${host}]` : host}:${port}`;
  logger.info({ url }, "registry listening");
  return {
    core,
    server,
    port,
    url,
    async close() {
      await core.close();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await core.store.close();
    },
  };
}
