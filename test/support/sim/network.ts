import type { RegistryMessage, WorkerMessage } from "../../../src/protocol/registry.ts";
import type { SimClock } from "./clock.ts";
import type { Rng } from "./random.ts";

/** A registry node as the network reaches it: one incarnation of the node in one slot. */
export interface NodeEndpoint {
  readonly slot: number;
  readonly name: string;
  /** False once this incarnation crashed: nothing reaches it any more. */
  readonly up: boolean;
  accept(connectionId: string): void;
  frame(connectionId: string, message: WorkerMessage): void;
  closed(connectionId: string, departed: boolean): void;
}

/** What the worker's socket hears: exactly one of `failed` or `open`, then frames, then at most one `closed`. */
export interface WorkerSocketHandlers {
  open(): void;
  frame(message: RegistryMessage): void;
  closed(code: number, reason: string): void;
  failed(error: string): void;
}

/** The worker's end of one connection attempt. */
export interface WorkerSocket {
  readonly connectionId: string | undefined;
  send(message: WorkerMessage): void;
  /** The socket actor stopped: a close frame (1000) if open, a reset if still connecting. */
  close(): void;
}

type Item =
  | { kind: "accept"; at: number }
  | { kind: "open"; at: number }
  | { kind: "frame"; at: number; message: WorkerMessage | RegistryMessage }
  | { kind: "close"; at: number; code: number; reason: string };

interface Pipe {
  toNode: boolean;
  items: Item[];
  lastAt: number;
  timer: number | undefined;
  /** Held back until then (a stalled direction), besides any partition. */
  stalledUntil: number;
}

/** How long the node side waits for the worker to answer its close frame before it cuts the connection. */
export const CLOSE_GRACE_MS = 1_000;

export class Connection {
  /** The worker listens (it has not closed, been closed or died). */
  workerOpen = true;
  /** The worker saw it open (else an ending is a failed attempt, not a close). */
  workerOpened = false;
  nodeState: "connecting" | "open" | "closing" | "closed" = "connecting";
  graceTimer: number | undefined;
  readonly up: Pipe = { toNode: true, items: [], lastAt: 0, timer: undefined, stalledUntil: 0 };
  readonly down: Pipe = { toNode: false, items: [], lastAt: 0, timer: undefined, stalledUntil: 0 };

  constructor(
    readonly id: string,
    readonly workerSlot: number,
    readonly workerName: string,
    readonly node: NodeEndpoint,
    readonly handlers: WorkerSocketHandlers,
  ) {}

  get open(): boolean {
    return this.workerOpen || this.nodeState !== "closed";
  }
}

/**
 * The network between workers and registry nodes. Each connection is two ordered pipes (a WebSocket
 * never reorders its own frames; frames of different connections interleave freely), each frame
 * with its own latency. Faults: a partition between a worker and a node (connection attempts time
 * out; frames of open connections wait until it heals, then arrive in order, unless a side gave up
 * on the connection meanwhile), a stalled direction of one connection, a reset (both sides see the
 * connection close, frames in flight are lost), and the death of either end, loud (the kernel resets
 * its connections) or silent (a machine gone: the other side hears nothing).
 */
export class Network {
  readonly nodes: (NodeEndpoint | undefined)[] = [];
  readonly connections = new Map<string, Connection>();
  readonly #partitions = new Map<string, number>();
  #nextId = 0;
  /**
   * While faults are on, the chance that a frame is held up (a lost packet retransmitted, a busy
   * peer): it arrives up to 5 s late, and the frames behind it on its connection with it.
   */
  slowFrameChance = 0;

  constructor(
    private readonly clock: SimClock,
    private readonly rng: Rng,
    private readonly connectTimeoutMs: number,
    private readonly trace: (actor: string, event: string) => void,
  ) {}

  latency(): number {
    return this.rng.chance(0.08) ? this.rng.int(20, 150) : this.rng.int(1, 8);
  }

  // ------------------------------------------------------------------ faults

  partition(workerSlot: number, nodeSlot: number, until: number): void {
    const key = `${workerSlot}:${nodeSlot}`;
    this.#partitions.set(key, Math.max(this.#partitions.get(key) ?? 0, until));
  }

  stall(connection: Connection, toNode: boolean, until: number): void {
    const pipe = toNode ? connection.up : connection.down;
    pipe.stalledUntil = Math.max(pipe.stalledUntil, until);
  }

  healAll(): void {
    const now = this.clock.now();
    for (const [key, until] of this.#partitions) if (until > now) this.#partitions.set(key, now);
    for (const connection of this.connections.values()) {
      for (const pipe of [connection.up, connection.down]) {
        if (pipe.stalledUntil > now) pipe.stalledUntil = now;
        // A pump waiting for the old heal time runs now.
        if (pipe.timer !== undefined) {
          this.clock.clearTimeout(pipe.timer);
          pipe.timer = undefined;
          this.#schedule(connection, pipe);
        }
      }
    }
  }

  #partitionedUntil(workerSlot: number, nodeSlot: number): number {
    return this.#partitions.get(`${workerSlot}:${nodeSlot}`) ?? 0;
  }

