#!/usr/bin/env node
// The `troupe` command. In a checkout (src/ beside bin/) it runs the TypeScript sources through tsx,
// so it never runs a stale build; an installed package ships no src/ and runs the compiled dist/
// (made by `npm run build`, and before every `npm pack` and `npm publish`), with no tsx needed.
import { existsSync } from "node:fs";

const sources = new URL("../src/cli/main.ts", import.meta.url);
let main;
if (existsSync(sources)) {
  const { register } = await import("tsx/esm/api");
  register();
  ({ main } = await import(sources.href));
} else {
  ({ main } = await import("../dist/src/cli/main.js"));
}
await main();
