import { Options } from "../options.ts";

/**
 * How a launcher (`troupe dev`) adjusts the worker an agent module starts without editing it: it
 * sets this hook, imports the module, and the module's `new WorkerJob(...).start()` runs the worker
 * with these options on top of its own (e.g. register with the dev registry, any free port).
 */
const HOOK = Symbol.for("troupe.launcher");

export interface LauncherHook {
  overrides: Record<string, unknown>;
}

export function installLauncherHook(hook: LauncherHook): void {
  (globalThis as Record<symbol, unknown>)[HOOK] = hook;
}

export function launcherHook(): LauncherHook | undefined {
  return (globalThis as Record<symbol, unknown>)[HOOK] as LauncherHook | undefined;
}

/** The module's options with the launcher's overrides on top (parsed again: still every check). */
export function withLauncherOverrides(options: Options): Options {
  const hook = launcherHook();
  if (!hook) return options;
  return new Options({ ...Object.fromEntries(Object.entries(options)), ...hook.overrides } as never);
}
