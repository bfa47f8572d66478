import { WebSocket } from "ws";
import { fromCallback } from "xstate";
import type { ConnectionInput, SocketCommand, SocketEvent } from "../../machines/connection.ts";
import type { Logger } from "../observability/logger.ts";
import { MAX_FRAME_BYTES, registryMessage } from "../protocol/registry.ts";

export interface RegistrySocketSettings {
  /** The registry's base URL (http(s):// or ws(s)://); the socket goes to <url>/agent. */
  registryUrl: string;
  /** A token for each connection attempt (minted anew, so reconnects survive token expiry). */
  token: () => Promise<string>;
  logger: Logger;
  maxFrameBytes?: number;
}

export function agentEndpoint(registryUrl: string): string {
  const url = new URL(registryUrl);
  if (url.protocol === "http:") url.protocol = "ws:";
  if (url.protocol === "https:") url.protocol = "wss:";
  url.pathname = `${url.pathname.replace(/\/+$/, "")}/agent`;
  url.search = "";
  return url.toString();
}

/**
 * The connection machine's `socket` actor: one WebSocket to the registry. Every inbound frame is
 * parsed with the protocol schema; a bad one becomes `socket.invalid` (logged, nothing else changes).
 */
export function createRegistrySocket(settings: RegistrySocketSettings) {
  const endpoint = agentEndpoint(settings.registryUrl);
  return fromCallback<SocketCommand, ConnectionInput, SocketEvent>(({ sendBack, receive }) => {
    let ws: WebSocket | undefined;
    let stopped = false;
    settings.token().then(
      (token) => {
        if (stopped) return;
        ws = new WebSocket(endpoint, {
          headers: { authorization: `Bearer ${token}` },
          maxPayload: settings.maxFrameBytes ?? MAX_FRAME_BYTES,
          perMessageDeflate: false,
          handshakeTimeout: 10_000,
        });
        ws.on("open", () => sendBack({ type: "socket.open" }));
        ws.on("unexpected-response", (_req, res) => {
          settings.logger.error({ status: res.statusCode, endpoint }, "registry refused the connection");
        });
        ws.on("message", (data, isBinary) => {
          if (isBinary) return sendBack({ type: "socket.invalid", error: "binary frame" });
          let raw: unknown;
          try {
            raw = JSON.parse(data.toString());
          } catch {
            return sendBack({ type: "socket.invalid", error: "frame is not valid JSON" });
          }
          const parsed = registryMessage.safeParse(raw);
          if (!parsed.success) {
            settings.logger.warn({ issues: parsed.error.issues.map((i) => i.message) }, "invalid frame from registry");
            return sendBack({ type: "socket.invalid", error: parsed.error.issues[0]?.message ?? "invalid" });
          }
          const message = parsed.data;
          sendBack({ type: `registry.${message.type}`, message } as SocketEvent);
        });
        ws.on("close", (code, reason) => sendBack({ type: "socket.closed", code, reason: reason.toString() }));
        ws.on("error", (error) => settings.logger.debug({ err: error.message }, "registry socket error"));
      },
      (error: Error) => {
        settings.logger.error({ err: error.message }, "could not get a token for the registry");
        sendBack({ type: "socket.closed", code: 4001, reason: "no token" });
      },
    );
    receive((command) => {
      if (!ws || ws.readyState !== WebSocket.OPEN) return;
      switch (command.type) {
        case "send":
          ws.send(JSON.stringify(command.message));
          break;
        case "send_ping":
          ws.send(JSON.stringify({ type: "ping", timestamp: Date.now() }));
          break;
        case "send_pong":
          ws.send(JSON.stringify({ type: "pong", timestamp: command.timestamp }));
          break;
      }
    });
    return () => {
      stopped = true;
      if (!ws) return;
      ws.removeAllListeners();
      ws.on("error", () => {});
      if (ws.readyState === WebSocket.OPEN) ws.close(1000, "worker closing link");
      else ws.terminate();
    };
  });
}
