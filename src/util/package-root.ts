import { fileURLToPath } from "node:url";
import { RUNNING_FROM_SOURCES } from "./tsx-loader.ts";

/**
 * From this file to troupe's own folder (where package.json, web/ and visualizations/ are): run from
 * source this is src/util/package-root.ts; compiled (tsconfig.build.json keeps the tree under dist/)
 * it is dist/src/util/package-root.js, one level deeper.
 */
const PACKAGE_ROOT = new URL(RUNNING_FROM_SOURCES ? "../../" : "../../../", import.meta.url);

/** The path of a file or folder shipped with troupe beside its code, e.g. `packageFile("web/")`. */
export function packageFile(relativePath: string): string {
  return fileURLToPath(new URL(relativePath, PACKAGE_ROOT));
}
