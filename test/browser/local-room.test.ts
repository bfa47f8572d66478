import type { Browser } from "playwright-core";
import { afterAll, beforeAll, describe, it } from "vitest";
import { spawnWorker } from "../integration/helpers/out-of-process.ts";
import { chromiumAvailable, failedResponses, launchChromium } from "./chromium.ts";

/**
 * A local-mode worker (`register: false`, as `npx tsx examples/echo-agent.ts` runs) prints a
 * playground link; opened in chromium, the worker's own page joins the job's room with the token in
 * the link, talks to the agent, and leaves; the job then ends `session_ended` and the worker exits 0.
 */
const JOIN_LINE = "join the room: open the playground link, or run the connect command in a terminal";

describe.runIf(chromiumAvailable)("a local-mode room joined through its printed link in a real browser", () => {
  let browser: Browser;
  beforeAll(async () => {
    browser = await launchChromium();
  }, 60_000);
  afterAll(async () => {
    await browser?.close();
  });

  it("joins, chats with the agent, leaves; the job completes and the worker exits 0", {
    timeout: 120_000,
  }, async (ctx) => {
    const { expect } = ctx;
    const worker = spawnWorker(ctx, "local-room", {
      metadata: { roomOptions: { sessionTimeoutSeconds: 0.5, noParticipantTimeoutSeconds: 120 } },
    });
    const join = await worker.line(JOIN_LINE, 40_000);
    const link = String(join.playground);

    const page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
    ctx.onTestFinished(() => page.close());
    const failed = failedResponses(page);
    await page.goto(link);
    // "join" mode: no agent to pick, nothing to dispatch, no registry API called.
    await expect.poll(() => page.locator("body").getAttribute("data-mode")).toBe("join");
    expect(await page.getByRole("button", { name: "Dispatch agent and join" }).isVisible()).toBe(false);
    expect(await page.locator("#room").inputValue()).toBe(join.room);
    expect(await page.locator("#problem").isVisible()).toBe(false);

    await page.getByLabel("Your name").fill("Ada");
    await page.getByRole("button", { name: "Join room" }).click();
    await page.locator("#log .system", { hasText: `you joined ${join.room} as Ada` }).waitFor({ timeout: 15_000 });
    // The agent's process may come in after us on a busy machine; it greets either way.
    await page.locator("#log .agent", { hasText: "Echo: hello Ada" }).waitFor({ timeout: 60_000 });
    await page.getByPlaceholder("say something").fill("is anyone there?");
    await page.getByRole("button", { name: "Send" }).click();
    await page.locator("#log .agent", { hasText: "echo: is anyone there?" }).waitFor({ timeout: 15_000 });
    expect(await page.locator("#participants").textContent()).toContain("Echo (agent)");

    await page.getByRole("button", { name: "Leave" }).click();
    await page.locator("#log .system", { hasText: "you left the room" }).waitFor({ timeout: 10_000 });
    expect(await page.getByRole("button", { name: "Leave" }).isDisabled()).toBe(true);
    expect(await page.getByPlaceholder("say something").isDisabled()).toBe(true);

    expect(await worker.exited(30_000)).toEqual({ code: 0, signal: null });
    expect(worker.lines.find((l) => l.msg === "job completed")).toMatchObject({
      status: "completed",
      reason: "session_ended",
    });
    expect(failed).toEqual([]);
  });

  it("without the link's token, the page says to open the printed link", { timeout: 90_000 }, async (ctx) => {
    const { expect } = ctx;
    const worker = spawnWorker(ctx, "local-room", { metadata: { roomOptions: { noParticipantTimeoutSeconds: 5 } } });
    const join = await worker.line(JOIN_LINE, 40_000);
    const page = await browser.newPage();
    ctx.onTestFinished(() => page.close());
    await page.goto(new URL("/playground", String(join.playground)).href);
    await page.locator("#problem", { hasText: "open the link the worker printed" }).waitFor({ timeout: 10_000 });
    expect(await page.getByRole("button", { name: "Join room" }).isDisabled()).toBe(true);
    // The worker's dashboard links to no playground: its own needs the printed link.
    await page.goto(new URL("/dashboard", String(join.playground)).href);
    await page.locator("#source", { hasText: "worker Fixture" }).waitFor({ timeout: 10_000 });
    expect(await page.locator("#playground-link").isVisible()).toBe(false);
    await worker.exited(60_000);
  });
});
