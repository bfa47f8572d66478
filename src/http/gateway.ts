import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import { HttpError, sendError } from "./respond.ts";
import { requestUrl } from "./target.ts";

/** Bounds on what one client can hold open; see docs/deploying.md, "limits and hardening". */
export interface HttpLimits {
  /** Time for a client to send its request headers; a slowloris client gets 408 and is closed. */
  headersTimeoutMs: number;
  /** Time for a whole request, body included. */
  requestTimeoutMs: number;
  /** An idle keep-alive connection is closed after this long. */
  keepAliveTimeoutMs: number;
  /** Connections past this many are closed as soon as they are accepted. */
  maxConnections: number;
  /** Request line and headers together. */
  maxHeaderBytes: number;
}

export const DEFAULT_HTTP_LIMITS: HttpLimits = {
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  keepAliveTimeoutMs: 5_000,
  maxConnections: 20_000,
  maxHeaderBytes: 16 * 1024,
};

export interface GatewayRoutes {
  /** Answers the request; false when no route matched (a 404). Throw HttpError for client errors. */
  request(req: IncomingMessage, res: ServerResponse, url: URL): Promise<boolean> | boolean;
  /** WebSocket upgrades; absent = every upgrade is refused with 404. */
  upgrade?(req: IncomingMessage, socket: Duplex, head: Buffer, url: URL): Promise<void> | void;
}

/** Answers an upgrade request with a plain HTTP status and closes the socket. */
export function refuseUpgrade(socket: Duplex, status: number, message: string): void {
  if (socket.destroyed) return;
  const body = JSON.stringify({ error: message });
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? "Error"}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    () => socket.destroy(),
  );
}

const STATUS_TEXT: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  409: "Conflict",
  429: "Too Many Requests",
  500: "Internal Server Error",
  503: "Service Unavailable",
};

/**
 * The one door of a server: parses the request target before any route sees it, bounds connections
 * and timeouts, and turns whatever a route throws or rejects with into an answer: the HttpError's
 * status for a client's mistake, a logged 500 for a fault of ours. Nothing a client sends can raise
 * an exception past this function or leave a promise without a handler.
 */
export function createGatewayServer(routes: GatewayRoutes, limits: HttpLimits, logger: Logger): Server {
  const server = createServer(
    {
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: limits.requestTimeoutMs,
      keepAliveTimeout: limits.keepAliveTimeoutMs,
      maxHeaderSize: limits.maxHeaderBytes,
      // Node checks the two timeouts on this period (30 s by default, longer than they are).
      connectionsCheckingInterval: Math.max(100, Math.min(1_000, limits.headersTimeoutMs / 4)),
    },
    (req, res) => {
      const fail = (error: unknown) => {
        if (!(error instanceof HttpError)) logger.error({ err: error, path: req.url?.slice(0, 200) }, "request failed");
        sendError(res, error);
      };
      try {
        const url = requestUrl(req);
        Promise.resolve(routes.request(req, res, url))
          .then((handled) => {
            if (!handled) throw new HttpError(404, `no route ${req.method} ${url.pathname.slice(0, 200)}`);
          }, fail)
          .catch(fail);
      } catch (error) {
        fail(error);
      }
    },
  );
  server.maxConnections = limits.maxConnections;
  server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on("error", () => socket.destroy());
    const fail = (error: unknown) => {
      if (error instanceof HttpError) return refuseUpgrade(socket, error.status, error.message);
      logger.error({ err: error, path: req.url?.slice(0, 200) }, "upgrade failed");
      refuseUpgrade(socket, 500, "internal error");
    };
    try {
      const url = requestUrl(req);
      if (!routes.upgrade) throw new HttpError(404, "no WebSocket endpoint here");
      Promise.resolve(routes.upgrade(req, socket, head, url)).catch(fail);
    } catch (error) {
      fail(error);
    }
  });
  // A client that breaks the HTTP grammar gets Node's own 400 (408, 431) and loses its connection.
  return server;
}
