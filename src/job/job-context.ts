import type { Logger } from "pino";
import type { JobSpec } from "../../machines/shared.ts";
import { RoomOptions, type RoomOptionsInput } from "../options.ts";

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
  logger: Logger;
  /** Asks the job process to end the job (runs the shutdown callbacks, reports, exits). */
  requestShutdown: (reason: string) => void;
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
export class JobContext {
  readonly roomOptions: RoomOptions;
  #attached: AttachedJob | undefined;
  #callbacks: RegisteredCallback[] = [];
  #shutdownReason: string | undefined;

  constructor(init: { roomOptions?: RoomOptions | RoomOptionsInput } = {}) {
    const roomOptions = init.roomOptions ?? {};
    this.roomOptions = roomOptions instanceof RoomOptions ? roomOptions : new RoomOptions(roomOptions);
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
    return this.#job().logger;
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

  /** Rooms arrive in a later release; until then every room API says so instead of failing silently. */
  connect(): Promise<never> {
    return Promise.reject(roomsUnavailable("connect()"));
  }

  get room(): never {
    throw roomsUnavailable("room");
  }

  waitForParticipant(): Promise<never> {
    return Promise.reject(roomsUnavailable("waitForParticipant()"));
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

function roomsUnavailable(api: string): JobContextError {
  return new JobContextError(
    `JobContext.${api} is not available: this troupe build has no room support yet, so a job cannot join a room`,
  );
}
