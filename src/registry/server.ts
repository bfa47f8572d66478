import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { type Credentials, verifyToken } from "../auth/tokens.ts";
import { createGatewayServer, DEFAULT_HTTP_LIMITS, type HttpLimits } from "../http/gateway.ts";
import { HttpError } from "../http/respond.ts";
import { INSPECT_OPTION_PROBLEM, type InspectOption, inspectorFor, isInspectOption } from "../observability/inspect.ts";
import { createLogger, type Logger } from "../observability/logger.ts";
import { MAX_FRAME_BYTES } from "../protocol/registry.ts";
import { RoomHub } from "../room/hub.ts";
import type { RoomHubLimits } from "../room/limits.ts";
import { mintRoomToken, roomAuthorizer } from "../room/room-auth.ts";
import { createWebRoutes } from "../web/routes.ts";
import { registerAutoscalingGauges } from "./autoscaling-metrics.ts";
import { RegistryCluster } from "./cluster/cluster.ts";
import { type DispatchRequest, systemClock, uuidIds } from "./core/ports.ts";
import { RegistryCore, type WorkerSummary } from "./core/registry-core.ts";
import { createActorEventsRoute, registryDashboard } from "./dashboard.ts";
import { createHttpApi } from "./http-api.ts";
import { createRegistryMetrics } from "./metrics.ts";
import { createRoomApi } from "./room-api.ts";
import { type JobFilter, type JobRecord, type JobStore, MemoryJobStore, type RetentionOptions } from "./store.ts";
import { type RegistryTiming, registryTiming } from "./timing.ts";
import { WorkerGateway } from "./worker-gateway.ts";

export interface RegistryOptions extends Credentials {
  host?: string;
  /** 0 picks a free port. Default 7880. */
  port?: number;
  store?: JobStore;
  timing?: Partial<RegistryTiming>;
  logger?: Logger;
  maxFrameBytes?: number;
  /**
   * How many final job records, and how many bytes of them, the store keeps (oldest evicted first).
   * Applies to the built-in stores: in memory, or on Redis with `redis`; a custom `store` has its own.
   */
  retention?: RetentionOptions;
  /** Bounds of the room hub: rooms, members per room, bytes queued per member, frames per second. */
  roomLimits?: Partial<RoomHubLimits>;
  /** Timeouts and connection bounds of the HTTP server; see docs/deploying.md. */
  httpLimits?: Partial<HttpLimits>;
  random?: () => number;
  /**
   * The URL job processes use to reach this registry's room hub. Default: the registry's own URL,
   * right for one machine; behind a proxy or in a cluster, the address workers can reach.
   */
  publicUrl?: string;
  /**
   * Share state with other registry nodes through this Redis (a URL, or settings): job records live
   * there and survive restarts, every node sees every worker, and dispatches reach workers on any
   * node. Absent = one node, records in memory (or in `store`).
   */
  redis?: string | RedisSettings;
  /**
   * XState inspection of every worker session and job dispatch actor this registry runs: `true` logs
   * each transition at debug level, an observer (a function, or `{ next(event) }`, such as
   * `@statelyai/inspect`'s `inspector.inspect`) gets every inspection event. See docs/inspect.md.
   */
  inspect?: InspectOption;
}

export interface RedisSettings {
  url: string;
  /** Key prefix; the nodes of one cluster share it. Default "troupe:". */
  prefix?: string;
  nodeId?: string;
  /** How often a node renews its presence; a node is dead after three missed beats. Default 1 s. */
  heartbeatMs?: number;
  /** How often a node looks for jobs it owns but lost track of (a lost hand-off). Default 10 s. */
  sweepMs?: number;
}

/**
 * A running registry: its address and what a program embedding it may ask of it. Its internals
 * (the core, the servers) are not part of it; `registryInternals` reaches them for tests and pages.
 */
export interface Registry {
  /** 0 picks a free port: this is the one it got. */
  readonly port: number;
  /** http://host:port; workers connect to its /agent path. */
  readonly url: string;
  /** Workers connected here and, in a cluster, to the other live nodes. */
  workers(): WorkerSummary[];
  /** Job records, newest first. */
  jobs(filter?: JobFilter): Promise<JobRecord[]>;
  job(id: string): Promise<JobRecord | undefined>;
  dispatch(request: DispatchRequest): Promise<{ record: JobRecord; created: boolean }>;
  cancel(jobId: string, reason?: string): Promise<JobRecord | undefined>;
  close(): Promise<void>;
}

export interface RegistryInternals {
  core: RegistryCore;
  gateway: WorkerGateway;
  rooms: RoomHub;
  server: Server;
}

const internals = new WeakMap<Registry, RegistryInternals>();

/** The parts of a registry its own pages and tests look into; not for applications. */
export function registryInternals(registry: Registry): RegistryInternals {
  const found = internals.get(registry);
  if (!found) throw new Error("not a registry made by createRegistry");
  return found;
}

