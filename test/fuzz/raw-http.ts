import { createConnection, type Socket } from "node:net";
import fc from "fast-check";

/**
 * Raw HTTP/1.1 over a real TCP socket on loopback: requests are built byte by byte (so they can be
 * as wrong as a fuzzer likes) and the answer is read off the socket without an HTTP client, so the
 * server's own bytes are judged: its status lines, or its closing the connection.
 */

// ------------------------------------------------------------------ requests

/** A piece of request text: literal, or a reference resolved when rendering (a token, the Host). */
export type Piece = string | { ref: string };

export type Framing =
  /** Content-Length of the body when there is one (the well-formed case). */
  | { type: "auto" }
  /** No framing header at all, body or not (a body then reads as the next request). */
  | { type: "none" }
  /** Content-Length smaller than the body (the rest reads as the next request). */
  | { type: "cl-short" }
  /** Content-Length larger than the body: the server may wait for the rest. */
  | { type: "cl-long"; extra: number }
  | { type: "cl-bad"; value: string }
  | { type: "cl-dup"; second: string }
  | { type: "chunked"; sizes: number[]; extension: string }
  | { type: "chunked-bad"; size: string }
  /** Chunks without the last (zero) chunk: the server may wait for it. */
  | { type: "chunked-open" }
  | { type: "te-and-cl" }
  /** A transfer coding Node does not decode as chunked: framing is the server's guess. */
  | { type: "te-other"; value: string };

export interface HttpInput {
  /** "canonical" requests are well formed, and their status is known. */
  kind: "fuzz" | "upgrade" | "canonical";
  method: string;
  target: Piece[];
  /** Write the request line as latin1 (raw bytes up to 0xff) rather than UTF-8. */
  latin1: boolean;
  version: string;
  eol: string;
  headers: [string, Piece[]][];
  framing: Framing;
  body: string;
  /** Does the header block end with an empty line? Without it the request is not over. */
  terminated: boolean;
  /** Where the bytes are cut into separate writes (fractions of the length). */
  splits: number[];
  /** Bytes after the request: a pipelined request or garbage. */
  trailer: string;
  /** Canonical requests only: the statuses a correct server answers. */
  expect?: number[];
}

export interface RenderContext {
  refs: Record<string, string>;
}

export interface Rendered {
  pieces: Buffer[];
  /**
   * The request is over once all bytes are sent: the server must answer (or close) without waiting
   * for more. False when the framing promises bytes that never come.
   */
  complete: boolean;
  /** The bytes, printable (computed on demand: it is only for reports). */
  text(): string;
}

function resolve(pieces: Piece[], ctx: RenderContext): string {
  return pieces
    .map((piece) => {
      if (typeof piece === "string") return piece;
      const value = ctx.refs[piece.ref];
      if (value === undefined) throw new Error(`no ref ${piece.ref}`);
      return value;
    })
    .join("");
}

export function render(input: HttpInput, ctx: RenderContext): Rendered {
  const encoding = input.latin1 ? "latin1" : "utf8";
  const eol = input.eol;
  const requestLine = [input.method, resolve(input.target, ctx), input.version].filter((p) => p !== "").join(" ");
  const headerLines = input.headers.map(([name, value]) => `${name}: ${resolve(value, ctx)}`);
  const body = Buffer.from(input.body, "latin1");
  let framed: Buffer = body;
  let complete = input.terminated;
  const framing = input.framing;
  switch (framing.type) {
    case "auto":
      if (body.length > 0) headerLines.push(`Content-Length: ${body.length}`);
      break;
    case "none":
      break;
    case "cl-short":
      headerLines.push(`Content-Length: ${Math.floor(body.length / 2)}`);
      break;
    case "cl-long":
      headerLines.push(`Content-Length: ${body.length + framing.extra}`);
      complete = false;
      break;
    case "cl-bad":
      headerLines.push(`Content-Length: ${framing.value}`);
      break;
    case "cl-dup":
      headerLines.push(`Content-Length: ${body.length}`, `Content-Length: ${framing.second}`);
      break;
    case "chunked": {
      headerLines.push("Transfer-Encoding: chunked");
      const parts: Buffer[] = [];
      let at = 0;
      for (const size of framing.sizes) {
        const chunk = body.subarray(at, at + size);
        at += chunk.length;
        if (chunk.length === 0) continue;
        parts.push(Buffer.from(`${chunk.length.toString(16)}${framing.extension}\r\n`), chunk, Buffer.from("\r\n"));
      }
      if (at < body.length) {
        const rest = body.subarray(at);
        parts.push(Buffer.from(`${rest.length.toString(16)}\r\n`), rest, Buffer.from("\r\n"));
      }
      parts.push(Buffer.from("0\r\n\r\n"));
      framed = Buffer.concat(parts);
      break;
    }
    case "chunked-bad":
      headerLines.push("Transfer-Encoding: chunked");
      framed = Buffer.concat([Buffer.from(`${framing.size}\r\n`), body, Buffer.from("\r\n0\r\n\r\n")]);
      break;
    case "chunked-open":
      headerLines.push("Transfer-Encoding: chunked");
      framed = body.length
        ? Buffer.concat([Buffer.from(`${body.length.toString(16)}\r\n`), body, Buffer.from("\r\n")])
        : body;
      complete = false;
      break;
    case "te-and-cl":
      headerLines.push("Transfer-Encoding: chunked", `Content-Length: ${body.length}`);
      break;
    case "te-other":
      headerLines.push(`Transfer-Encoding: ${framing.value}`);
      complete = false;
      break;
  }
  // A framing header among the random ones makes the framing the server's guess: no answer is owed.
  const framingNames = new Set(["content-length", "transfer-encoding"]);
  if (input.headers.some(([name]) => framingNames.has(name.trim().toLowerCase()))) complete = false;
  const head = `${requestLine}${eol}${headerLines.map((line) => `${line}${eol}`).join("")}${input.terminated ? eol : ""}`;
  const bytes = Buffer.concat([Buffer.from(head, encoding), framed, Buffer.from(input.trailer, "latin1")]);
  const cuts = [...new Set(input.splits.map((f) => Math.floor(f * bytes.length)))]
    .filter((n) => n > 0 && n < bytes.length)
    .sort((a, b) => a - b);
  const pieces: Buffer[] = [];
  let from = 0;
  for (const cut of cuts) {
    pieces.push(bytes.subarray(from, cut));
    from = cut;
  }
  pieces.push(bytes.subarray(from));
  return { pieces, complete, text: () => printable(bytes) };
}

