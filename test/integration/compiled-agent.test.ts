import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { join } from "node:path";
import { afterAll, beforeAll, describe, it, type TestContext } from "vitest";
import { compileToTemp, type TempBuild } from "../../scripts/compile-to-temp.ts";
import { until, within } from "../support/wait.ts";
import { FAST_LOCAL_OPTIONS } from "./helpers/out-of-process.ts";
import { cpuTicks, isAlive, killHard, MARKER_VARIABLE, ProcessScope } from "./helpers/processes.ts";

/**
 * A compiled agent on compiled troupe, as in production: the worker runs on plain `node`, and so do
 * its job processes (no TypeScript loader: it would double what each one costs). With no loader, no
 * loader thread either: a job process whose event loop is blocked when its worker is SIGKILLed is
 * killed by the worker's orphan guardian alone.
 */

let build: TempBuild | undefined;
beforeAll(async () => {
  // The fixtures' TypeScript probe is copied, never compiled, so a fixture can find out whether its
  // process could load TypeScript.
  build = await compileToTemp(
    "troupe-compiled-",
    ["test/fixtures/agents"],
    ["test/fixtures/agents/typescript-probe.ts"],
  );
}, 180_000);
afterAll(() => build?.remove());

type LogLine = { msg?: string; [field: string]: unknown };

interface CompiledWorker {
  child: ChildProcess;
  scope: ProcessScope;
  line(msg: string, timeoutMs: number): Promise<LogLine>;
  exit: Promise<number | null>;
}

/** The compiled fixture as its own local-mode worker; whatever it started must be gone after the test. */
function startCompiledWorker(ctx: TestContext, metadata: Record<string, unknown>, options = {}): CompiledWorker {
  const marker = `${process.pid}-compiled-${randomUUID()}`;
  const scope = new ProcessScope(marker);
  const agent = join((build as TempBuild).dir, "test/fixtures/agents/loader-probe.js");
  const child = spawn(process.execPath, [agent], {
    env: {
      ...process.env,
      [MARKER_VARIABLE]: marker,
      TROUPE_TEST_OPTIONS: JSON.stringify({ ...FAST_LOCAL_OPTIONS, ...options }),
      TROUPE_TEST_METADATA: JSON.stringify(metadata),
    },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  scope.track(child.pid);
  const lines: LogLine[] = [];
  let pending = "";
  child.stdout?.setEncoding("utf8");
  child.stdout?.on("data", (chunk: string) => {
    pending += chunk;
    for (let end = pending.indexOf("\n"); end >= 0; end = pending.indexOf("\n")) {
      const text = pending.slice(0, end);
      pending = pending.slice(end + 1);
      try {
        const line = JSON.parse(text) as LogLine;
        if (typeof line.jobPid === "number") scope.track(line.jobPid);
        lines.push(line);
      } catch {
        lines.push({ msg: text });
      }
    }
  });
  child.stderr?.resume();
  const exit = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  ctx.onTestFinished(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      killHard(child.pid as number);
      await within("the compiled worker to exit", exit, 5_000);
    }
    const survivors = (await scope.cleanup(2_000)).filter((s) => s.pid !== child.pid);
    if (survivors.length > 0)
      throw new Error(`outlived their worker and had to be killed: ${JSON.stringify(survivors)}`);
  });
  return {
    child,
    scope,
    exit,
    line: (msg, timeoutMs) => until(() => lines.find((l) => l.msg === msg), { label: `log line "${msg}"`, timeoutMs }),
  };
}

describe("a compiled agent", { timeout: 60_000 }, () => {
  it("runs its job processes on plain node: no TypeScript loader registered there", async (ctx) => {
    const { expect } = ctx;
    const worker = startCompiledWorker(ctx, { mode: "return" });
    const started = await worker.line("job started", 30_000);
    expect(started.loadsTypeScript).toBe(false);
    expect(started.importError).toBe("ERR_UNKNOWN_FILE_EXTENSION");
    expect((started.execArgv as string[]).filter((arg) => /tsx/.test(arg))).toEqual([]);
    expect(await within("the local-mode worker to exit", worker.exit, 15_000)).toBe(0);
  });

  // Retried like the other SIGKILL tests: a starved process on a CI box at load 20+ can miss 2 s once.
  it("the worker SIGKILLed while the job's event loop is blocked: the job process is gone within 2 s", {
    retry: 2,
  }, async (ctx) => {
    const { expect } = ctx;
    // ipcPongTimeout long enough that the worker itself does not kill the spinning job first
    const worker = startCompiledWorker(ctx, { mode: "spin" }, { ipcPongTimeout: 60 });
    const started = await worker.line("job started", 30_000);
    const pid = started.jobPid as number;
    const ticks = cpuTicks(pid);
    await until(() => cpuTicks(pid) - ticks >= 30, { label: "the job process to spin", timeoutMs: 10_000 });
    process.kill(worker.child.pid as number, "SIGKILL");
    await within("the worker to exit", worker.exit, 5_000);
    const gone = await until(() => !isAlive(pid), { label: "the job process to go", timeoutMs: 2_000 }).catch(
      () => false,
    );
    expect(gone, `job process ${pid} (spinning) outlived its SIGKILLed worker`).toBe(true);
  });
});
