import { request } from "node:http";
import fc from "fast-check";

/**
 * The fuzz files' shared machinery: the seed and replay settings, a recorder of uncaught exceptions
 * and unhandled rejections (every server runs in the test process, so such an error is a crash of
 * it), and `fuzzPhase`, which runs a seeded sample of inputs with bounded concurrency and, when some
 * fail, replays one failing input alone through fc.assert so fast-check shrinks it and prints a
 * minimal counterexample with its replay path.
 *
 * Settings (environment):
 * - FUZZ_SEED: the seed (default below); a failure prints the command to run it again.
 * - FUZZ_PATH: replay one input of a phase (the `path` fast-check printed) instead of the batch; use
 *   it with `-t` to pick the phase's test.
 * - FUZZ_SCALE: multiplies every phase's input count (default 1).
 * - FUZZ_SHRINK_MS: time budget for shrinking failures (default 30 s).
 */
export const DEFAULT_SEED = 20_260_521;

export const FUZZ = {
  seed: envInt("FUZZ_SEED") ?? DEFAULT_SEED,
  path: process.env.FUZZ_PATH || undefined,
  scale: envNumber("FUZZ_SCALE") ?? 1,
  shrinkMs: envInt("FUZZ_SHRINK_MS") ?? 30_000,
};

function envNumber(name: string): number | undefined {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return undefined;
  const value = Number(raw);
  if (!Number.isFinite(value)) throw new Error(`${name} must be a number, not ${JSON.stringify(raw)}`);
  return value;
}

function envInt(name: string): number | undefined {
  const value = envNumber(name);
  return value === undefined ? undefined : Math.trunc(value);
}

export const scaled = (count: number) => Math.max(1, Math.round(count * FUZZ.scale));

export function replayCommand(file: string, testName?: string, path?: string): string {
  const env = [`FUZZ_SEED=${FUZZ.seed}`, ...(path ? [`FUZZ_PATH=${path}`] : [])].join(" ");
  const filter = testName ? ` -t ${JSON.stringify(testName)}` : "";
  return `${env} npx vitest run ${file}${filter}`;
}

// ------------------------------------------------------------------ crashes

export interface Crash {
  kind: "uncaughtException" | "unhandledRejection";
  error: string;
  at: number;
  /** Labels of the inputs started last when it happened, newest first (set by the phase running them). */
  inFlight: string[];
}

/**
 * Records every uncaught exception and unhandled rejection while installed. Vitest reports them too
 * (and fails the run); the recorder lets each phase fail with the inputs that were in flight.
 */
export class CrashRecorder {
  readonly crashes: Crash[] = [];
  inFlight: () => string[] = () => [];
  readonly #onException = (error: unknown) => this.#record("uncaughtException", error);
  readonly #onRejection = (reason: unknown) => this.#record("unhandledRejection", reason);