  #blockedUntil(connection: Connection, pipe: Pipe): number {
    return Math.max(pipe.stalledUntil, this.#partitionedUntil(connection.workerSlot, connection.node.slot));
  }

  /** The connection is lost on the way: both ends hear a reset, frames in flight are gone. */
  reset(connection: Connection): void {
    this.trace("network", `reset ${connection.id} (${connection.workerName} ⇄ ${connection.node.name})`);
    this.#clear(connection.up);
    this.#clear(connection.down);
    this.#resetNodeSide(connection, false);
    this.#resetWorkerSide(connection, false);
  }

  /** A node incarnation died: loud, its connections are reset; silent, its workers hear nothing. */
  nodeDied(node: NodeEndpoint, loud: boolean): void {
    for (const connection of this.connections.values()) {
      if (connection.node !== node) continue;
      connection.nodeState = "closed";
      this.clock.clearTimeout(connection.graceTimer);
      this.#clear(connection.up);
      this.#clear(connection.down);
      if (loud) this.#resetWorkerSide(connection, true);
      this.#forgetIfDone(connection);
    }
  }

  /** A worker incarnation died: loud, the node sees its connections reset; silent, it hears nothing. */
  workerDied(connection: Connection, loud: boolean): void {
    connection.workerOpen = false;
    this.#clear(connection.up);
    this.#clear(connection.down);
    if (loud) this.#resetNodeSide(connection, true);
    this.#forgetIfDone(connection);
  }

  #resetNodeSide(connection: Connection, respectPartition: boolean): void {
    if (connection.nodeState === "closed") return;
    const from = respectPartition
      ? Math.max(this.clock.now(), this.#partitionedUntil(connection.workerSlot, connection.node.slot))
      : this.clock.now();
    this.clock.at(from + this.latency(), () => {
      if (connection.nodeState === "closed") return;
      const wasOpen = connection.nodeState !== "connecting";
      connection.nodeState = "closed";
      this.clock.clearTimeout(connection.graceTimer);
      this.#clear(connection.up);
      if (wasOpen && connection.node.up) connection.node.closed(connection.id, false);
      this.#forgetIfDone(connection);
    });
  }

  #resetWorkerSide(connection: Connection, respectPartition: boolean): void {
    if (!connection.workerOpen) return;
    const from = respectPartition
      ? Math.max(this.clock.now(), this.#partitionedUntil(connection.workerSlot, connection.node.slot))
      : this.clock.now();
    this.clock.at(from + this.latency(), () => {
      if (!connection.workerOpen) return;
      connection.workerOpen = false;
      this.#clear(connection.down);
      if (connection.workerOpened) connection.handlers.closed(1006, "");
      else connection.handlers.failed("connection reset");
      this.#forgetIfDone(connection);
    });
  }

  // ------------------------------------------------------------------ the worker's side

  /**
   * One connection attempt, to a node picked the way a load balancer would. Like the real socket, an
   * attempt that has not opened within the connect deadline fails (a partition, a node that died
   * silently); a node that is down refuses at once.
   */
  connect(workerSlot: number, workerName: string, handlers: WorkerSocketHandlers): WorkerSocket {
    const nodeSlot = this.rng.int(0, this.nodes.length - 1);
    const node = this.nodes[nodeSlot];
    if (!node?.up) {
      let stopped = false;
      this.clock.after(this.latency(), () => {
        if (!stopped) handlers.failed("connection refused");
      });
      return {
        connectionId: undefined,
        send: () => {},
        close: () => {
          stopped = true;
        },
      };
    }
    const connection = new Connection(`c${++this.#nextId}`, workerSlot, workerName, node, handlers);
    this.connections.set(connection.id, connection);
    this.trace(workerName, `connects to ${node.name} (${connection.id})`);
    this.#push(connection, connection.up, { kind: "accept", at: 0 });
    const cut = () => {
      connection.workerOpen = false;
      this.#clear(connection.down);
      // Open: a close frame after the frames already sent. Still connecting: the attempt is cut.
      const code = connection.workerOpened ? 1000 : 1006;
      this.#push(connection, connection.up, { kind: "close", at: 0, code, reason: "worker closing link" });
    };
    this.clock.after(this.connectTimeoutMs, () => {
      if (!connection.workerOpen || connection.workerOpened) return;
      cut();
      handlers.failed(`connecting timed out after ${this.connectTimeoutMs} ms`);
    });
    return {
      connectionId: connection.id,
      send: (message) => {
        if (!connection.workerOpen || !connection.workerOpened) return;
        this.#push(connection, connection.up, { kind: "frame", at: 0, message });
      },
      close: () => {
        if (connection.workerOpen) cut();
      },
    };
  }

