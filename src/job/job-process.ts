import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import type { DestinationStream, Logger } from "pino";
import type { JobSpec } from "../../machines/shared.ts";
import { REDACTED_PATHS } from "../observability/redacted-paths.ts";
import { openTelemetryRegistered } from "../observability/tracing/registered.ts";
import { type ChildConfig, parseChildConfig, type ToParent, toChild, toErrorInfo } from "../protocol/ipc.ts";
import * as v from "../vendor/valibot.ts";
import { killEscapedDescendants } from "./descendant-sweep.ts";
import { installJobProcessHook } from "./hook.ts";
import { JobContext } from "./job-context.ts";
import type { WorkerJobDefinition } from "./job-definition.ts";
import { CHILD_DROPPED_LINES_FIELD, LOG_DROP_NOTICE_INTERVAL_MS, LogRateLimiter } from "./log-limits.ts";

/**
 * The job process proper, loaded by child-main once the orphan guards are up: load the agent
 * module, prewarm, report ready, run one job, end it (shutdown callbacks within closeTimeout), report
 * the outcome, exit.
 */

function send(message: ToParent): Promise<void> {
  return new Promise((resolve) => {
    if (!process.connected || !process.send) return resolve();
    process.send(message, undefined, {}, () => resolve());
  });
}

/** Sends without waiting for the channel to take it (log lines, pongs); a closed channel drops it. */
function post(message: ToParent): void {
  if (process.connected && process.send) process.send(message, undefined, {}, ignoreSendResult);
}

function ignoreSendResult(): void {}

/**
 * Child log lines travel to the worker over IPC, where they are tagged with job id and pid. The
 * worker enforces the job's log budget; applying it here too keeps a chatty job from flooding the
 * IPC channel with lines the worker would drop. What is dropped here is counted and reported to the
 * worker (at most once per interval, and at the end), which adds it to its own drop notice.
 */
class IpcLogStream implements DestinationStream {
  readonly #limiter = new LogRateLimiter();
  #reportTimer: NodeJS.Timeout | undefined;

  write(line: string): void {
    if (!this.#limiter.admit(Buffer.byteLength(line))) {
      this.#reportTimer ??= setTimeout(() => {
        this.#reportTimer = undefined;
        this.postDropped();
      }, LOG_DROP_NOTICE_INTERVAL_MS).unref();
      return;
    }
    try {
      const { level, msg, ...fields } = JSON.parse(line) as { level: number; msg?: string };
      post({ type: "log", level, msg: msg ?? "", fields });
    } catch {
      post({ type: "log", level: 30, msg: line.trimEnd() });
    }
  }

  /** Tells the worker how many lines were dropped here since the last report; resolves once it is sent. */
  reportDropped(): Promise<void> {
    const notice = this.#droppedNotice();
    return notice ? send(notice) : Promise.resolve();
  }

  postDropped(): void {
    const notice = this.#droppedNotice();
    if (notice) post(notice);
  }

  #droppedNotice(): ToParent | undefined {
    const dropped = this.#limiter.takeDropped();
    if (dropped === 0) return undefined;
    return { type: "log", level: 40, msg: "log lines dropped", fields: { [CHILD_DROPPED_LINES_FIELD]: dropped } };
  }
}

/**
 * The job's tracing (./job-tracing.ts with `@opentelemetry/api` under it), loaded while the process
 * is idle and only when the agent's module or prewarm registered an OpenTelemetry global: without
 * one there is nothing to record or propagate, and an idle process is about 3 MB lighter.
 */
type JobTracing = typeof import("./job-tracing.ts");
let tracing: JobTracing | undefined;

/**
 * The job process's pino logger, made on first use. Loading pino takes about 35 ms of a core, which
 * a cold start (a job waiting for this process) would wait for before its entrypoint: so the process
 * reports ready without it, and loads it once it has been idle for LOGGER_IDLE_LOAD_MS, or when a
 * job or the process first logs, whichever comes first.
 */
class LazyLogger {
  #logger: Logger | undefined;

  constructor(
    private readonly config: ChildConfig,
    private readonly stream: IpcLogStream,
  ) {}

  get loaded(): boolean {
    return this.#logger !== undefined;
  }

  get(): Logger {
    if (this.#logger) return this.#logger;
    // Synchronous on purpose: a job's `ctx.logger` is a getter. pino is CommonJS.
    const { pino } = createRequire(import.meta.url)("pino") as typeof import("pino");
    const { logLevel } = this.config;
    this.#logger = pino(
      { level: logLevel.toLowerCase(), redact: { paths: REDACTED_PATHS, censor: "[redacted]" }, base: {} },
      this.stream,
    );
    // The first child compiles pino's child path: done here, not on the job's first use.
    this.#logger.child({ jobId: "warm-up" });
    return this.#logger;
  }
}

