import { existsSync, mkdirSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type Browser, chromium, type Page } from "playwright-core";

/**
 * Debian's chromium for the browser tests, driven by playwright-core. Where it is missing the tests
 * are skipped with a notice, except under CI=true, where that is an error (.ci/run installs it).
 */
export const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
export const chromiumAvailable = existsSync(CHROMIUM);

if (!chromiumAvailable) {
  if (process.env.CI === "true") throw new Error(`no chromium at ${CHROMIUM}: .ci/run should have installed it`);
  console.warn(`browser tests skipped: no chromium at ${CHROMIUM} (apt-get install chromium)`);
}

export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless=new",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--disable-background-networking",
    ],
  });
}

/**
 * Where screenshots go: docs/ with TROUPE_SCREENSHOTS=1 (how the README's pictures are made), else a
 * temporary folder.
 */
export function screenshotDir(): string {
  const dir = process.env.TROUPE_SCREENSHOTS
    ? fileURLToPath(new URL("../../docs/", import.meta.url))
    : mkdtempSync(join(tmpdir(), "troupe-shots-"));
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** Every response of the page with status 400 or more (a missing favicon, a script, a stylesheet). */
export function failedResponses(page: Page): string[] {
  const failed: string[] = [];
  page.on("response", (response) => {
    if (response.status() >= 400) failed.push(`${response.status()} ${response.url()}`);
  });
  return failed;
}