/** A request's bytes, escaped and abbreviated (runs of one character and long texts shortened). */
export function printable(bytes: Buffer | string, max = 600): string {
  const text = typeof bytes === "string" ? bytes : bytes.toString("latin1");
  const squeezed = text.replace(/(.)\1{19,}/gs, (run, char: string) => `${char}…×${run.length}`);
  const escaped = JSON.stringify(squeezed);
  return escaped.length > max ? `${escaped.slice(0, max)}…(${text.length} bytes)` : escaped;
}

// ------------------------------------------------------------------ the exchange

export interface Answer {
  /** Every status line the server sent (interim 1xx included), in order. */
  statuses: number[];
  how: "response" | "closed" | "timeout";
  /** The server's bytes when they were not an HTTP response. */
  garbage?: string;
  ms: number;
}

const openSockets = new Set<Socket>();

/** Destroys every socket an exchange still holds (for afterAll). */
export function destroyOpenSockets(): void {
  for (const socket of openSockets) socket.destroy();
  openSockets.clear();
}

/**
 * Sends the pieces (one write each, a tick apart) and reads until the first final response's head
 * (a 1xx other than 101 is interim), the server closing the connection, or the timeout.
 */
export function exchange(port: number, pieces: Buffer[], timeoutMs: number): Promise<Answer> {
  const started = performance.now();
  return new Promise<Answer>((resolveAnswer) => {
    const socket = createConnection({ host: "127.0.0.1", port });
    openSockets.add(socket);
    socket.setNoDelay(true);
    const statuses: number[] = [];
    let buffer = Buffer.alloc(0);
    let offset = 0;
    let done = false;
    const finish = (how: Answer["how"], garbage?: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      openSockets.delete(socket);
      resolveAnswer({
        statuses,
        how,
        ...(garbage !== undefined ? { garbage } : {}),
        ms: Math.round(performance.now() - started),
      });
    };
    const timer = setTimeout(() => finish("timeout"), timeoutMs);
    socket.on("data", (data: Buffer) => {
      buffer = Buffer.concat([buffer, data]);
      for (;;) {
        if (buffer.length - offset < 5) return;
        if (buffer.subarray(offset, offset + 5).toString("latin1") !== "HTTP/") {
          return finish("response", printable(buffer.subarray(offset, offset + 200)));
        }
        const end = buffer.indexOf("\r\n\r\n", offset, "latin1");
        if (end < 0) return;
        const statusLine = buffer.subarray(offset, buffer.indexOf("\r\n", offset, "latin1")).toString("latin1");
        const match = /^HTTP\/1\.[01] (\d{3})(?: |$)/.exec(statusLine);
        if (!match) return finish("response", printable(statusLine));
        const status = Number(match[1]);
        statuses.push(status);
        if (status >= 200 || status === 101) return finish("response");
        offset = end + 4;
      }
    });
    socket.on("error", () => finish("closed"));
    socket.on("close", () => finish("closed"));
    socket.on("end", () => finish("closed"));
    socket.once("connect", () => {
      let index = 0;
      const writeNext = () => {
        if (done || socket.destroyed) return;
        const piece = pieces[index++];
        if (!piece) return;
        socket.write(piece, () => {
          if (index < pieces.length) setImmediate(writeNext);
        });
      };
      writeNext();
    });
  });
}

export interface Verdict {
  failure?: string;
}

/**
 * The properties of one answer: never a 5xx, never non-HTTP bytes; a complete request is answered or
 * its connection closed within the timeout; a canonical request gets one of its expected statuses.
 */
export function judge(input: HttpInput, rendered: Rendered, answer: Answer, timeoutMs: number): string | undefined {
  if (answer.garbage !== undefined) return `the server answered with non-HTTP bytes ${answer.garbage}`;
  const serverError = answer.statuses.find((status) => status >= 500);
  if (serverError !== undefined) return `the server answered ${serverError}`;
  if (answer.how === "timeout" && rendered.complete) {
    return `no response and no close within ${timeoutMs} ms (statuses so far: ${answer.statuses.join(",") || "none"})`;
  }
  if (input.expect) {
    const final = answer.statuses.find((status) => status >= 200 || status === 101);
    if (final === undefined || !input.expect.includes(final)) {
      return `a well-formed request got ${final ?? `no status (${answer.how})`}, expected ${input.expect.join(" or ")}`;
    }
  }
  return undefined;
}

