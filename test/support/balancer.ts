import type { AddressInfo } from "node:net";
import { connect, createServer, type Server, type Socket } from "node:net";

/**
 * A TCP load balancer on loopback, as registry nodes have in front of them in production: each new
 * connection goes to the next backend in turn, and to the one after when a backend refuses, so a
 * dead node's workers land on a live one when they reconnect.
 */
export class Balancer {
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  #next = 0;
  port = 0;

  constructor(readonly backends: number[]) {
    this.#server = createServer((client) => this.#route(client, 0));
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async listen(): Promise<this> {
    await new Promise<void>((resolve) => this.#server.listen(0, "127.0.0.1", resolve));
    this.port = (this.#server.address() as AddressInfo).port;
    return this;
  }

  #route(client: Socket, attempt: number): void {
    if (attempt >= this.backends.length) {
      client.destroy();
      return;
    }
    const port = this.backends[this.#next++ % this.backends.length] as number;
    const upstream = connect(port, "127.0.0.1");
    this.#sockets.add(client).add(upstream);
    let piped = false;
    upstream.once("connect", () => {
      piped = true;
      client.pipe(upstream).pipe(client);
    });
    upstream.on("error", () => {
      if (!piped) return this.#route(client, attempt + 1);
      client.destroy();
    });
    client.on("error", () => upstream.destroy());
    upstream.on("close", () => {
      this.#sockets.delete(upstream);
      if (piped) client.destroy();
    });
    client.on("close", () => {
      this.#sockets.delete(client);
      upstream.destroy();
    });
  }

  async close(): Promise<void> {
    for (const socket of this.#sockets) socket.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
