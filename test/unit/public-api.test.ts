import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { documentedNames, type EntryPoint, typeOnlyExports } from "../package/api-doc.ts";

const run = promisify(execFile);
const REPO = fileURLToPath(new URL("../../", import.meta.url));
const SOURCES: Record<EntryPoint, URL> = {
  troupe: new URL("../../src/index.ts", import.meta.url),
  "troupe/machines": new URL("../../src/machines.ts", import.meta.url),
};
const documented = documentedNames();
const sorted = (names: Iterable<string>) => [...names].sort();

describe("the public API is the documented API (docs/api.md)", () => {
  for (const entry of Object.keys(SOURCES) as EntryPoint[]) {
    it(`${entry} exports exactly the names documented for it`, async () => {
      const values = Object.keys(await import(SOURCES[entry].href));
      const types = typeOnlyExports(readFileSync(SOURCES[entry], "utf8"));
      expect(
        values.filter((name) => types.includes(name)),
        "exported both as a value and as a type",
      ).toEqual([]);
      expect(sorted(new Set([...values, ...types]))).toEqual(sorted(documented[entry]));
    });
  }

  it("documents each name once, and no name under both entry points", () => {
    const all = [...documented.troupe, ...documented["troupe/machines"]];
    expect(all.length).toBeGreaterThan(0);
    expect(all.filter((name, i) => all.indexOf(name) !== i)).toEqual([]);
  });

  it("importing troupe (as every job process does) loads neither the registry, the worker runtime nor ws", async () => {
    const loaded = await loadedModules(SOURCES.troupe);
    expect(loaded).toContain(SOURCES.troupe.href);
    const heavy =
      /\/src\/registry\/|\/src\/worker\/runtime\.ts|\/src\/room\/hub\.ts|\/node_modules\/(ioredis|prom-client|pidusage|ws)\//;
    expect(loaded.filter((url) => heavy.test(url))).toEqual([]);
  }, 90_000);

  // zod costs each idle job process ~8 MB of private memory and ~0.2 s of CPU to load: what a job
  // process parses (options, IPC messages, hub frames) uses valibot. `@opentelemetry/api` (about
  // 1 MB more) is loaded only once something in the process registered an OpenTelemetry global.
  it("a job process (troupe and src/job/job-process.ts) loads no zod, @opentelemetry/api or pino on import", async () => {
    const jobProcess = new URL("../../src/job/job-process.ts", import.meta.url);
    const [index, child] = await Promise.all([loadedModules(SOURCES.troupe), loadedModules(jobProcess)]);
    expect(index).toContain(SOURCES.troupe.href);
    expect(child).toContain(jobProcess.href);
    expect(child).toContain(new URL("../../src/protocol/ipc.ts", import.meta.url).href);
    expect([...index, ...child].some((url) => url.includes("/node_modules/valibot/"))).toBe(true);
    expect([...index, ...child].filter((url) => url.includes("/node_modules/zod/"))).toEqual([]);
    expect([...index, ...child].filter((url) => url.includes("/node_modules/@opentelemetry/"))).toEqual([]);
    // pino is loaded once the process is ready and idle, or on a job's first log line (job-process.ts).
    expect([...index, ...child].filter((url) => url.includes("/node_modules/pino/"))).toEqual([]);
  }, 90_000);
});

/** The URL of every module that importing `entry` loads, in a fresh process (see loaded-modules.mjs). */
async function loadedModules(entry: URL): Promise<string[]> {
  const probe = fileURLToPath(new URL("../package/loaded-modules.mjs", import.meta.url));
  const { stdout } = await run(process.execPath, ["--import", "tsx", probe, entry.href], {
    cwd: REPO,
    maxBuffer: 16 * 1024 * 1024,
    timeout: 60_000,
  });
  return JSON.parse(stdout) as string[];
}