// ------------------------------------------------------------------ arbitraries

export interface CanonicalRequest {
  method: string;
  target: Piece[];
  /** A ref for `Authorization: Bearer …`. */
  auth?: string;
  body?: string;
  /** Send a well-formed WebSocket upgrade. */
  upgrade?: boolean;
  expect: number[];
}

export interface ServerSpec {
  /** Paths served as they are. */
  routes: string[];
  /** Paths that take one more segment: "/v1/jobs/", "/rooms/". */
  prefixes: string[];
  /** Segments that may follow a prefixed segment ("/tokens"). */
  suffixes: string[];
  /** Token refs for Authorization headers and ?token= (besides "host"). */
  tokens: string[];
  /** Room ids with a participant token ref `participant:<id>`. */
  roomIds: string[];
  /** WebSocket endpoints: their paths, and the token refs that open them. */
  upgrades: { path: fc.Arbitrary<string>; tokens: string[] }[];
  canonical: CanonicalRequest[];
}

const pick = <T>(...values: T[]) => fc.constantFrom(...values);
const weighted = <T>(...entries: [number, fc.Arbitrary<T>][]) =>
  fc.oneof({ withCrossShrink: true }, ...entries.map(([weight, arbitrary]) => ({ weight, arbitrary })));

/** Bytes as a latin1 string (each char one byte). */
const bytesText = (maxLength: number) =>
  fc.uint8Array({ maxLength }).map((bytes) => Buffer.from(bytes).toString("latin1"));

const hex = (n: number) => n.toString(16).toUpperCase().padStart(2, "0");

export const BAD_PERCENT = [
  "%E0%A4%A",
  "%",
  "%zz",
  "%E0%A4",
  "%C0%80",
  "%FF",
  "%ED%A0%80",
  "%F4%90%80%80",
  "%%",
  "%2",
  "%u0041",
  "%00",
  "%0a",
  "%E2%82",
  "%c3%28",
];
const GOOD_PERCENT = ["%41", "%2F", "%2f", "%25", "%20", "%E2%82%AC", "%F0%9F%98%80", "%2e%2e", "%7E", "%3F", "%23"];

/** Path segments a server routes on: ids, valid percent-encodings, room ids. */
const goodSegment = (spec: ServerSpec): fc.Arbitrary<string> =>
  weighted<string>(
    [6, fc.stringMatching(/^[A-Za-z0-9._~-]{1,24}$/)],
    [3, pick(...spec.roomIds)],
    [1, pick(...GOOD_PERCENT)],
    [
      1,
      fc
        .tuple(fc.stringMatching(/^[a-z0-9-]{0,8}$/), pick(...GOOD_PERCENT), fc.stringMatching(/^[a-z]{0,4}$/))
        .map((parts) => parts.join("")),
    ],
  );

/** Segments that decode badly, or are not allowed in a request line at all, or are far too long. */
const wildSegment: fc.Arbitrary<string> = weighted<string>(
  [6, pick(...BAD_PERCENT)],
  [
    4,
    fc
      .tuple(fc.stringMatching(/^[a-z0-9-]{0,8}$/), pick(...BAD_PERCENT), fc.stringMatching(/^[a-z%]{0,4}$/))
      .map((parts) => parts.join("")),
  ],
  [2, fc.uint8Array({ minLength: 1, maxLength: 6 }).map((bytes) => [...bytes].map((b) => `%${hex(b)}`).join(""))],
  [1, fc.string({ unit: "grapheme", minLength: 1, maxLength: 8 })],
  [1, fc.string({ unit: "binary-ascii", minLength: 1, maxLength: 6 })],
  [2, pick("..", ".", "", "~", "@", ":", ";x=1", "..%2f..", "%2e%2e%2f", "\\", "a b", "\u0000", "\t", "\u00ff")],
  [1, fc.integer({ min: 200, max: 20_000 }).map((n) => "a".repeat(n))],
);

const queryPairs = (value: fc.Arbitrary<Piece[]>, key: fc.Arbitrary<string>): fc.Arbitrary<Piece[]> =>
  fc.array(fc.tuple(key, value), { maxLength: 3 }).map((pairs) => {
    if (pairs.length === 0) return [];
    const out: Piece[] = ["?"];
    pairs.forEach(([k, v], i) => {
      out.push(`${i ? "&" : ""}${k}=`, ...v);
    });
    return out;
  });

const QUERY_KEYS = ["token", "status", "agent", "limit", "name", "room"];

const goodQuery = (spec: ServerSpec) =>
  queryPairs(
    weighted<Piece[]>(
      [3, goodSegment(spec).map((s) => [s])],
      [3, pick(...spec.tokens).map((ref): Piece[] => [{ ref }])],
      [2, pick("", "completed", "pending", "running", "10", "0", "-1", "1e9", "abc", "10001").map((s) => [s])],
    ),
    pick(...QUERY_KEYS),
  );

