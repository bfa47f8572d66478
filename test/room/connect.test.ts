import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";
import { pino } from "pino";
import { afterAll, beforeAll, describe, it, type TestContext } from "vitest";
import { RoomConnection } from "../../src/room/client.ts";
import { RoomHub } from "../../src/room/hub.ts";
import { mintRoomToken, roomAuthorizer } from "../../src/room/room-auth.ts";

/**
 * `troupe connect` as a user runs it, against a room hub on loopback: through piped stdin, and through
 * a real terminal (`script` gives it a pseudo-terminal). In the room with it is a small in-process
 * agent that greets and echoes, so every line is seen from both sides.
 */
const BIN = fileURLToPath(new URL("../../bin/troupe.mjs", import.meta.url));
const CREDS = { apiKey: "connect-test-key", apiSecret: "connect-test-secret-0123456789abcdef0123" };
const SCRIPT = "/usr/bin/script";

let hub: RoomHub;
let server: Server;
let url: string;

beforeAll(async () => {
  hub = new RoomHub({ authorize: roomAuthorizer(CREDS), logger: pino({ level: "silent" }) });
  server = createServer((_req, res) => {
    res.writeHead(404);
    res.end();
  });
  server.on("upgrade", (req, socket, head) => void hub.handleUpgrade(req, socket, head));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await hub.close();
  await new Promise<void>((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
});

/** An agent in `room` that greets each participant and echoes what they say, until the test ends. */
async function echoAgent(ctx: Pick<TestContext, "onTestFinished">, room: string) {
  const token = await mintRoomToken(CREDS, { room, identity: `agent-${room}`, name: "Bot", agent: true });
  const agent = await RoomConnection.connect(url, room, token);
  const heard: string[] = [];
  const left: string[] = [];
  agent.on("participant_joined", (p) => agent.send(`hello ${p.name}`, { to: [p.id] }));
  agent.on("participant_left", (p) => left.push(p.name));
  agent.on("message", (m) => {
    heard.push(`${m.from.name}: ${m.text}`);
    agent.send(`echo: ${m.text}`, { to: [m.from.id] });
  });
  ctx.onTestFinished(() => agent.leave());
  return { agent, heard, left };
}

interface Run {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  waitFor(text: string, timeoutMs?: number): Promise<void>;
  exit: Promise<number | null>;
}

/**
 * Runs `troupe connect <args>`; with `terminal`, under `script`, so its stdin and stdout are a
 * pseudo-terminal. Killed (its whole process group) if it still runs when the test ends.
 */
function troupeConnect(ctx: Pick<TestContext, "onTestFinished">, args: string[], terminal = false): Run {
  const argv = [BIN, "connect", ...args];
  const quoted = [process.execPath, ...argv].map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(" ");
  const child = terminal
    ? spawn(SCRIPT, ["-qfec", quoted, "/dev/null"], { stdio: "pipe", detached: true })
    : spawn(process.execPath, argv, { stdio: "pipe", detached: true, env: { ...process.env, TROUPE_URL: "" } });
  let out = "";
  let err = "";
  const waiters = new Set<() => void>();
  child.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
    out += chunk;
    for (const check of [...waiters]) check();
  });
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
    err += chunk;
  });
  let running = true;
  const exit = new Promise<number | null>((resolve) =>
    child.on("exit", (code) => {
      running = false;
      for (const check of [...waiters]) check();
      resolve(code);
    }),
  );
  ctx.onTestFinished(async () => {
    if (!running || child.pid === undefined) return;
    process.kill(-child.pid, "SIGKILL");
    await exit;
  });
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exit,
    waitFor: (text, timeoutMs = 60_000) =>
      new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(
            new Error(`no "${text}" from troupe connect within ${timeoutMs} ms; stdout:\n${out}\nstderr:\n${err}`),
          );
        }, timeoutMs);
        const check = () => {
          if (!out.includes(text) && running) return;
          clearTimeout(timer);
          waiters.delete(check);
          if (out.includes(text)) resolve();
          else reject(new Error(`troupe connect exited before "${text}"; stdout:\n${out}\nstderr:\n${err}`));
        };
        waiters.add(check);
        check();
      }),
  };
}

const participantToken = (room: string) => mintRoomToken(CREDS, { room });

