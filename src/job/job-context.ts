import { createRequire } from "node:module";
import type { Context } from "@opentelemetry/api";
import type { Logger } from "pino";
import type { JobSpec } from "../../machines/shared.ts";
import { RoomOptions, type RoomOptionsInput } from "../options.ts";
import type { ParticipantInfo } from "../protocol/room.ts";
import type { RoomConnection } from "../room/client.ts";

export type ShutdownCallback = (reason: string) => unknown | Promise<unknown>;

export interface ShutdownCallbackOptions {
  /** This callback's own deadline in seconds; all callbacks together still end within closeTimeout. */
  timeout?: number;
}

export interface ShutdownReport {
  reason: string;
  ran: number;
  failed: { name: string; message: string }[];
  timedOut: number;
}

export class JobContextError extends Error {
  override readonly name = "JobContextError";
}

interface AttachedJob {
  job: JobSpec;
  /** Makes the job's logger, on its first use: a job that never logs never pays for it. */
  logger: () => Logger;
  /** Asks the job process to end the job (runs the shutdown callbacks, reports, exits). */
  requestShutdown: (reason: string) => void;
  /** The job's trace, with its `troupe.entrypoint` span active. */
  traceContext?: Context;
}

interface RegisteredCallback {
  callback: ShutdownCallback;
  timeoutMs: number | undefined;
}

/**
 * What an entrypoint gets: the job's id, metadata and room options, a logger bound to the job, and
 * shutdown callbacks. Created by the user (often once, at module level); the job process attaches
 * the job to it before the entrypoint runs.
 */
/** Marks JobContexts across module instances (an agent loaded as CommonJS gets its own copy of troupe). */
const BRAND = Symbol.for("troupe.JobContext");

/**
 * OpenTelemetry's root context, for a job traced by nothing. Loaded on first use: a job process
 * where nothing registered an OpenTelemetry global never loads the API (about 3 MB per idle process).
 */
function rootContext(): Context {
  const api = createRequire(import.meta.url)("@opentelemetry/api") as typeof import("@opentelemetry/api");
  return api.ROOT_CONTEXT;
}

export class JobContext {
  readonly [BRAND] = true;
  readonly roomOptions: RoomOptions;
  #attached: AttachedJob | undefined;
  #logger: Logger | undefined;
  #callbacks: RegisteredCallback[] = [];
  #shutdownReason: string | undefined;
  #room: RoomConnection | undefined;
  #connecting: Promise<RoomConnection> | undefined;
  #stopSupervising: (() => void) | undefined;

  constructor(init: { roomOptions?: RoomOptions | RoomOptionsInput } = {}) {
    const roomOptions = init.roomOptions ?? {};
    this.roomOptions = roomOptions instanceof RoomOptions ? roomOptions : new RoomOptions(roomOptions);
  }

  /** True for a JobContext from any copy of troupe loaded in this process. */
  static isJobContext(value: unknown): value is JobContext {
    return typeof value === "object" && value !== null && (value as Record<symbol, unknown>)[BRAND] === true;
  }

  /** @internal Called by the job process before the entrypoint runs. */
  attach(attached: AttachedJob): void {
    if (this.#attached) throw new JobContextError("this JobContext already belongs to a job");
    this.#attached = attached;
  }

  #job(): AttachedJob {
    if (!this.#attached) {
      throw new JobContextError("this JobContext has no job yet: it is attached when the job starts in its process");
    }
    return this.#attached;
  }

  get jobId(): string {
    return this.#job().job.jobId;
  }

  get metadata(): Record<string, unknown> {
    return this.#job().job.metadata ?? {};
  }

  /** The job's assignment as the worker received it (room id, agent name, limits). */
  get job(): Readonly<JobSpec> {
    return this.#job().job;
  }

  get logger(): Logger {
    const attached = this.#job();
    this.#logger ??= attached.logger();
    return this.#logger;
  }

  /**
   * The job's OpenTelemetry context: the trace the dispatch started (or continued from the caller's
   * `traceparent`), with the job's `troupe.entrypoint` span active. The entrypoint already runs in
   * it, so `tracer.startActiveSpan(...)` joins the trace; pass it explicitly where the active context
   * is lost (callbacks of libraries that do not propagate it): `tracer.startSpan(name, {}, ctx.traceContext)`.
   * Without a registered TracerProvider it carries the trace ids through and records nothing.
   */
  get traceContext(): Context {
    return this.#job().traceContext ?? rootContext();
  }

  /** Set once the job is ending; the reason it ends with. */
  get shutdownReason(): string | undefined {
    return this.#shutdownReason;
  }