const wildQuery = (spec: ServerSpec) =>
  queryPairs(
    weighted<Piece[]>([2, wildSegment.map((s) => [s])], [1, pick(...spec.tokens).map((ref): Piece[] => [{ ref }])]),
    weighted<string>([1, pick(...QUERY_KEYS)], [1, wildSegment]),
  );

const goodPath = (spec: ServerSpec): fc.Arbitrary<string> =>
  weighted<string>(
    [5, pick(...spec.routes)],
    [
      5,
      fc
        .tuple(
          pick(...spec.prefixes),
          goodSegment(spec),
          weighted<string>([4, fc.constant("")], [1, pick(...spec.suffixes)]),
        )
        .map((parts) => parts.join("")),
    ],
    [1, fc.array(goodSegment(spec), { minLength: 1, maxLength: 4 }).map((segments) => `/${segments.join("/")}`)],
    [
      1,
      pick("/", "//", "///agent", "/./healthz", "/../healthz", "/healthz/", "/HEALTHZ", "/%2Fhealthz", "/a/../healthz"),
    ],
  );

const wildPath = (spec: ServerSpec): fc.Arbitrary<string> =>
  weighted<string>(
    [
      6,
      fc
        .tuple(
          pick(...spec.prefixes),
          wildSegment,
          weighted<string>([3, fc.constant("")], [1, pick(...spec.suffixes)], [1, wildSegment.map((s) => `/${s}`)]),
        )
        .map((parts) => parts.join("")),
    ],
    [2, fc.tuple(pick(...spec.routes), wildSegment).map(([route, s]) => `${route}${s}`)],
    [2, fc.array(wildSegment, { minLength: 1, maxLength: 3 }).map((segments) => `/${segments.join("/")}`)],
  );

const AUTHORITIES = [
  "a:99999",
  "[::1",
  "[::1]",
  "[::1]:0",
  "127.0.0.1",
  "a:80",
  "a:-1",
  "a:65536",
  "user:pw@h",
  "",
  "%41",
  "h:port",
  "xn--",
  "[zz]",
  "1.2.3.4.5",
  "a:0x50",
];

const goodTarget = (spec: ServerSpec): fc.Arbitrary<Piece[]> =>
  fc.tuple(goodPath(spec), goodQuery(spec)).map(([path, q]) => [path, ...q]);

const wildTarget = (spec: ServerSpec): fc.Arbitrary<Piece[]> =>
  weighted<Piece[]>(
    [8, fc.tuple(wildPath(spec), goodQuery(spec)).map(([path, q]): Piece[] => [path, ...q])],
    [3, fc.tuple(goodPath(spec), wildQuery(spec)).map(([path, q]): Piece[] => [path, ...q])],
    [
      6,
      fc
        .tuple(
          pick("http", "https", "ws", "HTTP", "ftp", "a"),
          weighted<string>([3, pick(...AUTHORITIES)], [1, fc.stringMatching(/^[a-z0-9.:[\]@%-]{0,16}$/)]),
          weighted<string>([3, goodPath(spec)], [1, wildPath(spec)]),
          goodQuery(spec),
        )
        .map(([scheme, authority, path, q]): Piece[] => [`${scheme}://${authority}${path}`, ...q]),
    ],
    [1, pick(...AUTHORITIES, "127.0.0.1:99999", "localhost:1").map((a): Piece[] => [a])],
    [
      2,
      pick("*", "", "http://a:99999/agent", "http://[::1/x", "/%E0%A4%A", "%", "?", "#", "//a/b").map((t): Piece[] => [
        t,
      ]),
    ],
  );

