import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { installLauncherHook } from "../worker/launcher.ts";

/**
 * One worker of `troupe dev`: the agent module, started with the dev registry's address and keys and
 * any free port (an old worker may still be draining on the previous one).
 *
 * `troupe dev` starts it in a session of its own, so the terminal's Ctrl-C reaches only the parent,
 * which hands each gesture on exactly once. Its IPC channel to the parent is its lifeline: when it
 * closes (the parent died), the worker drains as if signalled.
 */
const [modulePath] = process.argv.slice(2);
if (!modulePath) {
  console.error("troupe dev worker: no agent module given");
  process.exit(2);
}

// Until the worker runtime installs its handlers (the module is still loading) SIGTERM just ends us.
process.on("disconnect", () => process.kill(process.pid, "SIGTERM"));
// The channel never keeps this process alive: the worker decides when it ends.
process.channel?.unref();

installLauncherHook({
  overrides: {
    register: true,
    registryUrl: process.env.TROUPE_URL,
    apiKey: process.env.TROUPE_API_KEY,
    apiSecret: process.env.TROUPE_API_SECRET,
    port: 0,
    // Dev mode ignores load (as LiveKit's dev mode does): a busy laptop never makes the worker refuse
    // a job. maxProcesses still caps jobs.
    loadFn: () => 0,
  },
});
await import(pathToFileURL(resolve(modulePath)).href);
