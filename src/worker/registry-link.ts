import type { AnyActorRef } from "xstate";
import { type ConnectionEmitted, connectionMachine } from "../../machines/connection.ts";
import { mintToken } from "../auth/tokens.ts";
import type { Logger } from "../observability/logger.ts";
import type { Options } from "../options.ts";
import { connectionInputFrom } from "./machine-input.ts";
import { createRegistrySocket, type RegistrySocketSettings, redactedUrl } from "./registry-socket.ts";

/** The worker's registry link: the connection machine with a real WebSocket, configured from Options. */
export function createRegistryLink(
  options: Options,
  logger: Logger,
  extra: Pick<RegistrySocketSettings, "decorateStatus"> = {},
) {
  const { registryUrl, authToken, apiKey, apiSecret } = options;
  if (!registryUrl) throw new Error("register: true needs registryUrl (or TROUPE_URL, or troupe start --url)");
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

/**
 * Logs what the registry link says about itself (the connection machine's `link.*` events): connected
 * and lost at INFO/WARN, every retry at WARN with the URL, attempt, delay and cause, and giving up at
 * ERROR, with what to check when the registry refused the credentials. Returns the unsubscribe.
 */
export function logLinkEvents(link: AnyActorRef, logger: Logger, registryUrl: string | undefined): () => void {
  const url = registryUrl ? redactedUrl(registryUrl) : undefined;
  const log = logger.child({ component: "registry-link" });
  const subscription = link.on("*", (event: ConnectionEmitted) => {
    switch (event.type) {
      case "link.connected":
        log.info({ url, workerId: event.workerId }, "connected to the registry");
        break;
      case "link.lost":
        log.warn({ url, cause: event.problem }, "lost the registry connection");
        break;
      case "link.retrying":
        log.warn(
          { url, attempt: event.attempt, maxRetry: event.maxRetry, delayMs: event.delayMs, cause: event.problem },
          `registry connection failed: ${event.problem ?? "unknown cause"}; retrying in ${formatDelay(event.delayMs)} (attempt ${event.attempt} of ${event.maxRetry})`,
        );
        break;
      case "link.gave_up":
        if (event.reason === "unauthorized") {
          log.error(
            { url, cause: event.problem },
            `${event.problem ?? "the registry refused the worker's credentials"}; not retrying: check the API key and secret (TROUPE_API_KEY, TROUPE_API_SECRET) or the token (TROUPE_AUTH_TOKEN)`,
          );
        } else {
          log.error(
            { url, retries: event.retries, cause: event.problem },
            `gave up connecting to the registry after ${event.retries} failed attempts (maxRetry); last cause: ${event.problem ?? "unknown"}`,
          );
        }
        break;
    }
  });
  return () => subscription.unsubscribe();
}

function formatDelay(ms: number): string {
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}