  install(): this {
    process.on("uncaughtException", this.#onException);
    process.on("unhandledRejection", this.#onRejection);
    return this;
  }

  uninstall(): void {
    process.off("uncaughtException", this.#onException);
    process.off("unhandledRejection", this.#onRejection);
  }

  get count(): number {
    return this.crashes.length;
  }

  describe(from = 0, max = 5): string {
    const crashes = this.crashes.slice(from);
    const more = crashes.length > max ? `\n  …and ${crashes.length - max} more` : "";
    return crashes
      .slice(0, max)
      .map(
        (c) =>
          `${c.kind}: ${c.error}${c.inFlight.length ? `\n    in flight: ${c.inFlight.slice(0, 8).join(", ")}` : ""}`,
      )
      .join("\n  ")
      .concat(more);
  }

  #record(kind: Crash["kind"], error: unknown): void {
    const text = error instanceof Error ? `${error.name}: ${error.message}\n${error.stack ?? ""}` : String(error);
    this.crashes.push({
      kind,
      error: text.split("\n").slice(0, 6).join("\n      "),
      at: Date.now(),
      inFlight: this.inFlight(),
    });
  }
}

// ------------------------------------------------------------------ running a phase

/** Runs `task` over `items` with at most `limit` in flight; stops starting new ones once `stop()`. */
export async function pool<T>(
  items: readonly T[],
  limit: number,
  task: (item: T, index: number) => Promise<void>,
  stop: () => boolean = () => false,
): Promise<number> {
  let next = 0;
  let started = 0;
  const lane = async () => {
    for (;;) {
      if (stop()) return;
      const index = next++;
      if (index >= items.length) return;
      started++;
      await task(items[index] as T, index);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
  return started;
}

export interface PhaseOptions<T> {
  /** The test file, for the replay command. */
  file: string;
  /** The test's name, for the replay command's -t. */
  testName: string;
  arbitrary: fc.Arbitrary<T>;
  count: number;
  concurrency: number;
  recorder: CrashRecorder;
  /** Checks one input against the server: a failure's description, or undefined when it passed. */
  check(input: T, mode: "batch" | "replay"): Promise<string | undefined>;
  /** A short printable form of an input (for failure reports). */
  show(input: T): string;
  /** Stop the batch after this many failures (a broken server should not cost minutes). */
  maxFailures?: number;
  /** How long a crash may take to surface after its input's check resolved. */
  settleMs?: number;
}

export interface PhaseResult {
  ran: number;
  failures: { index: number; reason: string }[];
  ms: number;
}

/**
 * One phase: `count` inputs sampled with the seed (input i is the one fc.assert sees at path "i"),
 * checked with bounded concurrency; every failure and every crash is collected. On failure, the
 * first failing input, and the input behind the first crash (found by replaying the inputs started
 * just before it), are replayed alone with fc.assert from their paths, so fast-check shrinks them; the
 * thrown error carries the reports and the replay commands.
 */
export async function fuzzPhase<T>(options: PhaseOptions<T>): Promise<PhaseResult> {
  const { recorder } = options;
  if (FUZZ.path !== undefined) return replayOnly(options);
  const started = Date.now();
  const inputs = fc.sample(options.arbitrary, { seed: FUZZ.seed, numRuns: options.count });
  const failures: { index: number; reason: string }[] = [];
  const inFlight = new Set<number>();
  const crashesBefore = recorder.count;
  // The likeliest causes of a crash: the inputs started last (in flight or just done), newest first,
  // then whatever else is still in flight.
  const recent: number[] = [];
  recorder.inFlight = () => [...new Set([...recent].reverse().concat([...inFlight].reverse()))].map((i) => `#${i}`);
  const maxFailures = options.maxFailures ?? 20;
  let ran = 0;
  try {
    ran = await pool(
      inputs,
      options.concurrency,
      async (input, index) => {
        inFlight.add(index);
        recent.push(index);
        if (recent.length > options.concurrency) recent.shift();
        try {
          const reason = await options.check(input, "batch");
          if (reason) failures.push({ index, reason });
        } catch (error) {
          failures.push({ index, reason: `check threw: ${(error as Error).stack ?? error}` });
        } finally {
          inFlight.delete(index);
        }
      },
      () => failures.length >= maxFailures || recorder.count - crashesBefore >= maxFailures,
    );
    // A crash in a timer or a later tick of the last inputs' handling still counts.
    await new Promise((resolve) => setTimeout(resolve, options.settleMs ?? 100));
  } finally {
    recorder.inFlight = () => [];
  }
  const crashes = recorder.crashes.slice(crashesBefore);
  const ms = Date.now() - started;
  if (failures.length === 0 && crashes.length === 0) return { ran, failures, ms };

  failures.sort((a, b) => a.index - b.index);
  const lines = [
    `${options.testName}: ${failures.length} of ${ran} inputs failed, ${crashes.length} crash(es) (seed ${FUZZ.seed}, ${ms} ms).`,
    `Run the batch again: ${replayCommand(options.file, options.testName)}`,
  ];
  for (const failure of failures.slice(0, 8)) {
    lines.push(
      `  input #${failure.index} (FUZZ_PATH=${failure.index}): ${failure.reason}\n    ${options.show(inputs[failure.index] as T)}`,
    );
  }
  if (crashes.length > 0) lines.push(`  crashes:\n  ${recorder.describe(crashesBefore)}`);

  // Shrink the first failing input, and the input behind the first crash (tried newest first among
  // those in flight): each replayed alone from its path, so fast-check shrinks what fails again.
  const groups = [
    { what: "failing input", candidates: failures.slice(0, 2).map((f) => f.index) },
    {
      what: "input behind the first crash",
      candidates: (crashes[0]?.inFlight ?? []).slice(0, 32).map((label) => Number(label.slice(1))),
    },
  ].filter((group) => group.candidates.length > 0);
  const deadline = Date.now() + FUZZ.shrinkMs;
  for (const [i, group] of groups.entries()) {
    const budget = (deadline - Date.now()) / (groups.length - i);
    lines.push(await shrink(options, group.what, group.candidates, budget));
  }
  throw new Error(lines.join("\n"));
}

/** Replays candidates alone (from their path) until one fails again; returns fast-check's report. */
async function shrink<T>(options: PhaseOptions<T>, what: string, candidates: number[], budgetMs: number) {
  const deadline = Date.now() + budgetMs;
  for (const index of candidates) {
    const left = deadline - Date.now();
    if (left <= 0) break;
    const report = await assertFrom(options, String(index), left);
    if (report) return `Minimal ${what} (shrunk from #${index}):\n${report}`;
  }
  const tried = candidates.length > 8 ? `${candidates.length} candidates` : candidates.map((c) => `#${c}`).join(", ");
  return `(${what}: no candidate (${tried}) failed again when replayed alone, within the time left)`;
}

/** fc.assert from one path: undefined when it passes, else fast-check's report plus the replay command. */
async function assertFrom<T>(options: PhaseOptions<T>, path: string, timeLimitMs: number): Promise<string | undefined> {
  const { recorder } = options;
  let lastShown = "";
  const property = fc.asyncProperty(options.arbitrary, async (input) => {
    const before = recorder.count;
    lastShown = options.show(input);
    const reason = await options.check(input, "replay");
    await new Promise((resolve) => setTimeout(resolve, 20));
    const crashed = recorder.count > before ? `crash: ${recorder.describe(before)}` : undefined;
    const problem = [reason, crashed].filter(Boolean).join("; ");
    if (problem) throw new Error(`${problem}\n    input: ${lastShown}`);
  });
  try {
    await fc.assert(property, {
      seed: FUZZ.seed,
      path,
      numRuns: 1,
      endOnFailure: false,
      interruptAfterTimeLimit: timeLimitMs,
      verbose: 0,
      includeErrorInReport: true,
    });
    return undefined;
  } catch (error) {
    const message = (error as Error).message;
    const shrunkPath = /path: "([^"]+)"/.exec(message)?.[1] ?? path;
    return `${message}\nReplay it: ${replayCommand(options.file, options.testName, shrunkPath)}`;
  }
}

async function replayOnly<T>(options: PhaseOptions<T>): Promise<PhaseResult> {
  const started = Date.now();
  const report = await assertFrom(options, FUZZ.path as string, Math.max(FUZZ.shrinkMs, 60_000));
  if (report) throw new Error(`${options.testName}: FUZZ_PATH=${FUZZ.path} fails:\n${report}`);
  return { ran: 1, failures: [], ms: Date.now() - started };
}

// ------------------------------------------------------------------ the well-behaved client

/**
 * Runs `probe` every `intervalMs` while the fuzz runs (one at a time), counting successes and
 * keeping each failure's message: the server must keep serving a well-behaved client all along.
 */
export class SteadyProbe {
  ok = 0;
  readonly failures: string[] = [];
  #timer: NodeJS.Timeout | undefined;
  #busy: Promise<void> | undefined;

  constructor(
    readonly probe: () => Promise<void>,
    readonly intervalMs: number,
  ) {}

  start(): this {
    this.#timer = setInterval(() => {
      if (this.#busy) return;
      this.#busy = this.once().finally(() => {
        this.#busy = undefined;
      });
    }, this.intervalMs);
    return this;
  }

  async once(): Promise<void> {
    try {
      await this.probe();
      this.ok++;
    } catch (error) {
      this.failures.push((error as Error).message);
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#busy;
  }
}

/**
 * One HTTP request on a fresh connection (no keep-alive: a pooled connection the server is closing
 * just then would fail the request for a reason that is nobody's bug). Resolves with status and body.
 */
export function httpRequest(
  url: string,
  { method = "GET", headers = {}, body, timeoutMs = 10_000 }: RequestSettings = {},
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, headers, agent: false, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (chunk: Buffer) => chunks.push(chunk));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }));
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error(`${method} ${url}: no answer within ${timeoutMs} ms`)));
    req.on("error", (error) => reject(new Error(`${method} ${url}: ${error.message}`)));
    req.end(body);
  });
}

export interface RequestSettings {
  method?: string;
  headers?: Record<string, string>;
  body?: string;
  timeoutMs?: number;
}
