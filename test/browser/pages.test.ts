import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Browser } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type DevSession, startDev } from "../../src/cli/dev.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { registryInternals } from "../../src/registry/server.ts";
import { until } from "../support/wait.ts";
import { chromiumAvailable, failedResponses, launchChromium, screenshotDir } from "./chromium.ts";

/**
 * The playground and the dashboard in Debian's chromium, against `troupe dev` running the echo
 * example: dispatch the agent from the playground with metadata, talk to it, watch its job and its
 * process on the dashboard (every region of the slot's parallel state marked), leave, see the job
 * complete, and dispatch again. Screenshots go under docs/ with TROUPE_SCREENSHOTS=1 (how the
 * README's pictures are made), else into a temporary folder.
 */
const ECHO_AGENT = fileURLToPath(new URL("../../examples/echo-agent.ts", import.meta.url));

describe.runIf(chromiumAvailable)("the playground and the dashboard in a real browser", { timeout: 150_000 }, () => {
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
    browser = await launchChromium();
    // The worker registers in its own process; the playground lists agents it finds at load.
    await until(() => [...registryInternals(dev.registry).core.directory.workers()].some((w) => w.available), {
      label: "the echo agent's worker to register",
      timeoutMs: 30_000,
    });
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await dev?.stop();
  });

  it("dispatches with metadata, chats, leaves, sees the job complete, and dispatches again", async () => {
    const shots = screenshotDir();
    const dispatcher = new URL(dev.playgroundUrl).searchParams.get("token") as string;
    const playground = await browser.newPage({ viewport: { width: 1100, height: 760 } });
    const playgroundFailures = failedResponses(playground);
    await playground.goto(`${dev.playgroundUrl}&agent=EchoAgent&room=browser-room`);
    await playground.getByLabel("Your name").fill("Ada");
    await playground.getByLabel("Metadata (JSON)").fill("not json");
    await playground.getByRole("button", { name: "Dispatch agent and join" }).click();
    await playground.locator("#status", { hasText: "error: metadata is not JSON" }).waitFor({ timeout: 5_000 });
    await playground.getByLabel("Metadata (JSON)").fill('{"topic": "troupe", "level": 2}');
    await playground.getByRole("button", { name: "Dispatch agent and join" }).click();
    await playground.locator("#log .agent", { hasText: "Hello Ada!" }).waitFor({ timeout: 30_000 });
    await playground.getByPlaceholder("say something").fill("is anyone there?");
    await playground.getByRole("button", { name: "Send" }).click();
    await playground.locator("#log .agent", { hasText: "echo: is anyone there?" }).waitFor({ timeout: 10_000 });
    const jobId = (await playground.locator("#status").getAttribute("data-job-id")) as string;
    expect(jobId).toMatch(/^job-/);
    // While its job runs, the page dispatches nothing more into the room; it can leave.
    await expect
      .poll(() => playground.locator("#status").getAttribute("data-job-status"), { timeout: 15_000 })
      .toBe("running");
    expect(await playground.getByRole("button", { name: "Dispatch agent and join" }).isDisabled()).toBe(true);
    expect(await playground.getByRole("button", { name: "Leave" }).isEnabled()).toBe(true);
    const record = await fetch(`${dev.registry.url}/v1/jobs/${jobId}`, {
      headers: { authorization: `Bearer ${dispatcher}` },
    }).then((r) => r.json() as Promise<{ job: { metadata?: unknown } }>);
    expect(record.job.metadata).toEqual({ topic: "troupe", level: 2 });
    await playground.screenshot({ path: join(shots, "playground.png") });

    const dashboard = await browser.newPage({ viewport: { width: 1100, height: 1000 } });
    const dashboardFailures = failedResponses(dashboard);
    await dashboard.goto(dev.dashboardUrl);
    const row = dashboard.locator(`#jobs tr[data-job="${jobId}"]`);
    await expect.poll(() => row.getAttribute("data-status"), { timeout: 15_000 }).toBe("running");
    // The job's process, as its worker's status updates report it: all four regions of its slot marked.
    const slot = dashboard.locator("#slots tbody tr", { hasText: jobId });
    await slot.waitFor({ timeout: 15_000 });
    expect(await slot.textContent()).toMatch(/slot\.\d+.*alive\.ready\.work\.busy/);
    const slotKey = `slot:${await slot.getAttribute("data-worker")}:${await slot.getAttribute("data-slot")}`;
    await dashboard.locator("#machine").selectOption(slotKey);
    await expect.poll(() => dashboard.locator("#diagram").getAttribute("data-marked"), { timeout: 10_000 }).toBe("4");
    expect(await dashboard.locator("#diagram g.node.current title").allTextContents()).toContain(
      "slot_alive_ready_work_busy",
    );
    await dashboard.screenshot({ path: join(shots, "dashboard.png"), fullPage: true });

    // Leaving ends the session after the agent's sessionTimeoutSeconds; the job completes, and the
    // playground may dispatch again.
    await playground.getByRole("button", { name: "Leave" }).click();
    await playground.locator("#log .system", { hasText: "you left the room" }).waitFor({ timeout: 10_000 });
    await expect.poll(() => row.getAttribute("data-status"), { timeout: 30_000 }).toBe("completed");
    expect(await row.textContent()).toContain("session_ended");
    await expect
      .poll(() => playground.locator("#status").getAttribute("data-job-status"), { timeout: 15_000 })
      .toBe("completed");
    const again = playground.getByRole("button", { name: "Dispatch agent and join" });
    expect(await again.isEnabled()).toBe(true);
    await again.click();
    await expect
      .poll(() => playground.locator("#status").getAttribute("data-job-id"), { timeout: 15_000 })
      .not.toBe(jobId);
    await expect
      .poll(() => playground.locator("#log .agent", { hasText: "Hello Ada!" }).count(), { timeout: 30_000 })
      .toBe(2);
    const secondJob = (await playground.locator("#status").getAttribute("data-job-id")) as string;

    await playground.close();
    const secondRow = dashboard.locator(`#jobs tr[data-job="${secondJob}"]`);
    await expect.poll(() => secondRow.getAttribute("data-status"), { timeout: 30_000 }).toBe("completed");
    await dashboard.close();
    expect(playgroundFailures).toEqual([]);
    expect(dashboardFailures).toEqual([]);
  });

  it("answers / with the dashboard and serves a favicon", async () => {
    const root = await fetch(`${dev.registry.url}/?token=abc`, { redirect: "manual" });
    expect(root.status).toBe(302);
    expect(root.headers.get("location")).toBe("/dashboard?token=abc");
    for (const path of ["/favicon.ico", "/web/favicon.svg"]) {
      const icon = await fetch(`${dev.registry.url}${path}`);
      expect(icon.status, path).toBe(200);
      expect(icon.headers.get("content-type"), path).toBe("image/svg+xml");
    }
  });
});
