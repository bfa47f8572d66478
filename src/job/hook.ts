import type { WorkerJobDefinition } from "./job-definition.ts";

/**
 * How a job process learns what to run: it sets this hook, imports the agent's module, and the
 * module's `new WorkerJob(...).start()` hands its definition over instead of starting a worker.
 */
const HOOK = Symbol.for("troupe.jobProcess");

export interface JobProcessHook {
  register(definition: WorkerJobDefinition): void;
}

export function installJobProcessHook(hook: JobProcessHook): void {
  (globalThis as Record<symbol, unknown>)[HOOK] = hook;
}

export function jobProcessHook(): JobProcessHook | undefined {
  return (globalThis as Record<symbol, unknown>)[HOOK] as JobProcessHook | undefined;
}
