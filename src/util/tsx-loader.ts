import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

/** What Node cannot import by itself: TypeScript (Node 20 has no type stripping). */
export const TYPESCRIPT_FILE = /\.[cm]?tsx?$/i;

/** True when this code runs from troupe's TypeScript sources (a checkout), not from the compiled dist/. */
export const RUNNING_FROM_SOURCES = import.meta.url.endsWith(".ts");

/**
 * The URL to `--import` (or import) for tsx's loader, found from troupe itself or else from the
 * agent module's folder; undefined when neither has it. tsx is an optional peer dependency: only a
 * TypeScript agent (or troupe's own sources) needs it.
 */
export function findTsxLoader(agentModule: string): string | undefined {
  for (const from of [import.meta.url, pathToFileURL(agentModule).href]) {
    try {
      return pathToFileURL(createRequire(from).resolve("tsx")).href;
    } catch {
      // not installed there; try the next place
    }
  }
  return undefined;
}

/** The error for a TypeScript agent without tsx: what to install, or what to do instead. */
export function tsxMissing(agentModule: string, command: string): Error {
  return new Error(
    `${agentModule} is TypeScript: ${command} runs it with tsx, which is not installed. Install it (npm install --save-dev tsx) or compile the agent to JavaScript`,
  );
}
