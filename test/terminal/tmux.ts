import { execFileSync, spawnSync } from "node:child_process";
import { chmodSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { until } from "../support/wait.ts";

/**
 * A real pseudo-terminal for the Ctrl-C tests: a private tmux server (its own socket in the test's
 * folder) with one pane running a command. `ctrlC()` types C-c into the pane, so the terminal's line
 * discipline sends SIGINT to the pane's foreground process group, exactly as a person's Ctrl-C does.
 *
 * Without tmux the tests are skipped with a notice, except under CI=true, where that is an error
 * (.ci/run installs it).
 */
export const tmuxAvailable = spawnSync("tmux", ["-V"], { encoding: "utf8" }).status === 0;

if (!tmuxAvailable) {
  if (process.env.CI === "true") throw new Error("no tmux: .ci/run should have installed it");
  console.warn("terminal (Ctrl-C) tests skipped: no tmux (apt-get install tmux)");
}

export class Tmux {
  readonly socket: string;
  readonly #config: string;
  readonly #status: string;
  #started = false;

  constructor(readonly folder: string) {
    this.socket = join(folder, "tmux.sock");
    this.#config = join(folder, "tmux.conf");
    this.#status = join(folder, "status");
    writeFileSync(this.#config, "set -g remain-on-exit on\nset -g history-limit 5000\n");
  }

  #tmux(...args: string[]): string {
    return execFileSync("tmux", ["-S", this.socket, "-f", this.#config, ...args], { encoding: "utf8" });
  }

  /**
   * Runs `setup` then `command` in a bash script in a new 200×50 terminal, and records the command's
   * exit status (bash's `$?`: 128 + n when signal n ended it). The trap keeps bash itself alive
   * through the Ctrl-C to record it (a child that died of SIGINT makes a bash without one exit too,
   * and npm re-raises the SIGINT it got); the command still gets SIGINT's default disposition.
   */
  start(setup: string, command: string): void {
    const path = join(this.folder, "pane.sh");
    writeFileSync(path, `#!/bin/bash\ntrap true INT\n${setup}\n${command}\necho "$?" > ${this.#status}\n`);
    chmodSync(path, 0o755);
    this.#tmux("new-session", "-d", "-s", "t", "-x", "200", "-y", "50", path);
    this.#started = true;
  }

  /** Types Ctrl-C into the pane. */
  ctrlC(): void {
    this.#tmux("send-keys", "-t", "t", "C-c");
  }

  /** The command's exit status, once it has exited. */
  exit(): number | undefined {
    if (!existsSync(this.#status)) return undefined;
    const text = readFileSync(this.#status, "utf8").trim();
    return text ? Number(text) : undefined;
  }

  async exited(timeoutMs: number, context: () => string = () => ""): Promise<number> {
    const exited = await until(
      () => {
        const status = this.exit();
        return status !== undefined && { status }; // 0 is an exit too
      },
      { label: "the terminal's command to exit", timeoutMs, intervalMs: 50 },
    ).catch((error: Error) => {
      throw new Error(`${error.message}\n--- terminal:\n${this.screen()}\n--- output:\n${context()}`);
    });
    return exited.status;
  }

  /** What the terminal shows (for failure messages). */
  screen(): string {
    try {
      return this.#tmux("capture-pane", "-p", "-t", "t");
    } catch {
      return "";
    }
  }

  /** Ends the tmux server (what still runs in its pane gets SIGHUP). */
  close(): void {
    if (!this.#started) return;
    this.#started = false;
    try {
      this.#tmux("kill-server");
    } catch {
      // already gone
    }
  }
}

/** JSON lines of a file (a line that is not JSON becomes `{ msg: line }`); none when it does not exist. */
export function jsonLines(path: string): Record<string, unknown>[] {
  if (!existsSync(path)) return [];
  return readFileSync(path, "utf8")
    .split("\n")
    .filter((line) => line.trim())
    .map((line) => {
      try {
        return JSON.parse(line) as Record<string, unknown>;
      } catch {
        return { msg: line };
      }
    });
}

/** Single-quoted for bash. */
export const shellQuote = (value: string) => `'${value.replaceAll("'", `'\\''`)}'`;
