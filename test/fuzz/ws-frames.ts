import fc from "fast-check";
import WebSocket from "ws";
import { PROTOCOL_VERSION, workerMessage } from "../../src/protocol/registry.ts";
import { MAX_ROOM_FRAME_BYTES } from "../../src/protocol/room.ts";
import { clientFrame } from "../../src/protocol/room-requests.ts";
import { printable } from "./raw-http.ts";

/**
 * WebSocket frames for the fuzz, sent with the `ws` client over connections a valid token opened:
 * text (invalid JSON, JSON of any shape, the protocol's messages with fields usually plausible and
 * sometimes anything), binary, and oversized. Every frame is followed by a probe the server can only
 * answer with an error frame; frames are handled in order, so whatever arrives before the probe's
 * answer is the answer to the frame.
 */

export interface FuzzFrame {
  kind: "text" | "binary" | "oversized";
  /** Text (or, for binary, latin1 bytes); for "oversized", the JSON prefix before the padding. */
  data: string;
  /** "oversized": the frame's total size in bytes. */
  size: number;
}

const pick = <T>(...values: T[]) => fc.constantFrom(...values);
const weighted = <T>(...entries: [number, fc.Arbitrary<T>][]) =>
  fc.oneof({ withCrossShrink: true }, ...entries.map(([weight, arbitrary]) => ({ weight, arbitrary })));

const anyValue = weighted<unknown>(
  [3, fc.jsonValue({ maxDepth: 2 })],
  [1, pick("running", "completed", "failed", "cancelled", "available", "full", "draining", "offline", "", "message")],
  [1, fc.double()],
  [1, fc.integer()],
  [1, fc.string({ unit: "grapheme", maxLength: 20 })],
);
/** The valid value most of the time, anything now and then; sometimes the field is left out. */
const usually = <T>(valid: fc.Arbitrary<T>) => weighted<unknown>([6, valid as fc.Arbitrary<unknown>], [1, anyValue]);

function message(fields: Record<string, fc.Arbitrary<unknown>>, type: string): fc.Arbitrary<string> {
  return fc
    .record({ ...fields, type: weighted<unknown>([12, fc.constant(type)], [1, anyValue]) }, { requiredKeys: ["type"] })
    .map((value) => JSON.stringify(value));
}

const jobId = weighted<string>(
  [3, pick("j1", "j2", "j3", "j4", "j5")],
  [1, fc.string({ minLength: 1, maxLength: 12 })],
);

/** The worker protocol's messages (worker → registry). Agent names never match the test's own agent. */
export const registryShaped: fc.Arbitrary<string> = fc.oneof(
  message(
    {
      protocol_version: usually(fc.constant(PROTOCOL_VERSION)),
      worker_id: usually(weighted<string>([3, fc.constant("")], [1, fc.string({ maxLength: 10 })])),
      agent_name: usually(pick("fuzz-a", "fuzz-b", "fuzz-agent", "x")),
      capabilities: usually(fc.array(fc.string({ maxLength: 5 }), { maxLength: 3 })),
      load_threshold: usually(fc.double({ min: 0.01, max: 1, noNaN: true })),
      max_processes: usually(fc.integer({ min: 1, max: 4 })),
      jobs: usually(
        fc.array(
          fc.record(
            {
              job_id: usually(jobId),
              status: usually(pick("running", "completed", "failed", "cancelled")),
              reason: anyValue,
            },
            { requiredKeys: ["job_id", "status"] },
          ),
          { maxLength: 3 },
        ),
      ),
    },
    "register",
  ),
  message(
    {
      worker_id: usually(fc.string({ maxLength: 10 })),
      status: usually(pick("starting", "available", "full", "draining", "offline")),
      load: usually(fc.double({ min: 0, max: 1, noNaN: true })),
      job_count: usually(fc.integer({ min: 0, max: 4 })),
      idle_processes: usually(fc.integer({ min: 0, max: 4 })),
      slots: usually(
        fc.array(
          fc.record({ id: fc.string({ maxLength: 8 }), state: fc.string({ maxLength: 8 }), pid: fc.option(fc.nat()) }),
          {
            maxLength: 3,
          },
        ),
      ),
    },
    "status_update",
  ),
  message(
    { job_id: usually(jobId), available: usually(fc.boolean()), error: usually(fc.string({ maxLength: 10 })) },
    "availability_response",
  ),
  message(
    {
      job_id: usually(jobId),
      status: usually(pick("running", "completed", "failed", "cancelled")),
      reason: usually(fc.string({ maxLength: 10 })),
      error: usually(fc.record({ name: fc.string({ maxLength: 5 }), message: fc.string({ maxLength: 10 }) })),
    },
    "job_update",
  ),
  message({ timestamp: usually(fc.integer()) }, "ping"),
  message({ timestamp: usually(fc.integer()) }, "pong"),
);

