import { readFileSync } from "node:fs";

/** The entry points docs/api.md documents, each with a `## \`<entry>\`` section. */
export const ENTRY_POINTS = ["troupe", "troupe/machines"] as const;
export type EntryPoint = (typeof ENTRY_POINTS)[number];

const API_DOC = new URL("../../docs/api.md", import.meta.url);

/**
 * The names docs/api.md documents for each entry point: the `### \`Name\`` headings under that entry's
 * `## \`entry\`` heading, up to the next `## ` heading. (Code blocks hold no headings here.)
 */
export function documentedNames(text = readFileSync(API_DOC, "utf8")): Record<EntryPoint, string[]> {
  const names: Record<EntryPoint, string[]> = { troupe: [], "troupe/machines": [] };
  let entry: EntryPoint | undefined;
  let inCode = false;
  for (const line of text.split("\n")) {
    if (line.startsWith("```")) inCode = !inCode;
    if (inCode) continue;
    const section = /^## `([^`]+)`\s*$/.exec(line);
    if (section) {
      entry = ENTRY_POINTS.find((name) => name === section[1]);
      continue;
    }
    if (line.startsWith("## ")) {
      entry = undefined;
      continue;
    }
    const name = /^### `([A-Za-z_$][\w$]*)`\s*$/.exec(line);
    if (name && entry) names[entry].push(name[1] as string);
  }
  return names;
}

/** The names a module's source exports as types only: `export type { A, B as C } from …` and `export type|interface X`. */
export function typeOnlyExports(source: string): string[] {
  const names: string[] = [];
  for (const match of source.matchAll(/export\s+type\s*\{([^}]*)\}/g)) {
    for (const item of (match[1] as string).split(",")) {
      const name = item
        .trim()
        .split(/\s+as\s+/)
        .pop();
      if (name) names.push(name);
    }
  }
  for (const match of source.matchAll(/export\s+(?:type|interface)\s+([A-Za-z_$][\w$]*)/g))
    names.push(match[1] as string);
  return names;
}
