import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { pino } from "pino";
import { WebSocket } from "ws";
import { mintToken, type Role } from "../../src/auth/tokens.ts";
import { Options, type OptionsInput } from "../../src/options.ts";
import { PROTOCOL_VERSION } from "../../src/protocol/registry.ts";
import { createRegistry, type Registry, type RegistryOptions, registryInternals } from "../../src/registry/server.ts";
import { isFinal, type JobRecord, MemoryJobStore } from "../../src/registry/store.ts";
import type { RegistryTiming } from "../../src/registry/timing.ts";
import { runWorker, type WorkerHandle } from "../../src/worker/runtime.ts";
import { TimeoutError, until, within } from "../support/wait.ts";

export const CREDS = { apiKey: "registry-test-key", apiSecret: "registry-test-secret-0123456789abcdef" };
export const FIXTURE_AGENT = fileURLToPath(new URL("../fixtures/registry/agent.ts", import.meta.url));
export const silent = pino({ level: "silent" });

/** Terminal statuses of a job record. */
export const FINAL = ["completed", "failed", "cancelled", "lost", "rejected"] as const;

// ------------------------------------------------------------------ the job store, recorded

export interface StorePatch {
  at: number;
  status?: JobRecord["status"];
  workerId?: string;
  reason?: string;
}

/**
 * The registry's default store, with every patch recorded and waiters woken on each change. A
 * record "ends twice" when a second patch with a final status arrives for it (the store itself keeps
 * the first one, so only the history shows it).
 */
export class RecordingStore extends MemoryJobStore {
  readonly history = new Map<string, StorePatch[]>();
  readonly created: string[] = [];
  readonly #listeners = new Set<() => void>();

  override async create(record: JobRecord) {
    const result = await super.create(record);
    if (result.created) {
      this.created.push(record.id);
      this.history.set(record.id, [
        {
          at: Date.now(),
          status: record.status,
          ...(record.workerId ? { workerId: record.workerId } : {}),
        },
      ]);
    }
    this.#notify();
    return result;
  }

  override async update(id: string, patch: Partial<JobRecord>) {
    const entry: StorePatch = { at: Date.now() };
    if (patch.status) entry.status = patch.status;
    if (patch.workerId) entry.workerId = patch.workerId;
    if (patch.reason) entry.reason = patch.reason;
    const list = this.history.get(id) ?? [];
    list.push(entry);
    this.history.set(id, list);
    const result = await super.update(id, patch);
    this.#notify();
    return result;
  }

  /** How many patches tried to give the record a final status. More than one: it ended twice. */
  finalPatches(id: string): number {
    return (this.history.get(id) ?? []).filter((p) => p.status && isFinal(p.status)).length;
  }

  /** Every worker the job was ever assigned to (offers it declined do not count). */
  workersOf(id: string): Set<string> {
    return new Set(
      (this.history.get(id) ?? []).flatMap((p) =>
        p.workerId && p.status && p.status !== "pending" && p.status !== "offering" ? [p.workerId] : [],
      ),
    );
  }

  /** Resolves once `predicate` holds for the record (checked now and after every change). */
  async until(
    id: string,
    predicate: (record: JobRecord) => boolean,
    timeoutMs: number,
    what = "it",
  ): Promise<JobRecord> {
    return within(
      `job ${id}: ${what}`,
      new Promise<JobRecord>((resolve) => {
        const check = async () => {
          const record = await this.get(id);
          if (record && predicate(record)) {
            this.#listeners.delete(check);
            resolve(record);
          }
        };
        this.#listeners.add(check);
        void check();
      }),
      timeoutMs,
    ).catch(async (error: Error) => {
      const record = await this.get(id);
      throw new TimeoutError(`${error.message}; record: ${JSON.stringify(record)}`);
    });
  }

  untilFinal(id: string, timeoutMs: number): Promise<JobRecord> {
    return this.until(id, (r) => isFinal(r.status), timeoutMs, "a final status");
  }

