import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registryInternals } from "../../src/registry/server.ts";
import type { WorkerHandle } from "../../src/worker/runtime.ts";
import {
  closeRegistries,
  dispatch,
  startInProcessWorker,
  startRegistry,
  stopInProcessWorkers,
  type TestRegistry,
} from "../registry/helpers.ts";
import { until } from "../support/wait.ts";
import { chromiumAvailable, launchChromium } from "./chromium.ts";

/**
 * The dashboard in chromium, on machines in parallel states: a registry with two workers, each with
 * one warm process `slot.0` (a slot is four parallel regions while it is alive: work, heartbeat,
 * memory sampler, memory), each worker's registry session (two regions), and a worker's own root
 * machine (two regions). Every active region is marked, the two `slot.0` are two choices, a marked
 * state is inside the visible diagram, and a bad token is said plainly. A job's row, clicked, shows
 * its dispatch machine and that actor's recent events, updated as they happen; on a worker's own
 * page, a slot's, a job's and the root's rows do the same with the worker's events, and a slot's
 * row on the registry's page says its events are on its worker's page.
 */

/**
 * What the page marked in its diagram: the titles of the current states and of the active clusters,
 * the marked states drawn (partly) outside the diagram's box, and the state shown above it. Read in
 * one task of the page: the page re-renders as states change (a slot's heartbeat flips within
 * milliseconds of its ready), and the box read apart from the states' boxes could be from before a
 * re-render moved it.
 */
async function marks(page: Page): Promise<{ current: string[]; active: string[]; clipped: string[]; state: string }> {
  // A string, run as it is in the page: this project's TypeScript has no DOM types.
  return page.evaluate(`(() => {
    const holder = document.querySelector("#diagram");
    if (!holder) throw new Error("the diagram is not shown");
    const box = holder.getBoundingClientRect();
    const titleOf = (element) => element.querySelector(":scope > title")?.textContent ?? "";
    const current = [...holder.querySelectorAll("g.node.current")];
    const clipped = current
      .filter((node) => {
        const at = node.getBoundingClientRect();
        return at.left < box.left - 1 || at.top < box.top - 1 || at.right > box.right + 1 || at.bottom > box.bottom + 1;
      })
      .map(titleOf);
    return {
      current: current.map(titleOf).sort(),
      active: [...holder.querySelectorAll("g.cluster.active")].map(titleOf).sort(),
      clipped,
      state: document.querySelector("#machine-state")?.textContent ?? "",
    };
  })()`);
}

/** The machine choices on the page: value and label. */
async function choices(page: Page): Promise<{ value: string; label: string }[]> {
  const out = [];
  for (const option of await page.locator("#machine option").all()) {
    out.push({ value: (await option.getAttribute("value")) ?? "", label: (await option.textContent()) ?? "" });
  }
  return out;
}

async function choose(page: Page, label: RegExp): Promise<string> {
  const all = await choices(page);
  const option = all.find((o) => label.test(o.label));
  if (!option) throw new Error(`no machine ${label} among ${all.map((o) => o.label).join(", ")}`);
  await page.locator("#machine").selectOption(option.value);
  return option.value;
}

/**
 * The diagram titles the state shown above the diagram names: one full path per active region,
 * `<machine>_<path with _>`.
 */
function expectedMarks(state: string, machine: string): string[] {
  return state
    .split(" | ")
    .map((path) => `${machine}_${path.trim().replaceAll(".", "_")}`)
    .sort();
}

/**
 * Waits until the diagram marks exactly the states the page shows as the machine's state (at least
 * `regions` of them, one per active region), every compound state holding one is marked active, and
 * none of them is cut off; returns the marks.
 */
async function expectMarked(page: Page, machine: string, regions: number) {
  let last: Awaited<ReturnType<typeof marks>> | undefined;
  let wanted: string[] = [];
  await expect
    .poll(
      async () => {
        // The state shown and the marks are read together, so they are of one render.
        last = await marks(page);
        wanted = expectedMarks(last.state, machine);
        return last.current.join(" ") === wanted.join(" ") && wanted.length >= regions;
      },
      { timeout: 15_000, message: `marks of ${machine}` },
    )
    .toBe(true);
  const got = last as Awaited<ReturnType<typeof marks>>;
  expect(got.current).toHaveLength(regions);
  const clusters = new Set<string>();
  for (const title of wanted) {
    const parts = title.split("_");
    for (let i = 2; i < parts.length; i++) clusters.add(`cluster_${parts.slice(0, i).join("_")}`);
  }
  expect(got.active).toEqual([...clusters].sort());
  expect(got.clipped).toEqual([]);
  expect(await page.locator("#diagram").getAttribute("data-marked")).toBe(String(regions));
  return got;
}

