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
    const probe = fileURLToPath(new URL("../package/loaded-modules.mjs", import.meta.url));
    const { stdout } = await run(process.execPath, ["--import", "tsx", probe, SOURCES.troupe.href], {
      cwd: REPO,
      maxBuffer: 16 * 1024 * 1024,
      timeout: 60_000,
    });
    const loaded = JSON.parse(stdout) as string[];
    expect(loaded).toContain(SOURCES.troupe.href);
    const heavy =
      /\/src\/registry\/|\/src\/worker\/runtime\.ts|\/src\/room\/hub\.ts|\/node_modules\/(ioredis|prom-client|pidusage|ws)\//;
    expect(loaded.filter((url) => heavy.test(url))).toEqual([]);
  }, 90_000);
});
