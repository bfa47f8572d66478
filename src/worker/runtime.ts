import { randomBytes, randomUUID } from "node:crypto";
import type { Server } from "node:http";
import { type AnyActorLogic, fromCallback, toPromise } from "xstate";
import type { JobSpec } from "../../machines/shared.ts";
import { EXIT_CLEAN, EXIT_FORCED } from "../../machines/worker.ts";
import type { Credentials } from "../auth/tokens.ts";
import { HttpError } from "../http/respond.ts";
import { JobContext } from "../job/job-context.ts";
import type { WorkerJobDefinition } from "../job/job-definition.ts";
import { createLogger, type Logger } from "../observability/logger.ts";
import { countSlotPhases, createWorkerMetrics, reasonLabel } from "../observability/metrics.ts";
import type { SlotSummary } from "../protocol/registry.ts";
import { RoomHub } from "../room/hub.ts";
import { mintRoomToken, type RoomTokenRequest, roomAuthorizer } from "../room/room-auth.ts";
import { SignalGestures } from "../util/signal-gestures.ts";
import { createWebRoutes } from "../web/routes.ts";
import { boundPort, closeServer, startHealthServer } from "./http-server.ts";
import { createLoadSampler } from "./load-sampler.ts";
import { type LocalRoomLinks, localRoomLinks } from "./local-room.ts";
import { createProcessLogic } from "./process-actor.ts";
import { ProcessTracker } from "./process-tracker.ts";
import { createRegistryLink, logLinkEvents } from "./registry-link.ts";
import { describeWorker, flattenState, isReady, workerDashboard } from "./status.ts";
import { createWorkerActor, createWorkerActorEvents } from "./worker-actor.ts";

export const EXIT_JOB_FAILED = 1;
/** The protocol's cap on slots in one status update. */
const MAX_REPORTED_SLOTS = 256;

export interface RunSettings {
  logger?: Logger;
  /**
   * Install SIGTERM/SIGINT handlers (default true): the first signal drains; a second one stops at once,
   * unless it came within a second of the first (a copy of the same Ctrl-C, relayed by a launcher).
   */
  handleSignals?: boolean;
  /** Provides the registry link when `register` is true. */
  registryLink?: (logger: Logger) => { logic: AnyActorLogic; input: unknown };
}

export interface WorkerHandle {
  actor: ReturnType<typeof createWorkerActor>;
  server: Server;
  port: number;
  /** Resolves with the process exit code once the worker has stopped and its server is closed. */
  done: Promise<number>;
  drain(): void;
  stop(): void;
  /** The room hub of a local-mode worker (absent when registered: rooms live on the registry). */
  rooms: RoomHub | undefined;
  /** A participant token for this worker's room hub (local mode). */
  roomToken(request: RoomTokenRequest): Promise<string>;
  /** The job local mode runs, with its room. */
  localJob: JobSpec | undefined;
}

/** In local mode the registry link is a stand-in: nothing is offered, updates only get logged. */
function localLink(logger: Logger) {
  return fromCallback(({ receive }) => {
    receive((command: { type: string }) => {
      if (command.type === "link.job_update") logger.debug({ command }, "job update (local mode)");
    });
  });
}

/** Local mode's one job, in a room on this worker's own hub (the RoomOptions' room, or a new one). */
async function localJobSpec(
  definition: WorkerJobDefinition,
  hubUrl: string,
  credentials: Credentials,
): Promise<JobSpec> {
  const { jobctx } = definition;
  const ctx = typeof jobctx === "function" ? await jobctx() : (jobctx ?? new JobContext());
  const roomOptions = ctx.roomOptions.toJSON() as unknown as Record<string, unknown>;
  const jobId = `local-${randomUUID()}`;
  const roomId = ctx.roomOptions.roomId ?? `room-${jobId.slice(6, 14)}`;
  const roomToken = await mintRoomToken(credentials, {
    room: roomId,
    identity: ctx.roomOptions.agentParticipantId ?? `agent-${jobId.slice(6, 14)}`,
    name: ctx.roomOptions.name,
    agent: true,
  });
  return {
    jobId,
    agentName: definition.options.agentId,
    roomId,
    roomToken,
    url: hubUrl,
    roomOptions,
    ...(ctx.roomOptions.metadata ? { metadata: ctx.roomOptions.metadata } : {}),
  };
}

/** The URL a job process on this machine uses to reach the worker's server. */
function loopbackUrl(host: string, port: number): string {
  if (host === "0.0.0.0" || host === "::" || host === "") return `http://127.0.0.1:${port}`;
  return `http://${host.includes(":") ? `[${host}]` : host}:${port}`;
}

/**
 * Starts a worker for an agent: the HTTP server first (a taken port fails fast), then the root actor
 * with real process, load and link actors. In local mode (`register: false`) it runs one job at once
 * and stops when that job ends; the exit code says how it ended.
 */
