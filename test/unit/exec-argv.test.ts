import { describe, expect, it } from "vitest";
import { jobProcessExecArgv, withoutTsxLoader } from "../../src/worker/job-exec-argv.ts";

const compiled = { childMain: "/app/dist/src/job/child-main.js", bootGuard: "/app/boot-guard.cjs" };
const fromSource = { childMain: "/app/src/job/child-main.ts", bootGuard: "/app/boot-guard.cjs" };
// What `tsx worker.ts` gives the worker process.
const underTsxCli = [
  "--require",
  "/app/node_modules/tsx/dist/preflight.cjs",
  "--import",
  "file:///app/node_modules/tsx/dist/loader.mjs",
];

describe("a job process's Node flags", () => {
  it("a compiled agent on compiled troupe: plain node, even when the worker runs under tsx", () => {
    for (const agentModule of ["/app/agent.js", "/app/agent.mjs", "/app/agent.cjs"]) {
      expect(jobProcessExecArgv({ ...compiled, agentModule }, underTsxCli)).toEqual([
        "--require",
        "/app/boot-guard.cjs",
      ]);
      expect(jobProcessExecArgv({ ...compiled, agentModule }, ["--import=tsx", "--expose-gc"])).toEqual([
        "--require",
        "/app/boot-guard.cjs",
        "--expose-gc",
      ]);
    }
  });

  it("a TypeScript agent gets tsx: the worker's own when it runs under one, else added", () => {
    const agentModule = "/app/agent.ts";
    expect(jobProcessExecArgv({ ...compiled, agentModule }, underTsxCli)).toEqual([
      "--require",
      "/app/boot-guard.cjs",
      ...underTsxCli,
    ]);
    const added = jobProcessExecArgv({ ...compiled, agentModule }, []);
    expect(added.slice(0, 3)).toEqual(["--require", "/app/boot-guard.cjs", "--import"]);
    expect(added[3]).toMatch(/^file:\/\/.*[\\/]tsx[\\/]/);
    expect(added).toHaveLength(4);
  });

  it("troupe run from its TypeScript sources needs tsx whatever the agent is", () => {
    const flags = jobProcessExecArgv({ ...fromSource, agentModule: "/app/agent.js" }, []);
    expect(flags).toContain("--import");
    expect(flags.at(-1)).toMatch(/[\\/]tsx[\\/]/);
  });

  it("never inherits --env-file or --inspect, and keeps the boot guard first", () => {
    const flags = jobProcessExecArgv({ ...compiled, agentModule: "/app/agent.js" }, [
      "--env-file",
      ".env",
      "--env-file-if-exists=.env.local",
      "--inspect=9229",
      "--max-old-space-size=512",
    ]);
    expect(flags).toEqual(["--require", "/app/boot-guard.cjs", "--max-old-space-size=512"]);
  });

  it("strips only the flags that load tsx", () => {
    expect(
      withoutTsxLoader(["-r", "tsx/cjs", "--require", "./my-setup.cjs", "--loader", "tsx", "--import", "./otel.mjs"]),
    ).toEqual(["--require", "./my-setup.cjs", "--import", "./otel.mjs"]);
  });
});
