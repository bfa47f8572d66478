// The public API of "troupe", exactly what docs/api.md documents (test/unit/public-api.test.ts checks).
// Every job process imports this through the agent's module, so nothing here may pull in what only
// a registry needs: createRegistry loads the registry when it is called.
import type { Registry, RegistryOptions } from "./registry/server.ts";

export type { JobSpec } from "../machines/shared.ts";
export type { ShutdownCallback, ShutdownCallbackOptions } from "./job/job-context.ts";
export { JobContext, JobContextError } from "./job/job-context.ts";
export type { Entrypoint, JobContextFactory } from "./job/job-definition.ts";
export type {
  JobRequest,
  LoadFn,
  LogLevel,
  OptionsInput,
  PrewarmFn,
  RequestFn,
  RoomOptionsInput,
} from "./options.ts";
export { Options, OptionsError, RoomOptions } from "./options.ts";
export type { ParticipantInfo, RoomMessage } from "./protocol/room.ts";
export type { DispatchRequest } from "./registry/core/ports.ts";
export type { WorkerSummary } from "./registry/core/registry-core.ts";
export type { RedisSettings, Registry, RegistryOptions } from "./registry/server.ts";
export type { JobFilter, JobRecord, JobStore } from "./registry/store.ts";
export type { RoomConnectOptions, SendOptions } from "./room/client.ts";
export { RoomConnection, RoomError } from "./room/client.ts";
export type { StartSettings, WorkerJobInit } from "./worker/worker-job.ts";
export { WorkerJob } from "./worker/worker-job.ts";

/**
 * Starts a registry: the worker endpoint at /agent, the HTTP API, the room hub, the dashboard and
 * the playground, on one port. Resolves once it listens.
 */
export async function createRegistry(options: RegistryOptions): Promise<Registry> {
  const registry = await import("./registry/server.ts");
  return registry.createRegistry(options);
}
