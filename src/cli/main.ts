import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { Command, InvalidArgumentError } from "commander";
import { z } from "zod";
import { createLogger } from "../observability/logger.ts";
import { LOG_LEVELS, type LogLevel } from "../options.ts";
import { mintToken, ROLES, type Role } from "../registry/auth.ts";
import { createRegistry } from "../registry/server.ts";
import { startDev } from "./dev.ts";
import { RegistryClient, RegistryClientError } from "./registry-client.ts";

const env = process.env;

function intOption(name: string) {
  return (value: string) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`${name} must be a whole number`);
    return n;
  };
}

function credentials(opts: { apiKey?: string; apiSecret?: string }) {
  const apiKey = opts.apiKey ?? env.TROUPE_API_KEY;
  const apiSecret = opts.apiSecret ?? env.TROUPE_API_SECRET;
  if (!apiKey || !apiSecret) {
    throw new CliError("needs an API key and secret: --api-key/--api-secret or TROUPE_API_KEY/TROUPE_API_SECRET");
  }
  return { apiKey, apiSecret };
}

class CliError extends Error {}

async function client(opts: { url?: string; token?: string; apiKey?: string; apiSecret?: string }) {
  const url = opts.url ?? env.TROUPE_URL;
  if (!url) throw new CliError("needs the registry URL: --url or TROUPE_URL");
  const token =
    opts.token ?? env.TROUPE_AUTH_TOKEN ?? (await mintToken(credentials(opts), { role: "dispatcher", ttl: 300 }));
  return new RegistryClient(url, token);
}

