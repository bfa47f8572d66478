import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, type FSWatcher, watch } from "node:fs";
import { createRequire } from "node:module";
import { dirname, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import type { Logger } from "../observability/logger.ts";
import type { Credentials } from "../registry/auth.ts";
import { mintToken } from "../registry/auth.ts";
import { createRegistry, type Registry } from "../registry/server.ts";

export interface DevSettings {
  modulePath: string;
  host: string;
  port: number;
  credentials?: Credentials;
  logger: Logger;
  /** Restart the worker when files next to the agent change (default true). */
  watch?: boolean;
  /** Milliseconds of quiet after a change before the restart (editors write in bursts). */
  debounceMs?: number;
  /** How long a replaced or stopping worker may drain before it is killed. */
  drainGraceMs?: number;
  /** Where the worker's own output goes (default: this terminal). */
  workerOutput?: "inherit" | "ignore";
}

export interface DevSession {
  registry: Registry;
  playgroundUrl: string;
  dashboardUrl: string;
  dispatcherToken: string;
  /** The worker process now serving (it changes on every restart). */
  worker(): ChildProcess;
  /** Resolves with the pid of each worker as it starts. */
  onWorker(listener: (child: ChildProcess) => void): void;
  stop(): Promise<void>;
}

const IGNORED = /(^|[/\\])(node_modules|\.git|dist|coverage)([/\\]|$)/;
const devWorkerMain = fileURLToPath(
  new URL(`./dev-worker.${import.meta.url.endsWith(".ts") ? "ts" : "js"}`, import.meta.url),
);

/** tsx, resolved from troupe itself, so an agent's project need not install it. */
const tsxLoader = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href;

/** Ends a worker process: SIGTERM (it drains), SIGKILL after the grace; resolves when it is gone. */
function retire(child: ChildProcess, graceMs: number, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((done) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
    child.once("exit", () => {
      clearTimeout(timer);
      done();
    });
    child.kill(signal);
  });
}

/**
 * `troupe dev`: an embedded registry (with its room hub, dashboard and playground) and one worker
 * process for the agent, which registers with it. When a file in the agent's folder changes, a new
 * worker starts and the old one drains (its jobs finish; new jobs go to the new one).
 */
export async function startDev(settings: DevSettings): Promise<DevSession> {
  const modulePath = resolve(settings.modulePath);
  if (!existsSync(modulePath)) throw new Error(`no agent module at ${modulePath}`);
  const { logger } = settings;
  const credentials = settings.credentials ?? {
    apiKey: "troupe-dev",
    apiSecret: randomBytes(24).toString("hex"),
  };
  const registry = await createRegistry({ ...credentials, host: settings.host, port: settings.port, logger });
  const dispatcherToken = await mintToken(credentials, { role: "dispatcher", ttl: 24 * 3600 });
  const query = `?token=${encodeURIComponent(dispatcherToken)}`;
  const listeners: ((child: ChildProcess) => void)[] = [];
  const retiring = new Set<Promise<void>>();
  const graceMs = settings.drainGraceMs ?? 10_000;
  let stopping = false;

  const spawnWorker = () => {
    const child = spawn(process.execPath, ["--import", tsxLoader, devWorkerMain, modulePath], {
      stdio: ["ignore", settings.workerOutput ?? "inherit", settings.workerOutput ?? "inherit"],
      env: {
        ...process.env,
        TROUPE_URL: registry.url,
        TROUPE_API_KEY: credentials.apiKey,
        TROUPE_API_SECRET: credentials.apiSecret,
      },
    });
    child.on("exit", (code, signal) => {
      if (!stopping && child === current) {
        logger.warn({ code, signal }, "the agent's worker exited; it restarts when you save a file");
      }
    });
    for (const listener of listeners) listener(child);
    return child;
  };

  let current = spawnWorker();
  let watcher: FSWatcher | undefined;
  if (settings.watch ?? true) {
    let timer: NodeJS.Timeout | undefined;
    watcher = watch(dirname(modulePath), { recursive: true }, (_event, file) => {
      if (stopping || (file && IGNORED.test(file))) return;
      clearTimeout(timer);
      timer = setTimeout(() => {
        if (stopping) return;
        logger.info({ file }, "agent changed: starting a new worker; the old one drains");
        const old = current;
        current = spawnWorker();
        const gone = retire(old, graceMs);
        retiring.add(gone);
        const forget = () => retiring.delete(gone);
        gone.then(forget, forget);
      }, settings.debounceMs ?? 200);
    });
  }

  return {
    registry,
    dispatcherToken,
    playgroundUrl: `${registry.url}/playground${query}`,
    dashboardUrl: `${registry.url}/dashboard${query}`,
    worker: () => current,
    onWorker: (listener) => listeners.push(listener),
    async stop() {
      stopping = true;
      watcher?.close();
      await Promise.all([retire(current, graceMs), ...retiring]);
      await registry.close();
    },
  };
}
