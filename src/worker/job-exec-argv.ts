import { findTsxLoader, TYPESCRIPT_FILE, tsxMissing } from "../util/tsx-loader.ts";
import { withoutEnvFileFlags } from "./job-env.ts";

/**
 * The Node flags a job process starts with. A TypeScript loader (tsx) only when the process has
 * TypeScript to load: troupe's own sources (run from `src/`) or a TypeScript agent module. A compiled
 * agent on compiled troupe runs on plain `node`, even under a worker started with tsx: loading tsx
 * costs a job process about twice its memory and its boot CPU.
 */

/** Flags whose value is a module to preload: `--import <url>`, `--require <path>`, `--loader <url>`. */
const PRELOAD_FLAGS = new Set(["--import", "--require", "-r", "--loader", "--experimental-loader"]);

function isTsxModule(specifier: string): boolean {
  return specifier === "tsx" || specifier.startsWith("tsx/") || /[\\/]tsx[\\/]/.test(specifier);
}

/** The flags without those that preload tsx (`--import tsx`, tsx's own `--require …/tsx/dist/preflight.cjs`). */
export function withoutTsxLoader(execArgv: readonly string[]): string[] {
  const kept: string[] = [];
  for (let i = 0; i < execArgv.length; i++) {
    const arg = execArgv[i] as string;
    const equals = arg.indexOf("=");
    const flag = equals > 0 ? arg.slice(0, equals) : arg;
    if (PRELOAD_FLAGS.has(flag)) {
      const value = equals > 0 ? arg.slice(equals + 1) : (execArgv[i + 1] ?? "");
      if (isTsxModule(value)) {
        if (equals < 0) i++;
        continue;
      }
    }
    kept.push(arg);
  }
  return kept;
}

function tsxLoaderUrl(agentModule: string): string {
  const loader = findTsxLoader(agentModule);
  if (!loader) throw tsxMissing(agentModule, "a job process");
  return loader;
}

export interface JobProcessFiles {
  /** The job process's entry module (src/job/child-main.ts, or .js when troupe is compiled). */
  childMain: string;
  /** The CommonJS boot guard preloaded before anything else. */
  bootGuard: string;
  agentModule: string;
}

/**
 * The worker's own flags, minus what a job process must not inherit (`--env-file`: it would read back
 * the secrets its environment is stripped of; `--inspect`: one debugger port per worker), with the
 * boot guard first (loading the rest takes long enough for a worker to die meanwhile) and tsx when
 * there is TypeScript to load. Throws when TypeScript must be loaded and tsx is not installed.
 */
export function jobProcessExecArgv(files: JobProcessFiles, workerExecArgv: readonly string[]): string[] {
  const inherited = [
    "--require",
    files.bootGuard,
    ...withoutEnvFileFlags(workerExecArgv).filter((arg) => !arg.startsWith("--inspect")),
  ];
  const typescript = TYPESCRIPT_FILE.test(files.childMain) || TYPESCRIPT_FILE.test(files.agentModule);
  const withoutTsx = withoutTsxLoader(inherited);
  if (!typescript) return withoutTsx;
  // The worker's own tsx (its version, its options) when it runs under one.
  if (withoutTsx.length < inherited.length) return inherited;
  return [...inherited, "--import", tsxLoaderUrl(files.agentModule)];
}
