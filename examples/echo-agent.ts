import { JobContext, Options, RoomOptions, WorkerJob } from "../src/index.ts";

/**
 * The echo agent: joins its room, greets everyone who joins, and answers every message. The job
 * ends by itself when the last participant has been gone for `sessionTimeoutSeconds`.
 */
async function echoAgent(ctx: JobContext): Promise<void> {
  const room = await ctx.connect();
  room.on("participant_joined", (participant) => room.send(`Hello ${participant.name}! Say something.`));
  for (const participant of room.others()) room.send(`Hello ${participant.name}! Say something.`);
  room.on("message", (message) => {
    if (message.text !== undefined) room.send(`echo: ${message.text}`, { to: [message.from.id] });
  });
  ctx.logger.info({ room: room.id }, "echo agent is in its room");
}

const options = new Options({ agentId: "EchoAgent", maxProcesses: 4, numIdleProcesses: 1, register: false });
const jobContext = () => new JobContext({ roomOptions: new RoomOptions({ name: "Echo", sessionTimeoutSeconds: 5 }) });
new WorkerJob({ entrypoint: echoAgent, jobctx: jobContext, options }).start();
