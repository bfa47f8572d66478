import { userInfo } from "node:os";
import { createInterface, type Interface } from "node:readline";
import type { ParticipantInfo } from "../protocol/room.ts";
import { RoomConnection, RoomError } from "../room/client.ts";
import { mintRoomToken } from "../room/room-auth.ts";

/**
 * `troupe connect`: joins a room from a terminal as a participant. What others say is printed as
 * `name: text`, what happens in the room as `* …`; every line typed (or piped in) is sent to the
 * room. End of input (Ctrl-D), `/leave` or Ctrl-C leaves. Exit code 0 when this side left or the
 * room ended, 1 when the room refused the token or the connection was lost.
 */

export class ConnectError extends Error {
  override readonly name = "ConnectError";
}

export interface ConnectSettings {
  /** The room hub: a registry, or a local-mode worker (`http://…` or `ws://…`). */
  url: string;
  room: string;
  /** A participant token for this room. */
  token: string;
  /** The display name in the room (the token's when absent). */
  name?: string;
  input: NodeJS.ReadableStream;
  output: NodeJS.WritableStream;
  /** A terminal: a prompt, and incoming lines printed above what is being typed. */
  interactive?: boolean;
  /** Milliseconds to wait for the hub's welcome. */
  timeoutMs?: number;
}

export interface ConnectSession {
  room: RoomConnection;
  /** Leaves the room (as end of input does). */
  leave(): void;
  /** Resolves with the exit code once the session is over. */
  done: Promise<number>;
}

/** Close codes of the room hub that are not an ordinary end (see docs/rooms.md). */
const CLOSE_REASONS: Record<number, string> = {
  4001: "this identity joined the room again elsewhere (the same token)",
  4002: "dropped by the hub: this side did not keep up reading",
  4003: "the room filled up",
};

const who = (p: ParticipantInfo) => (p.kind === "agent" ? `${p.name} (agent)` : p.name);

/** Joins the room and starts relaying lines both ways; rejects when the hub refuses the join. */
export async function joinRoomFromTerminal(settings: ConnectSettings): Promise<ConnectSession> {
  let room: RoomConnection;
  try {
    room = await RoomConnection.connect(settings.url, settings.room, settings.token, {
      ...(settings.name ? { name: settings.name } : {}),
      timeoutMs: settings.timeoutMs ?? 10_000,
    });
  } catch (error) {
    const message = error instanceof RoomError ? error.message : `cannot reach ${settings.url}: ${String(error)}`;
    throw new ConnectError(message);
  }
  const { output } = settings;
  const interactive = settings.interactive ?? false;
  let lines: Interface | undefined;
  const print = (text: string) => {
    if (lines && interactive) {
      // Above the line being typed, which readline then draws again.
      output.write(`\r\x1b[2K${text}\n`);
      lines.prompt(true);
    } else {
      output.write(`${text}\n`);
    }
  };

  let left = false;
  const leave = () => {
    if (left) return;
    left = true;
    room.leave().catch((error: Error) => print(`* could not leave cleanly: ${error.message}`));
  };

  const others = room.others();
  print(
    `* joined ${room.id} as ${room.self.name}; in the room: ${others.length > 0 ? others.map(who).join(", ") : "nobody else"}`,
  );
  room.on("participant_joined", (p) => print(`* ${who(p)} joined`));
  room.on("participant_left", (p) => print(`* ${who(p)} left`));
  room.on("message", (m) => print(`${m.from.name}: ${m.text ?? JSON.stringify(m.data)}`));
  room.on("error", (error) => print(`* error: ${error.message}`));

  const done = new Promise<number>((resolve) => {
    room.once("ended", (reason) => {
      const code = room.closed?.code;
      let exitCode = 0;
      if (left) {
        print("* you left the room");
      } else if (reason !== "disconnected" || code === 4000) {
        print(`* the room ended (${reason === "disconnected" ? (room.closed?.reason ?? "ended") : reason})`);
      } else {
        const why = code !== undefined && CLOSE_REASONS[code] ? CLOSE_REASONS[code] : `connection closed (${code})`;
        print(`* disconnected: ${why}`);
        exitCode = 1;
      }
      left = true; // closing the input below must not try to leave again
      const input = lines;
      lines = undefined;
      input?.close();
      resolve(exitCode);
    });
  });

  lines = createInterface({
    input: settings.input,
    ...(interactive ? { output, terminal: true, prompt: "> " } : { terminal: false }),
  });
  lines.on("line", (line) => {
    const text = line.trimEnd();
    if (text === "/leave" || text === "/quit") return leave();
    if (text.trim() !== "" && !left && room.endedReason === undefined) {
      try {
        room.send(text);
      } catch {
        // the connection is closing: its end is reported by "ended"
      }
    }
    if (interactive) lines?.prompt();
  });
  // End of input (Ctrl-D, or the end of what was piped in) leaves; so does Ctrl-C at the prompt.
  lines.on("close", leave);
  lines.on("SIGINT", leave);
  if (interactive) {
    print("* type a line and press Enter to send it; Ctrl-D, Ctrl-C or /leave leaves");
    lines.prompt();
  }
  return { room, leave, done };
}

export interface ConnectCommandOptions {
  room?: string;
  url?: string;
  token?: string;
  name?: string;
  apiKey?: string;
  apiSecret?: string;
}

function defaultName(): string {
  try {
    return userInfo().username || "terminal";
  } catch {
    return "terminal";
  }
}

/** The `troupe connect` command: options and environment in, an exit code out. */
export async function connectCommand(
  opts: ConnectCommandOptions,
  env: NodeJS.ProcessEnv = process.env,
): Promise<number> {
  const room = opts.room;
  if (!room) throw new ConnectError("needs the room: --room <id>");
  const url = opts.url ?? env.TROUPE_URL;
  if (!url) throw new ConnectError("needs the room hub's URL: --url <url> (a registry, or a local-mode worker)");
  const name = opts.name ?? defaultName();
  let token = opts.token ?? env.TROUPE_ROOM_TOKEN;
  if (!token) {
    const apiKey = opts.apiKey ?? env.TROUPE_API_KEY;
    const apiSecret = opts.apiSecret ?? env.TROUPE_API_SECRET;
    if (!apiKey || !apiSecret) {
      throw new ConnectError(
        "needs a participant token: --token (a local-mode worker prints a connect command with one; " +
          "for a registry's room, `troupe token --role participant --room <id>`, or give --api-key/--api-secret)",
      );
    }
    token = await mintRoomToken({ apiKey, apiSecret }, { room, name });
  }
  const session = await joinRoomFromTerminal({
    url,
    room,
    token,
    name,
    input: process.stdin,
    output: process.stdout,
    interactive: Boolean(process.stdin.isTTY && process.stdout.isTTY),
  });
  process.once("SIGINT", session.leave);
  process.once("SIGTERM", session.leave);
  try {
    return await session.done;
  } finally {
    process.off("SIGINT", session.leave);
    process.off("SIGTERM", session.leave);
    // A terminal's stdin keeps the process alive even once paused: let go of it.
    process.stdin.destroy();
  }
}
