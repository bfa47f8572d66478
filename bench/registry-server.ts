/**
 * A registry in its own process for the benchmarks; prints its URL as one JSON line. With
 * BENCH_REDIS_URL it joins a cluster of nodes (BENCH_PREFIX, BENCH_NODE_ID) on that Redis.
 */
import { Writable } from "node:stream";
import { createLogger } from "../src/observability/logger.ts";
import { createRegistry } from "../src/registry/server.ts";

const registry = await createRegistry({
  apiKey: process.env.BENCH_KEY ?? "bench",
  apiSecret: process.env.BENCH_SECRET ?? "bench-secret-bench-secret-0123456789",
  port: 0,
  logger: createLogger("ERROR", new Writable({ write: (_c, _e, done) => done() })),
  timing: { pingIntervalMs: 5_000, pongTimeoutMs: 10_000, registrationTimeoutMs: 60_000 },
  ...(process.env.BENCH_REDIS_URL
    ? {
        redis: {
          url: process.env.BENCH_REDIS_URL,
          prefix: process.env.BENCH_PREFIX ?? "troupe-bench:",
          ...(process.env.BENCH_NODE_ID ? { nodeId: process.env.BENCH_NODE_ID } : {}),
        },
      }
    : {}),
});
process.stdout.write(`${JSON.stringify({ url: registry.url })}\n`);
process.on("disconnect", () => process.exit(0));
process.on("SIGTERM", () => registry.close().then(() => process.exit(0)));