  // ------------------------------------------------------------------ the node's side

  /** The transport's send: false when the connection is not open on the node's side. */
  sendToWorker(connectionId: string, message: RegistryMessage): boolean {
    const connection = this.connections.get(connectionId);
    if (connection?.nodeState !== "open") return false;
    this.#push(connection, connection.down, { kind: "frame", at: 0, message });
    return true;
  }

  /** The transport's close: a close frame, and the connection cut if the worker has not answered in time. */
  closeFromNode(connectionId: string, code: number, reason: string): void {
    const connection = this.connections.get(connectionId);
    if (!connection || connection.nodeState === "closed" || connection.nodeState === "connecting") return;
    if (connection.nodeState === "closing") {
      this.#terminate(connection);
      return;
    }
    connection.nodeState = "closing";
    this.#push(connection, connection.down, { kind: "close", at: 0, code, reason });
    connection.graceTimer = this.clock.after(CLOSE_GRACE_MS, () => this.#terminate(connection));
  }

  /** The node cuts the connection: what it had not delivered is lost; the worker hears a reset when it can. */
  #terminate(connection: Connection): void {
    if (connection.nodeState === "closed") return;
    connection.nodeState = "closed";
    this.clock.clearTimeout(connection.graceTimer);
    this.#clear(connection.down);
    this.#clear(connection.up);
    if (connection.node.up) connection.node.closed(connection.id, false);
    this.#resetWorkerSide(connection, true);
    this.#forgetIfDone(connection);
  }

  // ------------------------------------------------------------------ delivery

  #push(connection: Connection, pipe: Pipe, item: Item): void {
    const held = this.slowFrameChance > 0 && this.rng.chance(this.slowFrameChance) ? this.rng.int(200, 5_000) : 0;
    item.at = Math.max(this.clock.now() + this.latency() + held, pipe.lastAt);
    pipe.lastAt = item.at;
    pipe.items.push(item);
    this.#schedule(connection, pipe);
  }

  #clear(pipe: Pipe): void {
    pipe.items.length = 0;
    this.clock.clearTimeout(pipe.timer);
    pipe.timer = undefined;
  }

  #schedule(connection: Connection, pipe: Pipe): void {
    const head = pipe.items[0];
    if (pipe.timer !== undefined || !head) return;
    const at = Math.max(head.at, this.#blockedUntil(connection, pipe));
    pipe.timer = this.clock.at(at, () => {
      pipe.timer = undefined;
      const blocked = this.#blockedUntil(connection, pipe);
      if (blocked > this.clock.now()) {
        this.#schedule(connection, pipe);
        return;
      }
      const item = pipe.items.shift();
      if (item) {
        if (pipe.toNode) this.#toNode(connection, item);
        else this.#toWorker(connection, item);
      }
      this.#schedule(connection, pipe);
    });
  }

  #toNode(connection: Connection, item: Item): void {
    const node = connection.node;
    switch (item.kind) {
      case "accept":
        if (!node.up || connection.nodeState !== "connecting") {
          this.#resetWorkerSide(connection, false);
          return;
        }
        connection.nodeState = "open";
        node.accept(connection.id);
        this.#push(connection, connection.down, { kind: "open", at: 0 });
        return;
      case "frame":
        if (!node.up || connection.nodeState === "closed" || connection.nodeState === "connecting") return;
        node.frame(connection.id, item.message as WorkerMessage);
        return;
      case "close":
        if (connection.nodeState === "closed") return;
        connection.nodeState = "closed";
        this.clock.clearTimeout(connection.graceTimer);
        this.#clear(connection.down);
        if (node.up) node.closed(connection.id, item.code === 1000);
        this.#forgetIfDone(connection);
        return;
      case "open":
        return;
    }
  }

  #toWorker(connection: Connection, item: Item): void {
    if (!connection.workerOpen) return;
    switch (item.kind) {
      case "open":
        connection.workerOpened = true;
        connection.handlers.open();
        return;
      case "frame":
        connection.handlers.frame(item.message as RegistryMessage);
        return;
      case "close":
        connection.workerOpen = false;
        connection.handlers.closed(item.code, item.reason);
        // The worker answers the close frame; the node's close completes when the answer arrives.
        this.#push(connection, connection.up, { kind: "close", at: 0, code: item.code, reason: item.reason });
        return;
      case "accept":
        return;
    }
  }

  #forgetIfDone(connection: Connection): void {
    if (!connection.open) this.connections.delete(connection.id);
  }
}
