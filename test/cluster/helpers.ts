import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { mintToken } from "../../src/auth/tokens.ts";
import type { JobRecord } from "../../src/registry/store.ts";
import type { RegistryTiming } from "../../src/registry/timing.ts";
import { api, CREDS, type ProcessGuard, parseLogLine } from "../registry/helpers.ts";
import { until } from "../support/wait.ts";

/** Registry timing for the cluster tests: liveness deadlines short enough for a test, offers patient on a busy box. */
export const CLUSTER_TIMING: Partial<RegistryTiming> = {
  offerTimeoutMs: 3_000,
  runningTimeoutMs: 30_000,
  dispatchTimeoutMs: 120_000,
  cancelTimeoutMs: 5_000,
  pingIntervalMs: 1_000,
  pongTimeoutMs: 4_000,
  reconnectGraceMs: 4_000,
  // Scaled with the liveness deadlines above, as the default 10 s is with the default 15 s.
  leaseMs: 3_000,
};

const NODE_FIXTURE = fileURLToPath(new URL("../fixtures/cluster/registry-node.ts", import.meta.url));

export interface RegistryNode {
  name: string;
  child: ChildProcess;
  url: string;
  port: number;
  nodeId: string;
  logs: Record<string, unknown>[];
  stderr: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Starts a registry node process on the cluster and resolves once it listens. */
export async function spawnNode(
  guard: ProcessGuard,
  settings: {
    name: string;
    redisUrl: string;
    prefix: string;
    timing: Partial<RegistryTiming>;
    heartbeatMs: number;
    sweepMs?: number;
    /** Default 0 (any free port); a node restarted on its old port is where its workers look for it. */
    port?: number;
  },
): Promise<RegistryNode> {
  const child = spawn(process.execPath, ["--import", "tsx", NODE_FIXTURE], {
    env: {
      ...process.env,
      ...guard.env,
      TROUPE_API_KEY: CREDS.apiKey,
      TROUPE_API_SECRET: CREDS.apiSecret,
      NODE_REDIS_URL: settings.redisUrl,
      NODE_PREFIX: settings.prefix,
      NODE_ID: settings.name,
      NODE_TIMING: JSON.stringify(settings.timing),
      NODE_HEARTBEAT_MS: String(settings.heartbeatMs),
      NODE_PORT: String(settings.port ?? 0),
      ...(settings.sweepMs ? { NODE_SWEEP_MS: String(settings.sweepMs) } : {}),
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  guard.children.add(child);
  guard.track(child.pid);
  const logs: Record<string, unknown>[] = [];
  const stderr: string[] = [];
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => resolve({ code, signal })),
  );
  const listening = new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on("line", (line) => {
      const entry = parseLogLine(line);
      logs.push(entry);
      if (entry.msg === "registry listening" && typeof entry.url === "string") resolve(entry.url);
    });
    createInterface({ input: child.stderr as NodeJS.ReadableStream }).on("line", (line) => stderr.push(line));
    void exited.then(({ code, signal }) =>
      reject(new Error(`node ${settings.name} exited (${code ?? signal}) before listening: ${stderr.join("\n")}`)),
    );
  });
  const url = await listening;
  return {
    name: settings.name,
    child,
    url,
    port: Number(new URL(url).port),
    nodeId: settings.name,
    logs,
    stderr,
    exited,
  };
}

export interface WorkerListing {
  id: string;
  state: string;
  node?: string;
  jobs: string[];
}

const dispatcherToken = () => mintToken(CREDS, { role: "dispatcher" });

export async function listWorkers(node: RegistryNode): Promise<WorkerListing[]> {
  const response = await api(node.url, await dispatcherToken(), "GET", "/v1/workers");
  if (response.status !== 200) throw new Error(`GET /v1/workers answered ${response.status}`);
  return (response.body as { workers: WorkerListing[] }).workers;
}

export async function dispatchTo(node: RegistryNode, body: Record<string, unknown>): Promise<JobRecord> {
  const response = await api(node.url, await dispatcherToken(), "POST", "/v1/jobs", body);
  if (response.status !== 201 && response.status !== 200) {
    throw new Error(`dispatch to ${node.name} answered ${response.status}: ${JSON.stringify(response.body)}`);
  }
  return (response.body as { job: JobRecord }).job;
}

export async function listJobs(node: RegistryNode, agent: string): Promise<JobRecord[]> {
  const response = await api(node.url, await dispatcherToken(), "GET", `/v1/jobs?agent=${agent}&limit=1000`);
  if (response.status !== 200) throw new Error(`GET /v1/jobs answered ${response.status}`);
  return (response.body as { jobs: JobRecord[] }).jobs;
}

const FINAL = new Set(["completed", "failed", "cancelled", "lost", "rejected"]);

/** Polls the node until every one of the jobs is final; returns their records. */
export async function untilAllFinal(
  node: RegistryNode,
  agent: string,
  ids: string[],
  timeoutMs: number,
): Promise<JobRecord[]> {
  let latest: JobRecord[] = [];
  await until(
    async () => {
      const byId = new Map((await listJobs(node, agent)).map((job) => [job.id, job]));
      latest = ids.map((id) => byId.get(id)).filter((job): job is JobRecord => job !== undefined);
      return latest.length === ids.length && latest.every((job) => FINAL.has(job.status));
    },
    { label: `${ids.length} jobs to end`, timeoutMs, intervalMs: 100 },
  ).catch((error: Error) => {
    const open = latest.filter((job) => !FINAL.has(job.status)).map((job) => `${job.id}:${job.status}@${job.node}`);
    throw new Error(`${error.message}; still open: ${open.slice(0, 20).join(", ")}`);
  });
  return latest;
}
