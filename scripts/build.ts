/**
 * npm run build (and prepack): the published package's dist/. A clean tree each time (a module that
 * was renamed or removed must not linger), the TypeScript compiled with tsconfig.build.json (ESM
 * JavaScript and .d.ts, under dist/src and dist/machines), and the files tsc does not copy: the job
 * processes' boot guard, preloaded with --require from beside the compiled process actor. Then the
 * valibot subset troupe uses, bundled into one file (scripts/bundle-vendored.ts), and the job process's
 * own modules, bundled into its entry (scripts/bundle-job-process.ts).
 */
import { execFileSync } from "node:child_process";
import { copyFileSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { bundleJobProcess } from "./bundle-job-process.ts";
import { bundleVendored } from "./bundle-vendored.ts";

const root = join(import.meta.dirname, "..");
const dist = join(root, "dist");
const tsc = join(dirname(createRequire(import.meta.url).resolve("typescript/package.json")), "bin", "tsc");
const COPIED = ["src/job/boot-guard.cjs"];

rmSync(dist, { recursive: true, force: true });
execFileSync(process.execPath, [tsc, "-p", join(root, "tsconfig.build.json")], { cwd: root, stdio: "inherit" });
for (const file of COPIED) copyFileSync(join(root, file), join(dist, file));
await bundleVendored(dist);
await bundleJobProcess(dist);
