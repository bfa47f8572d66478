import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { cp, mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { documentedNames } from "./api-doc.ts";

/**
 * troupe as a user gets it: `npm pack` (whose prepack builds dist/), the tarball installed into a
 * fresh project, and there a plain-JavaScript agent run with node, the installed `troupe` command
 * serving the web pages, and a TypeScript consumer type-checked with module NodeNext.
 *
 * The install is offline: the project gets a lockfile made from this repository's (the tarball's
 * dependencies at the versions `npm ci` put in the npm cache), so nothing is fetched.
 */

const run = promisify(execFile);
const REPO = fileURLToPath(new URL("../../", import.meta.url));
const TSC = join(REPO, "node_modules", ".bin", "tsc");
const SECRET = "0123456789abcdef0123456789abcdef";
/** What `npm pack` needs from the repository: the manifest, what the build compiles, what `files` ships. */
const PACKED_FROM = [
  "package.json",
  "tsconfig.json",
  "tsconfig.build.json",
  "README.md",
  "bin",
  "scripts",
  "machines",
  "src",
  "web",
  "visualizations",
  "docs",
];

/** npm's own variables (from `npm test`) would point a nested npm at this repository; the cache stays. */
function npmEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(
    Object.entries(process.env).filter(([key]) => !/^npm_/i.test(key) || key.toLowerCase() === "npm_config_cache"),
  );
}

let work: string;
let project: string;
const children = new Set<ChildProcess>();

function start(command: string, args: string[], env: NodeJS.ProcessEnv = process.env): ChildProcess {
  const child = spawn(command, args, { cwd: project, env, stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  child.once("exit", () => children.delete(child));
  return child;
}

function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  }
  return new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
}

function linesOf(child: ChildProcess): string[] {
  const lines: string[] = [];
  if (child.stdout) createInterface({ input: child.stdout }).on("line", (line) => lines.push(line));
  return lines;
}

/** A lockfile for a project whose only dependency is the tarball: troupe's runtime tree as this repository locked it. */
function projectLock(tarball: string): object {
  const repoLock = JSON.parse(readFileSync(join(REPO, "package-lock.json"), "utf8")) as {
    packages: Record<string, { dev?: boolean }>;
  };
  const manifest = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as Record<string, unknown>;
  const integrity = `sha512-${createHash("sha512").update(readFileSync(tarball)).digest("base64")}`;
  const spec = `file:../${tarball.split("/").pop()}`;
  const troupe: Record<string, unknown> = { version: manifest.version, resolved: spec, integrity };
  for (const key of ["license", "dependencies", "peerDependencies", "peerDependenciesMeta", "bin", "engines"]) {
    if (manifest[key] !== undefined) troupe[key] = manifest[key];
  }
  const runtime = Object.entries(repoLock.packages).filter(
    ([path, entry]) => path.startsWith("node_modules/") && !entry.dev,
  );
  return {
    name: "consumer",
    version: "1.0.0",
    lockfileVersion: 3,
    requires: true,
    packages: {
      "": { name: "consumer", version: "1.0.0", dependencies: { troupe: spec } },
      "node_modules/troupe": troupe,
      ...Object.fromEntries(runtime),
    },
  };
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "troupe-pack-"));
  project = join(work, "project");
  // Packed from a copy: prepack rebuilds dist/ from scratch, which must not pull the repository's own
  // dist/ from under anything else using it while the suite runs.
  const source = join(work, "source");
  for (const entry of PACKED_FROM) await cp(join(REPO, entry), join(source, entry), { recursive: true });
  await symlink(join(REPO, "node_modules"), join(source, "node_modules"), "dir");
  await run("npm", ["pack", "--pack-destination", work, "--silent"], {
    cwd: source,
    env: npmEnv(),
    maxBuffer: 64 * 1024 * 1024,
  });
  const tarballs = readdirSync(work).filter((name) => name.endsWith(".tgz"));
  expect(tarballs).toHaveLength(1);
  const tarball = join(work, tarballs[0] as string);
  await mkdir(project);
  const spec = `file:../${tarballs[0]}`;
  await writeFile(
    join(project, "package.json"),
    JSON.stringify({
      name: "consumer",
      version: "1.0.0",
      private: true,
      type: "module",
      dependencies: { troupe: spec },
    }),
  );
  await writeFile(join(project, "package-lock.json"), JSON.stringify(projectLock(tarball), null, 2));
  await run("npm", ["ci", "--offline", "--no-audit", "--no-fund"], {
    cwd: project,
    env: npmEnv(),
    maxBuffer: 64 * 1024 * 1024,
  });
}, 300_000);

afterAll(async () => {
  for (const child of children) child.kill("SIGKILL");
  await Promise.all([...children].map(exited));
  if (work) await rm(work, { recursive: true, force: true });
});

