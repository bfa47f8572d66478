import type { SocketCommand, SocketEvent } from "../../machines/connection.ts";
import type { JobInventoryEntry, JobSpec, JobUpdate } from "../../machines/shared.ts";
import {
  type AvailabilityRequest,
  exitCode,
  type JobAssignment,
  type JobUpdateMessage,
  PROTOCOL_VERSION,
  type RegistryMessage,
  registryMessage,
  signalName,
  type JobInventoryEntry as WireInventoryEntry,
  type WorkerMessage,
} from "../protocol/registry.ts";
import type { LeaseClock } from "./lease-clock.ts";

/*
 * The connection machine speaks machine events; the registry speaks the wire protocol
 * (src/protocol/registry.ts). These pure functions translate between the two, so that the real
 * socket and a simulated one put exactly the same frames on the wire.
 */

/** The wire message for a command of the connection machine. `now` stamps pings (machines read no clock). */
export function toWorkerMessage(command: SocketCommand, now: number): WorkerMessage {
  switch (command.type) {
    case "send.register":
      return {
        type: "register",
        protocol_version: PROTOCOL_VERSION,
        worker_id: command.workerId,
        agent_name: command.agentName,
        capabilities: command.capabilities,
        load_threshold: command.loadThreshold,
        max_processes: command.maxProcesses,
        jobs: command.inventory.map(toWireInventoryEntry),
      };
    case "send.status":
      return {
        type: "status_update",
        worker_id: command.workerId,
        agent_name: command.agentName,
        status: command.status.status,
        load: command.status.load,
        job_count: command.status.jobCount,
        idle_processes: command.status.idleProcesses,
      };
    case "send.job_update":
      return toJobUpdateMessage(command.update);
    case "send.offer_answer":
      return {
        type: "availability_response",
        job_id: command.jobId,
        available: command.accept,
        ...(command.error ? { error: command.error } : {}),
      };
    case "send.ping":
      return { type: "ping", timestamp: now };
    case "send.pong":
      return { type: "pong", timestamp: command.timestamp };
  }
}

export function toJobUpdateMessage(update: JobUpdate): JobUpdateMessage {
  return {
    type: "job_update",
    job_id: update.jobId,
    status: update.status,
    ...(update.reason ? { reason: update.reason } : {}),
    ...(update.error ? { error: update.error } : {}),
    ...processEndOf(update),
  };
}

export function toWireInventoryEntry(entry: JobInventoryEntry): WireInventoryEntry {
  return {
    job_id: entry.jobId,
    status: entry.status,
    ...(entry.reason ? { reason: entry.reason } : {}),
    ...processEndOf(entry),
  };
}

/**
 * The exit code and signal as the wire carries them. A value the schema would refuse is left out,
 * not sent: the registry would drop the whole frame, and with it the job's final status.
 */
function processEndOf(from: Pick<JobUpdate, "exitCode" | "signal">): Pick<JobUpdateMessage, "exit_code" | "signal"> {
  const end: Pick<JobUpdateMessage, "exit_code" | "signal"> = {};
  if (from.exitCode === null || exitCode.safeParse(from.exitCode).success) end.exit_code = from.exitCode;
  if (from.signal === null || signalName.safeParse(from.signal).success) end.signal = from.signal;
  return end;
}

/** The machine event for a parsed message from the registry. */
export function toSocketEvent(message: RegistryMessage): SocketEvent {
  switch (message.type) {
    case "register":
      if (!message.success) {
        return message.message !== undefined
          ? { type: "registry.refused", message: message.message }
          : { type: "registry.refused" };
      }
      return message.worker_id
        ? { type: "registry.registered", workerId: message.worker_id }
        : { type: "registry.registered" };
    case "availability_request":
      return { type: "registry.offer", spec: specFromOffer(message) };
    case "job_assignment":
      return { type: "registry.assigned", spec: specFromAssignment(message) };
    case "job_termination":
      return message.reason !== undefined
        ? { type: "registry.terminate", jobId: message.job_id, reason: message.reason }
        : { type: "registry.terminate", jobId: message.job_id };
    case "ping":
      return { type: "registry.ping", timestamp: message.timestamp };
    case "pong":
      return { type: "registry.pong", timestamp: message.timestamp };
    case "error":
      return message.code !== undefined
        ? { type: "registry.error", message: message.message, code: message.code }
        : { type: "registry.error", message: message.message };
  }
}

/**
 * One text frame from the registry, parsed with the protocol schema and translated; a frame that is
 * not JSON or not a valid message becomes `socket.invalid` (with the schema's issues, for logs).
 * With a lease clock, the event carries what the frame does to the registry's leases, as of `now`.
 */
export function parseRegistryFrame(
  text: string,
  lease?: { clock: LeaseClock; now: number },
): { event: SocketEvent; issues?: string[] } {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return { event: { type: "socket.invalid", error: "frame is not valid JSON" } };
  }
  const parsed = registryMessage.safeParse(raw);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((issue) => issue.message);
    return { event: { type: "socket.invalid", error: issues[0] ?? "invalid" }, issues };
  }
  const event = toSocketEvent(parsed.data);
  return { event: lease ? lease.clock.received(parsed.data, event, lease.now) : event };
}

export function specFromAssignment(message: JobAssignment): JobSpec {
  const spec: JobSpec = { jobId: message.job_id, agentName: message.agent_name };
  if (message.room_id !== undefined) spec.roomId = message.room_id;
  if (message.token !== undefined) spec.roomToken = message.token;
  if (message.url !== undefined) spec.url = message.url;
  if (message.metadata !== undefined) spec.metadata = message.metadata;
  if (message.room_options !== undefined) spec.roomOptions = message.room_options;
  if (message.max_duration) spec.maxDurationMs = message.max_duration * 1000;
  if (message.traceparent !== undefined) spec.traceparent = message.traceparent;
  if (message.tracestate !== undefined) spec.tracestate = message.tracestate;
  return spec;
}

export function specFromOffer(message: AvailabilityRequest): JobSpec {
  const spec: JobSpec = { jobId: message.job_id, agentName: message.agent_name };
  if (message.room_id !== undefined) spec.roomId = message.room_id;
  if (message.metadata !== undefined) spec.metadata = message.metadata;
  return spec;
}
