// The floor: a bare Node child that says hello over IPC and answers pings.
process.send({ t: "ready" });
process.on("message", (m) => {
  if (m.t === "ping") process.send({ t: "pong", i: m.i });
  if (m.t === "exit") process.exit(0);
});
process.on("disconnect", () => process.exit(0));
