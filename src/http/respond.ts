import type { IncomingMessage, ServerResponse } from "node:http";
import type { z } from "zod";

/** The largest JSON body any route reads; longer bodies get a 413 before they are read. */
export const MAX_BODY_BYTES = 64 * 1024;

export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
  }
}

/**
 * Sends a JSON answer. An error answered before the request body was read closes the connection,
 * so a client cannot make the server swallow a body it already refused (an unauthenticated 50 MB
 * upload stops at the kernel's buffers instead of being read in full).
 */
export function send(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  const headers: Record<string, string> = {
    "content-type": "application/json; charset=utf-8",
    "cache-control": "no-store",
  };
  if (status >= 400 && !res.req.complete) headers.connection = "close";
  res.writeHead(status, headers);
  res.end(JSON.stringify(body));
}

export async function readJson(req: IncomingMessage): Promise<unknown> {
  const declared = Number(req.headers["content-length"] ?? 0);
  if (declared > MAX_BODY_BYTES) throw new HttpError(413, `request body over ${MAX_BODY_BYTES} bytes`);
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

/**
 * Answers an error thrown by a route: its own status for an HttpError, 500 for anything else (a
 * fault of ours, logged by the caller; its message is not sent, it may name internals).
 */
export function sendError(res: ServerResponse, error: unknown): void {
  if (error instanceof HttpError) {
    send(res, error.status, { error: error.message, ...(error.details ? { details: error.details } : {}) });
  } else {
    send(res, 500, { error: "internal error" });
  }
}