const METHODS = ["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"];
const wildMethod = weighted<string>(
  [
    3,
    pick("CONNECT", "TRACE", "PRI", "get", "Get", "G ET", "", "GET\u0000", "M-SEARCH", "PROPFIND", "QUERY", "SOURCE"),
  ],
  [1, fc.stringMatching(/^[A-Z_!#-]{1,12}$/)],
  [1, fc.string({ unit: "binary-ascii", maxLength: 8 })],
);

const wildVersion = pick(
  "HTTP/2.0",
  "HTTP/0.9",
  "HTTP/1.2",
  "HTTP/9.9",
  "http/1.1",
  "HTTP/1.1x",
  "HTTP/",
  "",
  "HTTP/1.1 ",
  "HTTP/11",
  "HTTP\u0000",
);

const base64url = (bytes: Uint8Array) => Buffer.from(bytes).toString("base64url");
const b64json = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");

/** Strings shaped like JWTs: header.payload.signature, each part plausible or not. */
export const jwtLike: fc.Arbitrary<string> = fc
  .tuple(
    weighted<string>(
      [3, pick({ alg: "HS256", typ: "JWT" }, { alg: "none" }, { alg: "RS256" }, { alg: "HS512" }, {}).map(b64json)],
      [1, fc.jsonValue({ maxDepth: 1 }).map(b64json)],
      [1, fc.stringMatching(/^[A-Za-z0-9_-]{0,12}$/)],
    ),
    weighted<string>(
      [
        3,
        fc
          .record(
            {
              iss: pick("registry-test-key", "fuzz-key", "troupe-local", "x"),
              role: pick("dispatcher", "worker", "participant", "admin", ""),
              room: pick("fuzz-room-1", "other"),
              exp: weighted<number>([1, fc.integer()], [1, fc.constant(4_102_444_800)]),
              sub: fc.string({ maxLength: 6 }),
            },
            { requiredKeys: [] },
          )
          .map(b64json),
      ],
      [1, fc.jsonValue({ maxDepth: 2 }).map(b64json)],
      [1, fc.stringMatching(/^[A-Za-z0-9_=+/-]{0,16}$/)],
    ),
    weighted<string>(
      [3, fc.uint8Array({ minLength: 0, maxLength: 40 }).map(base64url)],
      [1, fc.stringMatching(/^[\x21-\x7e]{0,8}$/)],
    ),
    pick(3, 3, 3, 2, 4, 1),
  )
  .map(([header, payload, signature, parts]) => [header, payload, signature, "x"].slice(0, parts).join("."));

const goodAuth = (spec: ServerSpec): fc.Arbitrary<Piece[]> =>
  pick(...spec.tokens).map((ref): Piece[] => ["Bearer ", { ref }]);

const wildAuth = (spec: ServerSpec): fc.Arbitrary<Piece[]> =>
  weighted<Piece[]>(
    [5, jwtLike.map((jwt): Piece[] => [`Bearer ${jwt}`])],
    [
      2,
      fc
        .tuple(
          pick("bearer ", "BEARER ", "Bearer  ", "Bearer\t", " Bearer "),
          pick(...spec.tokens),
          pick("", " ", " x", "\t"),
        )
        .map(([scheme, ref, tail]): Piece[] => [scheme, { ref }, tail]),
    ],
    [
      2,
      pick(
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer a b",
        "Bearer .",
        "Bearer ..",
        "Token x",
        "",
        "Bearer \u00ff",
      ).map((v): Piece[] => [v]),
    ],
    [1, fc.stringMatching(/^[\x20-\x7e]{0,60}$/).map((v): Piece[] => [`Bearer ${v}`])],
    [1, fc.string({ unit: "grapheme", maxLength: 30 }).map((v): Piece[] => [`Bearer ${v}`])],
    [1, fc.integer({ min: 1_000, max: 20_000 }).map((n): Piece[] => [`Bearer ${"A".repeat(n)}`])],
  );

const HEADER_NAMES = [
  "Content-Type",
  "Accept",
  "Connection",
  "Upgrade",
  "Sec-WebSocket-Key",
  "Sec-WebSocket-Version",
  "Sec-WebSocket-Protocol",
  "Sec-WebSocket-Extensions",
  "Origin",
  "Cookie",
  "X-Forwarded-For",
  "Idempotency-Key",
  "Expect",
  "TE",
  "Range",
  "Accept-Encoding",
  "Authorization",
  "Host",
  "Trailer",
  "Keep-Alive",
  "Proxy-Authorization",
  "If-None-Match",
];

const goodHeader: fc.Arbitrary<[string, Piece[]]> = fc.tuple(
  weighted<string>([4, pick(...HEADER_NAMES)], [1, fc.stringMatching(/^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}$/)]),
  weighted<string>(
    [4, fc.stringMatching(/^[\x21-\x7e]([\x20-\x7e]{0,38}[\x21-\x7e])?$/)],
    [
      2,
      pick(
        "websocket",
        "Upgrade",
        "keep-alive",
        "close",
        "100-continue",
        "application/json",
        "text/plain",
        "chunked",
        "13",
        "permessage-deflate; client_max_window_bits",
        "*/*",
        "bytes=0-1",
        "",
      ),
    ],
  ).map((v): Piece[] => [v]),
);

const wildHeader: fc.Arbitrary<[string, Piece[]]> = weighted<[string, Piece[]]>(
  [
    2,
    fc.tuple(
      pick(...HEADER_NAMES),
      weighted<string>(
        [2, fc.string({ unit: "grapheme", maxLength: 20 })],
        [2, bytesText(20)],
        [1, fc.integer({ min: 1_000, max: 20_000 }).map((n) => "v".repeat(n))],
        [2, pick("a\r\n b", "a\rb", "a\nb", "\u0000", "\u007f", " leading", "trailing ", "\t", "\u00ff\u00fe")],
      ).map((v): Piece[] => [v]),
    ),
  ],
  [
    1,
    fc.tuple(
      pick("", " X", "X ", "X:Y", "X\u0000", "Ü", "X\tY", "(x)", "Content-Length", "Transfer-Encoding"),
      fc.stringMatching(/^[\x20-\x7e]{0,10}$/).map((v): Piece[] => [v]),
    ),
  ],
);

/** Upgrade headers: usually right, sometimes with a missing or bad piece. */
const goodUpgradeHeaders = fc.uint8Array({ minLength: 16, maxLength: 16 }).map((key): [string, Piece[]][] => [
  ["Connection", ["Upgrade"]],
  ["Upgrade", ["websocket"]],
  ["Sec-WebSocket-Version", ["13"]],
  ["Sec-WebSocket-Key", [Buffer.from(key).toString("base64")]],
]);

const wildUpgradeHeaders = fc
  .record({
    connection: pick("Upgrade", "upgrade", "keep-alive, Upgrade", "close", "Upgrade, Upgrade", "", "HTTP2-Settings"),
    upgrade: pick("websocket", "WebSocket", "h2c", "websocket, foo", "", "tls/1.0"),
    version: weighted<string | undefined>([3, fc.constant("13")], [2, pick(undefined, "8", "", "13, 8", "x", "-1")]),
    key: weighted<string | undefined>(
      [2, fc.uint8Array({ minLength: 16, maxLength: 16 }).map((b) => Buffer.from(b).toString("base64"))],
      [
        3,
        pick(
          undefined,
          "",
          "short",
          "dGhlIHNhbXBsZSBub25jZQ",
          "!!!!!!!!!!!!!!!!!!!!!!==",
          "dGhlIHNhbXBsZSBub25jZQ==, dGhlIHNhbXBsZSBub25jZQ==",
        ),
      ],
      [1, fc.stringMatching(/^[\x21-\x7e]{0,30}$/)],
    ),
    extensions: fc.option(pick("permessage-deflate", "permessage-deflate; server_max_window_bits=99", "x;;;", "=")),
    protocol: fc.option(pick("chat", ",", "a b")),
  })
  .map((h) => {
    const out: [string, Piece[]][] = [
      ["Connection", [h.connection]],
      ["Upgrade", [h.upgrade]],
    ];
    if (h.version !== undefined) out.push(["Sec-WebSocket-Version", [h.version]]);
    if (h.key !== undefined) out.push(["Sec-WebSocket-Key", [h.key]]);
    if (h.extensions !== null) out.push(["Sec-WebSocket-Extensions", [h.extensions]]);
    if (h.protocol !== null) out.push(["Sec-WebSocket-Protocol", [h.protocol]]);
    return out;
  });

const roomIdish = weighted<string>(
  [3, pick("fuzz-room-1", "fuzz-room-2", "made-here")],
  [2, fc.stringMatching(/^[A-Za-z0-9._-]{1,20}$/)],
  [1, fc.string({ maxLength: 140 })],
);

/** Bodies: empty, JSON for the routes (valid and not), other JSON, text, bytes, too large. */
export const body: fc.Arbitrary<string> = weighted<string>(
  [3, fc.constant("")],
  [
    4,
    fc
      .record(
        {
          agent_name: weighted<unknown>(
            [3, pick("fuzz-agent", "a", "")],
            [1, fc.string({ maxLength: 300 })],
            [1, fc.jsonValue({ maxDepth: 1 })],
          ),
          room_id: weighted<unknown>([3, roomIdish], [1, fc.jsonValue({ maxDepth: 1 })]),
          metadata: weighted<unknown>(
            [3, fc.dictionary(fc.string({ maxLength: 6 }), fc.jsonValue({ maxDepth: 2 }))],
            [1, fc.jsonValue({ maxDepth: 1 })],
          ),
          room_options: fc.jsonValue({ maxDepth: 2 }),
          max_duration: weighted<unknown>([3, fc.double()], [1, fc.jsonValue({ maxDepth: 1 })]),
          idempotency_key: weighted<unknown>([3, fc.string({ maxLength: 300 })], [1, fc.jsonValue({ maxDepth: 1 })]),
          redispatch: weighted<unknown>([3, fc.boolean()], [1, fc.jsonValue({ maxDepth: 1 })]),
          extra: fc.jsonValue({ maxDepth: 1 }),
        },
        { requiredKeys: [] },
      )
      .map((value) => Buffer.from(JSON.stringify(value), "utf8").toString("latin1")),
  ],
  [
    2,
    fc
      .record(
        {
          room_id: weighted<unknown>([3, roomIdish], [1, fc.jsonValue({ maxDepth: 1 })]),
          name: weighted<unknown>([3, fc.string({ maxLength: 120 })], [1, fc.jsonValue({ maxDepth: 1 })]),
          identity: weighted<unknown>([3, fc.string({ maxLength: 140 })], [1, fc.jsonValue({ maxDepth: 1 })]),
          ttl: weighted<unknown>(
            [3, fc.integer({ min: -10, max: 800_000 })],
            [1, fc.double()],
            [1, fc.jsonValue({ maxDepth: 1 })],
          ),
        },
        { requiredKeys: [] },
      )
      .map((value) => Buffer.from(JSON.stringify(value), "utf8").toString("latin1")),
  ],
  [3, fc.jsonValue({ maxDepth: 3 }).map((value) => Buffer.from(JSON.stringify(value), "utf8").toString("latin1"))],
  [
    1,
    pick(
      "null",
      "{",
      "[",
      '{"agent_name":',
      "{}",
      "[]",
      '"x"',
      "1e999",
      '{"__proto__":{"x":1}}',
      '{"agent_name":"a","agent_name":"b"}',
    ),
  ],
  [1, fc.string({ unit: "grapheme", maxLength: 60 }).map((s) => Buffer.from(s, "utf8").toString("latin1"))],
  [1, bytesText(80)],
  // Over the registry's 64 KiB body limit: a few of them are enough.
  [
    1,
    weighted<string>(
      [1, fc.integer({ min: 60_000, max: 80_000 }).map((n) => JSON.stringify({ agent_name: "x".repeat(n) }))],
      [6, fc.string({ maxLength: 2_000 })],
    ),
  ],
);

const wildFraming: fc.Arbitrary<Framing> = weighted<Framing>(
  [1, fc.constant({ type: "none" } as Framing)],
  [1, fc.constant({ type: "cl-short" } as Framing)],
  [1, fc.integer({ min: 1, max: 100 }).map((extra): Framing => ({ type: "cl-long", extra }))],
  [
    2,
    pick("-1", "abc", "1e3", "+3", "99999999999999999999", "3, 4", "0x10", "", " ", "1 2", "\u00bd").map(
      (value): Framing => ({ type: "cl-bad", value }),
    ),
  ],
  [1, pick("0", "1", "7", "x").map((second): Framing => ({ type: "cl-dup", second }))],
  [
    1,
    pick("zz", "-1", "fffffffffffffffffffff", "g", "5\u0000", "0x5", "").map(
      (size): Framing => ({ type: "chunked-bad", size }),
    ),
  ],
  [1, fc.constant({ type: "chunked-open" } as Framing)],
  [1, fc.constant({ type: "te-and-cl" } as Framing)],
  [
    1,
    pick("gzip", "identity", "gzip, chunked", "chunked, gzip", "chunked;q=1", "").map(
      (value): Framing => ({ type: "te-other", value }),
    ),
  ],
);

const goodFraming: fc.Arbitrary<Framing> = weighted<Framing>(
  [6, fc.constant({ type: "auto" } as Framing)],
  [
    1,
    fc
      .tuple(fc.array(fc.integer({ min: 1, max: 40 }), { maxLength: 5 }), pick("", "", ";ext=1", ";a"))
      .map(([sizes, extension]): Framing => ({ type: "chunked", sizes, extension })),
  ],
);

const HOST: [string, Piece[]] = ["Host", [{ ref: "host" }]];

const wildHost = weighted<[string, Piece[]][]>(
  [1, fc.constant([])],
  [1, fc.constant([HOST, ["Host", ["evil.example"]]] as [string, Piece[]][])],
  [
    2,
    pick("", "a:99999", "[::1", "x y", "\u00ff", "a".repeat(300), "127.0.0.1:0").map((value): [string, Piece[]][] => [
      ["Host", [value]],
    ]),
  ],
);

/** The trailing bytes: usually none; sometimes a second request or garbage. */
const wildTrailer = weighted<string>(
  [2, fc.constant("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")],
  [2, bytesText(40)],
  [1, pick("\r\n", "\r\n\r\n", "\u0000", "GET")],
);

const splits = weighted<number[]>(
  [6, fc.constant([])],
  [2, fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 1, maxLength: 3 })],
);

