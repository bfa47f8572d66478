// "troupe/machines": the statecharts, for model-based tests and diagrams, exactly what docs/api.md
// documents under that entry (test/unit/public-api.test.ts checks). Nothing here runs them against
// the world: each machine's actors that do I/O are stubs to `provide()`.
export type {
  ConnectionContext,
  ConnectionEmitted,
  ConnectionEvent,
  ConnectionInput,
  ConnectionOutput,
  SocketCommand,
  SocketEvent,
} from "../machines/connection.ts";
export { connectionMachine } from "../machines/connection.ts";
export type { JobEvent, JobInput, JobMachineContext, JobOutput } from "../machines/job.ts";
export { jobMachine } from "../machines/job.ts";
export type { LeaseContext, LeaseEvent, LeaseInput } from "../machines/lease.ts";
export { leaseMachine } from "../machines/lease.ts";
export type {
  DispatchContext,
  DispatchEmitted,
  DispatchEvent,
  DispatchInput,
  DispatchOutput,
} from "../machines/registry/dispatch.ts";
export { dispatchMachine } from "../machines/registry/dispatch.ts";
export type { SessionContext, SessionEmitted, SessionEvent, SessionInput } from "../machines/registry/session.ts";
export { sessionMachine } from "../machines/registry/session.ts";
export type { FailureReason, JobOutcome, StopReason } from "../machines/shared.ts";
export type {
  ProcessCommand,
  ProcessEvent,
  ProcessInput,
  SlotContext,
  SlotEvent,
  SlotInput,
  SlotOutput,
} from "../machines/slot.ts";
export { slotMachine } from "../machines/slot.ts";
export type { WorkerContext, WorkerEmitted, WorkerEvent, WorkerInput, WorkerOutput } from "../machines/worker.ts";
export { workerMachine } from "../machines/worker.ts";
