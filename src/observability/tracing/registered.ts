/** Where `@opentelemetry/api` keeps what was registered with it (its API version 1 key). */
const OTEL_GLOBALS = Symbol.for("opentelemetry.js.api.1");

/**
 * True once anything registered an OpenTelemetry global (a TracerProvider, a context manager, a
 * propagator) in this process. Read without loading `@opentelemetry/api`: until then a job process
 * has nothing to record or propagate, and does not load it.
 */
export function openTelemetryRegistered(): boolean {
  return OTEL_GLOBALS in globalThis;
}
