import type { IncomingMessage } from "node:http";
import { WebSocket } from "ws";
import { fromCallback } from "xstate";
import type { ConnectionInput, SocketCommand, SocketEvent } from "../../machines/connection.ts";
import type { Logger } from "../observability/logger.ts";
import { MAX_FRAME_BYTES, registryMessage, type StatusUpdateMessage } from "../protocol/registry.ts";

export interface RegistrySocketSettings {
  /** The registry's base URL (http(s):// or ws(s)://); the socket goes to <url>/agent. */
  registryUrl: string;
  /** A token for each connection attempt (minted anew, so reconnects survive token expiry). */
  token: () => Promise<string>;
  logger: Logger;
  maxFrameBytes?: number;
  /**
   * How long one attempt may take to get a token and open the socket. Default: the connection's
   * registration deadline (`registrationTimeout`), so no phase of an attempt is unbounded.
   */
  connectTimeoutMs?: number;
  /** Adds what only the runtime knows (its processes' states, pids, memory) to each status update. */
  decorateStatus?: (message: StatusUpdateMessage) => StatusUpdateMessage;
}

/** Close codes the socket reports for attempts that never opened (4000–4999: application codes). */
export const CONNECT_TIMEOUT_CODE = 4008;
export const NO_TOKEN_CODE = 4001;
export const CONNECT_FAILED_CODE = 4000;
/** A refused upgrade is reported as 4000 + the HTTP status (4401, 4403, …). */
export const refusedCode = (status: number) => 4000 + Math.min(Math.max(status, 0), 999);

/** How much of a refusal's body becomes the reason (the registry's bodies are one short line). */
const MAX_REFUSAL_BODY = 512;

export function agentEndpoint(registryUrl: string): string {
  const url = new URL(registryUrl);
  if (url.protocol === "http:") url.protocol = "ws:";
  if (url.protocol === "https:") url.protocol = "wss:";
  url.pathname = `${url.pathname.replace(/\/+$/, "")}/agent`;
  url.search = "";
  return url.toString();
}

/**
 * The connection machine's `socket` actor: one WebSocket to the registry, one attempt. Every inbound
 * frame is parsed with the protocol schema; a bad one becomes `socket.invalid` (logged, nothing else
 * changes).
 *
 * Each actor instance is one socket generation. It reports `socket.closed` exactly once, whatever
 * ends the attempt: a close, a refused upgrade (401/403), the connect deadline, no token, or an
 * error of its own. After that, and after it is stopped, nothing it owns can send the machine
 * anything, so a late event of an old socket never reaches the next attempt. It never throws into
 * the machine: an actor in `error` would skip its cleanup and leave its socket open.
 */
