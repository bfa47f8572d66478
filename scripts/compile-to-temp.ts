/**
 * troupe compiled to JavaScript (tsc, types not checked) in a temporary directory that resolves
 * packages from this repository's node_modules: a production-like install whose job processes run
 * on plain `node`. Used by the compiled-agent tests and by bench/job-start's compiled scenario.
 */
import { execFile } from "node:child_process";
import { cpSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { bundleJobProcess } from "./bundle-job-process.ts";
import { bundleVendored } from "./bundle-vendored.ts";

const REPO_ROOT = fileURLToPath(new URL("../", import.meta.url));

export interface TempBuild {
  /** The build's root, laid out as the repository: `<dir>/src/...`, `<dir>/bench/...`. */
  dir: string;
  remove(): void;
}

/**
 * Compiles `machines/`, `src/` and the repository-relative `include` paths into a new temporary
 * directory, copies what tsc does not emit (the job processes' boot guard and the `copied` files) and
 * bundles the valibot subset and the job process's entry as `npm run build` does.
 */
export async function compileToTemp(prefix: string, include: string[], copied: string[] = []): Promise<TempBuild> {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const tsconfig = {
    compilerOptions: {
      target: "ES2022",
      module: "NodeNext",
      moduleResolution: "NodeNext",
      rewriteRelativeImportExtensions: true,
      verbatimModuleSyntax: true,
      resolveJsonModule: true,
      skipLibCheck: true,
      noCheck: true,
      types: ["node"],
      rootDir: REPO_ROOT,
      outDir: dir,
    },
    include: ["machines", "src", ...include].map((path) => join(REPO_ROOT, path)),
  };
  writeFileSync(join(dir, "tsconfig.json"), JSON.stringify(tsconfig));
  writeFileSync(join(dir, "package.json"), JSON.stringify({ type: "module" }));
  symlinkSync(join(REPO_ROOT, "node_modules"), join(dir, "node_modules"));
  const tsc = join(dirname(createRequire(REPO_ROOT).resolve("typescript/package.json")), "bin", "tsc");
  await promisify(execFile)(process.execPath, [tsc, "-p", join(dir, "tsconfig.json")]);
  cpSync(join(REPO_ROOT, "src/job"), join(dir, "src/job"), { recursive: true, filter: (p) => !p.endsWith(".ts") });
  for (const path of copied) cpSync(join(REPO_ROOT, path), join(dir, path));
  await bundleVendored(dir);
  await bundleJobProcess(dir);
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}