  #notify(): void {
    for (const listener of [...this.#listeners]) void listener();
  }
}

// ------------------------------------------------------------------ registries

export interface TestRegistry {
  registry: Registry;
  store: RecordingStore;
  url: string;
  dispatcher: string;
  close(): Promise<void>;
}

const openRegistries = new Set<TestRegistry>();

export async function startRegistry(
  timing: Partial<RegistryTiming>,
  extra: Partial<RegistryOptions> = {},
): Promise<TestRegistry> {
  const store = (extra.store as RecordingStore | undefined) ?? new RecordingStore();
  const registry = await createRegistry({
    ...CREDS,
    host: "127.0.0.1",
    port: 0,
    timing,
    logger: silent,
    ...extra,
    store,
  });
  let closed: Promise<void> | undefined;
  const handle: TestRegistry = {
    registry,
    store,
    url: registry.url,
    dispatcher: await mintToken(CREDS, { role: "dispatcher" }),
    close() {
      openRegistries.delete(handle);
      closed ??= registry.close();
      return closed;
    },
  };
  openRegistries.add(handle);
  return handle;
}

/** Closes every registry a test left open. */
export async function closeRegistries(): Promise<void> {
  await Promise.all([...openRegistries].map((r) => r.close()));
}

export const token = (role: Role, ttl?: number) =>
  mintToken(CREDS, { role, ...(ttl ? { ttl } : {}), ...(role === "participant" ? { room: "room-1" } : {}) });

// ------------------------------------------------------------------ HTTP

export interface ApiResponse {
  status: number;
  // biome-ignore lint/suspicious/noExplicitAny: JSON bodies of several shapes; tests read what they expect.
  body: any;
}

export async function api(
  base: string,
  bearer: string | undefined,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<ApiResponse> {
  const response = await fetch(new URL(path, base), {
    method,
    headers: {
      ...(bearer === undefined ? {} : { authorization: `Bearer ${bearer}` }),
      ...(body === undefined ? {} : { "content-type": "application/json" }),
      ...headers,
    },
    ...(body === undefined ? {} : { body: typeof body === "string" ? body : JSON.stringify(body) }),
  });
  const text = await response.text();
  let parsed: unknown = text;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: keep the text
  }
  return { status: response.status, body: parsed };
}

/** POST /v1/jobs with a dispatcher token; returns the job record (throws on a non-2xx answer). */
export async function dispatch(r: TestRegistry, body: Record<string, unknown>): Promise<JobRecord> {
  const response = await api(r.url, r.dispatcher, "POST", "/v1/jobs", body);
  if (response.status !== 201 && response.status !== 200) {
    throw new Error(`dispatch answered ${response.status}: ${JSON.stringify(response.body)}`);
  }
  return response.body.job as JobRecord;
}

// ------------------------------------------------------------------ files

export function tempDir(): { dir: string; remove(): void } {
  const dir = mkdtempSync(join(tmpdir(), "troupe-registry-test-"));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface RunLogEntry {
  jobId: string;
  pid: number;
  worker: string;
  at: number;
}

/** The fixture's record of job starts: one JSON line per entrypoint run. */
export function readRunLog(path: string): RunLogEntry[] {
  let text = "";
  try {
    text = readFileSync(path, "utf8");
  } catch {
    return [];
  }
  return text
    .split("\n")
    .filter(Boolean)
    .map((line) => JSON.parse(line) as RunLogEntry);
}

// ------------------------------------------------------------------ processes

const TAG_VARIABLE = "TROUPE_REGISTRY_TEST_TAG";

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The state follows the command name in parentheses; a zombie is dead, only not reaped yet.
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    return state !== "Z" && state !== "X";
  } catch {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  }
}

/** Processes whose environment carries this tag: everything the tests started, however deep. */
function taggedPids(tag: string): number[] {
  const needle = `${TAG_VARIABLE}=${tag}`;
  const found: number[] = [];
  let entries: string[] = [];
  try {
    entries = readdirSync("/proc");
  } catch {
    return found;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    if (pid === process.pid) continue;
    try {
      const environ = readFileSync(`/proc/${pid}/environ`, "utf8");
      if (environ.split("\0").includes(needle) && alive(pid)) found.push(pid);
    } catch {
      // gone, or not ours
    }
  }
  return found;
}

function kill(pid: number, signal: NodeJS.Signals): void {
  for (const target of [-pid, pid]) {
    try {
      process.kill(target, signal);
    } catch {
      // not a group leader, or already gone
    }
  }
}

