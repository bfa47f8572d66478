/**
 * Field paths pino blanks out wherever they appear, so a secret never reaches a log line. Apart from
 * src/observability/logger.ts so that a job process can name them without loading pino early.
 */
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