function print(value: unknown) {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

export function buildProgram(): Command {
  const program = new Command("troupe")
    .description("Run real-time AI agents as jobs in pre-warmed processes, balanced by a registry.")
    .showHelpAfterError();

  program
    .command("registry")
    .description("run a registry: workers connect at /agent, jobs are dispatched over HTTP")
    .option("--host <host>", "bind address", env.TROUPE_HOST ?? "127.0.0.1")
    .option("--port <port>", "port (0 picks a free one)", intOption("--port"), Number(env.TROUPE_PORT ?? 7880))
    .option("--api-key <key>", "API key (default TROUPE_API_KEY)")
    .option("--api-secret <secret>", "API secret (default TROUPE_API_SECRET)")
    .option("--log-level <level>", "DEBUG, INFO, WARN or ERROR", "INFO")
    .option(
      "--redis <url>",
      "share job records and workers with other registry nodes through this Redis (default TROUPE_REDIS_URL)",
    )
    .option("--redis-prefix <prefix>", "Redis key prefix; every node of one cluster uses the same", "troupe:")
    .option("--public-url <url>", "the URL job processes use to reach this node's room hub")
    .option(
      "--max-token-lifetime <seconds>",
      "refuse tokens that live longer (default 7 days)",
      intOption("--max-token-lifetime"),
    )
    .option("--retain-records <n>", "final job records kept (default 100000)", intOption("--retain-records"))
    .option("--retain-bytes <n>", "bytes of final job records kept (default 268435456)", intOption("--retain-bytes"))
    .option("--max-connections <n>", "open connections (default 20000)", intOption("--max-connections"))
    .action(async (opts) => {
      const level = String(opts.logLevel).toUpperCase();
      if (!LOG_LEVELS.includes(level as LogLevel))
        throw new CliError(`--log-level must be one of ${LOG_LEVELS.join(", ")}`);
      const logger = createLogger(level as LogLevel);
      const redisUrl: string | undefined = opts.redis ?? env.TROUPE_REDIS_URL;
      const registry = await createRegistry({
        ...credentials(opts),
        host: opts.host,
        port: opts.port,
        logger,
        ...(redisUrl ? { redis: { url: redisUrl, prefix: opts.redisPrefix } } : {}),
        ...(opts.publicUrl ? { publicUrl: opts.publicUrl } : {}),
        ...(opts.maxTokenLifetime ? { maxTokenLifetimeSeconds: opts.maxTokenLifetime } : {}),
        retention: {
          ...(opts.retainRecords !== undefined ? { retainRecords: opts.retainRecords } : {}),
          ...(opts.retainBytes !== undefined ? { retainBytes: opts.retainBytes } : {}),
        },
        ...(opts.maxConnections ? { httpLimits: { maxConnections: opts.maxConnections } } : {}),
      });
      const stop = async () => {
        logger.info("registry stopping");
        await registry.close();
        process.exit(0);
      };
      process.once("SIGTERM", stop);
      process.once("SIGINT", stop);
    });

  program
    .command("dev")
    .description(
      "develop an agent: an embedded registry, room hub, dashboard and playground, and a worker that restarts when you save",
    )
    .argument("<module>", "path to the agent module (it calls new WorkerJob(...).start())")
    .option("--host <host>", "bind address", "127.0.0.1")
    .option("--port <port>", "registry port (0 picks a free one)", intOption("--port"), Number(env.TROUPE_PORT ?? 7880))
    .option("--no-watch", "do not restart the worker when files change")
    .option("--log-level <level>", "DEBUG, INFO, WARN or ERROR", "WARN")
    .action(async (modulePath: string, opts) => {
      const path = resolve(modulePath);
      if (!existsSync(path)) throw new CliError(`no agent module at ${path}`);
      const level = String(opts.logLevel).toUpperCase();
      if (!LOG_LEVELS.includes(level as LogLevel))
        throw new CliError(`--log-level must be one of ${LOG_LEVELS.join(", ")}`);
      const logger = createLogger(level as LogLevel);
      const apiKey = env.TROUPE_API_KEY;
      const apiSecret = env.TROUPE_API_SECRET;
      const session = await startDev({
        modulePath: path,
        host: opts.host,
        port: opts.port,
        logger,
        watch: opts.watch,
        ...(apiKey && apiSecret ? { credentials: { apiKey, apiSecret } } : {}),
      });
      process.stdout.write(
        `\ntroupe dev: ${path}\n  playground  ${session.playgroundUrl}\n  dashboard   ${session.dashboardUrl}\n  registry    ${session.registry.url}\n\n`,
      );
      let stopping = false;
      const stop = async () => {
        if (stopping) return;
        stopping = true;
        await session.stop();
        process.exit(0);
      };
      process.on("SIGTERM", stop);
      process.on("SIGINT", stop);
    });

  program
    .command("token")
    .description("mint a token for a worker, a dispatcher or a room participant")
    .option("--role <role>", `one of ${ROLES.join(", ")}`, "dispatcher")
    .option("--room <room>", "the room a participant token is for")
    .option("--ttl <seconds>", "lifetime in seconds", intOption("--ttl"), 3600)
    .option("--api-key <key>", "API key (default TROUPE_API_KEY)")
    .option("--api-secret <secret>", "API secret (default TROUPE_API_SECRET)")
    .action(async (opts) => {
      const role = z.enum(ROLES).safeParse(opts.role);
      if (!role.success) throw new CliError(`--role must be one of ${ROLES.join(", ")}`);
      const token = await mintToken(credentials(opts), { role: role.data as Role, ttl: opts.ttl, room: opts.room });
      process.stdout.write(`${token}\n`);
    });

  program
    .command("start")
    .description("run a production worker for an agent module (the module calls new WorkerJob(...).start())")
    .argument("<module>", "path to the agent module")
    .action(async (modulePath: string) => {
      const path = resolve(modulePath);
      if (!existsSync(path)) throw new CliError(`no agent module at ${path}`);
      await import(pathToFileURL(path).href);
    });

  const withClient = (command: Command) =>
    command
      .option("--url <url>", "registry URL (default TROUPE_URL)")
      .option("--token <token>", "dispatcher token (default TROUPE_AUTH_TOKEN, or minted from the API key)")
      .option("--api-key <key>", "API key (default TROUPE_API_KEY)")
      .option("--api-secret <secret>", "API secret (default TROUPE_API_SECRET)");

  withClient(program.command("dispatch"))
    .description("dispatch an agent into a room")
    .argument("<agent>", "agent name")
    .option("--room <room>", "room id")
    .option("--metadata <json>", "job metadata as JSON", "{}")
    .option("--idempotency-key <key>", "the same key returns the same job")
    .option("--max-duration <seconds>", "stop the job after this long", intOption("--max-duration"))
    .option("--redispatch", "dispatch again if the worker running it is lost")
    .action(async (agent: string, opts) => {
      let metadata: unknown;
      try {
        metadata = JSON.parse(opts.metadata);
      } catch {
        throw new CliError("--metadata must be JSON");
      }
      print(
        await (await client(opts)).dispatch({
          agent_name: agent,
          ...(opts.room ? { room_id: opts.room } : {}),
          metadata: metadata as Record<string, unknown>,
          ...(opts.idempotencyKey ? { idempotency_key: opts.idempotencyKey } : {}),
          ...(opts.maxDuration !== undefined ? { max_duration: opts.maxDuration } : {}),
          ...(opts.redispatch ? { redispatch: true } : {}),
        }),
      );
    });

  withClient(program.command("jobs"))
    .description("list jobs, or show one")
    .argument("[id]", "a job id")
    .option("--status <status>", "only jobs with this status")
    .option("--agent <agent>", "only jobs of this agent")
    .option("--cancel", "cancel the job given by id")
    .action(async (id: string | undefined, opts) => {
      const c = await client(opts);
      if (id && opts.cancel) return print(await c.cancel(id));
      if (id) return print(await c.job(id));
      print(await c.jobs({ status: opts.status, agent: opts.agent }));
    });

  withClient(program.command("workers"))
    .description("list the workers connected to a registry")
    .action(async (opts) => print(await (await client(opts)).workers()));

  return program;
}

export async function main(argv = process.argv): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (error) {
    const message =
      error instanceof CliError || error instanceof RegistryClientError ? error.message : (error as Error).message;
    process.stderr.write(`troupe: ${message}\n`);
    process.exitCode = 1;
  }
}
