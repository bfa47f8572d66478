import type { IncomingMessage, ServerResponse } from "node:http";
import { z } from "zod";
import type { Credentials } from "../auth/tokens.ts";
import { HttpError, invalid, readJson, send } from "../http/respond.ts";
import { decodeSegment } from "../http/target.ts";
import type { RegistryCore } from "./core/registry-core.ts";
import { bearerAuthorizer } from "./http-auth.ts";
import type { RegistryMetrics } from "./metrics.ts";
import { JOB_STATUSES } from "./store.ts";

export const createJobBody = z.strictObject({
  agent_name: z.string().min(1).max(256),
  room_id: z.string().min(1).max(256).optional(),
  metadata: z.record(z.string(), z.unknown()).optional(),
  room_options: z.record(z.string(), z.unknown()).optional(),
  max_duration: z.number().min(0).optional(),
  idempotency_key: z.string().min(1).max(256).optional(),
  redispatch: z.boolean().optional(),
});

const listQuery = z.object({
  status: z.enum(JOB_STATUSES).optional(),
  agent: z.string().min(1).optional(),
  limit: z.coerce.number().int().min(1).max(10_000).optional(),
});

/** The W3C trace context headers, when present as single strings (repeated headers are not). */
function traceHeaders(req: IncomingMessage): { traceparent?: string; tracestate?: string } {
  const { traceparent, tracestate } = req.headers;
  return {
    ...(typeof traceparent === "string" ? { traceparent } : {}),
    ...(typeof tracestate === "string" ? { tracestate } : {}),
  };
}

/** The registry's HTTP API. Returns false when the path is not one of its routes. */
export function createHttpApi(core: RegistryCore, credentials: Credentials, metrics: RegistryMetrics) {
  const authorize = bearerAuthorizer(credentials);

  return async function handle(req: IncomingMessage, res: ServerResponse, url: URL): Promise<boolean> {
    const path = url.pathname;
    if (path === "/healthz") {
      send(res, 200, { ok: true });
      return true;
    }
    if (path === "/readyz") {
      // A node cut off from the cluster's Redis can neither record nor place jobs: not ready.
      const bus = core.deps.bus;
      const redis = bus ? (bus.connected ? "connected" : "disconnected") : undefined;
      const ready = redis !== "disconnected";
      send(res, ready ? 200 : 503, { ready, workers: core.directory.size, ...(redis ? { redis } : {}) });
      return true;
    }
    if (path === "/metrics") {
      res.writeHead(200, { "content-type": metrics.registry.contentType });
      res.end(await metrics.registry.metrics());
      return true;
    }
    if (path === "/v1/jobs" && req.method === "POST") {
      await authorize(req, ["dispatcher"]);
      const parsed = createJobBody.safeParse(await readJson(req));
      if (!parsed.success) throw invalid(parsed.error);
      const body = parsed.data;
      const key = body.idempotency_key ?? (req.headers["idempotency-key"] as string | undefined);
      const { record, created } = await core.dispatch({
        agentName: body.agent_name,
        ...(body.room_id ? { roomId: body.room_id } : {}),
        ...(body.metadata ? { metadata: body.metadata } : {}),
        ...(body.room_options ? { roomOptions: body.room_options } : {}),
        ...(body.max_duration !== undefined ? { maxDuration: body.max_duration } : {}),
        ...(key ? { idempotencyKey: key } : {}),
        ...(body.redispatch !== undefined ? { redispatch: body.redispatch } : {}),
        // Passed as sent: the dispatch's trace parses them strictly and starts a new trace when they are bad.
        ...traceHeaders(req),
      });
      send(res, created ? 201 : 200, { job: record, created });
      return true;
    }
    if (path === "/v1/jobs" && req.method === "GET") {
      await authorize(req, ["dispatcher"]);
      const parsed = listQuery.safeParse(Object.fromEntries(url.searchParams));
      if (!parsed.success) throw invalid(parsed.error);
      const { status, agent, limit } = parsed.data;
      const jobs = await core.store.list({
        ...(status ? { status } : {}),
        ...(agent ? { agentName: agent } : {}),
        ...(limit ? { limit } : {}),
      });
      send(res, 200, { jobs });
      return true;
    }
    const jobMatch = /^\/v1\/jobs\/([^/]+)$/.exec(path);
    if (jobMatch) {
      await authorize(req, ["dispatcher"]);
      const id = decodeSegment(jobMatch[1] as string);
      if (req.method === "GET") {
        const record = await core.store.get(id);
        if (!record) throw new HttpError(404, `no job ${id}`);
        send(res, 200, { job: record });
        return true;
      }
      if (req.method === "DELETE") {
        const record = await core.cancel(id);
        if (!record) throw new HttpError(404, `no job ${id}`);
        send(res, 202, { job: record });
        return true;
      }
      throw new HttpError(405, "method not allowed");
    }
    if (path === "/v1/workers" && req.method === "GET") {
      await authorize(req, ["dispatcher"]);
      send(res, 200, { workers: core.describeWorkers() });
      return true;
    }
    return false;
  };
}
