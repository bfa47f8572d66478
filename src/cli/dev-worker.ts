import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { installLauncherHook } from "../worker/launcher.ts";

/**
 * One worker of `troupe dev`: the agent module, started with the dev registry's address and keys and
 * any free port (an old worker may still be draining on the previous one).
 */
const [modulePath] = process.argv.slice(2);
if (!modulePath) {
  console.error("troupe dev worker: no agent module given");
  process.exit(2);
}
installLauncherHook({
  overrides: {
    register: true,
    registryUrl: process.env.TROUPE_URL,
    apiKey: process.env.TROUPE_API_KEY,
    apiSecret: process.env.TROUPE_API_SECRET,
    port: 0,
  },
});
await import(pathToFileURL(resolve(modulePath)).href);