describe.concurrent("troupe connect", { timeout: 120_000 }, () => {
  it("joins a room with piped stdin: prints what is said, sends each line, leaves at end of input", async (ctx) => {
    const { expect } = ctx;
    const bot = await echoAgent(ctx, "room-piped");
    const run = troupeConnect(ctx, [
      "--room",
      "room-piped",
      "--url",
      url,
      "--token",
      await participantToken("room-piped"),
      "--name",
      "Ada",
    ]);
    await run.waitFor("* joined room-piped as Ada; in the room: Bot (agent)");
    await run.waitFor("Bot: hello Ada");
    run.child.stdin?.write("is anyone there?\n");
    await run.waitFor("Bot: echo: is anyone there?");
    expect(bot.heard).toEqual(["Ada: is anyone there?"]);
    // Blank lines are not sent.
    run.child.stdin?.write("\n   \nsecond line\n");
    await run.waitFor("Bot: echo: second line");
    expect(bot.heard).toEqual(["Ada: is anyone there?", "Ada: second line"]);
    run.child.stdin?.end();
    expect(await run.exit).toBe(0);
    expect(run.stdout()).toContain("* you left the room");
    await expect.poll(() => bot.left).toEqual(["Ada"]);
    expect(run.stderr()).toBe("");
  });

  it("says when the room ends, and exits 0; without a token it mints one from the API key", async (ctx) => {
    const { expect } = ctx;
    await echoAgent(ctx, "room-ending");
    const run = troupeConnect(ctx, [
      "--room",
      "room-ending",
      "--url",
      url,
      "--api-key",
      CREDS.apiKey,
      "--api-secret",
      CREDS.apiSecret,
      "--name",
      "Grace",
    ]);
    await run.waitFor("Bot: hello Grace");
    expect(hub.endRoom("room-ending", "closing_time")).toBe(true);
    await run.waitFor("* the room ended (closing_time)");
    expect(await run.exit).toBe(0);
  });

  it("has --help", async (ctx) => {
    const run = troupeConnect(ctx, ["--help"]);
    ctx.expect(await run.exit).toBe(0);
    ctx.expect(run.stdout()).toContain("Usage: troupe connect [options]");
    ctx.expect(run.stdout()).toContain("--room <id>");
  });

  it("refuses clearly: a bad token, a token for another room, no token at all, no hub", async (ctx) => {
    const { expect } = ctx;
    const other = await participantToken("room-elsewhere");
    const [bad, wrongRoom, none, noHub] = [
      troupeConnect(ctx, ["--room", "room-x", "--url", url, "--token", "not-a-token"]),
      troupeConnect(ctx, ["--room", "room-x", "--url", url, "--token", other]),
      troupeConnect(ctx, ["--room", "room-x", "--url", url]),
      troupeConnect(ctx, ["--room", "room-x", "--url", "http://127.0.0.1:1", "--token", other]),
    ];
    const codes = await Promise.all([bad.exit, wrongRoom.exit, none.exit, noHub.exit]);
    expect(codes).toEqual([1, 1, 1, 1]);
    expect(bad.stderr()).toMatch(/^troupe: room room-x refused \(401\): \S.*\n$/);
    expect(wrongRoom.stderr()).toBe(
      "troupe: room room-x refused (403): token is for room room-elsewhere, not room-x\n",
    );
    expect(none.stderr()).toMatch(/^troupe: needs a participant token: --token/);
    expect(noHub.stderr()).toMatch(/^troupe: room room-x: .*ECONNREFUSED/);
  });

  it.runIf(existsSync(SCRIPT))(
    "works in a real terminal: a prompt, lines typed and sent, Ctrl-D leaves",
    async (ctx) => {
      const { expect } = ctx;
      await echoAgent(ctx, "room-tty");
      const token = await participantToken("room-tty");
      const run = troupeConnect(ctx, ["--room", "room-tty", "--url", url, "--token", token, "--name", "Tty"], true);
      await run.waitFor("Ctrl-D, Ctrl-C or /leave leaves");
      await run.waitFor("Bot: hello Tty");
      run.child.stdin?.write("typed here\r");
      await run.waitFor("Bot: echo: typed here");
      // The prompt is drawn again below what arrived.
      await expect
        .poll(() => run.stdout().slice(run.stdout().lastIndexOf("Bot: echo: typed here")), { timeout: 5_000 })
        .toContain("> ");
      run.child.stdin?.write("\x04");
      await run.waitFor("* you left the room");
      // `script` itself waits for the end of its own input before it exits with the command's code.
      run.child.stdin?.end();
      expect(await run.exit).toBe(0);
    },
  );
});
