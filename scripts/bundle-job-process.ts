/**
 * Replaces the compiled `src/job/child-main.js` with one file holding the job process's own code:
 * child-main, job-process and the 8 modules only they use, which every cold start loaded one by one
 * (each file read on the libuv thread pool). Measured against the same build unbundled, a job process
 * reaches `ready` about 2 % sooner and with 3 % less CPU (docs/benchmarks.md). Run after tsc by
 * `npm run build` and by the compiled-agent builds (scripts/compile-to-temp.ts), after the valibot
 * bundle.
 *
 * What the agent's module also loads through `troupe` (the JobContext class, the job process hook,
 * RoomOptions, valibot) is not copied in: the bundle imports those compiled files, so the job process
 * and the agent share one module instance of each, as they did unbundled. Packages stay imports, and
 * so do the job process's lazy imports (its tracing): a module they load that the bundle also holds
 * exists twice, which is why such a module keeps no state (tracing/registered.ts reads globals).
 */
import { dirname, join, relative, sep } from "node:path";
import { build, type Plugin } from "esbuild";

const REPO_ROOT = join(import.meta.dirname, "..");
const PUBLIC_ENTRY = join(REPO_ROOT, "src/index.ts");
const CHILD_MAIN = join(REPO_ROOT, "src/job/child-main.ts");
/** A module the agent and the job process must share; missing from the shared set means a broken build. */
const SHARED_WITNESS = join(REPO_ROOT, "src/job/job-context.ts");

/** The source files `troupe`'s entry loads when imported (its static graph: createRegistry's import is lazy). */
async function publicEntryGraph(): Promise<Set<string>> {
  const staticOnly: Plugin = {
    name: "static-imports-only",
    setup(pluginBuild) {
      pluginBuild.onResolve({ filter: /.*/ }, (args) =>
        args.kind === "dynamic-import" ? { path: args.path, external: true } : undefined,
      );
    },
  };
  const result = await build({
    // The metafile names inputs relative to this directory.
    absWorkingDir: REPO_ROOT,
    entryPoints: [PUBLIC_ENTRY],
    bundle: true,
    write: false,
    metafile: true,
    format: "esm",
    platform: "node",
    packages: "external",
    plugins: [staticOnly],
    logLevel: "warning",
  });
  const graph = new Set(Object.keys(result.metafile.inputs).map((input) => join(REPO_ROOT, input)));
  // Bundled in, a second JobContext class would be what a job without `jobctx` gets: not the one
  // its agent imported (`instanceof` fails), and no build error would say so.
  if (!graph.has(SHARED_WITNESS))
    throw new Error(`bundle-job-process: ${SHARED_WITNESS} not found in troupe's entry graph`);
  return graph;
}

/** The compiled file (`<outRoot>/...js`) that tsc made from a source file. */
function compiledPath(outRoot: string, source: string): string {
  return join(outRoot, relative(REPO_ROOT, source)).replace(/\.ts$/, ".js");
}

/** Writes `<outRoot>/src/job/child-main.js`; `outRoot` is laid out as the repository (`dist`, or a temporary build). */
export async function bundleJobProcess(outRoot: string): Promise<void> {
  const shared = await publicEntryGraph();
  const outfile = compiledPath(outRoot, CHILD_MAIN);
  const importShared: Plugin = {
    name: "import-what-the-agent-shares",
    setup(pluginBuild) {
      pluginBuild.onResolve({ filter: /^\.\.?\// }, (args) => {
        const source = join(args.resolveDir, args.path);
        // What the job process loads only when needed (its tracing, with @opentelemetry/api under it)
        // stays a module of its own: bundled in, its imports would load with everything else.
        const lazy = args.kind === "dynamic-import" && args.importer !== CHILD_MAIN;
        if (!shared.has(source) && !lazy) return undefined;
        const specifier = relative(dirname(outfile), compiledPath(outRoot, source)).split(sep).join("/");
        return { path: specifier.startsWith(".") ? specifier : `./${specifier}`, external: true };
      });
    },
  };
  await build({
    absWorkingDir: REPO_ROOT,
    entryPoints: [CHILD_MAIN],
    outfile,
    bundle: true,
    format: "esm",
    platform: "node",
    target: "node20",
    packages: "external",
    plugins: [importShared],
    logLevel: "warning",
  });
}
