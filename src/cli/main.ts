import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { Command, InvalidArgumentError } from "commander";
import { z } from "zod";
import { mintToken, ROLES, type Role } from "../auth/tokens.ts";
import { createLogger } from "../observability/logger.ts";
import { LOG_LEVELS, type LogLevel } from "../options.ts";
import { createRegistry, type Registry } from "../registry/server.ts";
import type { JobRecord } from "../registry/store.ts";
import { SignalGestures } from "../util/signal-gestures.ts";
import { findTsxLoader, RUNNING_FROM_SOURCES, TYPESCRIPT_FILE, tsxMissing } from "../util/tsx-loader.ts";
import { installLauncherHook } from "../worker/launcher.ts";
import { devCredentialsFile, startDev } from "./dev.ts";
import { finalLine, jobDetails, jobsTable, type WorkerRow, workersTable } from "./format.ts";
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

/** HS256 keys shorter than the hash (32 bytes) are weak; the registry refuses them too. */
const MIN_SECRET_BYTES = 32;

function registryCredentials(opts: { apiKey?: string; apiSecret?: string }) {
  const creds = credentials(opts);
  const bytes = Buffer.byteLength(creds.apiSecret);
  if (bytes < MIN_SECRET_BYTES) {
    throw new CliError(
      `the API secret (--api-secret or TROUPE_API_SECRET) is ${bytes} bytes; a registry needs at least ${MIN_SECRET_BYTES}. Make one with: openssl rand -hex 32`,
    );
  }
  return creds;
}

function logLevel(value: unknown): LogLevel {
  const level = String(value).toUpperCase();
  if (!LOG_LEVELS.includes(level as LogLevel))
    throw new CliError(`--log-level must be one of ${LOG_LEVELS.join(", ")}`);
  return level as LogLevel;
}

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

/**
 * Lets this process import a TypeScript agent: tsx's loader, an optional peer dependency, loaded only
 * here. (Its job processes get their own, see src/worker/job-exec-argv.ts.) Run from troupe's sources
 * (bin/troupe.mjs) tsx is loaded already.
 */
