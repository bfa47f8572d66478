import { JobContext, Options, RoomOptions, WorkerJob } from "../src/index.ts";

/** A minimal agent: logs its job, registers a shutdown callback, works for a moment, and finishes. */
async function helloAgent(ctx: JobContext): Promise<void> {
  ctx.logger.info({ room: ctx.roomOptions.name }, "hello from a job process");
  ctx.addShutdownCallback(async (reason) => {
    ctx.logger.info({ reason }, "cleaning up");
  });
  await new Promise((resolve) => setTimeout(resolve, 500));
  ctx.logger.info("done");
}

const options = new Options({ agentId: "HelloAgent", maxProcesses: 2, register: false, port: 0 });
const jobContext = new JobContext({ roomOptions: new RoomOptions({ name: "Hello Agent" }) });
new WorkerJob({ entrypoint: helloAgent, jobctx: () => jobContext, options }).start();
