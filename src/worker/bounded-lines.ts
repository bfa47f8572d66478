import type { Readable } from "node:stream";

/**
 * Splits a stream into lines like readline, but keeps at most `maxBytes` of any line: readline
 * buffers a line until its newline, so a job printing gigabytes without one would grow the worker's
 * memory without bound. `onLine` gets the kept bytes (without the newline) and how many were cut.
 */
export function onBoundedLines(
  stream: Readable,
  maxBytes: number,
  onLine: (line: Buffer, cutBytes: number) => void,
): void {
  let parts: Buffer[] = [];
  let kept = 0;
  let cut = 0;
  const append = (segment: Buffer) => {
    const room = Math.max(0, maxBytes - kept);
    if (segment.length > room) cut += segment.length - room;
    if (room > 0 && segment.length > 0) {
      // a copy: a slice would pin the whole chunk until the line ends
      const piece = Buffer.from(segment.subarray(0, room));
      parts.push(piece);
      kept += piece.length;
    }
  };
  const emit = () => {
    let line = parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, kept);
    if (cut === 0 && line.at(-1) === 13) line = line.subarray(0, -1); // CRLF
    onLine(line, cut);
    parts = [];
    kept = 0;
    cut = 0;
  };
  stream.on("data", (chunk: Buffer | string) => {
    const data = typeof chunk === "string" ? Buffer.from(chunk) : chunk;
    let start = 0;
    for (let newline = data.indexOf(10, start); newline >= 0; newline = data.indexOf(10, start)) {
      append(data.subarray(start, newline));
      emit();
      start = newline + 1;
    }
    if (start < data.length) append(data.subarray(start));
  });
  stream.on("end", () => {
    if (kept > 0 || cut > 0) emit();
  });
}