  /**
   * Runs when the job ends, last added first. With `timeout` (seconds) the callback is abandoned after
   * that long; all of them together must finish within closeTimeout or the worker kills the process
   * and the job fails with close_timeout.
   */
  addShutdownCallback(callback: ShutdownCallback, options: ShutdownCallbackOptions = {}): void {
    if (typeof callback !== "function") throw new JobContextError("addShutdownCallback needs a function");
    if (options.timeout !== undefined && !(options.timeout > 0)) {
      throw new JobContextError("addShutdownCallback: timeout must be a positive number of seconds");
    }
    this.#callbacks.push({
      callback,
      timeoutMs: options.timeout === undefined ? undefined : Math.round(options.timeout * 1000),
    });
  }

  /** Ends the job: the shutdown callbacks run, the job reports completed with this reason, the process exits. */
  shutdown(reason = "requested"): void {
    this.#job().requestShutdown(reason);
  }

  /**
   * Joins the job's room as its agent participant and returns it. The room id, token and hub come
   * with the job (from the registry's assignment, or from the worker in local mode); RoomOptions
   * decide when the session ends by itself: `sessionTimeoutSeconds` after the last participant left
   * (with `autoEndSession`), or `noParticipantTimeoutSeconds` when nobody joins. The job then ends
   * with that reason (`session_ended`, `no_participant`, `room_ended`). Calling it again returns the
   * same room.
   */
  connect(options: { timeout?: number } = {}): Promise<RoomConnection> {
    this.#connecting ??= this.#join(options.timeout ?? 10);
    return this.#connecting;
  }

  async #join(timeoutSeconds: number): Promise<RoomConnection> {
    const { job, requestShutdown } = this.#job();
    const { logger } = this;
    if (!job.roomId || !job.roomToken || !job.url) {
      throw new JobContextError(
        `job ${job.jobId} has no room: its assignment carried no ${[
          !job.roomId && "room id",
          !job.roomToken && "room token",
          !job.url && "room hub url",
        ]
          .filter(Boolean)
          .join(", ")}`,
      );
    }
    const options = this.effectiveRoomOptions();
    // Loaded on the first connect: a job process that never joins a room never loads the client.
    const [{ RoomConnection }, { superviseSession }] = await Promise.all([
      import("../room/client.ts"),
      import("./room-session.ts"),
    ]);
    const room = await RoomConnection.connect(job.url, job.roomId, job.roomToken, {
      name: options.name,
      timeoutMs: Math.round(timeoutSeconds * 1000),
    });
    this.#room = room;
    room.on("error", (error) => logger.warn({ err: error.message, roomId: room.id }, "room error"));
    this.#stopSupervising = superviseSession(room, options, (reason, detail) => {
      logger.info({ roomId: room.id, reason, ...(detail ? { detail } : {}) }, "room session ended");
      requestShutdown(reason);
    });
    logger.info({ roomId: room.id, participants: room.others().length }, "joined the room");
    return room;
  }

  /** RoomOptions of this job: the context's own, with what the dispatch asked for on top. */
  effectiveRoomOptions(): RoomOptions {
    const requested = this.#attached?.job.roomOptions;
    if (!requested || Object.keys(requested).length === 0) return this.roomOptions;
    try {
      return new RoomOptions({ ...this.roomOptions.toJSON(), ...requested } as RoomOptionsInput);
    } catch (error) {
      if (this.#attached)
        this.logger.warn({ err: (error as Error).message }, "ignored the dispatch's invalid room options");
      return this.roomOptions;
    }
  }

  /** The room joined by `connect()`. */
  get room(): RoomConnection {
    this.#job();
    if (!this.#room) throw new JobContextError("not in a room yet: call `await ctx.connect()` first");
    return this.#room;
  }

  /** True while the job is in its room: its session, not its entrypoint, decides when the job ends. */
  get inRoom(): boolean {
    return this.#room !== undefined && this.#room.endedReason === undefined;
  }

  /**
   * Resolves with the first participant (not an agent) in the room, now or when one joins; rejects
   * after `timeout` seconds or when the room ends first. Connects first when needed.
   */
  async waitForParticipant(options: { timeout?: number } = {}): Promise<ParticipantInfo> {
    const room = await this.connect();
    return room.waitForParticipant(
      options.timeout === undefined ? {} : { timeoutMs: Math.round(options.timeout * 1000) },
    );
  }

  /** @internal Leaves the room once the shutdown callbacks ran (they may still talk in it). */
  async leaveRoom(): Promise<void> {
    this.#stopSupervising?.();
    const room = this.#room;
    if (room && room.endedReason === undefined) await room.leave();
  }

  /**
   * @internal Runs every shutdown callback once, newest first. A callback given its own timeout is
   * abandoned after it; the others have no deadline here: the worker enforces closeTimeout for all of
   * them together by killing the process, so a callback that overruns is a kill (close_timeout),
   * never a success that raced the worker's clock.
   */
  async runShutdownCallbacks(reason: string): Promise<ShutdownReport> {
    this.#shutdownReason ??= reason;
    const report: ShutdownReport = { reason, ran: 0, failed: [], timedOut: 0 };
    const callbacks = this.#callbacks.reverse();
    this.#callbacks = [];
    for (const { callback, timeoutMs } of callbacks) {
      report.ran++;
      let timer: NodeJS.Timeout | undefined;
      const deadlines: Promise<"timeout">[] =
        timeoutMs === undefined
          ? []
          : [
              new Promise<"timeout">((resolve) => {
                timer = setTimeout(() => resolve("timeout"), timeoutMs);
              }),
            ];
      try {
        const result = await Promise.race([Promise.resolve().then(() => callback(reason)), ...deadlines]);
        if (result === "timeout") report.timedOut++;
      } catch (error) {
        const e = error instanceof Error ? error : new Error(String(error));
        report.failed.push({ name: e.name, message: e.message });
      } finally {
        clearTimeout(timer);
      }
    }
    return report;
  }
}