/**
 * Keeps every process a test file starts from outliving it: spawned workers, job processes learned
 * from /worker and from the run log, and, as a net under both, every process whose environment
 * carries this file's tag (job processes inherit it from their worker, or from the test process for
 * in-process workers).
 */
export class ProcessGuard {
  readonly tag = `reg-${randomUUID()}`;
  readonly pids = new Set<number>();
  readonly children = new Set<ChildProcess>();

  constructor() {
    // In-process workers fork their job processes with this process's environment.
    process.env[TAG_VARIABLE] = this.tag;
  }

  get env(): Record<string, string> {
    return { [TAG_VARIABLE]: this.tag };
  }

  track(pid: number | null | undefined): void {
    if (typeof pid === "number" && pid > 0) this.pids.add(pid);
  }

  /** Live processes of this file (tracked or tagged), this test process excluded. */
  leftovers(): number[] {
    const candidates = new Set([...this.pids, ...taggedPids(this.tag)]);
    candidates.delete(process.pid);
    return [...candidates].filter(alive);
  }

  /**
   * What is still alive once the processes that end by themselves had the time to: a stopped worker's
   * orphan guardian closes half a second after its last job process exited.
   */
  async leftoversAfterExit(timeoutMs = 5_000): Promise<number[]> {
    await until(() => this.leftovers().length === 0, { label: "the file's processes to exit", timeoutMs }).catch(
      () => undefined,
    );
    return this.leftovers();
  }

  /** SIGKILLs whatever is left and waits until it is gone. Returns what had to be killed. */
  async killAll(): Promise<number[]> {
    const killed = this.leftovers();
    for (const pid of killed) kill(pid, "SIGKILL");
    await until(() => this.leftovers().length === 0, { label: "killed processes to disappear", timeoutMs: 10_000 });
    this.pids.clear();
    this.children.clear();
    return killed;
  }
}

export interface WorkerProcessSettings {
  registryUrl: string;
  name: string;
  maxProcesses?: number;
  idleProcesses?: number;
  /** Distinct per worker: the registry sees it in `register`, so a test can tell workers apart. */
  loadThreshold: number;
  env?: Record<string, string>;
}

