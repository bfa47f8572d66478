import { randomUUID } from "node:crypto";
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { type RawData, type WebSocket, WebSocketServer } from "ws";
import { AuthError, bearerToken, type Credentials, verifyToken } from "../auth/tokens.ts";
import { HttpError } from "../http/respond.ts";
import type { Logger } from "../observability/logger.ts";
import { type RegistryMessage, workerMessage } from "../protocol/registry.ts";
import type { WorkerTransport } from "./core/ports.ts";
import type { RegistryCore } from "./core/registry-core.ts";
import type { RegistryMetrics } from "./metrics.ts";

/** How long a closing registry waits for each worker socket to answer its close frame. */
const CLOSE_GRACE_MS = 1_000;
const KNOWN_TYPES = ["register", "status_update", "availability_response", "job_update", "ping", "pong"];

/**
 * The registry's WebSocket endpoint for workers (`/agent`): authenticates the upgrade (worker role)
 * before any WebSocket exists, gives each connection an id, parses every frame against the protocol
 * (bad frames get an error frame and change nothing), hands the rest to the core, and carries out
 * the core's sends and closes. It also runs the core's liveness sweep on a timer.
 */
export class WorkerGateway implements WorkerTransport {
  readonly #wss: WebSocketServer;
  readonly #sockets = new Map<string, WebSocket>();
  #core: RegistryCore | undefined;
  #sweepTimer: NodeJS.Timeout | undefined;
  #closing = false;

  constructor(
    private readonly credentials: Credentials,
    private readonly logger: Logger,
    private readonly metrics: RegistryMetrics,
    maxFrameBytes: number,
  ) {
    this.#wss = new WebSocketServer({ noServer: true, maxPayload: maxFrameBytes, perMessageDeflate: false });
  }

  /** Connects the core and starts its liveness sweep: a fifth of the ping interval, at most 1 s. */
  attach(core: RegistryCore, pingIntervalMs: number): void {
    this.#core = core;
    const sweepMs = Math.max(10, Math.min(1_000, pingIntervalMs / 5));
    this.#sweepTimer = setInterval(() => core.sweep(), sweepMs);
    this.#sweepTimer.unref();
  }

  get connections(): number {
    return this.#sockets.size;
  }

  async handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const token = bearerToken(req.headers.authorization);
    if (!token) throw new HttpError(401, "missing bearer token");
    try {
      await verifyToken(this.credentials, token, ["worker"]);
    } catch (error) {
      const message = error instanceof AuthError ? error.message : "invalid token";
      throw new HttpError(message.includes("cannot") ? 403 : 401, message);
    }
    if (this.#closing || !this.#core) throw new HttpError(503, "registry is shutting down");
    this.#wss.handleUpgrade(req, socket, head, (ws) => this.#accept(ws));
  }

  send(connectionId: string, message: RegistryMessage): boolean {
    const ws = this.#sockets.get(connectionId);
    if (!ws || ws.readyState !== ws.OPEN) return false;
    ws.send(JSON.stringify(message), (error) => {
      if (error) this.logger.debug({ connectionId, err: error.message }, "send to worker failed");
    });
    return true;
  }

  /** Closes with a close frame; a peer that does not answer it (a dead link) is cut after a grace. */
  close(connectionId: string, code: number, reason: string): void {
    const ws = this.#sockets.get(connectionId);
    if (!ws) return;
    if (ws.readyState !== ws.OPEN) {
      ws.terminate();
      return;
    }
    ws.close(code, reason);
    setTimeout(() => ws.terminate(), CLOSE_GRACE_MS).unref();
  }

  /** Cuts a connection without a close handshake (what a dead network does). */
  terminate(connectionId: string): void {
    this.#sockets.get(connectionId)?.terminate();
  }

  #accept(ws: WebSocket): void {
    const core = this.#core as RegistryCore;
    const id = `c-${randomUUID()}`;
    this.#sockets.set(id, ws);
    ws.on("message", (data: RawData, isBinary: boolean) => this.#onFrame(core, id, ws, data, isBinary));
    ws.on("close", (code: number) => {
      this.#sockets.delete(id);
      core.connectionClosed(id, code === 1000);
    });
    ws.on("error", (error) => this.logger.debug({ err: error.message }, "worker socket error"));
    core.connectionOpened(id);
  }

  #onFrame(core: RegistryCore, id: string, ws: WebSocket, data: RawData, isBinary: boolean): void {
    if (this.#closing) return;
    if (isBinary) {
      this.#error(ws, "binary frames are not part of the protocol", "bad_frame");
      return;
    }
    let raw: unknown;
    try {
      raw = JSON.parse(data.toString());
    } catch {
      this.#error(ws, "frame is not valid JSON", "bad_json");
      return;
    }
    const parsed = workerMessage.safeParse(raw);
    if (!parsed.success) {
      const type = (raw as { type?: unknown } | null)?.type;
      if (typeof type !== "string" || !KNOWN_TYPES.includes(type)) {
        this.#error(ws, `unknown message type ${JSON.stringify(type ?? null)}`, "unknown_type");
        return;
      }
      const fields = parsed.error.issues.map((i) => `${i.path.join(".") || "(message)"} (${i.message})`).join(", ");
      this.#error(ws, `invalid ${type}: bad fields ${fields}`.slice(0, 1_000), "invalid_message");
      return;
    }
    core.frame(id, parsed.data);
  }

  #error(ws: WebSocket, message: string, code: string): void {
    this.metrics.protocolErrors.inc({ code });
    if (ws.readyState === ws.OPEN) ws.send(JSON.stringify({ type: "error", message, code }));
  }

  /** Every socket gets a close frame (1001) and the time to answer it; whatever did not is cut. */
  async shutdown(): Promise<void> {
    this.#closing = true;
    clearInterval(this.#sweepTimer);
    await Promise.all(
      [...this.#wss.clients].map(
        (ws) =>
          new Promise<void>((resolve) => {
            if (ws.readyState === ws.CLOSED) return resolve();
            const timer = setTimeout(() => {
              ws.terminate();
              resolve();
            }, CLOSE_GRACE_MS);
            ws.once("close", () => {
              clearTimeout(timer);
              resolve();
            });
            ws.close(1001, "registry shutting down");
          }),
      ),
    );
    await new Promise<void>((resolve) => this.#wss.close(() => resolve()));
  }
}
