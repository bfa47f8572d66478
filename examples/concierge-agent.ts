import { JobContext, Options, RoomOptions, WorkerJob } from "../src/index.ts";

/**
 * An agent driven by its job's metadata, that cleans up with shutdown callbacks. Dispatch it with
 * metadata such as `{ "greeting": "Welcome to support", "topic": "billing" }`:
 *
 *   npx troupe dispatch ConciergeAgent --metadata '{"greeting":"Welcome","topic":"billing"}'
 *
 * It greets each participant with the metadata's greeting, keeps a transcript of the session, and
 * when the job ends (the session timed out, the job was cancelled, the worker drains) its shutdown
 * callbacks say goodbye in the room and log a summary: they run before the process exits.
 */
async function conciergeAgent(ctx: JobContext): Promise<void> {
  const greeting = typeof ctx.metadata.greeting === "string" ? ctx.metadata.greeting : "Hello";
  const topic = typeof ctx.metadata.topic === "string" ? ctx.metadata.topic : "anything";
  const transcript: { from: string; text: string }[] = [];

  const room = await ctx.connect();
  room.on("participant_joined", (p) => {
    if (p.kind === "participant") room.send(`${greeting}, ${p.name}. Ask me about ${topic}.`, { to: [p.id] });
  });
  room.on("message", (message) => {
    if (message.text === undefined) return;
    transcript.push({ from: message.from.name, text: message.text });
    room.send(`Noted (${transcript.length} so far): "${message.text}"`, { to: [message.from.id] });
  });

  ctx.addShutdownCallback(
    (reason) => {
      if (ctx.inRoom) room.send(`Goodbye: this session is ending (${reason}).`);
    },
    { timeout: 1 },
  );
  ctx.addShutdownCallback(async (reason) => {
    ctx.logger.info({ reason, messages: transcript.length, topic }, "session summary");
  });
}

const options = new Options({ agentId: "ConciergeAgent", maxProcesses: 4, numIdleProcesses: 1, register: false });
const jobContext = () =>
  new JobContext({
    roomOptions: new RoomOptions({
      name: "Concierge",
      sessionTimeoutSeconds: 10,
      metadata: { greeting: "Hello from local mode", topic: "troupe" },
    }),
  });
new WorkerJob({ entrypoint: conciergeAgent, jobctx: jobContext, options }).start();