/** `good` most of the time, `wild` now and then: a request is wrong in a few places, not all. */
const sometimes = <T>(good: fc.Arbitrary<T>, wild: fc.Arbitrary<T>, wildWeight = 1, goodWeight = 10) =>
  weighted<T>([goodWeight, good], [wildWeight, wild]);

function fuzzRequest(spec: ServerSpec): fc.Arbitrary<HttpInput> {
  return fc
    .record({
      method: sometimes(pick(...METHODS), wildMethod, 1, 14),
      target: sometimes(goodTarget(spec), wildTarget(spec), 5, 10),
      latin1: fc.boolean(),
      version: sometimes(pick("HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0"), wildVersion, 1, 20),
      eol: sometimes(fc.constant("\r\n"), pick("\n", "\r", "\r\r\n", "\n\r"), 1, 40),
      host: sometimes<[string, Piece[]][]>(fc.constant([HOST]), wildHost, 1, 14),
      auth: weighted<Piece[] | null>([3, fc.constant(null)], [4, goodAuth(spec)], [3, wildAuth(spec)]),
      upgrade: weighted<[string, Piece[]][]>([10, fc.constant([])], [2, goodUpgradeHeaders], [2, wildUpgradeHeaders]),
      extra: fc.array(sometimes(goodHeader, wildHeader, 1, 12), { maxLength: 4 }),
      framing: sometimes(goodFraming, wildFraming, 1, 10),
      body,
      terminated: sometimes(fc.constant(true), fc.constant(false), 1, 60),
      splits,
      trailer: sometimes(fc.constant(""), wildTrailer, 1, 20),
    })
    .map((r): HttpInput => {
      const headers: [string, Piece[]][] = [...r.host];
      if (r.auth) headers.push(["Authorization", r.auth]);
      headers.push(...r.upgrade, ...r.extra);
      return {
        kind: "fuzz",
        method: r.method,
        target: r.target,
        latin1: r.latin1,
        version: r.version,
        eol: r.eol,
        headers,
        framing: r.framing,
        body: r.body,
        terminated: r.terminated,
        splits: r.splits,
        trailer: r.trailer,
      };
    });
}

