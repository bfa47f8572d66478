import { existsSync, mkdirSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type Browser, chromium } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type DevSession, startDev } from "../../src/cli/dev.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { until } from "../integration/helpers/recorder.ts";

/**
 * The playground and the dashboard in Debian's chromium, against `troupe dev` running the echo
 * example: dispatch the agent from the playground, talk to it, and watch its job on the dashboard go
 * from running to completed. Screenshots go under docs/ with TROUPE_SCREENSHOTS=1 (how the README's
 * pictures are made), else into a temporary folder.
 */
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const ECHO_AGENT = fileURLToPath(new URL("../../examples/echo-agent.ts", import.meta.url));
const SHOTS = process.env.TROUPE_SCREENSHOTS
  ? fileURLToPath(new URL("../../docs/", import.meta.url))
  : mkdtempSync(join(tmpdir(), "troupe-shots-"));
const available = existsSync(CHROMIUM);
if (!available) {
  // On a developer machine without chromium: say so. In CI the browser must be there (.ci/run installs it).
  if (process.env.CI === "true") throw new Error(`no chromium at ${CHROMIUM}: .ci/run should have installed it`);
  console.warn(`browser tests skipped: no chromium at ${CHROMIUM} (apt-get install chromium)`);
}

describe.runIf(available)("the playground and the dashboard in a real browser", { timeout: 90_000 }, () => {
  let dev: DevSession;
  let browser: Browser;

  beforeAll(async () => {
    dev = await startDev({
      modulePath: ECHO_AGENT,
      host: "127.0.0.1",
      port: 0,
      watch: false,
      logger: createLogger("ERROR", { write() {} }),
      workerOutput: "ignore",
    });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
      ],
    });
    // The worker registers in its own process; the playground lists agents it finds at load.
    await until(
      () => [...dev.registry.core.workers.values()].some((w) => w.available),
      30_000,
      "the echo agent's worker to register",
    );
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await dev?.stop();
  });

  it("dispatches the echo agent, chats with it, and the dashboard shows its job run and complete", async () => {
    mkdirSync(SHOTS, { recursive: true });
    const playground = await browser.newPage({ viewport: { width: 1100, height: 760 } });
    await playground.goto(`${dev.playgroundUrl}&agent=EchoAgent&room=browser-room`);
    await playground.getByLabel("Your name").fill("Ada");
    await playground.getByRole("button", { name: "Dispatch agent and join" }).click();
    await playground.locator("#log .agent", { hasText: "Hello Ada!" }).waitFor({ timeout: 30_000 });
    await playground.getByPlaceholder("say something").fill("is anyone there?");
    await playground.getByRole("button", { name: "Send" }).click();
    await playground.locator("#log .agent", { hasText: "echo: is anyone there?" }).waitFor({ timeout: 10_000 });
    const jobId = await playground.locator("#status").getAttribute("data-job-id");
    expect(jobId).toMatch(/^job-/);
    await playground.screenshot({ path: join(SHOTS, "playground.png") });

    const dashboard = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    await dashboard.goto(dev.dashboardUrl);
    const row = dashboard.locator(`#jobs tr[data-job="${jobId}"]`);
    await expect.poll(() => row.getAttribute("data-status"), { timeout: 15_000 }).toBe("running");
    // The worker's processes, as its status updates report them: slot machine state and pid.
    await dashboard.locator("#slots tbody tr").first().waitFor({ timeout: 15_000 });
    expect(await dashboard.locator("#slots tbody tr").first().textContent()).toMatch(/slot\.\d+.*alive/);
    await dashboard.locator("#machine").selectOption({ label: `dispatch ${jobId}` });
    await dashboard.locator("#diagram svg .current").first().waitFor({ timeout: 10_000 });
    await dashboard.screenshot({ path: join(SHOTS, "dashboard.png"), fullPage: true });

    // Leaving the room ends the session after the agent's sessionTimeoutSeconds; the job completes.
    await playground.close();
    await expect.poll(() => row.getAttribute("data-status"), { timeout: 30_000 }).toBe("completed");
    expect(await row.textContent()).toContain("session_ended");
    await dashboard.close();
  });
});
