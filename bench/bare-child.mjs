// The floor: a bare Node child that says hello over IPC and answers pings, saying when (CLOCK_MONOTONIC,
// the same clock in every process on Linux) its handler ran.
process.send({ t: "ready" });
process.on("message", (m) => {
  if (m.t === "ping") process.send({ t: "pong", i: m.i, at: String(process.hrtime.bigint()) });
  if (m.t === "exit") process.exit(0);
});
process.on("disconnect", () => process.exit(0));
