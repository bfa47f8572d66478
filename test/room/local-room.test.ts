import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, it } from "vitest";
import { spawnWorker } from "../integration/helpers/out-of-process.ts";
import { within } from "../support/wait.ts";

/**
 * A local-mode worker (`register: false`) hosts its job's room and prints the ways in
 * (`RoomOptions.playground`): a playground link and a `troupe connect` command, each with its own
 * participant token. Here the printed command is run as printed, with piped stdin; the browser side
 * of the link is test/browser/local-room.test.ts.
 */
const BIN = fileURLToPath(new URL("../../bin/troupe.mjs", import.meta.url));
const JOIN_LINE = "join the room: open the playground link, or run the connect command in a terminal";
/** A short session after the last participant leaves; time enough for the agent to come in. */
const ROOM_OPTIONS = { sessionTimeoutSeconds: 0.5, noParticipantTimeoutSeconds: 120 };

describe.concurrent("a local-mode worker's room", { timeout: 120_000 }, () => {
  it("prints a troupe connect command that joins the room; leaving ends the job, the worker exits 0", async (ctx) => {
    const { expect } = ctx;
    const worker = spawnWorker(ctx, "local-room", { metadata: { roomOptions: ROOM_OPTIONS } });
    const join = await worker.line(JOIN_LINE, 40_000);
    const command = String(join.connect);
    expect(command).toMatch(/^npx troupe connect --room room-\S+ --url http:\/\/127\.0\.0\.1:\d+ --token \S+$/);
    expect(String(join.playground)).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/playground\?room=room-\S+&join=\S+$/);

    const args = command.split(" ").slice(3); // without "npx troupe connect"
    const child = spawn(process.execPath, [BIN, "connect", ...args, "--name", "Ada"], { stdio: "pipe" });
    ctx.onTestFinished(() => {
      if (child.exitCode === null) child.kill("SIGKILL");
    });
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      out += chunk;
    });
    let err = "";
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
      err += chunk;
    });
    const exit = new Promise<number | null>((resolve) => child.on("exit", resolve));
    const seen = (text: string) => expect.poll(() => out, { timeout: 60_000, interval: 50 }).toContain(text);

    await seen(`* joined ${join.room} as Ada`);
    // The agent's process may join after us on a busy machine: either way it greets.
    await seen("Echo: hello Ada");
    child.stdin.write("is anyone there?\n");
    await seen("Echo: echo: is anyone there?");
    child.stdin.end();
    expect(await within("troupe connect to exit", exit, 20_000)).toBe(0);
    expect(out).toContain("* you left the room");
    expect(err).toBe("");

    expect(await worker.exited(30_000)).toEqual({ code: 0, signal: null });
    expect(worker.lines.find((l) => l.msg === "job completed")).toMatchObject({
      status: "completed",
      reason: "session_ended",
    });
  });

  it("with RoomOptions.playground false prints no link and serves no playground", async (ctx) => {
    const { expect } = ctx;
    const worker = spawnWorker(ctx, "local-room", {
      metadata: { roomOptions: { playground: false, noParticipantTimeoutSeconds: 3 } },
    });
    const started = await worker.line("local job started in its room", 40_000);
    const port = await worker.port(1);
    const base = `http://127.0.0.1:${port}`;
    const playground = await fetch(`${base}/playground`);
    expect(playground.status).toBe(404);
    expect(await within("the worker to exit", worker.exit, 60_000)).toEqual({ code: 0, signal: null });
    expect(worker.lines.find((l) => l.msg === JOIN_LINE)).toBeUndefined();
    expect(worker.lines.find((l) => l.msg === "job completed")).toMatchObject({
      jobId: started.jobId,
      reason: "no_participant",
    });
  });

  it("serves its pages: / goes to the dashboard, a favicon, the playground in join mode", async (ctx) => {
    const { expect } = ctx;
    const worker = spawnWorker(ctx, "local-room", { metadata: { roomOptions: { noParticipantTimeoutSeconds: 3 } } });
    await worker.line(JOIN_LINE, 40_000);
    const base = `http://127.0.0.1:${await worker.port(1)}`;
    const root = await fetch(`${base}/?x=1`, { redirect: "manual" });
    expect(root.status).toBe(302);
    expect(root.headers.get("location")).toBe("/dashboard?x=1");
    const icon = await fetch(`${base}/favicon.ico`);
    expect(icon.status).toBe(200);
    expect(icon.headers.get("content-type")).toBe("image/svg+xml");
    const page = await fetch(`${base}/playground`);
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('<body data-mode="join">');
    // The dashboard's stream says which playground this server has, so the page links to none.
    const abort = new AbortController();
    const events = await fetch(`${base}/events`, { signal: abort.signal });
    const reader = (events.body as ReadableStream<Uint8Array>).getReader();
    const first = new TextDecoder().decode((await reader.read()).value);
    abort.abort();
    expect(first).toContain('event: hello\ndata: {"source":"worker Fixture","playground":"join"}');
    await worker.exited(60_000);
  });
});
