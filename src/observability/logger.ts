import { type DestinationStream, type Logger, pino } from "pino";
import pretty from "pino-pretty";
import type { LogLevel } from "../options.ts";

export type { Logger } from "pino";

/** Field paths pino blanks out wherever they appear, so a secret never reaches a log line. */
export const REDACTED_PATHS = [
  "authToken",
  "apiKey",
  "apiSecret",
  "token",
  "roomToken",
  "*.authToken",
  "*.apiKey",
  "*.apiSecret",
  "*.token",
  "*.roomToken",
  "headers.authorization",
  "*.headers.authorization",
];

const PINO_LEVEL: Record<LogLevel, string> = { DEBUG: "debug", INFO: "info", WARN: "warn", ERROR: "error" };

/**
 * A pino logger at the option's level, with secrets redacted: JSON lines, or a readable colourised
 * form when stdout is a terminal.
 */
export function createLogger(level: LogLevel = "INFO", destination?: DestinationStream): Logger {
  const options = { level: PINO_LEVEL[level], redact: { paths: REDACTED_PATHS, censor: "[redacted]" } };
  if (destination) return pino(options, destination);
  if (process.stdout.isTTY) return pino(options, pretty({ colorize: true, sync: true }));
  return pino(options);
}