describe.runIf(chromiumAvailable)("dashboard marks in a real browser", { timeout: 120_000 }, () => {
  let registry: TestRegistry;
  let workers: WorkerHandle[];
  let browser: Browser;

  beforeAll(async () => {
    registry = await startRegistry({});
    workers = await Promise.all(
      ["marks-a", "marks-b"].map((agentId) =>
        startInProcessWorker(registry.url, { agentId, maxProcesses: 1, numIdleProcesses: 1, initializeTimeout: 30 }),
      ),
    );
    browser = await launchChromium();
    // Each worker's status updates carry its processes: wait until both report a warm slot.0.
    await until(
      () =>
        [...registryInternals(registry.registry).core.directory.workers()].filter((link) =>
          link.slots.some((slot) => slot.id === "slot.0" && slot.state.includes("work.idle")),
        ).length === 2 || undefined,
      { label: "both workers to report a warm slot.0", timeoutMs: 60_000 },
    );
  }, 90_000);

  afterAll(async () => {
    await browser?.close();
    await stopInProcessWorkers();
    await closeRegistries();
  });

  it("marks every region of a slot and of a session, for each of two workers' slot.0", async () => {
    const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    await page.goto(`${registry.url}/dashboard?token=${registry.dispatcher}`);
    await expect.poll(() => page.locator("#slots tbody tr").count(), { timeout: 15_000 }).toBe(2);

    const slotChoices = (await choices(page)).filter((c) => c.label.startsWith("slot slot.0")).map((c) => c.value);
    expect(slotChoices).toHaveLength(2);
    expect(new Set(slotChoices).size).toBe(2);

    for (const value of slotChoices) {
      await page.locator("#machine").selectOption(value);
      const marked = await expectMarked(page, "slot", 4);
      expect(marked.current.join(" ")).toMatch(
        /^slot_alive_ready_heartbeat_(waiting|awaitingPong) slot_alive_ready_memorySampler_sampling slot_alive_ready_memory_normal slot_alive_ready_work_idle$/,
      );
      expect(marked.active).toEqual([
        "cluster_slot_alive",
        "cluster_slot_alive_ready",
        "cluster_slot_alive_ready_heartbeat",
        "cluster_slot_alive_ready_memory",
        "cluster_slot_alive_ready_memorySampler",
        "cluster_slot_alive_ready_work",
      ]);
    }

    await choose(page, /^session /);
    const session = await expectMarked(page, "session", 2);
    expect(session.current.join(" ")).toMatch(
      /^session_live_capacity_available session_live_liveness_(quiet|awaitingPong)$/,
    );
    await page.close();
  });

  it("marks every region of a worker's root machine on the worker's own dashboard", async () => {
    const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    await page.goto(`http://127.0.0.1:${workers[0]?.port}/dashboard`);
    await page.locator("#workers tbody tr").first().waitFor({ timeout: 15_000 });
    await choose(page, /^worker /);
    const marked = await expectMarked(page, "worker", 2);
    expect(marked.current.some((title) => title.startsWith("worker_active_lifecycle_running"))).toBe(true);
    expect(marked.current.some((title) => title.startsWith("worker_active_pool_"))).toBe(true);
    // A worker's own dashboard has no playground to link to.
    expect(await page.locator("#playground-link").isVisible()).toBe(false);
    await page.close();
  });

  it("lists the recent events of a dispatch clicked in the jobs table, as they happen", async () => {
    const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    await page.goto(`${registry.url}/dashboard?token=${registry.dispatcher}`);
    // A job that runs until it is cancelled, so its dispatch is live while the page looks at it.
    const job = await dispatch(registry, { agent_name: "marks-a", metadata: { hang: true, note: "not-for-the-list" } });
    await registry.store.until(job.id, (record) => record.status === "running", 60_000, "running");
    const row = page.locator(`#jobs tbody tr[data-job="${job.id}"]`);
    await expect.poll(() => row.getAttribute("data-choice"), { timeout: 15_000 }).toBe(`dispatch:${job.id}`);
    await row.click();
    expect(await page.locator("#machine").inputValue()).toBe(`dispatch:${job.id}`);
    expect(await row.getAttribute("class")).toContain("chosen");
    const panel = page.locator("#actor-events");
    expect(await panel.getAttribute("data-actor")).toBe(`dispatch.${job.id}`);
    const listed = () =>
      page.locator("#actor-events-list li").evaluateAll((items) => items.map((li) => li.getAttribute("data-event")));
    // The worker's answer and its running update, caused by the dispatch above.
    await expect.poll(listed, { timeout: 15_000 }).toEqual(expect.arrayContaining(["answer", "job_update"]));
    // Newest first.
    expect((await listed()).at(-1)).toBe("xstate.init");

    // Live: a cancel shows up without a reload, and the ended dispatch stays chosen.
    await registry.registry.cancel(job.id, "the test is done with it");
    await expect.poll(listed, { timeout: 15_000 }).toContain("cancel");
    expect(await page.locator("#machine").inputValue()).toBe(`dispatch:${job.id}`);
    expect(await panel.textContent()).not.toContain("not-for-the-list");
    await registry.store.untilFinal(job.id, 30_000);
    await page.close();
  });

  it("lists the events of a slot, a job and the root clicked on a worker's own page, as they happen", async () => {
    const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    await page.goto(`http://127.0.0.1:${workers[1]?.port}/dashboard`);
    const panel = page.locator("#actor-events");
    const listed = () =>
      page.locator("#actor-events-list li").evaluateAll((items) => items.map((li) => li.getAttribute("data-event")));

    // The warm slot, chosen while idle (its oldest entries may have made way for memory samples).
    const slotRow = page.locator("#slots tbody tr").first();
    await slotRow.waitFor({ timeout: 15_000 });
    const slotId = await slotRow.getAttribute("data-slot");
    await slotRow.click();
    expect(await panel.getAttribute("data-actor")).toBe(slotId);
    await expect.poll(async () => (await listed()).length, { timeout: 15_000 }).toBeGreaterThan(0);
    expect(await listed()).not.toContain("slot.assign");

    // Live: a job dispatched to this worker shows up in the slot's list without a reload.
    const job = await dispatch(registry, { agent_name: "marks-b", metadata: { hang: true, note: "not-for-the-list" } });
    await registry.store.until(job.id, (record) => record.status === "running", 60_000, "running");
    await expect.poll(listed, { timeout: 15_000 }).toContain("slot.assign");

    const jobRow = page.locator(`#jobs tbody tr[data-job="${job.id}"]`);
    await jobRow.waitFor({ timeout: 15_000 });
    await jobRow.click();
    expect(await page.locator("#machine").inputValue()).toBe(`job:${job.id}`);
    expect(await panel.getAttribute("data-actor")).toBe(`job.${job.id}`);
    await expect.poll(listed, { timeout: 15_000 }).toEqual(expect.arrayContaining(["job.launching", "xstate.init"]));
    expect((await listed()).at(-1)).toBe("xstate.init");
    expect(await panel.textContent()).not.toContain("not-for-the-list");

    await page.locator("#workers tbody tr").first().click();
    expect(await panel.getAttribute("data-actor")).toBe("worker");
    await expect.poll(async () => (await listed()).length, { timeout: 15_000 }).toBeGreaterThan(0);
    await page.close();

    // The registry knows a slot only from its worker's reports: it says where the events are.
    const registryPage = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    await registryPage.goto(`${registry.url}/dashboard?token=${registry.dispatcher}`);
    const registrySlot = registryPage.locator("#slots tbody tr").first();
    await registrySlot.waitFor({ timeout: 15_000 });
    await registrySlot.click();
    const registryPanel = registryPage.locator("#actor-events");
    await registryPanel.waitFor({ state: "visible", timeout: 15_000 });
    expect(await registryPage.locator("#actor-events-note").textContent()).toBe(
      "events for this actor are on its worker's page",
    );
    expect(await registryPage.locator("#actor-events-list li").count()).toBe(0);
    await registryPage.close();

    await registry.registry.cancel(job.id, "the test is done with it");
    await registry.store.untilFinal(job.id, 30_000);
  });

  it("says a bad or missing token is not valid instead of reconnecting forever", async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${registry.url}/dashboard?token=not-a-token`);
    const problem = page.locator("#problem");
    await problem.waitFor({ state: "visible", timeout: 15_000 });
    expect(await problem.textContent()).toMatch(/^token not valid: reload with \?token=<dispatcher token>/);
    expect(await page.locator("#source").textContent()).toBe("not connected");
    // The bad token is forgotten: a reload without one says a token is needed.
    await page.goto(`${registry.url}/dashboard`);
    await problem.waitFor({ state: "visible", timeout: 15_000 });
    expect(await problem.textContent()).toMatch(/^no token: reload with \?token=<dispatcher token>/);
    // With a good one the page works, and the problem is gone.
    await page.goto(`${registry.url}/?token=${registry.dispatcher}`);
    expect(new URL(page.url()).pathname).toBe("/dashboard");
    await page.locator("#source", { hasText: "registry" }).waitFor({ timeout: 15_000 });
    expect(await problem.isVisible()).toBe(false);
    expect(await page.locator("#playground-link").isVisible()).toBe(true);
    await context.close();
  });
});
