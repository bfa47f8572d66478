import type { Options } from "../options.ts";
import type { JobContext } from "./job-context.ts";

export type Entrypoint = (ctx: JobContext) => unknown | Promise<unknown>;
export type JobContextFactory = JobContext | (() => JobContext | Promise<JobContext>);

/** What WorkerJob was constructed with; the same in the worker and in each job process. */
export interface WorkerJobDefinition {
  entrypoint: Entrypoint;
  jobctx: JobContextFactory | undefined;
  options: Options;
  /** Absolute path of the module that defines the agent; job processes import it. */
  agentModule: string;
}