/** The room protocol's messages (participant → hub). */
export const roomShaped: fc.Arbitrary<string> = fc.oneof(
  {
    weight: 6,
    arbitrary: message(
      {
        text: usually(fc.string({ unit: "grapheme", maxLength: 40 })),
        data: fc.jsonValue({ maxDepth: 3 }),
        to: usually(
          fc.array(weighted<string>([1, pick("agent-x", "p-1")], [1, fc.string({ maxLength: 8 })]), { maxLength: 4 }),
        ),
      },
      "message",
    ),
  },
  { weight: 1, arbitrary: message({ reason: usually(fc.string({ maxLength: 20 })) }, "end") },
  { weight: 1, arbitrary: message({ extra: anyValue }, "leave") },
  {
    weight: 1,
    arbitrary: fc
      .integer({ min: 16 * 1024, max: 17 * 1024 })
      .map((n) => JSON.stringify({ type: "message", text: "t".repeat(n) })),
  },
);

/** Frames: the protocol's messages, other JSON, non-JSON text, binary, oversized. */
export function fuzzFrame(shaped: fc.Arbitrary<string>, oversize: fc.Arbitrary<number>): fc.Arbitrary<FuzzFrame> {
  const text = (data: fc.Arbitrary<string>) => data.map((d): FuzzFrame => ({ kind: "text", data: d, size: 0 }));
  return weighted<FuzzFrame>(
    [10, text(shaped)],
    [4, text(fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)))],
    [
      3,
      text(
        weighted<string>(
          [2, fc.string({ maxLength: 40 })],
          [1, fc.string({ unit: "grapheme", maxLength: 40 })],
          [1, shaped.map((s) => s.slice(0, Math.max(0, s.length - 1)))],
          [1, pick("", "{", "[", "null", "{}", "[]", '{"type":"', "\u0000", '{"type":"ping","timestamp":1}x')],
        ),
      ),
    ],
    [
      2,
      weighted<string>(
        [2, fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b).toString("latin1"))],
        [1, shaped],
      ).map((data): FuzzFrame => ({ kind: "binary", data, size: 0 })),
    ],
    [
      1,
      fc
        .tuple(pick('{"type":"ping","timestamp":1,"pad":"', '{"type":"message","text":"', "[", "x"), oversize)
        .map(([data, size]): FuzzFrame => ({ kind: "oversized", data, size })),
    ],
  );
}

function materialize(frame: FuzzFrame): Buffer | string {
  if (frame.kind === "binary") return Buffer.from(frame.data, "latin1");
  if (frame.kind === "oversized") {
    const pad = Math.max(0, frame.size - Buffer.byteLength(frame.data) - 2);
    return `${frame.data}${"x".repeat(pad)}"}`;
  }
  return frame.data;
}

export function showFrame(frame: FuzzFrame): string {
  if (frame.kind === "oversized")
    return `oversized text frame of ${frame.size} bytes starting ${printable(frame.data)}`;
  return `${frame.kind} frame ${printable(frame.data, 400)}`;
}

function parses(text: string): { ok: true; value: unknown } | { ok: false } {
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch {
    return { ok: false };
  }
}

/** Garbage to the registry: binary, not JSON, not a worker message, or over its frame limit. */
export function registryGarbage(frame: FuzzFrame, maxFrameBytes: number): boolean {
  if (frame.kind !== "text") return true;
  if (Buffer.byteLength(frame.data) > maxFrameBytes) return true;
  const parsed = parses(frame.data);
  return !parsed.ok || !workerMessage.safeParse(parsed.value).success;
}

/** Garbage to a room hub, for a participant: what the hub must refuse with an error frame (or a close). */
export function roomGarbage(frame: FuzzFrame): boolean {
  if (frame.kind !== "text") return true;
  if (Buffer.byteLength(frame.data) > MAX_ROOM_FRAME_BYTES) return true;
  const parsed = parses(frame.data);
  if (!parsed.ok) return true;
  const checked = clientFrame.safeParse(parsed.value);
  return !checked.success || checked.data.type === "end";
}

// ------------------------------------------------------------------ connections

export interface Received {
  type?: unknown;
  code?: unknown;
  message?: unknown;
  [key: string]: unknown;
}

/** One client connection: every frame it gets, parsed, and its close. */
export class FuzzSocket {
  readonly frames: Received[] = [];
  closed: { code: number; reason: string } | undefined;
  readonly #waiters = new Set<() => void>();

  private constructor(readonly ws: WebSocket) {
    ws.on("message", (data, isBinary) => {
      let frame: Received;
      try {
        frame = JSON.parse(data.toString()) as Received;
      } catch {
        frame = { type: "(not JSON)", raw: printable(data.toString(), 200), binary: isBinary };
      }
      this.frames.push(frame);
      this.#wake();
    });
    ws.on("close", (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      this.#wake();
    });
    ws.on("error", () => {});
  }

