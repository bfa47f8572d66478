import type { IncomingMessage } from "node:http";
import { HttpError } from "./respond.ts";

const parsed = new WeakMap<IncomingMessage, URL>();

/**
 * The request's target as a URL, parsed once. Origin-form (`/path?query`) is read as a path on this
 * server even when it starts with `//` (which `new URL(target, base)` would take for a host);
 * absolute-form (`http://host:port/path`, which proxies send) is accepted when it parses. Anything
 * else, or a target that does not parse, is the client's mistake: a 400, never an exception.
 */
export function requestUrl(req: IncomingMessage): URL {
  const known = parsed.get(req);
  if (known) return known;
  const target = req.url ?? "/";
  let url: URL | undefined;
  try {
    if (target.startsWith("/")) url = new URL(`http://server${target}`);
    else if (/^https?:\/\//i.test(target)) url = new URL(target);
  } catch {
    url = undefined;
  }
  if (!url) throw new HttpError(400, "malformed request target");
  parsed.set(req, url);
  return url;
}

/** Decodes one percent-encoded path segment; bad encoding is a 400, not a URIError. */
export function decodeSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw new HttpError(400, "malformed percent-encoding in the path");
  }
}
