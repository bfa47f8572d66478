/**
 * bench/heartbeat-profile: where a registry's CPU goes with many connected workers heartbeating.
 * Starts bench/registry-server.ts with --cpu-prof (profile written to PROFILE_DIR, default ./.profiles),
 * connects BENCH_WORKERS simulated workers (default 10,000) that send a status every 5 s, holds for
 * 15 s, stops. Prints JSON with the registry's CPU share; open the .cpuprofile in Chrome DevTools.
 */
import { fork } from "node:child_process";
import { createRequire } from "node:module";
import { createInterface } from "node:readline";
import { fileURLToPath, pathToFileURL } from "node:url";
import pidusage from "pidusage";
import { mintToken } from "../src/auth/tokens.ts";
import { SimWorker } from "./sim-worker.ts";

const count = Number(process.env.BENCH_WORKERS ?? 10_000);
const profileDir = process.env.PROFILE_DIR ?? ".profiles";
const tsxLoader = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const child = fork(fileURLToPath(new URL("./registry-server.ts", import.meta.url)), [], {
  execArgv: ["--import", tsxLoader, "--cpu-prof", `--cpu-prof-dir=${profileDir}`],
  stdio: ["ignore", "pipe", "inherit", "ipc"],
});
const url = await new Promise<string>((resolve) => {
  createInterface({ input: child.stdout as NodeJS.ReadableStream }).once("line", (line) =>
    resolve(JSON.parse(line).url),
  );
});
const token = await mintToken(
  { apiKey: "bench", apiSecret: "bench-secret-bench-secret-0123456789" },
  { role: "worker" },
);
const sims: SimWorker[] = [];
while (sims.length < count) {
  const batch = Array.from(
    { length: Math.min(250, count - sims.length) },
    () => new SimWorker({ url, token, agentName: "Agent", maxProcesses: 1, jobMs: 10 }),
  );
  await Promise.all(batch.map((s) => s.ready));
  sims.push(...batch);
}
await sleep(6_000);
const before = (await pidusage(child.pid as number)) as unknown as { ctime: number };
const started = performance.now();
const heartbeats = setInterval(() => {
  for (const s of sims) s.heartbeat();
}, 5_000);
await sleep(15_000);
clearInterval(heartbeats);
const after = (await pidusage(child.pid as number)) as unknown as { ctime: number };
const share = (after.ctime - before.ctime) / (performance.now() - started);
for (const s of sims) s.close();
child.kill("SIGTERM");
await new Promise((resolve) => child.once("exit", resolve));
console.log(
  JSON.stringify(
    {
      bench: "heartbeat-profile",
      workers: count,
      registry_cpu_percent_of_one_core: Math.round(share * 1000) / 10,
      profileDir,
    },
    null,
    2,
  ),
);
