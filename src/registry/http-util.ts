import type { IncomingMessage, ServerResponse } from "node:http";
import type { z } from "zod";
import { AuthError, bearerToken, type Credentials, type Role, verifyToken } from "./auth.ts";

const MAX_BODY_BYTES = 64 * 1024;

export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
  }
}

export function send(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "content-type": "application/json; charset=utf-8", "cache-control": "no-store" });
  res.end(JSON.stringify(body));
}

export async function readJson(req: IncomingMessage): Promise<unknown> {
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

export function invalid(error: z.ZodError): HttpError {
  const fields = error.issues.map((issue) => ({
    field: issue.code === "unrecognized_keys" ? issue.keys.join(", ") : issue.path.join(".") || "(body)",
    message: issue.code === "unrecognized_keys" ? "unknown field" : issue.message,
  }));
  return new HttpError(400, `invalid request: ${fields.map((f) => f.field).join(", ")}`, fields);
}

/** Answers an error thrown by a route: its own status for an HttpError, 500 for anything else. */
export function sendError(res: ServerResponse, error: unknown): void {
  if (error instanceof HttpError) {
    send(res, error.status, { error: error.message, ...(error.details ? { details: error.details } : {}) });
  } else {
    send(res, 500, { error: (error as Error).message });
  }
}

/** Checks a request's bearer token for one of `roles`: 401 when missing or bad, 403 for a wrong role. */
export function bearerAuthorizer(credentials: Credentials) {
  return async (req: IncomingMessage, roles: readonly Role[]) => {
    const token = bearerToken(req.headers.authorization);
    if (!token) throw new HttpError(401, "missing bearer token");
    try {
      return await verifyToken(credentials, token, roles);
    } catch (error) {
      const message = error instanceof AuthError ? error.message : "invalid token";
      throw new HttpError(message.includes("cannot") ? 403 : 401, message);
    }
  };
}
