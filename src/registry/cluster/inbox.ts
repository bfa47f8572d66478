import type { Redis } from "ioredis";

/** The consumer group every node's inbox is read through (each node is the one consumer of its own). */
export const INBOX_GROUP = "troupe";
/** Entries an inbox keeps at most (about: trimmed with `~`); a node reads and deletes them as they come. */
export const INBOX_LENGTH = 10_000;
/** How long one read waits for a message before it asks again (and notices a close). */
export const READ_BLOCK_MS = 500;
/** After a failed read (Redis unreachable), the next one waits this long. */
export const RETRY_MS = 250;
/**
 * A message read but not acknowledged for this long is taken again: it went to an earlier process
 * under this node id that died blocked on a read (one whose handler failed here is taken again at
 * once). Handlers take a store round trip, far below this.
 */
export const RECLAIM_IDLE_MS = 1_000;
/** How often the pending messages are looked at for ones to take again. */
export const RECLAIM_EVERY_MS = 500;

type Entry = [id: string, fields: string[]];

export interface InboxSettings {
  /** The stream, e.g. "troupe:inbox:node-a". */
  key: string;
  nodeId: string;
  /** A connection of its own: a blocking read holds it. */
  reader: Redis;
  /** The node's command connection, for acknowledgements. */
  commands: Redis;
  /** Resolves once the message is handled; a rejection leaves it unacknowledged, to be read again. */
  onMessage: (text: string) => Promise<void>;
  warn: (what: string) => (error: Error) => void;
}

/**
 * A registry node's inbox for hand-offs, cancels and adoptions: a Redis Stream read through a
 * consumer group. A message sent while the node is busy, slow or cut off from Redis waits in Redis
 * for it, instead of being lost as a pub/sub message would be; one its process received but had not
 * acknowledged when it crashed is read again by the next process under the same node id (its
 * pending entries come first). Delivery is at least once: every handler is idempotent.
 */
export class NodeInbox {
  #closed = false;

  constructor(private readonly settings: InboxSettings) {}

  /** Creates the stream and its group (reading from the start: messages sent before are kept). */
  async open(): Promise<void> {
    const { commands, key } = this.settings;
    try {
      await commands.xgroup("CREATE", key, INBOX_GROUP, "0", "MKSTREAM");
    } catch (error) {
      if (!(error as Error).message.includes("BUSYGROUP")) throw error;
    }
  }

  /** Reads until closed, in the background; failures are logged and retried. */
  run(): void {
    this.#loop().catch(this.settings.warn("node inbox"));
  }

  close(): void {
    this.#closed = true;
  }

  async #handle(fields: string[]): Promise<void> {
    const at = fields.indexOf("message");
    const text = at >= 0 ? fields[at + 1] : undefined;
    if (text !== undefined && !this.#closed) await this.settings.onMessage(text);
  }

  async #loop(): Promise<void> {
    const { warn } = this.settings;
    // At the start every pending message is taken (an earlier process under this id read it and
    // died); after that, only those left pending for RECLAIM_IDLE_MS.
    let reclaimIdleMs = 0;
    let lastReclaim = Number.NEGATIVE_INFINITY;
    while (!this.#closed) {
      try {
        let entries: Entry[] = [];
        if (Date.now() - lastReclaim >= RECLAIM_EVERY_MS) {
          entries = await this.#reclaim(reclaimIdleMs);
          lastReclaim = Date.now();
          reclaimIdleMs = RECLAIM_IDLE_MS;
        }
        if (entries.length === 0) entries = await this.#readNew();
        if (!(await this.#handleAll(entries))) {
          // A handler failed (the store was unreachable): its message is taken again after a pause.
          reclaimIdleMs = 0;
          lastReclaim = Number.NEGATIVE_INFINITY;
          await new Promise((resolve) => setTimeout(resolve, RETRY_MS).unref());
        }
      } catch (error) {
        if (this.#closed) return;
        warn("node inbox read")(error as Error);
        // Redis came back empty (restarted without its data): the group is to be made again.
        if ((error as Error).message.includes("NOGROUP")) await this.open().catch(warn("node inbox group"));
        await new Promise((resolve) => setTimeout(resolve, RETRY_MS).unref());
      }
    }
  }

  /** XREADGROUP: messages no one has read yet, waiting up to READ_BLOCK_MS for one. */
  async #readNew(): Promise<Entry[]> {
    const { reader, key, nodeId } = this.settings;
    const reply = (await reader.xreadgroup(
      "GROUP",
      INBOX_GROUP,
      nodeId,
      "COUNT",
      100,
      "BLOCK",
      READ_BLOCK_MS,
      "STREAMS",
      key,
      ">",
    )) as [string, Entry[]][] | null;
    return reply?.[0]?.[1] ?? [];
  }

  /** XAUTOCLAIM: pending messages idle this long, taken by this reader. */
  async #reclaim(minIdleMs: number): Promise<Entry[]> {
    const { commands, key, nodeId } = this.settings;
    const reply = (await commands.xautoclaim(key, INBOX_GROUP, nodeId, minIdleMs, "0-0", "COUNT", 100)) as [
      string,
      (Entry | null)[],
    ];
    // Entries deleted meanwhile come back as null (Redis 6.2) or not at all (7).
    return (reply[1] ?? []).filter((entry): entry is Entry => Array.isArray(entry) && Array.isArray(entry[1]));
  }

  /**
   * Hands each message to the node; the handled ones are acknowledged and deleted, the others stay
   * pending. False when one failed.
   */
  async #handleAll(entries: Entry[]): Promise<boolean> {
    if (entries.length === 0) return true;
    const { commands, key, warn } = this.settings;
    const outcomes = await Promise.allSettled(entries.map(([, fields]) => this.#handle(fields)));
    const handled = entries.filter((_, i) => outcomes[i]?.status === "fulfilled").map(([id]) => id);
    for (const outcome of outcomes) {
      if (outcome.status === "rejected") warn("node message (it will be taken again)")(outcome.reason as Error);
    }
    if (handled.length > 0) {
      await commands
        .multi()
        .xack(key, INBOX_GROUP, ...handled)
        .xdel(key, ...handled)
        .exec()
        .catch(warn("node inbox acknowledgement"));
    }
    return handled.length === entries.length;
  }
}
