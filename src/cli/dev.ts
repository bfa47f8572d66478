import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { basename, dirname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { type FSWatcher, watch } from "chokidar";
import { EXIT_FORCED } from "../../machines/worker.ts";
import type { Credentials } from "../auth/tokens.ts";
import { mintToken } from "../auth/tokens.ts";
import type { Logger } from "../observability/logger.ts";
import { createRegistry, type Registry } from "../registry/server.ts";
import { SIGNAL_GESTURE_WINDOW_MS, SignalGestures } from "../util/signal-gestures.ts";
import { findTsxLoader, RUNNING_FROM_SOURCES, TYPESCRIPT_FILE, tsxMissing } from "../util/tsx-loader.ts";

export interface DevSettings {
  modulePath: string;
  host: string;
  port: number;
  /** The registry's key pair. Default: the one kept in `credentialsFile`, else a new random one. */
  credentials?: Credentials;
  /**
   * A file that keeps the key pair across restarts (created on first use, readable by this user
   * only), so tokens in open pages stay valid when `troupe dev` restarts. See devCredentialsFile().
   */
  credentialsFile?: string;
  logger: Logger;
  /** Restart the worker when files next to the agent change (default true). */
  watch?: boolean;
  /** Milliseconds of quiet after a change before the restart (editors and `git checkout` write in bursts). */
  debounceMs?: number;
  /** Where the worker's own output goes (default: this terminal). */
  workerOutput?: "inherit" | "ignore";
  /** Lines for the person at the terminal (reloads, drains, stopping), whatever the log level. Default: stdout. */
  print?: (line: string) => void;
}

export interface DevExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface DevSession {
  registry: Registry;
  playgroundUrl: string;
  dashboardUrl: string;
  dispatcherToken: string;
  /** The worker process now serving (it changes on every reload). */
  worker(): ChildProcess;
  /** Called with each worker process as it starts. */
  onWorker(listener: (child: ChildProcess) => void): void;
  /** Called on each reload with the files that changed. */
  onReload(listener: (files: string[]) => void): void;
  /**
   * A SIGINT or SIGTERM `troupe dev` received. Copies of one gesture (within a second: npm or a
   * shell relaying the terminal's Ctrl-C) count once. The first gesture drains and stops: the
   * workers finish their running jobs (bounded by their drainTimeout), then the registry closes;
   * the second stops the workers' jobs at once (`worker_shutdown`); the third kills the workers.
   */
  signal(signal: NodeJS.Signals): void;
  /**
   * Drains and stops, as the first Ctrl-C does; resolves with the exit code (0 when every worker
   * drained cleanly). `killAfterMs`: workers still alive that long after are SIGKILLed (tests).
   */
  stop(options?: { killAfterMs?: number }): Promise<number>;
  /** Resolves with the exit code once everything stopped, however the stop began. */
  readonly closed: Promise<number>;
}

/** Folders never watched; and dotfiles, but for `.env` files. */
const IGNORED_DIRS = new Set(["node_modules", ".git", "dist", "coverage"]);
/** What a change of reloads the worker: code and JSON (editors' temp and swap files never match). */
const SOURCE_FILE = /\.(?:[cm]?[jt]sx?|json)$/i;
const isEnvFile = (name: string) => name === ".env" || name.startsWith(".env.");

function ignoredPath(root: string, path: string): boolean {
  const rel = relative(root, path);
  if (!rel || rel.startsWith("..")) return false;
  return rel.split(sep).some((part) => IGNORED_DIRS.has(part) || (part.startsWith(".") && !isEnvFile(part)));
}

function reloadsOn(root: string, path: string): boolean {
  const name = basename(path);
  return !ignoredPath(root, path) && (SOURCE_FILE.test(name) || isEnvFile(name));
}

const devWorkerMain = fileURLToPath(new URL(`./dev-worker.${RUNNING_FROM_SOURCES ? "ts" : "js"}`, import.meta.url));

/**
 * The `--import` that lets the worker load the agent: tsx when the agent is TypeScript (or troupe
 * itself runs from its sources), nothing for a JavaScript agent of a compiled troupe. The worker's
 * job processes inherit it.
 */
function devWorkerLoader(modulePath: string): string[] {
  if (!RUNNING_FROM_SOURCES && !TYPESCRIPT_FILE.test(modulePath)) return [];
  const loader = findTsxLoader(modulePath);
  if (!loader) throw tsxMissing(modulePath, "troupe dev");
  return ["--import", loader];
}

/** Where `troupe dev` keeps its key pair: `$TROUPE_HOME/dev-credentials.json`, default `~/.troupe/`. */
export function devCredentialsFile(env: NodeJS.ProcessEnv = process.env): string {
  return join(env.TROUPE_HOME || join(homedir(), ".troupe"), "dev-credentials.json");
}

/** The dev key pair kept in `file`; created on first use (folder 0700, file 0600). */
export function loadDevCredentials(file: string): Credentials {
  const read = (): Credentials | undefined => {
    let raw: string;
    try {
      raw = readFileSync(file, "utf8");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw error;
    }
    try {
      const parsed = JSON.parse(raw) as { apiKey?: unknown; apiSecret?: unknown };
      if (typeof parsed.apiKey === "string" && parsed.apiKey && typeof parsed.apiSecret === "string") {
        if (parsed.apiSecret.length >= 32) return { apiKey: parsed.apiKey, apiSecret: parsed.apiSecret };
      }
    } catch {
      // not JSON: replaced below
    }
    return undefined;
  };
  const kept = read();
  if (kept) return kept;
  const fresh: Credentials = { apiKey: "troupe-dev", apiSecret: randomBytes(32).toString("hex") };
  const text = `${JSON.stringify(fresh, null, 2)}\n`;
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  try {
    writeFileSync(file, text, { mode: 0o600, flag: "wx" });
    return fresh;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
  }
  // Another `troupe dev` wrote it meanwhile (use that one), or it was unreadable (replace it).
  const theirs = read();
  if (theirs) return theirs;
  writeFileSync(file, text, { mode: 0o600 });
  return fresh;
}

interface DevWorker {
  child: ChildProcess;
  exit: Promise<DevExit>;
  /** performance.now() of the last signal sent to it. */
  signalledAt: number;
  /** When it was told to drain because a reload replaced it. */
  retiredAt: number | undefined;
}

const alive = (w: DevWorker) => w.child.exitCode === null && w.child.signalCode === null;
const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

/**
 * `troupe dev`: an embedded registry (with its room hub, dashboard and playground) and one worker
 * process for the agent, which registers with it. When a file in the agent's folder changes, a new
 * worker starts and the old one drains (its jobs finish; new jobs go to the new one).
 *
 * Workers run in sessions of their own: the terminal's Ctrl-C reaches only this process, which hands
 * each gesture on to each worker exactly once (never a copy the worker could take for a second
 * Ctrl-C), and a worker draining after a reload is not stopped by the Ctrl-C meant to drain.
 */
export async function startDev(settings: DevSettings): Promise<DevSession> {
  const modulePath = resolve(settings.modulePath);
  if (!existsSync(modulePath)) throw new Error(`no agent module at ${modulePath}`);
  // Before the registry starts: a TypeScript agent without tsx is an error to report, not a worker that dies.
  const loader = devWorkerLoader(modulePath);
  const { logger } = settings;
  const print = settings.print ?? ((line: string) => process.stdout.write(`${line}\n`));
  let credentials = settings.credentials;
  if (!credentials && settings.credentialsFile) {
    try {
      credentials = loadDevCredentials(settings.credentialsFile);
    } catch (error) {
      logger.warn(
        { file: settings.credentialsFile, err: (error as Error).message },
        "cannot keep the dev keys in a file: using new ones (open pages need the new URL)",
      );
    }
  }
  const keys: Credentials = credentials ?? { apiKey: "troupe-dev", apiSecret: randomBytes(32).toString("hex") };
  const registry = await createRegistry({ ...keys, host: settings.host, port: settings.port, logger });
  const dispatcherToken = await mintToken(keys, { role: "dispatcher", ttl: 24 * 3600 });
  const query = `?token=${encodeURIComponent(dispatcherToken)}`;
  const workerListeners: ((child: ChildProcess) => void)[] = [];
  const reloadListeners: ((files: string[]) => void)[] = [];
  const workers = new Set<DevWorker>();
  const root = dirname(modulePath);
  const gestures = new SignalGestures();
  let stopping = false;
  let forcing = false;

  /** Sends a signal the worker will not take for a copy of the previous one (it is a gesture of its own). */
  const signalWorker = (w: DevWorker, signal: NodeJS.Signals) => {
    const send = () => {
      if (!alive(w)) return;
      w.signalledAt = performance.now();
      w.child.kill(signal);
    };
    const wait = w.signalledAt + SIGNAL_GESTURE_WINDOW_MS + 50 - performance.now();
    if (wait > 0) setTimeout(send, wait).unref();
    else send();
  };

  const spawnWorker = (): DevWorker => {
    const output = settings.workerOutput ?? "inherit";
    const child = spawn(process.execPath, [...loader, devWorkerMain, modulePath], {
      stdio: ["ignore", output, output, "ipc"],
      // A session of its own: terminal signals reach only `troupe dev`, which forwards each once.
      detached: true,
      env: {
        ...process.env,
        TROUPE_URL: registry.url,
        TROUPE_API_KEY: keys.apiKey,
        TROUPE_API_SECRET: keys.apiSecret,
      },
    });
    const worker: DevWorker = {
      child,
      signalledAt: Number.NEGATIVE_INFINITY,
      retiredAt: undefined,
      exit: new Promise<DevExit>((done) => {
        child.once("exit", (code, signal) => done({ code, signal }));
        child.once("error", (error) => {
          logger.error({ err: error.message }, "could not start the agent's worker");
          done({ code: 1, signal: null });
        });
      }),
    };
    workers.add(worker);
    worker.exit.then(
      ({ code, signal }) => {
        workers.delete(worker);
        if (!stopping && worker === current) {
          logger.warn({ code, signal }, "the agent's worker exited; it restarts when you save a file");
        }
      },
      () => {},
    );
    for (const listener of workerListeners) listener(child);
    return worker;
  };

  /** A reload replaced this worker: it drains (no new jobs; running ones finish, ≤ its drainTimeout). */
  const retire = (w: DevWorker) => {
    if (!alive(w)) return;
    w.retiredAt = performance.now();
    signalWorker(w, "SIGTERM");
    w.exit.then(
      ({ code, signal }) => {
        if (forcing) return;
        const pid = w.child.pid;
        const took = seconds(performance.now() - (w.retiredAt ?? 0));
        if (code === 0) {
          print(`[troupe dev] old worker ${pid} drained and exited after ${took}`);
        } else if (code === EXIT_FORCED) {
          print(
            `[troupe dev] old worker ${pid} reached its drainTimeout after ${took}: the jobs still running were stopped (failed worker_shutdown)`,
          );
        } else if (code === null && signal === "SIGTERM") {
          print(`[troupe dev] old worker ${pid} stopped (it was still loading the agent)`);
        } else {
          print(`[troupe dev] old worker ${pid} exited (${signal ?? `code ${code}`}) after ${took}`);
        }
        logger.info(
          { pid, code, signal, drainMs: Math.round(performance.now() - (w.retiredAt ?? 0)) },
          "old worker gone",
        );
      },
      () => {},
    );
  };

  let current = spawnWorker();

  const reload = (files: string[]) => {
    if (stopping) return;
    const old = current;
    current = spawnWorker();
    const names = files.map((file) => relative(root, file) || basename(file));
    const shown = names.length > 3 ? `${names.slice(0, 3).join(", ")} and ${names.length - 3} more` : names.join(", ");
    print(
      `[troupe dev] reloading (${shown}): new worker ${current.child.pid}; the old one (${old.child.pid}) drains its running jobs`,
    );
    logger.info({ files: names, oldPid: old.child.pid, newPid: current.child.pid }, "agent changed: reloading");
    retire(old);
    for (const listener of reloadListeners) listener(files);
  };

  let watcher: FSWatcher | undefined;
  let debounce: NodeJS.Timeout | undefined;
  if (settings.watch ?? true) {
    const changed = new Set<string>();
    // chokidar, not fs.watch: Node 20's recursive fs.watch stops seeing a file after an editor's
    // atomic save (write a temp file, rename it over), and after `git checkout` replaces folders.
    watcher = watch(root, { ignoreInitial: true, ignored: (path) => ignoredPath(root, path) });
    const onChange = (path: string) => {
      if (stopping || !reloadsOn(root, path)) return;
      changed.add(path);
      clearTimeout(debounce);
      debounce = setTimeout(() => {
        const files = [...changed];
        changed.clear();
        reload(files);
      }, settings.debounceMs ?? 200);
    };
    watcher.on("add", onChange).on("change", onChange).on("unlink", onChange);
    watcher.on("error", (error) => logger.warn({ err: String(error) }, "file watcher error"));
    const ready = watcher;
    await new Promise<void>((done) => ready.once("ready", () => done()));
  }

  let resolveClosed: (code: number) => void = () => {};
  const closed = new Promise<number>((done) => {
    resolveClosed = done;
  });
  let closing: Promise<number> | undefined;

  /** Stops watching, has `begin` tell each live worker to drain, waits for all to exit, closes the registry. */
  const shutdown = (begin: (w: DevWorker) => void, killAfterMs?: number): Promise<number> => {
    if (closing) return closing;
    stopping = true;
    clearTimeout(debounce);
    closing = (async () => {
      await watcher?.close();
      const live = [...workers].filter(alive);
      // A worker already draining after a reload needs nothing more: its jobs finish as they would.
      for (const w of live) if (w.retiredAt === undefined) begin(w);
      const killer =
        killAfterMs === undefined
          ? undefined
          : setTimeout(() => {
              for (const w of live) if (alive(w)) w.child.kill("SIGKILL");
            }, killAfterMs);
      const exits = await Promise.all(live.map((w) => w.exit));
      clearTimeout(killer);
      await registry.close();
      // A worker still loading the module when told to drain just ends by that signal: not a failure.
      const failed = exits.find(
        (exit) => exit.code !== 0 && !(exit.code === null && (exit.signal === "SIGINT" || exit.signal === "SIGTERM")),
      );
      return failed ? (failed.code ?? 1) : 0;
    })();
    closing.then(resolveClosed, () => resolveClosed(1));
    return closing;
  };

  return {
    registry,
    dispatcherToken,
    playgroundUrl: `${registry.url}/playground${query}`,
    dashboardUrl: `${registry.url}/dashboard${query}`,
    worker: () => current.child,
    onWorker: (listener) => workerListeners.push(listener),
    onReload: (listener) => reloadListeners.push(listener),
    closed,
    signal(signal) {
      const gesture = gestures.next();
      if (gesture === 0) return;
      if (gesture === 1) {
        print("[troupe dev] stopping: the worker drains (its running jobs finish); Ctrl-C again stops them at once");
        shutdown((w) => signalWorker(w, signal)).then(
          () => {},
          (error: Error) => logger.error({ err: error.message }, "troupe dev did not stop cleanly"),
        );
      } else if (gesture === 2) {
        forcing = true;
        print("[troupe dev] stopping now: running jobs are stopped (worker_shutdown); Ctrl-C again kills the workers");
        for (const w of workers) signalWorker(w, signal);
      } else {
        print("[troupe dev] killing the workers");
        for (const w of workers) if (alive(w)) w.child.kill("SIGKILL");
      }
    },
    stop: (options = {}) => shutdown((w) => signalWorker(w, "SIGTERM"), options.killAfterMs),
  };
}
