import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";

/**
 * scripts/bundle-job-process.ts: the job process's own modules in one file, and what the agent shares
 * with it through `troupe` left as imports, built from whatever directory the build runs in.
 */

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const work = mkdtempSync(join(tmpdir(), "troupe-bundle-job-process-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/**
 * Bundles into `<work>/<name>/src/job/child-main.js` from a process whose working directory is the
 * filesystem root (paths relative to it, joined onto the repository, would name nothing there);
 * returns that file.
 */
async function bundleFromElsewhere(name: string): Promise<string> {
  const script = join(work, `${name}.mts`);
  const outRoot = join(work, name);
  const bundler = pathToFileURL(join(REPO, "scripts/bundle-job-process.ts")).href;
  writeFileSync(
    script,
    `import { bundleJobProcess } from ${JSON.stringify(bundler)};\nawait bundleJobProcess(${JSON.stringify(outRoot)});\n`,
  );
  const tsx = pathToFileURL(join(REPO, "node_modules/tsx/dist/esm/index.mjs")).href;
  await promisify(execFile)(process.execPath, ["--import", tsx, script], { cwd: "/" });
  return readFileSync(join(outRoot, "src/job/child-main.js"), "utf8");
}

function relativeImports(source: string): string[] {
  return [...source.matchAll(/(?:\bfrom\s*|\bimport\s*\(\s*)"(\.\.?\/[^"]+)"/g)].map((m) => m[1] as string);
}

describe("the job process's bundle", { timeout: 60_000 }, () => {
  it("imports what the agent shares (JobContext, the hook, valibot) and holds the job process's own modules", async () => {
    const bundle = await bundleFromElsewhere("elsewhere");
    const imports = relativeImports(bundle);
    expect(imports).toEqual(
      expect.arrayContaining(["./job-context.js", "./hook.js", "../vendor/valibot.js", "./job-tracing.js"]),
    );
    // A second JobContext class in the job process would not be the one its agent imported.
    expect(bundle).not.toMatch(/\bclass JobContext\b/);
    expect(bundle).not.toMatch(/from\s*"valibot"/);
    for (const own of ["./job-process.js", "../protocol/ipc.js", "./descendant-sweep.js", "./log-limits.js"]) {
      expect(imports).not.toContain(own);
    }
    expect(bundle).toContain("function runJobProcess");
  });
});
