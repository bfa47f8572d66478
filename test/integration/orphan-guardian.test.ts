import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { fileURLToPath } from "node:url";
import { describe, it } from "vitest";
import { until, within } from "../support/wait.ts";
import { isAlive, MARKER_VARIABLE, ProcessScope } from "./helpers/processes.ts";

const host = fileURLToPath(new URL("../fixtures/guardian-host.ts", import.meta.url));

describe("the orphan guardian", { timeout: 60_000 }, () => {
  it("kills the guarded job processes' groups and escaped descendants when its worker is SIGKILLed, and only those", async (ctx) => {
    const { expect } = ctx;
    const scope = new ProcessScope(`${process.pid}-guardian-${randomUUID()}`);
    ctx.onTestFinished(async () => {
      await scope.cleanup(0);
    });
    const worker = spawn(process.execPath, ["--import", "tsx", host], {
      env: { ...process.env, [MARKER_VARIABLE]: scope.marker },
      stdio: ["ignore", "pipe", "inherit"],
      detached: true,
    });
    scope.track(worker.pid);
    const exited = new Promise((resolve) => worker.on("exit", resolve));
    let out = "";
    worker.stdout?.setEncoding("utf8");
    worker.stdout?.on("data", (chunk: string) => {
      out += chunk;
    });
    const pids = await until(
      () => (out.includes("\n") ? (JSON.parse(out.slice(0, out.indexOf("\n"))) as Record<string, number>) : undefined),
      { label: "the fake worker's pids", timeoutMs: 30_000 },
    );
    for (const pid of Object.values(pids)) scope.track(pid);
    // the guardian has read what it guards once it runs: its pipe is read before end-of-file
    await until(() => Object.values(pids).every(isAlive), { label: "the fake job processes", timeoutMs: 10_000 });
    process.kill(worker.pid as number, "SIGKILL");
    await within("the fake worker to exit", exited, 5_000);
    const gone = await until(() => !isAlive(pids.guarded as number) && !isAlive(pids.escaped as number), {
      label: "the guarded job and its escaped descendant to go",
      timeoutMs: 2_000,
    }).catch(() => false);
    expect(gone, "a guarded job process or its escaped descendant outlived the worker").toBe(true);
    expect(isAlive(pids.released as number), "the guardian killed a process it had been told had exited").toBe(true);
  });
});
