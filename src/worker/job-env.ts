import { randomUUID } from "node:crypto";
import { JOB_MARKER_VARIABLE } from "../job/descendant-sweep.ts";

/**
 * Variables a job process never gets: the registry credentials and worker token the worker reads
 * (src/options.ts), and the registry's Redis URL, which usually carries a password. With any of them
 * agent code could mint dispatcher tokens or act as the worker. docs/process-model.md cites this list.
 */
export const STRIPPED_ENV_NAMES = [
  "TROUPE_API_KEY",
  "TROUPE_API_SECRET",
  "TROUPE_AUTH_TOKEN",
  "TROUPE_REDIS_URL",
] as const;

/**
 * The environment of a new job process: the worker's own minus STRIPPED_ENV_NAMES (everything else,
 * such as an agent's OPENAI_API_KEY, passes), plus a fresh random TROUPE_JOB_PROCESS marker that its
 * descendants inherit, so they can be found and killed when the job ends.
 */
export function jobProcessEnv(base: NodeJS.ProcessEnv): { env: NodeJS.ProcessEnv; marker: string } {
  const env: NodeJS.ProcessEnv = { ...base };
  for (const name of STRIPPED_ENV_NAMES) delete env[name];
  const marker = randomUUID();
  env[JOB_MARKER_VARIABLE] = marker;
  return { env, marker };
}

/** Node flags that load variables from a file: a job process given one would read the secrets back. */
const ENV_FILE_FLAGS = ["--env-file", "--env-file-if-exists"];

/** The worker's execArgv without the flags that would reload an env file in the job process. */
export function withoutEnvFileFlags(execArgv: readonly string[]): string[] {
  const kept: string[] = [];
  for (let i = 0; i < execArgv.length; i++) {
    const arg = execArgv[i] as string;
    if (ENV_FILE_FLAGS.includes(arg)) {
      i++; // `--env-file path`: the path goes too
      continue;
    }
    if (ENV_FILE_FLAGS.some((flag) => arg.startsWith(`${flag}=`))) continue;
    kept.push(arg);
  }
  return kept;
}
