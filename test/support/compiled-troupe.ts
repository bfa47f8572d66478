import { execFile } from "node:child_process";
import { cpSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));

export interface CompiledTroupe {
  /** The build's root: `<dir>/src/...`, `<dir>/test/fixtures/agents/<name>.js`, as in the repository. */
  dir: string;
  remove(): void;
}

/**
 * troupe and the fixture agents compiled to JavaScript (tsc, types not checked) in a temporary
 * directory that resolves packages from this repository's node_modules: a production-like install
 * whose job processes run on plain `node`. The fixtures' TypeScript files are copied too (never
 * compiled), so a fixture can find out whether its process could load one.
 */
export async function compileTroupe(): Promise<CompiledTroupe> {
  const dir = mkdtempSync(join(tmpdir(), "troupe-compiled-"));
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
    include: ["machines", "src", "test/fixtures/agents"].map((path) => join(REPO_ROOT, path)),
  };
  writeFileSync(join(dir, "tsconfig.json"), JSON.stringify(tsconfig));
  writeFileSync(join(dir, "package.json"), JSON.stringify({ type: "module" }));
  symlinkSync(join(REPO_ROOT, "node_modules"), join(dir, "node_modules"));
  const tsc = join(dirname(createRequire(REPO_ROOT).resolve("typescript/package.json")), "bin", "tsc");
  await promisify(execFile)(process.execPath, [tsc, "-p", join(dir, "tsconfig.json")]);
  cpSync(join(REPO_ROOT, "src/job"), join(dir, "src/job"), { recursive: true, filter: (p) => !p.endsWith(".ts") });
  cpSync(
    join(REPO_ROOT, "test/fixtures/agents/typescript-probe.ts"),
    join(dir, "test/fixtures/agents/typescript-probe.ts"),
  );
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}