/**
 * How long a ready process waits before loading its logger. A cold start's `start_job` follows
 * `ready` within milliseconds and runs first; a process still idle after this loads it then, so a
 * warm start finds it loaded.
 */
const LOGGER_IDLE_LOAD_MS = 50;

/** How long an ending job process waits for its printed output to reach the worker. */
const OUTPUT_FLUSH_CAP_MS = 1_000;

/** Resolves once what was written to `stream` left this process. */
function flushed(stream: NodeJS.WriteStream): Promise<void> {
  return new Promise((resolve) => {
    if (stream.writableLength === 0) resolve();
    else stream.write("", () => resolve());
  });
}

/**
 * Exits once stdout and stderr are flushed and the job's spans handed to their exporter (or after a
 * short cap): over the worker's pipe output is asynchronous, and process.exit() would silently drop
 * the job's last lines, and the last spans a batching exporter holds.
 */
async function exitWith(code: number): Promise<never> {
  let cap: NodeJS.Timeout | undefined;
  await Promise.race([
    Promise.all([flushed(process.stdout), flushed(process.stderr), tracing?.flushTraces()]),
    new Promise((resolve) => {
      cap = setTimeout(resolve, OUTPUT_FLUSH_CAP_MS);
    }),
  ]);
  clearTimeout(cap);
  process.exit(code);
}

export async function runJobProcess(): Promise<void> {
  let config: ChildConfig;
  try {
    config = parseChildConfig(process.argv[2]);
  } catch (error) {
    await send({ type: "init_failed", error: toErrorInfo(error) });
    return exitWith(1);
  }
  const logStream = new IpcLogStream();
  const logger = new LazyLogger(config, logStream);

  let definition: WorkerJobDefinition | undefined;
  installJobProcessHook({
    register: (d) => {
      definition ??= d;
    },
  });
  try {
    await import(pathToFileURL(config.agentModule).href);
    if (!definition) throw new Error(`${config.agentModule} did not call new WorkerJob(...).start()`);
    await definition.options.prewarm?.();
  } catch (error) {
    await send({ type: "init_failed", error: toErrorInfo(error) });
    return exitWith(1);
  }
  const runner = new JobRunner(definition, logger, logStream);
  await runner.prepare();

  process.on("message", (raw) => {
    const parsed = v.safeParse(toChild, raw);
    if (!parsed.success) {
      logger.get().warn({ issues: parsed.issues.length }, "ignored an invalid message from the worker");
      return;
    }
    const message = parsed.output;
    switch (message.type) {
      case "ping":
        post({ type: "pong", ts: message.ts });
        break;
      case "start_job":
        runner.start(message.job);
        break;
      case "shutdown":
        runner.guard(runner.end({ ok: true, reason: message.reason }));
        break;
    }
  });
  process.on("uncaughtException", (error) => runner.guard(runner.end({ ok: false, error: toErrorInfo(error) })));
  process.on("unhandledRejection", (error) => runner.guard(runner.end({ ok: false, error: toErrorInfo(error) })));
  await send({ type: "ready" });
  runner.loadLoggerWhenIdle();
}

type Result = { ok: true; reason?: string } | { ok: false; error: ReturnType<typeof toErrorInfo> };

/**
 * Messages like the ones a job's start brings, parsed once while the process is idle, so that the
 * parser's first (cold, not yet optimized) run is not on the job's start path.
 */
const WARM_UP_MESSAGES: unknown[] = [
  { type: "ping", ts: 0 },
  {
    type: "start_job",
    job: { jobId: "warm-up", agentName: "warm-up", roomId: "r", url: "ws://x", metadata: {}, roomOptions: {} },
  },
];

class JobRunner {
  /** Made while idle, attached to the job at its start. */
  #preparedCtx: JobContext | undefined;
  /** Why the JobContext could not be made (jobctx threw or returned something else): the job fails with it. */
  #ctxError: unknown;
  /** The job's context, once attached. */
  #ctx: JobContext | undefined;
  /** The job's spans, from its start. */
  #trace: import("./job-tracing.ts").JobTrace | undefined;
  #ending = false;
  #started = false;

  constructor(
    private readonly agent: WorkerJobDefinition,
    private readonly logger: LazyLogger,
    private readonly logStream: IpcLogStream,
  ) {}

  /**
   * Everything a job's start needs that does not depend on the job, done before the process
   * reports ready: the JobContext (jobctx's own, or made by its factory, which takes no job
   * argument) and the parsers' and logger's first runs. A factory that fails fails the job, as it
   * would when called at its start.
   */
  async prepare(): Promise<void> {
    if (openTelemetryRegistered()) tracing = await import("./job-tracing.ts");
    for (const message of WARM_UP_MESSAGES) v.safeParse(toChild, message);
    try {
      const { jobctx } = this.agent;
      const ctx = typeof jobctx === "function" ? await jobctx() : (jobctx ?? new JobContext());
      if (!JobContext.isJobContext(ctx)) throw new TypeError("jobctx must be a JobContext or return one");
      this.#preparedCtx = ctx;
    } catch (error) {
      this.#ctxError = error;
    }
  }

