/** Starts bench/registry-server.ts in its own process, so the load generators do not share its core. */
import { type ChildProcess, fork } from "node:child_process";
import { createRequire } from "node:module";
import { createInterface } from "node:readline";
import { fileURLToPath, pathToFileURL } from "node:url";

export const BENCH_CREDENTIALS = { apiKey: "bench", apiSecret: "bench-secret-bench-secret-0123456789" };

const tsxLoader = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href;

export interface RegistryProcess {
  child: ChildProcess;
  url: string;
  stop(): Promise<void>;
}

/** `env` is added to the child's environment (BENCH_REDIS_URL and friends join a cluster). */
export async function startRegistryProcess(env: Record<string, string> = {}): Promise<RegistryProcess> {
  const child = fork(fileURLToPath(new URL("./registry-server.ts", import.meta.url)), [], {
    stdio: ["ignore", "pipe", "inherit", "ipc"],
    execArgv: ["--import", tsxLoader, ...(process.env.BENCH_PROFILE ? ["--cpu-prof"] : [])],
    env: { ...process.env, BENCH_KEY: BENCH_CREDENTIALS.apiKey, BENCH_SECRET: BENCH_CREDENTIALS.apiSecret, ...env },
  });
  const { url } = await new Promise<{ url: string }>((resolve) => {
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).once("line", (line) => resolve(JSON.parse(line)));
  });
  return {
    child,
    url,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      await new Promise((resolve) => child.once("exit", resolve));
    },
  };
}
