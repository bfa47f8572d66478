import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import { z } from "zod";
import { createGatewayServer, DEFAULT_HTTP_LIMITS, type HttpLimits } from "../http/gateway.ts";
import { HttpError, send } from "../http/respond.ts";
import { ACTOR_EVENTS_PATH, type ActorEventLog } from "../observability/actor-events.ts";
import { WORKER_ACTOR_ID, WORKER_CHILD_ID } from "./worker-actor.ts";

export interface HealthRoutes {
  ready(): boolean;
  worker(): unknown;
  metrics(): Promise<{ contentType: string; body: string }>;
  /** The recent events of the worker's root, slots and jobs, for its dashboard; absent = no such route. */
  actorEvents?: ActorEventLog;
  /** More routes (dashboard, web assets); resolves false when the request is not one of them. */
  extra?(req: IncomingMessage, res: ServerResponse, url: URL): Promise<boolean>;
  /** WebSocket upgrades (the room hub in local mode); refused with 404 when absent. */
  upgrade?(req: IncomingMessage, socket: Duplex, head: Buffer, url: URL): Promise<void> | void;
}

export class PortInUseError extends Error {
  override readonly name = "PortInUseError";
}

/** A worker's server holds a few probes and dashboards, never thousands of clients. */
export const WORKER_HTTP_LIMITS: HttpLimits = { ...DEFAULT_HTTP_LIMITS, maxConnections: 1_000 };

/** The worker's actors are `worker`, `slot.<n>` and `job.<job id>`; anything else is not ours. */
const actorQuery = z.object({
  actor: z
    .string({ error: "actor is required" })
    .max(300, "actor is too long")
    .refine(
      (actor) => actor === WORKER_ACTOR_ID || WORKER_CHILD_ID.test(actor),
      "actor must be worker, slot.<n> or job.<id>",
    ),
});

/**
 * One actor's recent events (event types and states, never payloads); `known: false` with no events
 * for an actor this worker has not seen or no longer keeps, which is no error for a page that polls.
 */
function actorEvents(log: ActorEventLog, url: URL) {
  const query = actorQuery.safeParse({ actor: url.searchParams.get("actor") ?? undefined });
  if (!query.success) throw new HttpError(400, query.error.issues[0]?.message ?? "bad actor");
  const recent = log.recent(query.data.actor);
  return recent ? { ...recent, known: true } : { actor: query.data.actor, known: false, ended: false, events: [] };
}

/**
 * The worker's HTTP server: /healthz (the event loop answers), /readyz, /worker (JSON state),
 * /metrics (Prometheus text) and /dashboard/actor-events (one actor's recent events). Resolves once
 * listening; a port in use rejects with PortInUseError.
 */
export async function startHealthServer(
  host: string,
  port: number,
  routes: HealthRoutes,
  logger: Logger,
  limits: HttpLimits = WORKER_HTTP_LIMITS,
): Promise<Server> {
  const server = createGatewayServer(
    {
      async request(req, res, url) {
        if (await routes.extra?.(req, res, url)) return true;
        if (req.method !== "GET" && req.method !== "HEAD") throw new HttpError(405, "method not allowed");
        switch (url.pathname) {
          case "/healthz":
            send(res, 200, { ok: true });
            return true;
          case "/readyz": {
            const ready = routes.ready();
            send(res, ready ? 200 : 503, { ready });
            return true;
          }
          case "/worker":
            send(res, 200, routes.worker());
            return true;
          case ACTOR_EVENTS_PATH:
            if (!routes.actorEvents) return false;
            send(res, 200, actorEvents(routes.actorEvents, url));
            return true;
          case "/metrics": {
            const { contentType, body } = await routes.metrics();
            res.writeHead(200, { "content-type": contentType });
            res.end(body);
            return true;
          }
          default:
            return false;
        }
      },
      ...(routes.upgrade ? { upgrade: routes.upgrade } : {}),
    },
    limits,
    logger,
  );
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
