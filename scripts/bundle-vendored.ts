/**
 * Replaces the compiled `src/vendor/valibot.js` (a re-export of the functions troupe uses) with one
 * file that holds only those functions, valibot's own code tree-shaken by esbuild. Run after tsc by
 * `npm run build` and by the compiled-agent builds (scripts/compile-to-temp.ts): the JavaScript a job
 * process loads is what is published.
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { build } from "esbuild";

const REPO_ROOT = join(import.meta.dirname, "..");

/** Writes `<outRoot>/src/vendor/valibot.js`; `outRoot` is laid out as the repository (`dist`, or a temporary build). */
export async function bundleVendored(outRoot: string): Promise<void> {
  // valibot's MIT licence asks for its notice in every copy of its code, this one included.
  const valibotRoot = dirname(dirname(createRequire(join(REPO_ROOT, "package.json")).resolve("valibot")));
  const { version } = JSON.parse(readFileSync(join(valibotRoot, "package.json"), "utf8")) as { version: string };
  const licence = readFileSync(join(valibotRoot, "LICENSE.md"), "utf8").trim();
  await build({
    banner: {
      js: `/*\n * valibot ${version} (https://valibot.dev), the functions troupe uses.\n *\n${licence
        .split("\n")
        .map((line) => ` * ${line}`.trimEnd())
        .join("\n")}\n */`,
    },
    entryPoints: [join(REPO_ROOT, "src/vendor/valibot.ts")],
    outfile: join(outRoot, "src/vendor/valibot.js"),
    bundle: true,
    format: "esm",
    platform: "node",
    target: "node20",
    legalComments: "inline",
    logLevel: "warning",
  });
}
