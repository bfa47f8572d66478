import { pathToFileURL } from "node:url";
import { type DestinationStream, pino } from "pino";
import type { JobSpec } from "../../machines/shared.ts";
import { REDACTED_PATHS } from "../observability/logger.ts";
import { type ChildConfig, childConfig, type ToParent, toChild, toErrorInfo } from "../protocol/ipc.ts";
import type { WorkerJobDefinition } from "../worker/worker-job-definition.ts";
import { installJobProcessHook } from "./hook.ts";
import { JobContext } from "./job-context.ts";

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

/** Child log lines travel to the worker over IPC, where they are tagged with job id and pid. */
function ipcLogStream(): DestinationStream {
  return {
    write(line: string) {
      try {
        const { level, msg, ...fields } = JSON.parse(line) as { level: number; msg?: string };
        void send({ type: "log", level, msg: msg ?? "", fields });
      } catch {
        void send({ type: "log", level: 30, msg: line.trimEnd() });
      }
    },
  };
}

async function exitWith(code: number): Promise<never> {
  process.exit(code);
}

export async function runJobProcess(): Promise<void> {
  let config: ChildConfig;
  try {
    config = childConfig.parse(JSON.parse(process.argv[2] ?? "{}"));
  } catch (error) {
    await send({ type: "init_failed", error: toErrorInfo(error) });
    return exitWith(1);
  }
  const logger = pino(
    { level: config.logLevel.toLowerCase(), redact: { paths: REDACTED_PATHS, censor: "[redacted]" }, base: {} },
    ipcLogStream(),
  );

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
  const agent = definition;
  const runner = new JobRunner(agent, logger);

  process.on("message", (raw) => {
    const parsed = toChild.safeParse(raw);
    if (!parsed.success) {
      logger.warn({ issues: parsed.error.issues.length }, "ignored an invalid message from the worker");
      return;
    }
    const message = parsed.data;
    switch (message.type) {
      case "ping":
        void send({ type: "pong", ts: message.ts });
        break;
      case "start_job":
        void runner.start(message.job);
        break;
      case "shutdown":
        void runner.end({ ok: true, reason: message.reason });
        break;
    }
  });
  process.on("uncaughtException", (error) => void runner.end({ ok: false, error: toErrorInfo(error) }));
  process.on("unhandledRejection", (error) => void runner.end({ ok: false, error: toErrorInfo(error) }));
  await send({ type: "ready" });
}

type Result = { ok: true; reason?: string } | { ok: false; error: ReturnType<typeof toErrorInfo> };

class JobRunner {
  #ctx: JobContext | undefined;
  #ending = false;
  #started = false;

  constructor(
    private readonly agent: WorkerJobDefinition,
    private readonly logger: pino.Logger,
  ) {}

  async start(job: JobSpec): Promise<void> {
    if (this.#started || this.#ending) return;
    this.#started = true;
    try {
      const { jobctx } = this.agent;
      const ctx = typeof jobctx === "function" ? await jobctx() : (jobctx ?? new JobContext());
      if (!JobContext.isJobContext(ctx)) throw new TypeError("jobctx must be a JobContext or return one");
      ctx.attach({
        job,
        logger: this.logger.child({ jobId: job.jobId }),
        requestShutdown: (reason) => void this.end({ ok: true, reason }),
      });
      this.#ctx = ctx;
      await send({ type: "job_status", status: "running" });
      await this.agent.entrypoint(ctx);
      // An agent in its room lives on after its entrypoint set it up: the session ends the job.
      if (ctx.inRoom) {
        this.logger.debug({ jobId: job.jobId }, "entrypoint returned; the job stays in its room");
        return;
      }
      await this.end({ ok: true });
    } catch (error) {
      await this.end({ ok: false, error: toErrorInfo(error) });
    }
  }

  /** Ends the job once: shutdown callbacks, the outcome to the worker, then exit. */
  async end(result: Result): Promise<void> {
    if (this.#ending) return;
    this.#ending = true;
    if (!this.#started) return exitWith(0);
    await send({ type: "job_status", status: "ending" });
    const reason = result.ok ? (result.reason ?? "entrypoint returned") : "entrypoint_error";
    if (this.#ctx) {
      const report = await this.#ctx.runShutdownCallbacks(reason);
      if (report.failed.length > 0 || report.timedOut > 0) {
        this.logger.warn({ jobId: this.#ctx.job.jobId, ...report }, "shutdown callbacks did not all finish");
      }
      await this.#ctx.leaveRoom().catch(() => {});
    }
    await send({ type: "done", result });
    return exitWith(result.ok ? 0 : 1);
  }
}
