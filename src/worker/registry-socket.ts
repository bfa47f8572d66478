import type { IncomingMessage } from "node:http";
import { WebSocket } from "ws";
import { fromCallback } from "xstate";
import type { ConnectionInput, SocketCommand, SocketEvent } from "../../machines/connection.ts";
import type { Logger } from "../observability/logger.ts";
import { MAX_FRAME_BYTES, type StatusUpdateMessage } from "../protocol/registry.ts";
import { assignmentReceived, handoutAbandoned } from "./handout-tracing.ts";
import { LeaseClock, monotonicNow } from "./lease-clock.ts";
import { parseRegistryFrame, toWorkerMessage } from "./registry-wire.ts";

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

/** The close code reported when sending on an open socket fails (an application code). */
export const SEND_FAILED_CODE = 4000;

/** HTTP answers to the upgrade that mean the credentials are refused: retrying cannot help. */
const UNAUTHORIZED_STATUSES = new Set([401, 403]);

/** Plain words for the errors a connection attempt meets most, before the system's own message. */
const ERROR_WORDS: Record<string, string> = {
  ECONNREFUSED: "connection refused",
  ECONNRESET: "connection reset",
  ENOTFOUND: "host not found",
  EAI_AGAIN: "host not found (DNS lookup failed)",
  ETIMEDOUT: "connection timed out",
  EHOSTUNREACH: "host unreachable",
  ENETUNREACH: "network unreachable",
  EPIPE: "connection reset",
};

/** Why an attempt failed, in words first: "connection refused (connect ECONNREFUSED 127.0.0.1:7880)". */
export function describeConnectError(error: Error): string {
  const code = (error as NodeJS.ErrnoException).code;
  const words = code ? ERROR_WORDS[code] : undefined;
  return words ? `${words} (${error.message})` : error.message;
}

/** The registry URL as logs may show it: no credentials, no query. */
export function redactedUrl(registryUrl: string): string {
  try {
    const url = new URL(registryUrl);
    url.username = "";
    url.password = "";
    url.search = "";
    url.hash = "";
    return url.toString();
  } catch {
    return "(invalid URL)";
  }
}

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
 * The connection machine's `socket` actor: one WebSocket to the registry, one attempt. It translates
 * between the machine's commands and events and the wire protocol (registry-wire.ts). Every inbound
 * frame is parsed with the protocol schema; a bad one becomes `socket.invalid` (logged, nothing else
 * changes).
 *
 * Each actor instance is one socket generation. It reports exactly one ending event, whatever ends
 * the attempt: `socket.closed` when an open socket closes (or a send on it fails),
 * `socket.unauthorized` when the registry refuses the credentials (401/403 on the upgrade), and
 * `socket.failed` with the cause in words for an attempt that never opened (connection refused,
 * unreachable, another refused upgrade, the connect deadline, no token). After that, and after it is
 * stopped, nothing it owns can send the machine anything, so a late event of an old socket never
 * reaches the next attempt. It never throws into the machine: an actor in `error` would skip its
 * cleanup and leave its socket open. The connection machine's `link.*` events carry every cause to
 * the worker's log, so this actor logs at debug level only.
 */
export function createRegistrySocket(settings: RegistrySocketSettings) {
  const endpoint = agentEndpoint(settings.registryUrl);
  const { logger } = settings;
  return fromCallback<SocketCommand, ConnectionInput, SocketEvent>(({ sendBack, receive, input }) => {
    let ws: WebSocket | undefined;
    /** Stopped by the machine, or ended (socket.closed sent): this generation says nothing more. */
    let finished = false;
    let opened = false;
    /** The worker id the registry confirmed on this socket, for the hand-out spans of its assignments. */
    let registeredAs: string | undefined;
    const leaseClock = new LeaseClock();
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
    /** Ends this generation: one ending event, then the socket is released. */
    const finish = (
      event: Extract<SocketEvent, { type: "socket.closed" | "socket.failed" | "socket.unauthorized" }>,
    ) => {
      if (finished) return;
      sendBack(event);
      finished = true;
      dispose();
    };
    const end = (code: number, reason: string) => finish({ type: "socket.closed", code, reason });
    const fail = (error: string) => {
      logger.debug({ endpoint, err: error }, "registry connection attempt failed");
      finish({ type: "socket.failed", error });
    };
    /** The last error the socket reported before it opened: the cause of the close that follows. */
    let connectError: Error | undefined;

    const connectTimeoutMs = settings.connectTimeoutMs ?? input.timing.registrationTimeoutMs;
    connectTimer = setTimeout(() => {
      if (opened) return;
      fail(`connecting timed out after ${connectTimeoutMs} ms`);
    }, connectTimeoutMs);

    const onRefused = (res: IncomingMessage) => {
      const status = res.statusCode ?? 0;
      let body = "";
      let settled = false;
      const settle = () => {
        if (settled) return;
        settled = true;
        const why = body.trim() || res.statusMessage || "no reason given";
        logger.debug({ status, endpoint, reason: why }, "registry refused the connection");
        if (UNAUTHORIZED_STATUSES.has(status)) {
          finish({
            type: "socket.unauthorized",
            status,
            error: `registry refused the worker's credentials: ${status} ${why}`,
          });
        } else {
          fail(`registry refused the connection: ${status} ${why}`);
        }
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
        const { event, issues } = parseRegistryFrame(data.toString(), { clock: leaseClock, now: monotonicNow() });
        if (issues) logger.warn({ issues }, "invalid frame from registry");
        if (event.type === "registry.registered" && event.workerId) registeredAs = event.workerId;
        if (event.type === "registry.assigned") assignmentReceived(event.spec, registeredAs);
        report(event);
      });
      socket.on("close", (code, reason) => {
        if (ws !== socket) return;
        if (opened) end(code, reason.toString());
        else fail(connectError ? describeConnectError(connectError) : `connection closed before it opened (${code})`);
      });
      socket.on("error", (error) => {
        if (!opened) connectError = error;
        logger.debug({ err: error.message }, "registry socket error");
      });
    };

    Promise.resolve()
      .then(() => settings.token())
      .then(
        (token) => {
          try {
            open(token);
          } catch (error) {
            fail(`could not connect: ${(error as Error).message}`);
          }
        },
        (error: Error) => {
          if (finished) return;
          fail(`could not get a token for the registry: ${error.message}`);
        },
      );

    receive((command) => {
      const socket = ws;
      if (finished || !socket || socket.readyState !== WebSocket.OPEN) return;
      try {
        const now = monotonicNow();
        const message = toWorkerMessage(command, now);
        leaseClock.sent(message, now);
        if (message.type === "job_update" && message.status !== "running") {
          handoutAbandoned(message.job_id, message.status, message.reason);
        }
        const decorated =
          message.type === "status_update" && settings.decorateStatus ? settings.decorateStatus(message) : message;
        socket.send(JSON.stringify(decorated));
      } catch (error) {
        // Never throw into the machine: drop this connection and let the machine reconnect.
        logger.error({ err: (error as Error).message, command: command.type }, "could not send to the registry");
        end(SEND_FAILED_CODE, `send failed: ${(error as Error).message}`);
      }
    });

    return () => {
      finished = true;
      dispose();
    };
  });
}
