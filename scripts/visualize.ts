/**
 * npm run viz: writes visualizations/<machine>.mmd, .dot and .svg from the machine objects.
 * --check: writes nothing; exits 1 listing the files that differ from what the machines generate.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { generateVisualizations } from "./visualizations.ts";

const dir = join(import.meta.dirname, "..", "visualizations");
const check = process.argv.includes("--check");
const files = await generateVisualizations();
const stale: string[] = [];
mkdirSync(dir, { recursive: true });
for (const [name, content] of Object.entries(files)) {
  const path = join(dir, name);
  let current: string | undefined;
  try {
    current = readFileSync(path, "utf8");
  } catch {
    current = undefined;
  }
  if (current === content) continue;
  if (check) stale.push(name);
  else writeFileSync(path, content);
}
if (check && stale.length > 0) {
  console.error(`visualizations/ is stale (run npm run viz): ${stale.join(", ")}`);
  process.exit(1);
}
console.log(check ? "visualizations/ is current" : `wrote ${Object.keys(files).length} files to visualizations/`);