/** Starts a registry: the worker WebSocket endpoint at /agent and the HTTP API on one port. */
export async function createRegistry(options: RegistryOptions): Promise<Registry> {
  if (!options.apiKey || !options.apiSecret) throw new Error("createRegistry needs apiKey and apiSecret");
  if (Buffer.byteLength(options.apiSecret) < 32) throw new Error("the API secret must be at least 32 bytes");
  if (options.inspect !== undefined && !isInspectOption(options.inspect)) throw new Error(INSPECT_OPTION_PROBLEM);
  const host = options.host ?? "127.0.0.1";
  const logger = options.logger ?? createLogger("INFO");
  const metrics = createRegistryMetrics();
  const timing = registryTiming(options.timing);
  const redis = typeof options.redis === "string" ? { url: options.redis } : options.redis;
  const cluster = redis
    ? await RegistryCluster.join(
        {
          redisUrl: redis.url,
          workerDeadlineMs: timing.pingIntervalMs + timing.pongTimeoutMs,
          ...(redis.prefix ? { prefix: redis.prefix } : {}),
          ...(redis.nodeId ? { nodeId: redis.nodeId } : {}),
          ...(redis.heartbeatMs ? { heartbeatMs: redis.heartbeatMs } : {}),
          ...(redis.sweepMs ? { sweepMs: redis.sweepMs } : {}),
          ...(options.retention ? { retention: options.retention } : {}),
        },
        logger,
      )
    : undefined;
  const credentials: Credentials = {
    apiKey: options.apiKey,
    apiSecret: options.apiSecret,
    ...(options.maxTokenLifetimeSeconds ? { maxTokenLifetimeSeconds: options.maxTokenLifetimeSeconds } : {}),
  };
  const rooms = new RoomHub({ authorize: roomAuthorizer(credentials), logger, ...options.roomLimits });
  let url = "";
  const hubUrl = () => options.publicUrl ?? url;
  const gateway = new WorkerGateway(credentials, logger, metrics, options.maxFrameBytes ?? MAX_FRAME_BYTES);
  const inspect = inspectorFor(options.inspect ?? false, logger);
  const core = new RegistryCore({
    credentials,
    transport: gateway,
    store: cluster?.store ?? options.store ?? new MemoryJobStore(options.retention),
    ...(cluster ? { bus: cluster } : {}),
    clock: systemClock,
    random: options.random ?? Math.random,
    newId: uuidIds,
    timing,
    logger,
    metrics,
    ...(inspect ? { inspect } : {}),
    rooms: {
      newRoomId: (jobId) => `room-${jobId.replace(/^job-/, "").slice(0, 12)}`,
      forAgent: async (room, jobId, agentName) => ({
        url: hubUrl(),
        token: await mintRoomToken(credentials, { room, identity: `agent-${jobId}`, name: agentName, agent: true }),
      }),
    },
  });
  gateway.attach(core, timing.pingIntervalMs);
  cluster?.attach(core);
  // Read from the core at each scrape: this node's workers and waiting dispatches, and which agents
  // the other nodes' workers serve (so a dispatch waiting for one of those keeps its agent label).
  registerAutoscalingGauges(
    metrics.registry,
    {
      workers: () => core.directory.workers(),
      remoteAgents: () => (cluster?.remoteViews() ?? []).map((view) => view.agentName),
      waitingByAgent: () => core.dispatcher.waitingByAgent(),
    },
    metrics.agentLabels,
  );
  const api = createHttpApi(core, credentials, metrics);
  const roomApi = createRoomApi(rooms, credentials, hubUrl);
  const authorizeDashboard = async (token: string | undefined) => {
    if (!token) throw new Error("missing token: open the page with ?token=<dispatcher token>");
    await verifyToken(credentials, token, ["dispatcher"]);
  };
  const web = createWebRoutes({
    source: "registry",
    snapshot: () => registryDashboard(core),
    authorize: authorizeDashboard,
  });
  const actorEvents = createActorEventsRoute(core.actorEvents, authorizeDashboard);
  const route = async (req: IncomingMessage, res: ServerResponse, url: URL) =>
    (await web.handle(req, res, url)) ||
    (await actorEvents(req, res, url)) ||
    (await roomApi(req, res, url)) ||
    api(req, res, url);
  const server = createGatewayServer(
    {
      request: route,
      upgrade(req, socket, head, url) {
        if (url.pathname === "/agent") return gateway.handleUpgrade(req, socket, head);
        if (RoomHub.matches(url.pathname)) return rooms.handleUpgrade(req, socket, head);
        throw new HttpError(404, "no WebSocket endpoint at this path: workers use /agent, rooms /rooms/<id>");
      },
    },
    { ...DEFAULT_HTTP_LIMITS, ...options.httpLimits },
    logger,
  );
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(options.port ?? 7880, host, () => {
        server.off("error", reject);
        resolve();
      });
    });
  } catch (error) {
    await cluster?.close();
    throw error;
  }
  const port = (server.address() as AddressInfo).port;
  url = `http://${host.includes(":") ? `[${host}]` : host}:${port}`;
  logger.info({ url, ...(cluster ? { nodeId: cluster.nodeId } : {}) }, "registry listening");
  const registry: Registry = {
    port,
    url,
    workers: () => core.describeWorkers(),
    jobs: (filter) => core.store.list(filter),
    job: (id) => core.store.get(id),
    dispatch: (request) => core.dispatch(request),
    cancel: (jobId, reason) => core.cancel(jobId, reason),
    async close() {
      web.close();
      core.close();
      await gateway.shutdown();
      await rooms.close();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      if (cluster) await cluster.close();
      else await core.store.close();
    },
  };
  internals.set(registry, { core, gateway, rooms, server });
  return registry;
}