export interface WorkerProcess {
  name: string;
  child: ChildProcess;
  pid: number;
  loadThreshold: number;
  /** Parsed JSON log lines (stdout). */
  logs: Record<string, unknown>[];
  stderr: string[];
  /** The worker's health port, from its "worker started" line. */
  port: Promise<number>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Spawns the fixture agent as a worker process (node --import tsx), registering with the registry. */
/** One line of a child's stdout: its JSON log entry, or the plain text as the message. */
export function parseLogLine(line: string): Record<string, unknown> {
  try {
    return JSON.parse(line) as Record<string, unknown>;
  } catch {
    return { msg: line };
  }
}

export function spawnWorker(guard: ProcessGuard, settings: WorkerProcessSettings): WorkerProcess {
  const child = spawn(process.execPath, ["--import", "tsx", FIXTURE_AGENT], {
    env: {
      ...process.env,
      ...guard.env,
      TROUPE_URL: settings.registryUrl,
      TROUPE_API_KEY: CREDS.apiKey,
      TROUPE_API_SECRET: CREDS.apiSecret,
      FIXTURE_NAME: settings.name,
      FIXTURE_MAX_PROCESSES: String(settings.maxProcesses ?? 2),
      FIXTURE_IDLE_PROCESSES: String(settings.idleProcesses ?? 0),
      FIXTURE_LOAD_THRESHOLD: String(settings.loadThreshold),
      ...settings.env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  if (child.pid === undefined) throw new Error(`could not spawn worker ${settings.name}`);
  guard.children.add(child);
  guard.track(child.pid);
  const logs: Record<string, unknown>[] = [];
  const stderr: string[] = [];
  let resolvePort: (port: number) => void = () => {};
  let rejectPort: (error: Error) => void = () => {};
  const port = new Promise<number>((resolve, reject) => {
    resolvePort = resolve;
    rejectPort = reject;
  });
  port.catch(() => {});
  createInterface({ input: child.stdout as NodeJS.ReadableStream }).on("line", (line) => {
    const entry = parseLogLine(line);
    logs.push(entry);
    if (entry.msg === "worker started" && typeof entry.port === "number") resolvePort(entry.port);
    if (typeof entry.jobPid === "number") guard.track(entry.jobPid);
  });
  createInterface({ input: child.stderr as NodeJS.ReadableStream }).on("line", (line) => stderr.push(line));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once("exit", (code, signal) => {
      rejectPort(new Error(`worker ${settings.name} exited (${code ?? signal}) before it started`));
      resolve({ code, signal });
    });
  });
  return {
    name: settings.name,
    child,
    pid: child.pid,
    loadThreshold: settings.loadThreshold,
    logs,
    stderr,
    port,
    exited,
  };
}

export interface WorkerState {
  state: string;
  registry: { state: string } | null;
  slots: { id: string; state: string; pid: number | null; jobId: string | null }[];
  jobs: { id: string; state: string }[];
}

/** GET /worker on the worker's health port; every job-process pid it shows is tracked. */
export async function workerState(guard: ProcessGuard, worker: WorkerProcess | WorkerHandle): Promise<WorkerState> {
  const port = "pid" in worker ? await worker.port : worker.port;
  const response = await fetch(`http://127.0.0.1:${port}/worker`);
  const state = (await response.json()) as WorkerState;
  for (const slot of state.slots) guard.track(slot.pid);
  return state;
}

/** The registry's id for a spawned worker (matched by its load threshold), once it is registered. */
export function registeredId(r: TestRegistry, worker: WorkerProcess): string | undefined {
  for (const link of registryInternals(r.registry).core.directory.workers()) {
    if (link.context.loadThreshold === worker.loadThreshold && link.connected) return link.workerId;
  }
  return undefined;
}

/** Waits until the worker is registered and its session offers capacity; returns its registry id. */
export async function waitAvailable(r: TestRegistry, worker: WorkerProcess, timeoutMs = 20_000): Promise<string> {
  return until(
    () => {
      const id = registeredId(r, worker);
      return id && registryInternals(r.registry).core.directory.get(id)?.available ? id : undefined;
    },
    { label: `worker ${worker.name} to register and become available`, timeoutMs },
  ).catch((error: Error) => {
    throw new Error(
      `${error.message}\nlogs: ${JSON.stringify(worker.logs.slice(-10))}\nstderr: ${worker.stderr.join("\n")}`,
    );
  });
}

/** Sends a signal to a spawned worker and waits for its exit. */
export async function stopWorker(worker: WorkerProcess, signal: NodeJS.Signals = "SIGKILL", timeoutMs = 15_000) {
  if (worker.child.exitCode === null && worker.child.signalCode === null) worker.child.kill(signal);
  return within(`worker ${worker.name} to exit after ${signal}`, worker.exited, timeoutMs);
}

// ------------------------------------------------------------------ in-process workers

const openWorkers = new Set<WorkerHandle>();

/** runWorker in this process, registering with the registry; its job processes run the fixture agent. */
export async function startInProcessWorker(registryUrl: string, overrides: OptionsInput = {}): Promise<WorkerHandle> {
  const options = new Options(
    {
      register: true,
      registryUrl,
      ...CREDS,
      agentId: "in-process",
      maxProcesses: 2,
      numIdleProcesses: 0,
      port: 0,
      host: "127.0.0.1",
      loadFn: () => 0,
      pingInterval: 1,
      pingTimeout: 5,
      reconnectBackoffBase: 0.05,
      reconnectBackoffMax: 0.2,
      registrationTimeout: 5,
      closeTimeout: 2,
      killTimeout: 1,
      ...overrides,
    },
    {},
  );
  const handle = await runWorker(
    { entrypoint: async () => {}, jobctx: undefined, options, agentModule: FIXTURE_AGENT },
    { handleSignals: false, logger: silent },
  );
  openWorkers.add(handle);
  // A worker that stopped by itself (e.g. gave up on the registry) needs no stopping after the test.
  void handle.done.finally(() => openWorkers.delete(handle));
  return handle;
}

/** Stops an in-process worker and waits until it (and every job process it had) is gone. */
export async function stopInProcessWorker(handle: WorkerHandle, timeoutMs = 15_000): Promise<number> {
  openWorkers.delete(handle);
  handle.stop();
  return within("an in-process worker to stop", handle.done, timeoutMs);
}

export async function stopInProcessWorkers(): Promise<void> {
  await Promise.all([...openWorkers].map((handle) => stopInProcessWorker(handle).catch(() => {})));
}

/** The registry's id for the only worker with this agent name, once it is registered and available. */
export function waitAvailableAgent(r: TestRegistry, agentName: string, timeoutMs = 10_000): Promise<string> {
  return until(
    () => {
      for (const link of registryInternals(r.registry).core.directory.workers()) {
        if (link.context.agentName === agentName && link.available) return link.workerId;
      }
      return undefined;
    },
    { label: `a worker for ${agentName} to become available`, timeoutMs },
  );
}

export function isAlive(pid: number): boolean {
  return alive(pid);
}

// ------------------------------------------------------------------ raw worker connections

export interface Frame {
  type: string;
  code?: string;
  message?: string;
  [key: string]: unknown;
}

/** A raw worker connection: every frame the registry sends is kept, in order. */
export class RawConnection {
  readonly frames: Frame[] = [];
  closed: { code: number; reason: string } | undefined;
  #waiters = new Set<() => void>();

  private constructor(readonly ws: WebSocket) {
    ws.on("message", (data) => {
      this.frames.push(JSON.parse(data.toString()) as Frame);
      this.#wake();
    });
    ws.on("close", (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      this.#wake();
    });
    ws.on("error", () => {});
  }

  static async open(r: TestRegistry): Promise<RawConnection> {
    const ws = new WebSocket(`${r.url.replace(/^http/, "ws")}/agent`, {
      headers: { authorization: `Bearer ${await token("worker")}` },
      perMessageDeflate: false,
      maxPayload: 1 << 24,
    });
    await within(
      "the raw connection to open",
      new Promise<void>((resolve, reject) => {
        ws.once("open", () => resolve());
        ws.once("unexpected-response", (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
      }),
      5_000,
    );
    return new RawConnection(ws);
  }

  get open(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  send(data: string | Buffer): void {
    this.ws.send(data);
  }

  /** Resolves with the first frame from index `from` on that matches. */
  next(from: number, match: (frame: Frame) => boolean, what: string, timeoutMs = 5_000): Promise<Frame> {
    return within(
      what,
      new Promise<Frame>((resolve, reject) => {
        const check = () => {
          const frame = this.frames.slice(from).find(match);
          if (frame) {
            this.#waiters.delete(check);
            resolve(frame);
          } else if (this.closed) {
            this.#waiters.delete(check);
            reject(new Error(`connection closed (${this.closed.code}) while waiting for ${what}`));
          }
        };
        this.#waiters.add(check);
        check();
      }),
      timeoutMs,
    );
  }

  /** Sends one frame and returns the registry's error answer to it. */
  async errorFor(data: string | Buffer): Promise<Frame> {
    const from = this.frames.length;
    this.send(data);
    return this.next(from, (f) => f.type === "error", "an error frame");
  }

  /**
   * Sends a marker the registry can only answer with an error naming it. Frames are handled in
   * order, so once that answer is here, every frame sent before it has been handled.
   */
  async sync(marker: string): Promise<Frame[]> {
    const from = this.frames.length;
    this.send(JSON.stringify({ type: marker }));
    const echo = JSON.stringify(marker);
    await this.next(from, (f) => f.type === "error" && (f.message ?? "").includes(echo), `marker ${marker}`);
    const index = this.frames.findIndex((f, i) => i >= from && f.type === "error" && (f.message ?? "").includes(echo));
    return this.frames.slice(from, index);
  }

  close(): void {
    this.ws.terminate();
  }

  #wake(): void {
    for (const waiter of [...this.#waiters]) waiter();
  }
}

export const registerMessage = (agentName: string, maxProcesses = 1) =>
  JSON.stringify({
    type: "register",
    protocol_version: PROTOCOL_VERSION,
    worker_id: "",
    agent_name: agentName,
    capabilities: [],
    load_threshold: 1,
    max_processes: maxProcesses,
    jobs: [],
  });
