import { rmSync } from "node:fs";
import { COVERAGE_DIR } from "./coverage.ts";

/** Each run starts with no recorded machine coverage; the check after vitest reads this run's only. */
export default function setup(): void {
  rmSync(COVERAGE_DIR, { recursive: true, force: true });
}
