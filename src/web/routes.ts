import { readFile } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import { packageFile } from "../util/package-root.ts";

// Shipped beside the code, not inside it: the same folders whether this runs from src/ or dist/src/.
const WEB_DIR = packageFile("web/");
const VIZ_DIR = packageFile("visualizations/");

const PAGES: Record<string, string> = { "/dashboard": "dashboard.html", "/playground": "playground.html" };
const ASSET = /^\/web\/([a-z-]+\.(?:js|css|svg))$/;
const DIAGRAM = /^\/visualizations\/([a-z-]+\.svg)$/;
const TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
  svg: "image/svg+xml",
};

export type PlaygroundMode = "dispatch" | "join";

/** What the dashboard shows: flat lists, each entry carrying its machine's current state. */
export interface DashboardSnapshot {
  workers: Record<string, unknown>[];
  slots: Record<string, unknown>[];
  jobs: Record<string, unknown>[];
}

export interface WebRoutesOptions {
  /** Which server this is, shown on the page ("registry" or "worker <agent>"). */
  source: string;
  snapshot(): Promise<DashboardSnapshot> | DashboardSnapshot;
  /** Checks the token of an /events request; throws to refuse. Absent = open (a worker's own server). */
  authorize?(token: string | undefined): Promise<void>;
  /**
   * The playground this server offers: `"dispatch"` (default: the registry's, which dispatches an
   * agent and joins its room), `"join"` (a local-mode worker's: it only joins the room its printed
   * link names, with the participant token in that link), or `false` (none: `/playground` is a 404
   * and the dashboard shows no link to it). Read on every request, so it may be a getter.
   */
  playground?: PlaygroundMode | boolean;
  /** How often the stream looks for changes; it sends only when something changed. */
  intervalMs?: number;
}

/**
 * The dashboard and playground pages, their assets, the machines' diagrams, and `/events`: a
 * server-sent event stream of snapshots. The stream compares each snapshot with the last one sent
 * and sends only changes, so a quiet system costs one JSON serialisation per interval per viewer.
 */
export function createWebRoutes(options: WebRoutesOptions) {
  const intervalMs = options.intervalMs ?? 250;
  // Read per request: a local-mode worker knows only once its job's room is set up.
  const playgroundMode = (): PlaygroundMode | false =>
    options.playground === undefined || options.playground === true ? "dispatch" : options.playground;
  const streams = new Set<ServerResponse>();

  async function serveFile(
    res: ServerResponse,
    path: string,
    ext: string,
    edit?: (text: string) => string,
  ): Promise<void> {
    try {
      const raw = await readFile(path);
      const body = edit ? edit(raw.toString("utf8")) : raw;
      res.writeHead(200, { "content-type": TYPES[ext] ?? "application/octet-stream", "cache-control": "no-cache" });
      res.end(body);
    } catch {
      res.writeHead(404, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: "not found" }));
    }
  }

  async function stream(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    if (options.authorize) {
      const header = req.headers.authorization;
      const bearer = header ? /^Bearer\s+(\S+)$/i.exec(header.trim())?.[1] : undefined;
      try {
        await options.authorize(url.searchParams.get("token") ?? bearer);
      } catch (error) {
        res.writeHead(401, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: (error as Error).message }));
        return;
      }
    }
    res.writeHead(200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-store",
      connection: "keep-alive",
    });
    // A HEAD of a stream that never ends would otherwise never be answered: Node sends a HEAD's
    // headers only at end().
    if (req.method === "HEAD") {
      res.end();
      return;
    }
    res.flushHeaders();
    res.write(`event: hello\ndata: ${JSON.stringify({ source: options.source, playground: playgroundMode() })}\n\n`);
    streams.add(res);
    let last = "";
    let busy = false;
    const tick = async () => {
      if (busy) return;
      busy = true;
      try {
        const text = JSON.stringify(await options.snapshot());
        if (text !== last) {
          last = text;
          res.write(`event: snapshot\ndata: ${text}\n\n`);
        }
      } catch (error) {
        res.write(`event: problem\ndata: ${JSON.stringify({ error: (error as Error).message })}\n\n`);
      } finally {
        busy = false;
      }
    };
    await tick();
    const stop = () => {
      clearInterval(timer);
      streams.delete(res);
    };
    const timer = setInterval(() => tick().catch(stop), intervalMs);
    req.on("close", stop);
    res.on("error", stop);
  }

  return {
    /** Handles the request when it is one of these routes; false otherwise. */
    async handle(req: IncomingMessage, res: ServerResponse, url: URL): Promise<boolean> {
      if (req.method !== "GET" && req.method !== "HEAD") return false;
      const path = url.pathname;
      if (path === "/") {
        // The dashboard is the front page; the query (e.g. ?token=) goes along.
        res.writeHead(302, { location: `/dashboard${url.search}`, "cache-control": "no-store" });
        res.end();
        return true;
      }
      if (path === "/favicon.ico") {
        await serveFile(res, `${WEB_DIR}favicon.svg`, "svg");
        return true;
      }
      const page = PAGES[path];
      if (page === "playground.html") {
        const playground = playgroundMode();
        if (!playground) return false;
        // The page learns which playground this is from its body's data-mode.
        await serveFile(res, `${WEB_DIR}${page}`, "html", (html) =>
          html.replace('data-mode="dispatch"', `data-mode="${playground}"`),
        );
        return true;
      }
      if (page) {
        await serveFile(res, `${WEB_DIR}${page}`, "html");
        return true;
      }
      const asset = ASSET.exec(path);
      if (asset) {
        await serveFile(res, `${WEB_DIR}${asset[1]}`, (asset[1] as string).split(".").pop() as string);
        return true;
      }
      const diagram = DIAGRAM.exec(path);
      if (diagram) {
        await serveFile(res, `${VIZ_DIR}${diagram[1]}`, "svg");
        return true;
      }
      if (path === "/events") {
        await stream(req, res, url);
        return true;
      }
      return false;
    },
    /** Ends every open event stream (servers wait for them otherwise). */
    close(): void {
      for (const res of streams) res.end();
      streams.clear();
    },
  };
}