export function createRegistrySocket(settings: RegistrySocketSettings) {
  const endpoint = agentEndpoint(settings.registryUrl);
  const { logger } = settings;
  return fromCallback<SocketCommand, ConnectionInput, SocketEvent>(({ sendBack, receive, input }) => {
    let ws: WebSocket | undefined;
    /** Stopped by the machine, or ended (socket.closed sent): this generation says nothing more. */
    let finished = false;
    let opened = false;
    let connectTimer: NodeJS.Timeout | undefined;

    const report = (event: SocketEvent) => {
      if (!finished) sendBack(event);
    };
    const dispose = () => {
      clearTimeout(connectTimer);
      const socket = ws;
      ws = undefined;
      if (!socket) return;
      socket.removeAllListeners();
      socket.on("error", () => {});
      if (socket.readyState === WebSocket.OPEN) socket.close(1000, "worker closing link");
      else socket.terminate();
    };
    /** Ends this generation: one socket.closed, then the socket is released. */
    const end = (code: number, reason: string) => {
      if (finished) return;
      sendBack({ type: "socket.closed", code, reason });
      finished = true;
      dispose();
    };

    const connectTimeoutMs = settings.connectTimeoutMs ?? input.timing.registrationTimeoutMs;
    connectTimer = setTimeout(() => {
      if (opened) return;
      logger.warn({ endpoint, timeoutMs: connectTimeoutMs }, "registry connection attempt timed out");
      end(CONNECT_TIMEOUT_CODE, `connecting timed out after ${connectTimeoutMs} ms`);
    }, connectTimeoutMs);

    const onRefused = (res: IncomingMessage) => {
      const status = res.statusCode ?? 0;
      let body = "";
      let settled = false;
      const settle = () => {
        if (settled) return;
        settled = true;
        const why = body.trim() || res.statusMessage || "no reason given";
        logger.error({ status, endpoint, reason: why }, "registry refused the connection");
        end(refusedCode(status), `registry refused the connection: ${status} ${why}`);
      };
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        if (body.length < MAX_REFUSAL_BODY) body += chunk.slice(0, MAX_REFUSAL_BODY - body.length);
        if (body.length >= MAX_REFUSAL_BODY) settle();
      });
      res.on("end", settle);
      res.on("close", settle);
      res.on("error", settle);
    };

    const open = (token: string) => {
      if (finished) return;
      const socket = new WebSocket(endpoint, {
        headers: { authorization: `Bearer ${token}` },
        maxPayload: settings.maxFrameBytes ?? MAX_FRAME_BYTES,
        perMessageDeflate: false,
        handshakeTimeout: connectTimeoutMs,
      });
      ws = socket;
      socket.on("open", () => {
        if (ws !== socket) return;
        opened = true;
        clearTimeout(connectTimer);
        report({ type: "socket.open" });
      });
      // With this listener ws leaves a refused upgrade to us: read the reason, end the attempt.
      socket.on("unexpected-response", (_req, res) => {
        if (ws === socket) onRefused(res);
        else res.resume();
      });
      socket.on("message", (data, isBinary) => {
        if (ws !== socket) return;
        if (isBinary) return report({ type: "socket.invalid", error: "binary frame" });
        let raw: unknown;
        try {
          raw = JSON.parse(data.toString());
        } catch {
          return report({ type: "socket.invalid", error: "frame is not valid JSON" });
        }
        const parsed = registryMessage.safeParse(raw);
        if (!parsed.success) {
          logger.warn({ issues: parsed.error.issues.map((i) => i.message) }, "invalid frame from registry");
          return report({ type: "socket.invalid", error: parsed.error.issues[0]?.message ?? "invalid" });
        }
        const message = parsed.data;
        report({ type: `registry.${message.type}`, message } as SocketEvent);
      });
      socket.on("close", (code, reason) => {
        if (ws === socket) end(code, reason.toString());
      });
      socket.on("error", (error) => logger.debug({ err: error.message }, "registry socket error"));
    };

    Promise.resolve()
      .then(() => settings.token())
      .then(
        (token) => {
          try {
            open(token);
          } catch (error) {
            logger.error({ err: (error as Error).message, endpoint }, "could not open a socket to the registry");
            end(CONNECT_FAILED_CODE, `could not connect: ${(error as Error).message}`);
          }
        },
        (error: Error) => {
          if (finished) return;
          logger.error({ err: error.message }, "could not get a token for the registry");
          end(NO_TOKEN_CODE, "no token");
        },
      );

    receive((command) => {
      const socket = ws;
      if (finished || !socket || socket.readyState !== WebSocket.OPEN) return;
      try {
        switch (command.type) {
          case "send": {
            const { message } = command;
            const decorated =
              message.type === "status_update" && settings.decorateStatus ? settings.decorateStatus(message) : message;
            socket.send(JSON.stringify(decorated));
            break;
          }
          case "send_ping":
            socket.send(JSON.stringify({ type: "ping", timestamp: Date.now() }));
            break;
          case "send_pong":
            socket.send(JSON.stringify({ type: "pong", timestamp: command.timestamp }));
            break;
        }
      } catch (error) {
        // Never throw into the machine: drop this connection and let the machine reconnect.
        logger.error({ err: (error as Error).message, command: command.type }, "could not send to the registry");
        end(CONNECT_FAILED_CODE, `send failed: ${(error as Error).message}`);
      }
    });

    return () => {
      finished = true;
      dispose();
    };
  });
}