export async function runWorker(definition: WorkerJobDefinition, settings: RunSettings = {}): Promise<WorkerHandle> {
  const { options } = definition;
  const logger = settings.logger ?? createLogger(options.logLevel);
  const metrics = createWorkerMetrics();
  const tracker = new ProcessTracker(metrics);
  const processLogic = createProcessLogic({
    agentModule: definition.agentModule,
    logLevel: options.logLevel,
    closeTimeoutMs: options.closeTimeout * 1000,
    logger,
    observer: tracker,
  });
  const loadSampler = createLoadSampler({
    intervalMs: 2_000,
    ...(options.loadFn ? { loadFn: options.loadFn } : {}),
    onError: (error) => logger.warn({ err: String(error) }, "load sample failed"),
  });
  let describeSlots: (() => SlotSummary[]) | undefined;
  let link: { logic: AnyActorLogic; input: unknown };
  if (options.register) {
    link = settings.registryLink
      ? settings.registryLink(logger)
      : createRegistryLink(options, logger, {
          // The registry's dashboard shows each worker's processes as of its latest status update.
          decorateStatus: (message) =>
            describeSlots ? { ...message, slots: describeSlots().slice(0, MAX_REPORTED_SLOTS) } : message,
        });
  } else {
    link = { logic: localLink(logger), input: undefined };
  }
  // Local mode hosts the job's room itself; tokens are signed with the worker's key or a throwaway one.
  const roomCredentials: Credentials =
    options.apiKey && options.apiSecret
      ? { apiKey: options.apiKey, apiSecret: options.apiSecret }
      : { apiKey: "troupe-local", apiSecret: randomBytes(32).toString("hex") };
  const rooms = options.register ? undefined : new RoomHub({ authorize: roomAuthorizer(roomCredentials), logger });

  const actorEvents = createWorkerActorEvents();
  const actor = createWorkerActor(
    options,
    { process: processLogic, loadSampler, registryLink: link.logic },
    { logger, linkInput: link.input, actorEvents },
  );
  const startedAt = Date.now();
  describeSlots = () =>
    describeWorker(actor, options, tracker, startedAt).slots.map((slot) => ({
      id: slot.id,
      state: slot.state,
      pid: slot.pid,
      memory_mb: slot.memoryMb === null ? null : Math.round(slot.memoryMb * 10) / 10,
      job_id: slot.jobId,
    }));
  // Local mode: the ways into the job's room (RoomOptions.playground), once the room is set up.
  let localLinks: LocalRoomLinks | undefined;
  const web = createWebRoutes({
    source: `worker ${options.agentId}`,
    snapshot: () => workerDashboard(describeWorker(actor, options, tracker, startedAt)),
    // The playground for the local room only ("join" mode: there is no dispatch API here).
    get playground() {
      return localLinks ? ("join" as const) : false;
    },
  });
  const server = await startHealthServer(
    options.host,
    options.port,
    {
      extra: (req, res, url) => web.handle(req, res, url),
      ...(rooms
        ? {
            upgrade: (req, socket, head, url) => {
              if (!RoomHub.matches(url.pathname))
                throw new HttpError(404, "no WebSocket endpoint here but /rooms/<id>");
              return rooms.handleUpgrade(req, socket, head);
            },
          }
        : {}),
      actorEvents,
      ready: () => isReady(actor.getSnapshot(), options),
      worker: () => describeWorker(actor, options, tracker, startedAt),
      metrics: async () => {
        countSlotPhases(metrics, Object.values(actor.getSnapshot().context.slots));
        return { contentType: metrics.registry.contentType, body: await metrics.registry.metrics() };
      },
    },
    logger,
  );
  const port = boundPort(server);
  const localSpec = options.register
    ? undefined
    : await localJobSpec(definition, loopbackUrl(options.host, port), roomCredentials);
  if (localSpec?.roomId && localSpec.roomOptions?.playground !== false) {
    localLinks = await localRoomLinks(loopbackUrl(options.host, port), localSpec.roomId, roomCredentials);
  }

  let localOutcome: { status: string } | undefined;
  actor.on("job.finished", ({ output }) => {
    metrics.jobsEnded.inc({ status: output.status, reason: reasonLabel(output.reason) });
    const fields = {
      jobId: output.jobId,
      status: output.status,
      reason: output.reason,
      error: output.error,
      exitCode: output.exitCode,
      signal: output.signal,
    };
    if (output.status === "completed") logger.info(fields, "job completed");
    else if (output.status === "failed") logger.error(fields, "job failed");
    else logger.info(fields, `job ${output.status}`);
    if (localSpec && output.jobId === localSpec.jobId) {
      localOutcome = output;
      actor.send({ type: "worker.drain" });
    }
  });
  actor.on("slot.exited", ({ output }) => {
    if (output.stopReason && output.stopReason !== "idle_shutdown") metrics.kills.inc({ reason: output.stopReason });
    const fields = {
      slotId: output.slotId,
      pid: output.pid,
      jobId: output.jobId,
      reason: output.stopReason,
      exit: output.exit,
    };
    if (!output.becameReady && output.stopReason !== "idle_shutdown") {
      logger.warn({ ...fields, error: output.spawnError }, "job process failed to warm; backing off");
    } else if (!output.jobId && !output.stopReason) {
      logger.warn(fields, "idle job process died; it will be replaced");
    } else {
      logger.debug(fields, "job process exited");
    }
  });
  actor.on("memory.warning", (event) => logger.warn(event, "job process memory above memoryWarnMb"));
  actor.on("job.rejected", (event) => logger.warn(event, "job rejected"));
  actor.subscribe({ error: (error) => logger.fatal({ err: String(error) }, "worker state machine failed") });

  // One Ctrl-C reaches the worker more than once (the terminal signals the whole process group, and
  // tsx, npm or `troupe dev` may relay a copy): signals count as gestures, so the copies that arrive
  // within SIGNAL_GESTURE_WINDOW_MS of the first change nothing and only a later, deliberate one stops at once.
  const gestures = new SignalGestures();
  let stopAsked = false;
  const onSignal = (signal: NodeJS.Signals) => {
    const gesture = gestures.next();
    if (gesture === 0) {
      logger.debug({ signal }, "signal ignored: a copy of the one just handled (same Ctrl-C)");
    } else if (gesture === 1) {
      logger.info(
        { signal, drainTimeout: options.drainTimeout },
        "draining: no new jobs; a second signal stops at once",
      );
      actor.send({ type: "worker.drain" });
    } else if (!stopAsked) {
      stopAsked = true;
      logger.warn({ signal }, "stopping now");
      actor.send({ type: "worker.stop" });
    }
  };
  // The drain's bound: when drainTimeout passes, the jobs still running are stopped (they end failed
  // `worker_shutdown`, never lost) and the worker exits 2. Say so, once.
  let wasDraining = false;
  actor.subscribe((snapshot) => {
    const draining = snapshot.matches({ active: { lifecycle: "draining" } });
    if (wasDraining && !draining && !stopAsked && snapshot.context.exitCode === EXIT_FORCED) {
      logger.warn(
        { drainTimeout: options.drainTimeout, jobs: Object.keys(snapshot.context.jobs) },
        "drain timed out: stopping the jobs still running (they end failed worker_shutdown)",
      );
    }
    wasDraining = draining;
  });
  if (settings.handleSignals ?? true) {
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
  }

  actor.start();
  // The registry link (a child of the root while it is active) says connected, lost, retrying and
  // gave up; gave up is also the worker's exit reason (non-zero).
  const linkRef = options.register ? actor.getSnapshot().children.registryLink : undefined;
  if (linkRef) logLinkEvents(linkRef, logger, options.registryUrl);
  logger.info(
    { agentId: options.agentId, port, register: options.register, maxProcesses: options.maxProcesses },
    "worker started",
  );
  if (localSpec) {
    actor.send({ type: "worker.run", spec: localSpec });
    logger.info(
      { jobId: localSpec.jobId, room: localSpec.roomId, dashboard: `${loopbackUrl(options.host, port)}/dashboard` },
      "local job started in its room",
    );
    if (localLinks) {
      logger.info(
        { room: localSpec.roomId, playground: localLinks.playground, connect: localLinks.connect },
        "join the room: open the playground link, or run the connect command in a terminal",
      );
    }
  }

  const done = toPromise(actor).then(
    async (output) => {
      process.off("SIGTERM", onSignal);
      process.off("SIGINT", onSignal);
      web.close();
      await rooms?.close();
      await closeServer(server);
      let code = output.exitCode;
      if (code === EXIT_CLEAN && localSpec) code = localOutcome?.status === "completed" ? 0 : EXIT_JOB_FAILED;
      logger.info({ exitCode: code, state: flattenState(actor.getSnapshot().value) }, "worker stopped");
      return code;
    },
    async (error) => {
      process.off("SIGTERM", onSignal);
      process.off("SIGINT", onSignal);
      web.close();
      await rooms?.close();
      await closeServer(server);
      logger.fatal({ err: String(error) }, "worker stopped after an internal error");
      return 1;
    },
  );
  return {
    actor,
    server,
    port,
    done,
    drain: () => actor.send({ type: "worker.drain" }),
    stop: () => {
      stopAsked = true;
      actor.send({ type: "worker.stop" });
    },
    rooms,
    roomToken: (request) => mintRoomToken(roomCredentials, request),
    localJob: localSpec,
  };
}
