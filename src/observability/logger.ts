import { createRequire } from "node:module";
import { type DestinationStream, type Logger, pino } from "pino";
import type PinoPretty from "pino-pretty";
import type { LogLevel } from "../options.ts";
import { REDACTED_PATHS } from "./redacted-paths.ts";

export type { Logger } from "pino";
export { REDACTED_PATHS } from "./redacted-paths.ts";

const PINO_LEVEL: Record<LogLevel, string> = { DEBUG: "debug", INFO: "info", WARN: "warn", ERROR: "error" };

let prettyMissingSaid = false;

/**
 * pino-pretty, loaded only for a terminal: it is an optional peer dependency, so a worker whose logs
 * go to a file or a collector never needs it. Missing, the logs stay JSON lines and we say once how
 * to get the readable form.
 */
function prettyStream(): DestinationStream | undefined {
  try {
    const pretty = createRequire(import.meta.url)("pino-pretty") as typeof PinoPretty;
    return pretty({ colorize: true, sync: true });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "MODULE_NOT_FOUND") throw error;
    if (!prettyMissingSaid) {
      prettyMissingSaid = true;
      process.stderr.write(
        "troupe: logging JSON lines; for readable logs in a terminal install pino-pretty (npm install pino-pretty)\n",
      );
    }
    return undefined;
  }
}

/**
 * A pino logger at the option's level, with secrets redacted: JSON lines, or a readable colourised
 * form when stdout is a terminal (with the optional pino-pretty installed).
 */
export function createLogger(level: LogLevel = "INFO", destination?: DestinationStream): Logger {
  const options = { level: PINO_LEVEL[level], redact: { paths: REDACTED_PATHS, censor: "[redacted]" } };
  if (destination) return pino(options, destination);
  const pretty = process.stdout.isTTY ? prettyStream() : undefined;
  return pretty ? pino(options, pretty) : pino(options);
}
