import { randomUUID } from "node:crypto";
import { Redis } from "ioredis";

export const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";

/**
 * Whether Redis answers at REDIS_URL. Outside CI a missing Redis skips the Redis tests with a
 * notice; under CI=true it is an error, so a CI machine without Redis never passes them silently.
 */
export async function redisAvailable(): Promise<boolean> {
  const probe = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 0, connectTimeout: 1_000 });
  probe.on("error", () => {});
  try {
    await probe.connect();
    await probe.ping();
    return true;
  } catch (error) {
    const message = `Redis unreachable at ${REDIS_URL} (${(error as Error).message})`;
    if (process.env.CI === "true") throw new Error(`${message}: the Redis tests cannot run under CI=true`);
    console.warn(`\n*** SKIPPING Redis tests: ${message}. Start Redis or set REDIS_URL. ***\n`);
    return false;
  } finally {
    probe.disconnect();
  }
}

/** A key prefix no other test run uses. */
export const testPrefix = (name: string) => `troupe-test:${name}:${randomUUID().slice(0, 8)}:`;

/** Deletes every key under the prefix. */
export async function dropPrefix(prefix: string): Promise<void> {
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
  try {
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 500);
      if (keys.length) await redis.del(...keys);
      cursor = next;
    } while (cursor !== "0");
  } finally {
    redis.disconnect();
  }
}
