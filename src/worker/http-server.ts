import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Duplex } from "node:stream";

export interface HealthRoutes {
  ready(): boolean;
  worker(): unknown;
  metrics(): Promise<{ contentType: string; body: string }>;
  /** More routes (dashboard, web assets); returns false when the request is not one of them. */
  extra?(req: IncomingMessage, res: ServerResponse): boolean;
  /** WebSocket upgrades (the room hub in local mode); refused with 404 when absent. */
  upgrade?(req: IncomingMessage, socket: Duplex, head: Buffer): void;
}

export class PortInUseError extends Error {
  override readonly name = "PortInUseError";
}

function json(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json; charset=utf-8", "cache-control": "no-store" });
  res.end(text);
}

/**
 * The worker's HTTP server: /healthz (the event loop answers), /readyz, /worker (JSON state) and
 * /metrics (Prometheus text). Resolves once listening; a port in use rejects with PortInUseError.
 */
export async function startHealthServer(host: string, port: number, routes: HealthRoutes): Promise<Server> {
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const path = new URL(req.url ?? "/", "http://localhost").pathname;
    if (routes.extra?.(req, res)) return;
    if (req.method !== "GET" && req.method !== "HEAD") return json(res, 405, { error: "method not allowed" });
    switch (path) {
      case "/healthz":
        return json(res, 200, { ok: true });
      case "/readyz": {
        const ready = routes.ready();
        return json(res, ready ? 200 : 503, { ready });
      }
      case "/worker":
        return json(res, 200, routes.worker());
      case "/metrics":
        routes.metrics().then(
          ({ contentType, body }) => {
            res.writeHead(200, { "content-type": contentType });
            res.end(body);
          },
          (error: Error) => json(res, 500, { error: error.message }),
        );
        return;
      default:
        return json(res, 404, { error: `no route ${path}` });
    }
  });
  server.keepAliveTimeout = 5_000;
  server.on("upgrade", (req, socket, head) => {
    if (routes.upgrade) return routes.upgrade(req, socket, head);
    socket.end("HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
  });
  await new Promise<void>((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException) => {
      server.off("listening", onListening);
      if (error.code === "EADDRINUSE") {
        reject(
          new PortInUseError(
            `port ${port} on ${host} is already in use; choose another port (port: 0 picks a free one)`,
          ),
        );
      } else {
        reject(error);
      }
    };
    const onListening = () => {
      server.off("error", onError);
      resolve();
    };
    server.once("error", onError);
    server.once("listening", onListening);
    server.listen(port, host);
  });
  return server;
}

export function boundPort(server: Server): number {
  return (server.address() as AddressInfo).port;
}

export function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}