  /** Loads the logger once the process has been idle a while (see LazyLogger), unless a job came first. */
  loadLoggerWhenIdle(): void {
    setTimeout(() => {
      if (!this.#started && !this.#ending && !this.logger.loaded) this.logger.get();
    }, LOGGER_IDLE_LOAD_MS).unref();
  }

  /**
   * Starts the job in the same turn that received `start_job`: the `running` report is written to
   * the channel (it stays ahead of any later message) and the entrypoint is called without waiting
   * for the write to complete, a timer or a microtask.
   */
  start(job: JobSpec): void {
    if (this.#started || this.#ending) return;
    this.#started = true;
    const ctx = this.#preparedCtx;
    const jobTrace = tracing?.JobTrace.forJob(job);
    this.#trace = jobTrace;
    let returned: unknown;
    try {
      if (!ctx) throw this.#ctxError;
      ctx.attach({
        job,
        logger: () => this.logger.get().child({ jobId: job.jobId }),
        requestShutdown: (reason) => this.guard(this.end({ ok: true, reason })),
        ...(jobTrace ? { traceContext: jobTrace.context } : {}),
      });
      this.#ctx = ctx;
      post({ type: "job_status", status: "running" });
      // In the job's trace context: an agent's `startActiveSpan` (and what its awaits lead to) joins it.
      returned = jobTrace ? jobTrace.runEntrypoint(this.agent.entrypoint, this.agent, ctx) : this.agent.entrypoint(ctx);
    } catch (error) {
      jobTrace?.entrypointEnded(error);
      this.guard(this.end({ ok: false, error: toErrorInfo(error) }));
      return;
    }
    this.guard(this.#afterEntrypoint(ctx, returned));
  }

  async #afterEntrypoint(ctx: JobContext, returned: unknown): Promise<void> {
    try {
      await returned;
      this.#trace?.entrypointEnded();
      // An agent in its room lives on after its entrypoint set it up: the session ends the job.
      if (ctx.inRoom) {
        this.logger.get().debug({ jobId: ctx.jobId }, "entrypoint returned; the job stays in its room");
        return;
      }
      await this.end({ ok: true });
    } catch (error) {
      this.#trace?.entrypointEnded(error);
      await this.end({ ok: false, error: toErrorInfo(error) });
    }
  }

  /**
   * Runs a step of the job without awaiting it. Ending a job can itself fail (a shutdown callback
   * throwing past its guard, a broken channel): then the process exits non-zero, which the worker
   * records as a crash, rather than hang with a rejection nobody handles.
   */
  guard(work: Promise<void>): void {
    work.catch((error: unknown) => {
      this.logger.get().error({ err: toErrorInfo(error) }, "ending the job failed");
      process.exit(1);
    });
  }

  /** Ends the job once: shutdown callbacks, the outcome to the worker, then exit. */
  async end(result: Result): Promise<void> {
    if (this.#ending) return;
    this.#ending = true;
    if (!this.#started) return exitWith(0);
    const reason = result.ok ? (result.reason ?? "entrypoint returned") : "entrypoint_error";
    const shutdown = this.#trace?.shutdownStarted(reason);
    await send({ type: "job_status", status: "ending" });
    if (this.#ctx) {
      const ctx = this.#ctx;
      // Spans an agent starts in its shutdown callbacks join the shutdown span.
      const runCallbacks = () => ctx.runShutdownCallbacks(reason);
      const report = await (shutdown && tracing ? tracing.runIn(shutdown.context, runCallbacks) : runCallbacks());
      if (report.failed.length > 0 || report.timedOut > 0) {
        this.logger.get().warn({ jobId: ctx.job.jobId, ...report }, "shutdown callbacks did not all finish");
      }
      await ctx.leaveRoom().catch(() => {});
    }
    this.#killDescendants(reason);
    await this.logStream.reportDropped();
    // Ended before `done`: the job's spans are complete by the time the registry records its outcome.
    if (shutdown) tracing?.shutdownEnded(shutdown.span, result.ok, reason);
    await send({ type: "done", result });
    return exitWith(result.ok ? 0 : 1);
  }

  /**
   * The job is over, so is everything it started. Its process group is killed by the worker once this
   * process exited; what moved to another session or group is killed here, while this process still
   * knows its children (the worker sweeps again after the exit, for jobs that never get here).
   */
  #killDescendants(reason: string): void {
    const killed = killEscapedDescendants();
    if (killed === 0) return;
    const jobId = this.#ctx?.job.jobId;
    post({
      type: "log",
      level: 40,
      msg: `killed ${killed} descendant process(es) of job ${jobId} that left its process group (job ended: ${reason})`,
      fields: { jobId, killed },
    });
  }
}
