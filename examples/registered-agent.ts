import { JobContext, Options, WorkerJob } from "../src/index.ts";

/**
 * A worker that registers with a registry (TROUPE_URL, and TROUPE_API_KEY/TROUPE_API_SECRET or
 * TROUPE_AUTH_TOKEN) and runs each dispatched job in its own pre-warmed process.
 */
async function registeredAgent(ctx: JobContext): Promise<void> {
  ctx.logger.info({ metadata: ctx.metadata }, "job started");
  ctx.addShutdownCallback((reason) => ctx.logger.info({ reason }, "job ending"));
  await new Promise((resolve) => setTimeout(resolve, Number(ctx.metadata.seconds ?? 1) * 1000));
}

const options = new Options({
  agentId: "RegisteredAgent",
  register: true,
  maxProcesses: 4,
  numIdleProcesses: 2,
  port: 0,
});
new WorkerJob({ entrypoint: registeredAgent, jobctx: () => new JobContext(), options }).start();