describe("the packed and installed package", { timeout: 120_000 }, () => {
  it("ships the built code, the pages and the diagrams, and none of the sources or tests", () => {
    const installed = join(project, "node_modules", "troupe");
    for (const file of [
      "dist/src/index.js",
      "dist/src/index.d.ts",
      "dist/src/machines.js",
      "dist/src/machines.d.ts",
      "dist/src/cli/main.js",
      "dist/src/job/boot-guard.cjs",
      "web/dashboard.html",
      "visualizations/worker.svg",
      "bin/troupe.mjs",
      "docs/api.md",
      "README.md",
    ]) {
      expect(existsSync(join(installed, file)), file).toBe(true);
    }
    for (const absent of ["src", "test", "bench", "scripts", "examples", ".ci"]) {
      expect(existsSync(join(installed, absent)), absent).toBe(false);
    }
    // The valibot functions troupe uses, in one file of their own with valibot's licence: a job
    // process does not load valibot's whole entry.
    const vendored = readFileSync(join(installed, "dist/src/vendor/valibot.js"), "utf8");
    expect(vendored).toContain("Copyright (c) Fabian Hiller");
    expect(vendored).toMatch(/^export \{[^}]*\bsafeParse\b/m);
    expect(vendored).not.toMatch(/\bfrom\s*["']|\bimport\s*\(|\brequire\s*\(/);
    // A job process's own modules, bundled into its entry; what the agent shares with it through
    // `troupe` (JobContext, the hook, valibot) and its lazy tracing stay files it imports.
    const jobEntry = readFileSync(join(installed, "dist/src/job/child-main.js"), "utf8");
    const relativeImports = [...jobEntry.matchAll(/(?:\bfrom\s*|\bimport\s*\(\s*)"(\.\.?\/[^"]+)"/g)].map((m) => m[1]);
    expect(relativeImports).toEqual(expect.arrayContaining(["./job-context.js", "./hook.js", "./job-tracing.js"]));
    for (const specifier of relativeImports) {
      expect(existsSync(join(installed, "dist/src/job", specifier ?? "")), specifier).toBe(true);
    }
    for (const own of ["./job-process.js", "../protocol/ipc.js", "./descendant-sweep.js", "./log-limits.js"]) {
      expect(relativeImports).not.toContain(own);
    }
    // Optional peers: nothing below needs them.
    expect(existsSync(join(project, "node_modules", "tsx"))).toBe(false);
    expect(existsSync(join(project, "node_modules", "pino-pretty"))).toBe(false);
  });

  it("runs a local-mode agent written in JavaScript with plain node, to completion", async () => {
    await writeFile(
      join(project, "agent.mjs"),
      `import { JobContext, Options, WorkerJob } from "troupe";

async function agent(ctx) {
  ctx.logger.info({ jobId: ctx.jobId }, "packaged agent ran");
}

const options = new Options({ agentId: "PackagedAgent", register: false, port: 0, host: "127.0.0.1" });
new WorkerJob({ entrypoint: agent, jobctx: () => new JobContext({ roomOptions: { playground: false } }), options }).start();
`,
    );
    const agent = start(process.execPath, ["agent.mjs"]);
    const lines = linesOf(agent);
    let errors = "";
    agent.stderr?.on("data", (chunk: Buffer) => {
      errors += chunk.toString();
    });
    const exit = await exited(agent);
    const said = `${lines.join("\n")}\n${errors}`;
    expect(exit, said).toEqual({ code: 0, signal: null });
    const messages = lines.map((line) => (JSON.parse(line) as { msg: string }).msg);
    expect(messages, said).toContain("packaged agent ran");
    expect(messages, said).toContain("job completed");
  });

  it("runs a registry from the installed bin, which serves the dashboard, the playground and the diagrams", async () => {
    const registry = start(
      join(project, "node_modules", ".bin", "troupe"),
      ["registry", "--host", "127.0.0.1", "--port", "0"],
      { ...process.env, TROUPE_API_KEY: "pack-test", TROUPE_API_SECRET: SECRET },
    );
    const url = await new Promise<string>((resolve, reject) => {
      createInterface({ input: registry.stdout as NodeJS.ReadableStream }).on("line", (line) => {
        const entry = JSON.parse(line) as { msg?: string; url?: string };
        if (entry.msg === "registry listening" && entry.url) resolve(entry.url);
      });
      registry.once("exit", (code) => reject(new Error(`the registry exited (${code}) before it listened`)));
    });
    for (const path of ["/dashboard", "/playground", "/web/dashboard.js", "/visualizations/job.svg"]) {
      const response = await fetch(new URL(path, url));
      await response.arrayBuffer();
      expect(response.status, path).toBe(200);
    }
    registry.kill("SIGTERM");
    expect(await exited(registry)).toEqual({ code: 0, signal: null });
  });

  it("type-checks a TypeScript consumer (module NodeNext) that uses every documented name", async () => {
    const names = documentedNames();
    await writeFile(
      join(project, "consumer.ts"),
      `export type { ${names.troupe.join(", ")} } from "troupe";
export type { ${names["troupe/machines"].join(", ")} } from "troupe/machines";
import { createRegistry, JobContext, type JobRecord, Options, RoomConnection, WorkerJob } from "troupe";
import { jobMachine, type JobInput } from "troupe/machines";

const options = new Options({ agentId: "Typed", maxProcesses: 2 });
new WorkerJob({
  entrypoint: async (ctx: JobContext) => {
    const room: RoomConnection = await ctx.connect();
    room.send(\`hello from \${ctx.jobId}\`);
  },
  jobctx: () => new JobContext({ roomOptions: { name: "Typed" } }),
  options,
});
export async function embed(): Promise<JobRecord[]> {
  const registry = await createRegistry({ apiKey: "k", apiSecret: "${SECRET}", port: 0 });
  await registry.dispatch({ agentName: "Typed" });
  return registry.jobs({ status: "running" });
}
export const input: JobInput = { spec: { jobId: "j" }, preassigned: true, timing: { offerTtlMs: 1, launchTimeoutMs: 1, maxDurationMs: 0 } };
export const machineId: string = jobMachine.id;
`,
    );
    await writeFile(
      join(project, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: {
          module: "NodeNext",
          moduleResolution: "NodeNext",
          target: "ES2022",
          strict: true,
          noEmit: true,
          skipLibCheck: false,
          types: ["node"],
        },
        files: ["consumer.ts"],
      }),
    );
    const checked = await run(process.execPath, [TSC, "-p", "tsconfig.json"], { cwd: project }).then(
      () => "",
      (error: { stdout?: string; stderr?: string }) => `${error.stdout ?? ""}${error.stderr ?? ""}` || "tsc failed",
    );
    expect(checked).toBe("");
  });
});
