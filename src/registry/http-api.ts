import type { IncomingMessage, ServerResponse } from "node:http";
import { z } from "zod";
import { AuthError, bearerToken, type Credentials, type Role, verifyToken } from "./auth.ts";
import type { RegistryMetrics } from "./metrics.ts";
import type { RegistryCore } from "./registry.ts";
import { JOB_STATUSES } from "./store.ts";

const MAX_BODY_BYTES = 64 * 1024;

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

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
  }
}

function send(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "content-type": "application/json; charset=utf-8", "cache-control": "no-store" });
  res.end(JSON.stringify(body));
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new HttpError(413, `request body over ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8") || "null");
  } catch {
    throw new HttpError(400, "request body is not valid JSON");
  }
}

function invalid(error: z.ZodError): HttpError {
  const fields = error.issues.map((issue) => ({
    field: issue.code === "unrecognized_keys" ? issue.keys.join(", ") : issue.path.join(".") || "(body)",
    message: issue.code === "unrecognized_keys" ? "unknown field" : issue.message,
  }));
  return new HttpError(400, `invalid request: ${fields.map((f) => f.field).join(", ")}`, fields);
}

/** The registry's HTTP API. Returns false when the path is not one of its routes. */
export function createHttpApi(core: RegistryCore, credentials: Credentials, metrics: RegistryMetrics) {
  const authorize = async (req: IncomingMessage, roles: readonly Role[]) => {
    const token = bearerToken(req.headers.authorization);
    if (!token) throw new HttpError(401, "missing bearer token");
    try {
      return await verifyToken(credentials, token, roles);
    } catch (error) {
      const message = error instanceof AuthError ? error.message : "invalid token";
      throw new HttpError(message.includes("cannot") ? 403 : 401, message);
    }
  };

  return async function handle(req: IncomingMessage, res: ServerResponse): Promise<boolean> {
    const url = new URL(req.url ?? "/", "http://registry");
    const path = url.pathname;
    try {
      if (path === "/healthz") {
        send(res, 200, { ok: true });
        return true;
      }
      if (path === "/readyz") {
        send(res, 200, { ready: true, workers: core.workers.size });
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
        const id = decodeURIComponent(jobMatch[1] as string);
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
    } catch (error) {
      if (error instanceof HttpError) {
        send(res, error.status, { error: error.message, ...(error.details ? { details: error.details } : {}) });
      } else {
        send(res, 500, { error: (error as Error).message });
      }
      return true;
    }
  };
}