async function loadTypeScriptSupport(modulePath: string): Promise<void> {
  if (!TYPESCRIPT_FILE.test(modulePath) || RUNNING_FROM_SOURCES) return;
  const loader = findTsxLoader(modulePath);
  if (!loader) throw new CliError(tsxMissing(modulePath, "troupe start").message);
  await import(loader);
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
      // The first signal closes the registry (once it is up, if it comes during the start); copies of
      // the same Ctrl-C (npm, a shell) count once, and a second, deliberate one exits at once.
      let registry: Registry | undefined;
      let stopAsked = false;
      const close = (running: Registry) =>
        running.close().then(
          () => process.exit(0),
          (error: Error) => {
            logger.error({ err: error.message }, "registry did not close cleanly");
            process.exit(1);
          },
        );
      const gestures = new SignalGestures();
      const onSignal = (signal: NodeJS.Signals) => {
        const gesture = gestures.next();
        if (gesture === 1) {
          logger.info({ signal }, "registry stopping; a second signal exits at once");
          stopAsked = true;
          if (registry) close(registry);
        } else if (gesture > 1) {
          logger.warn({ signal }, "registry exiting now");
          process.exit(1);
        }
      };
      process.on("SIGTERM", onSignal);
      process.on("SIGINT", onSignal);
      registry = await createRegistry({
        ...registryCredentials(opts),
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
      if (stopAsked) close(registry);
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
        // The same keys on every run (kept in ~/.troupe), so open pages' tokens survive a restart.
        ...(apiKey && apiSecret ? { credentials: { apiKey, apiSecret } } : { credentialsFile: devCredentialsFile() }),
      });
      process.stdout.write(
        `\ntroupe dev: ${path}\n  playground  ${session.playgroundUrl}\n  dashboard   ${session.dashboardUrl}\n  registry    ${session.registry.url}\n\n`,
      );
      // Ctrl-C: the worker drains (a copy of the same Ctrl-C from npm or a shell counts once); a
      // second Ctrl-C stops its jobs at once. The workers get each gesture from here, exactly once.
      const onSignal = (signal: NodeJS.Signals) => session.signal(signal);
      process.on("SIGTERM", onSignal);
      process.on("SIGINT", onSignal);
      session.closed.then(
        (code) => process.exit(code),
        () => process.exit(1),
      );
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
    .description(
      "run a production worker for an agent module: it registers with the registry and takes jobs, whatever the module's `register` option says (the module calls new WorkerJob(...).start())",
    )
    .argument("<module>", "path to the agent module")
    .option("--url <url>", "registry URL (default: the module's registryUrl, or TROUPE_URL)")
    .option("--log-level <level>", "DEBUG, INFO, WARN or ERROR (default: the module's logLevel)")
    .action(async (modulePath: string, opts) => {
      const path = resolve(modulePath);
      if (!existsSync(path)) throw new CliError(`no agent module at ${path}`);
      const level = opts.logLevel === undefined ? undefined : logLevel(opts.logLevel);
      await loadTypeScriptSupport(path);
      // The module's `new WorkerJob(...).start()` applies these on top of its own options.
      installLauncherHook({
        overrides: {
          register: true,
          ...(opts.url ? { registryUrl: opts.url } : {}),
          ...(level ? { logLevel: level } : {}),
        },
      });
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
    .option("--wait", "wait for the job's outcome and print it; exit 0 only when it completed")
    .option("--json", "print the job record as JSON")
    .action(async (agent: string, opts) => {
      let metadata: unknown;
      try {
        metadata = JSON.parse(opts.metadata);
      } catch {
        throw new CliError("--metadata must be JSON");
      }
      if (metadata === null || typeof metadata !== "object" || Array.isArray(metadata)) {
        throw new CliError("--metadata must be a JSON object");
      }
      const c = await client(opts);
      const answer = (await c.dispatch({
        agent_name: agent,
        ...(opts.room ? { room_id: opts.room } : {}),
        metadata: metadata as Record<string, unknown>,
        ...(opts.idempotencyKey ? { idempotency_key: opts.idempotencyKey } : {}),
        ...(opts.maxDuration !== undefined ? { max_duration: opts.maxDuration } : {}),
        ...(opts.redispatch ? { redispatch: true } : {}),
      })) as { job: JobRecord; created: boolean };
      const { job } = answer;
      if (!opts.wait) {
        if (opts.json) return print(answer);
        const room = job.roomId ? `, room ${job.roomId}` : "";
        const again = answer.created ? "" : " (already dispatched with this idempotency key)";
        process.stdout.write(`job ${job.id} ${job.status}: agent ${job.agentName}${room}${again}\n`);
        return;
      }
      // Progress goes to stderr, so stdout holds only the outcome.
      process.stderr.write(
        `job ${job.id} dispatched: agent ${job.agentName}${job.roomId ? `, room ${job.roomId}` : ""}\n`,
      );
      const final = await c.waitForFinal(job.id, (now) => {
        if (now.status === "running")
          process.stderr.write(`job ${now.id} running${now.workerId ? ` on ${now.workerId}` : ""}\n`);
      });
      if (opts.json) print({ job: final });
      else process.stdout.write(finalLine(final));
      if (final.status !== "completed") process.exitCode = 1;
    });

  withClient(program.command("jobs"))
    .description("list jobs, or show one")
    .argument("[id]", "a job id")
    .option("--status <status>", "only jobs with this status")
    .option("--agent <agent>", "only jobs of this agent")
    .option("--cancel", "cancel the job given by id")
    .option("--json", "print JSON instead of a table")
    .action(async (id: string | undefined, opts) => {
      if (opts.cancel && !id) throw new CliError("--cancel needs the job's id: troupe jobs <id> --cancel");
      const c = await client(opts);
      if (id) {
        const answer = (await (opts.cancel ? c.cancel(id) : c.job(id))) as { job: JobRecord };
        if (opts.json) return print(answer);
        if (opts.cancel) process.stdout.write(`cancelling job ${id}\n`);
        process.stdout.write(jobDetails(answer.job));
        return;
      }
      const answer = (await c.jobs({ status: opts.status, agent: opts.agent })) as { jobs: JobRecord[] };
      if (opts.json) return print(answer);
      process.stdout.write(jobsTable(answer.jobs));
    });

  withClient(program.command("workers"))
    .description("list the workers connected to a registry")
    .option("--json", "print JSON instead of a table")
    .action(async (opts) => {
      const answer = (await (await client(opts)).workers()) as { workers: WorkerRow[] };
      if (opts.json) return print(answer);
      process.stdout.write(workersTable(answer.workers));
    });

  program
    .command("connect")
    .description(
      "join a room from this terminal: prints what is said, sends each line you type (Ctrl-D or /leave leaves)",
    )
    .requiredOption("--room <id>", "the room")
    .option("--url <url>", "the room hub: a registry, or a local-mode worker (default TROUPE_URL)")
    .option("--token <token>", "participant token for the room (default TROUPE_ROOM_TOKEN, or minted from the API key)")
    .option("--name <name>", "your display name in the room (default your user name)")
    .option("--api-key <key>", "API key (default TROUPE_API_KEY)")
    .option("--api-secret <secret>", "API secret (default TROUPE_API_SECRET)")
    .action(async (opts) => {
      const { connectCommand } = await import("./connect.ts");
      process.exitCode = await connectCommand(opts);
    });

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