  static open(url: string, headers: Record<string, string>, timeoutMs = 10_000): Promise<FuzzSocket> {
    const ws = new WebSocket(url, { headers, perMessageDeflate: false, maxPayload: 1 << 24 });
    return new Promise<FuzzSocket>((resolve, reject) => {
      const timer = setTimeout(() => {
        ws.terminate();
        reject(new Error(`opening ${url} timed out`));
      }, timeoutMs);
      ws.once("open", () => {
        clearTimeout(timer);
        resolve(new FuzzSocket(ws));
      });
      ws.once("unexpected-response", (_req, res) => {
        clearTimeout(timer);
        ws.terminate();
        reject(new Error(`upgrade to ${url} refused: ${res.statusCode}`));
      });
      ws.once("error", (error) => {
        clearTimeout(timer);
        reject(error);
      });
    });
  }

  get open(): boolean {
    return this.ws.readyState === WebSocket.OPEN && !this.closed;
  }

  send(frame: FuzzFrame): void {
    this.ws.send(materialize(frame), { binary: frame.kind === "binary" });
  }

  /** Resolves once `done(frames since from)` holds or the socket closed; false after the timeout. */
  until(from: number, done: (frames: Received[]) => boolean, timeoutMs: number): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      const check = () => {
        if (done(this.frames.slice(from)) || this.closed) {
          clearTimeout(timer);
          this.#waiters.delete(check);
          resolve(true);
        }
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(check);
        resolve(false);
      }, timeoutMs);
      this.#waiters.add(check);
      check();
    });
  }

  close(): void {
    this.ws.terminate();
  }

  #wake(): void {
    for (const waiter of [...this.#waiters]) waiter();
  }
}

/**
 * A fixed number of connections handed out one per check; a closed one is replaced on the next
 * acquire (a server may close a connection for garbage: that is an allowed answer).
 */
export class SocketPool {
  readonly #free: FuzzSocket[] = [];
  readonly #all = new Set<FuzzSocket>();
  readonly #uses = new Map<FuzzSocket, number>();
  readonly #waiting: ((socket: FuzzSocket | undefined) => void)[] = [];
  #size = 0;
  opened = 0;
  /** How the server closed connections: close code → count. */
  readonly closes = new Map<number, number>();

  /**
   * `maxUses`: a connection is replaced after this many checks (a room hub rate-limits each member;
   * a fresh member has a fresh allowance).
   */
  constructor(
    readonly open: () => Promise<FuzzSocket>,
    readonly limit: number,
    readonly maxUses = Number.POSITIVE_INFINITY,
  ) {}

  async acquire(): Promise<FuzzSocket> {
    let socket = this.#free.pop();
    if (!socket && this.#size >= this.limit) {
      socket = await new Promise<FuzzSocket | undefined>((resolve) => this.#waiting.push(resolve));
    }
    if (socket?.open && (this.#uses.get(socket) ?? 0) < this.maxUses) {
      this.#uses.set(socket, (this.#uses.get(socket) ?? 0) + 1);
      return socket;
    }
    if (socket) this.#forget(socket);
    this.#size++;
    try {
      const fresh = await this.open();
      this.opened++;
      this.#all.add(fresh);
      this.#uses.set(fresh, 1);
      return fresh;
    } catch (error) {
      this.#size--;
      throw error;
    }
  }

  release(socket: FuzzSocket): void {
    const waiter = this.#waiting.shift();
    if (waiter) waiter(socket);
    else this.#free.push(socket);
  }

  closeAll(): void {
    for (const socket of this.#all) socket.close();
    this.#all.clear();
    this.#free.length = 0;
  }

  #forget(socket: FuzzSocket): void {
    if (socket.closed) this.closes.set(socket.closed.code, (this.closes.get(socket.closed.code) ?? 0) + 1);
    socket.close();
    this.#uses.delete(socket);
    this.#all.delete(socket);
    this.#size--;
  }
}

export interface FrameVerdictOptions {
  /** The frame is garbage: the server owes an error frame (or a close). */
  garbage: boolean;
  /** The probe sent after the frame, and whether an arrived frame is its answer. */
  probe: FuzzFrame;
  isProbeAnswer(frame: Received, probesBefore: number): boolean;
  timeoutMs: number;
}

/**
 * Sends the frame and then the probe; waits for the probe's answer (or a close). Fails when the
 * server answers neither, or when garbage got no error frame before the probe's answer and the
 * connection stayed open.
 */
export async function sendAndJudge(socket: FuzzSocket, frame: FuzzFrame, options: FrameVerdictOptions) {
  const from = socket.frames.length;
  let answerIndex = -1;
  socket.send(frame);
  socket.send(options.probe);
  const answered = await socket.until(
    from,
    (frames) => {
      let probes = 0;
      for (const [i, f] of frames.entries()) {
        if (options.isProbeAnswer(f, probes)) {
          answerIndex = i;
          return true;
        }
        if (f.type === "error") probes++;
      }
      return false;
    },
    options.timeoutMs,
  );
  if (!answered) return `neither an answer to the probe nor a close within ${options.timeoutMs} ms`;
  if (socket.closed) return undefined;
  const before = socket.frames.slice(from, from + answerIndex);
  if (options.garbage && !before.some((f) => f.type === "error")) {
    return `garbage got no error frame (frames before the probe's answer: ${JSON.stringify(before).slice(0, 300)})`;
  }
  return undefined;
}
