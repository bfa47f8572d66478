import { connectionMachine } from "../../machines/connection.ts";
import type { Logger } from "../observability/logger.ts";
import type { Options } from "../options.ts";
import { mintToken } from "../registry/auth.ts";
import { connectionInputFrom } from "./machine-input.ts";
import { createRegistrySocket, type RegistrySocketSettings } from "./registry-socket.ts";

/** The worker's registry link: the connection machine with a real WebSocket, configured from Options. */
export function createRegistryLink(
  options: Options,
  logger: Logger,
  extra: Pick<RegistrySocketSettings, "decorateStatus"> = {},
) {
  const { registryUrl, authToken, apiKey, apiSecret } = options;
  if (!registryUrl) throw new Error("register: true needs registryUrl (or TROUPE_URL)");
  let token: () => Promise<string>;
  if (authToken) token = async () => authToken;
  else if (apiKey && apiSecret) token = () => mintToken({ apiKey, apiSecret }, { role: "worker", ttl: 3600 });
  else
    throw new Error(
      "register: true needs authToken (TROUPE_AUTH_TOKEN) or apiKey and apiSecret (TROUPE_API_KEY, TROUPE_API_SECRET)",
    );
  const socket = createRegistrySocket({
    registryUrl,
    token,
    logger: logger.child({ component: "registry-link" }),
    ...extra,
  });
  return { logic: connectionMachine.provide({ actors: { socket } }), input: connectionInputFrom(options) };
}
