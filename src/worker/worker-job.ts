import { fileURLToPath } from "node:url";
import { jobProcessHook } from "../job/hook.ts";
import type { Entrypoint, JobContextFactory, WorkerJobDefinition } from "../job/job-definition.ts";
import type { Options } from "../options.ts";
import { withLauncherOverrides } from "./launcher.ts";

export interface WorkerJobInit {
  entrypoint: Entrypoint;
  /** The JobContext every job gets, or a function that makes one per job. */
  jobctx?: JobContextFactory;
  options: Options;
  /**
   * The module job processes import to find this WorkerJob. Defaults to the module that called
   * `new WorkerJob(...)`; pass `import.meta.url` when that guess is wrong (e.g. a bundled build).
   */
  agentModule?: string;
}

export interface StartSettings {
  /** End the process with the worker's exit code when it stops (default true). */
  exitProcess?: boolean;
}

const ourSources = fileURLToPath(new URL("../", import.meta.url));

/** The first file on the stack outside troupe itself: the agent module that constructed the WorkerJob. */
function callerModule(): string | undefined {
  const original = Error.prepareStackTrace;
  try {
    Error.prepareStackTrace = (_, frames) => frames;
    const frames = new Error().stack as unknown as NodeJS.CallSite[];
    for (const frame of frames) {
      const name = frame.getFileName();
      if (!name || name.startsWith("node:")) continue;
      const path = name.startsWith("file:") ? fileURLToPath(name) : name;
      if (!path.startsWith(ourSources) && !path.includes("node_modules")) return path;
    }
  } finally {
    Error.prepareStackTrace = original;
  }
  return process.argv[1];
}

/**
 * An agent and how to run it. `start()` starts a worker (pool, HTTP server, and the registry link
 * when `register` is true); in a job process the same call only hands the agent to the process.
 */
export class WorkerJob {
  readonly definition: WorkerJobDefinition;

  constructor(init: WorkerJobInit) {
    if (typeof init.entrypoint !== "function") throw new TypeError("WorkerJob: entrypoint must be a function");
    const agentModule = init.agentModule
      ? init.agentModule.startsWith("file:")
        ? fileURLToPath(init.agentModule)
        : init.agentModule
      : callerModule();
    if (!agentModule) throw new Error("WorkerJob: cannot tell which module defines the agent; pass agentModule");
    this.definition = { entrypoint: init.entrypoint, jobctx: init.jobctx, options: init.options, agentModule };
  }

  /** Runs the worker until it stops; resolves with its exit code (and exits the process by default). */
  async start(settings: StartSettings = {}): Promise<number> {
    const hook = jobProcessHook();
    if (hook) {
      hook.register(this.definition);
      return 0;
    }
    let code: number;
    try {
      const options = withLauncherOverrides(this.definition.options);
      // Loaded here, not at the top: every job process imports this module (through the agent's
      // `import "troupe"`) and must not pay for the pool, the HTTP server or the registry link.
      const { runWorker } = await import("./runtime.ts");
      const handle = await runWorker({ ...this.definition, options });
      code = await handle.done;
    } catch (error) {
      // e.g. the port is taken: say so plainly and exit non-zero
      console.error(`troupe: ${(error as Error).message}`);
      code = 1;
    }
    if (settings.exitProcess ?? true) process.exit(code);
    return code;
  }
}
