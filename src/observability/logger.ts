import { type DestinationStream, type Logger, pino } from "pino";
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

/** A pino logger at the option's level, with secrets redacted. JSON lines; a TTY gets a readable form later. */
export function createLogger(level: LogLevel = "INFO", destination?: DestinationStream): Logger {
  const options = { level: PINO_LEVEL[level], redact: { paths: REDACTED_PATHS, censor: "[redacted]" } };
  return destination ? pino(options, destination) : pino(options);
}