/** WebSocket upgrades to the server's endpoints, tokens mostly right, headers mostly right. */
function upgradeRequest(spec: ServerSpec): fc.Arbitrary<HttpInput> {
  const endpoint = fc.oneof(
    ...spec.upgrades.map((u) =>
      fc.record({
        path: weighted<string>([6, u.path], [1, fc.tuple(u.path, wildSegment).map(([p, s]) => `${p}${s}`)]),
        ref: weighted<string>([5, pick(...u.tokens)], [1, pick(...spec.tokens)]),
        how: pick<"query" | "header" | "none">("query", "header", "header", "none"),
        absolute: weighted<string>(
          [8, fc.constant("")],
          [1, pick("http://127.0.0.1", "http://a:99999", "ws://x", "http://[::1")],
        ),
      }),
    ),
  );
  return fc
    .record({
      endpoint,
      method: sometimes(fc.constant("GET"), pick("POST", "HEAD", "get", "CONNECT"), 1, 12),
      version: sometimes(fc.constant("HTTP/1.1"), pick("HTTP/1.0", "HTTP/2.0", "HTTP/1.2"), 1, 12),
      upgrade: sometimes(goodUpgradeHeaders, wildUpgradeHeaders, 1, 4),
      extra: fc.array(sometimes(goodHeader, wildHeader, 1, 8), { maxLength: 3 }),
      body: sometimes(fc.constant(""), bytesText(30), 1, 8),
      splits,
      trailer: sometimes(fc.constant(""), bytesText(30), 1, 10),
    })
    .map((r): HttpInput => {
      const { path, ref, how, absolute } = r.endpoint;
      const headers: [string, Piece[]][] = [HOST, ...r.upgrade];
      const target: Piece[] = [`${absolute}${path}`];
      if (how === "header") headers.push(["Authorization", ["Bearer ", { ref }]]);
      if (how === "query") target.push("?token=", { ref });
      headers.push(...r.extra);
      return {
        kind: "upgrade",
        method: r.method,
        target,
        latin1: false,
        version: r.version,
        eol: "\r\n",
        headers,
        framing: { type: "none" },
        body: r.body,
        terminated: true,
        splits: r.splits,
        trailer: r.trailer,
      };
    });
}

