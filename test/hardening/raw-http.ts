import { connect, type Socket } from "node:net";

export interface RawAnswer {
  /** The status line's code, or undefined when the server closed without answering. */
  status: number | undefined;
  text: string;
  /** Milliseconds from the first byte sent to the server closing the connection. */
  closedAfterMs: number;
}

/**
 * Sends raw bytes to a loopback server and collects what comes back until the server closes the
 * connection (or `timeoutMs` passes: then the socket is destroyed and `status` is what arrived).
 */
export function rawRequest(port: number, bytes: string | Buffer, timeoutMs = 5_000): Promise<RawAnswer> {
  return new Promise((resolve) => {
    const started = performance.now();
    const chunks: Buffer[] = [];
    const socket: Socket = connect(port, "127.0.0.1", () => socket.write(bytes));
    const finish = () => {
      clearTimeout(timer);
      const text = Buffer.concat(chunks).toString("latin1");
      const match = /^HTTP\/1\.1 (\d{3})/.exec(text);
      resolve({ status: match ? Number(match[1]) : undefined, text, closedAfterMs: performance.now() - started });
    };
    const timer = setTimeout(() => socket.destroy(), timeoutMs);
    socket.on("data", (chunk) => chunks.push(chunk));
    socket.on("error", () => {});
    socket.on("close", finish);
  });
}

/** A WebSocket upgrade request for `target`, with a valid key and optional extra header lines. */
export function upgradeRequest(target: string, extraHeaders: string[] = []): string {
  return [
    `GET ${target} HTTP/1.1`,
    "Host: 127.0.0.1",
    "Connection: Upgrade",
    "Upgrade: websocket",
    "Sec-WebSocket-Version: 13",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ...extraHeaders,
    "",
    "",
  ].join("\r\n");
}