function canonicalRequest(spec: ServerSpec): fc.Arbitrary<HttpInput> {
  return fc.constantFrom(...spec.canonical).map((c): HttpInput => {
    const headers: [string, Piece[]][] = [HOST];
    if (c.auth) headers.push(["Authorization", ["Bearer ", { ref: c.auth }]]);
    if (c.upgrade) {
      headers.push(
        ["Connection", ["Upgrade"]],
        ["Upgrade", ["websocket"]],
        ["Sec-WebSocket-Version", ["13"]],
        ["Sec-WebSocket-Key", ["dGhlIHNhbXBsZSBub25jZQ=="]],
      );
    }
    if (c.body !== undefined) headers.push(["Content-Type", ["application/json"]]);
    return {
      kind: "canonical",
      method: c.method,
      target: c.target,
      latin1: false,
      version: "HTTP/1.1",
      eol: "\r\n",
      headers,
      framing: { type: "auto" },
      body: c.body ?? "",
      terminated: true,
      splits: [],
      trailer: "",
      expect: c.expect,
    };
  });
}

/** Every kind of request for one server, in proportions `weights` (fuzz, upgrade, canonical). */
export function httpInput(spec: ServerSpec, weights: { fuzz: number; upgrade: number; canonical: number }) {
  return weighted<HttpInput>(
    [weights.fuzz, fuzzRequest(spec)],
    [weights.upgrade, upgradeRequest(spec)],
    [weights.canonical, canonicalRequest(spec)],
  );
}

/** What the answers were: by final status (or how the exchange ended), and the slowest ones. */
export class AnswerStats {
  readonly byOutcome = new Map<string, number>();
  readonly slow: { ms: number; text: string }[] = [];
  totalMs = 0;

  add(answer: Answer, show: () => string): void {
    const final = answer.statuses.at(-1);
    const key = final === undefined ? answer.how : `${final}${answer.how === "closed" ? "+close" : ""}`;
    this.byOutcome.set(key, (this.byOutcome.get(key) ?? 0) + 1);
    this.totalMs += answer.ms;
    if (answer.ms > 1_000 && this.slow.length < 5) this.slow.push({ ms: answer.ms, text: show().slice(0, 200) });
  }

  summary(): string {
    const outcomes = [...this.byOutcome].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k}:${n}`);
    return outcomes.join(" ");
  }
}

/** A phase's check for raw HTTP inputs against a server on `port`. */
export function rawHttpCheck(
  port: () => number,
  ctx: () => RenderContext,
  stats?: AnswerStats,
  timeouts = { complete: 8_000, incomplete: 400 },
) {
  return async (input: HttpInput, mode: "batch" | "replay"): Promise<string | undefined> => {
    const rendered = render(input, ctx());
    const budget = rendered.complete
      ? mode === "replay"
        ? Math.min(timeouts.complete, 2_000)
        : timeouts.complete
      : timeouts.incomplete;
    const answer = await exchange(port(), rendered.pieces, budget);
    if (mode === "batch") stats?.add(answer, () => rendered.text());
    return judge(input, rendered, answer, budget);
  };
}

/** Tokens shown as <ref> in reports; the Host as it was. */
function redacted(ctx: RenderContext): RenderContext {
  return {
    refs: Object.fromEntries(
      Object.entries(ctx.refs).map(([name, value]) => [name, name === "host" ? value : `<${name}>`]),
    ),
  };
}

export const showHttp = (ctx: () => RenderContext) => (input: HttpInput) => {
  const rendered = render(input, redacted(ctx()));
  return `${input.kind} ${rendered.complete ? "complete" : "incomplete"} request ${rendered.text()}${rendered.pieces.length > 1 ? ` in ${rendered.pieces.length} writes` : ""}`;
};
