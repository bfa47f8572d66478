import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { createMachine } from "xstate";
import { workerMachine } from "../../machines/worker.ts";
import { generateVisualizations } from "../../scripts/visualizations.ts";
import { eventLabel, toDot, toMermaid } from "../../src/observability/diagram.ts";

const dir = join(import.meta.dirname, "..", "..", "visualizations");

describe("visualizations/", () => {
  it("is what the machines generate now (run npm run viz when this fails)", { timeout: 60_000 }, async () => {
    const files = await generateVisualizations();
    const stale: string[] = [];
    for (const [name, content] of Object.entries(files)) {
      let current = "";
      try {
        current = readFileSync(join(dir, name), "utf8");
      } catch {
        current = "(missing)";
      }
      if (current !== content) stale.push(name);
    }
    expect(stale, `stale diagrams, run \`npm run viz\`: ${stale.join(", ")}`).toEqual([]);
  });
});

describe("diagram generator", () => {
  const sample = createMachine({
    id: "sample",
    initial: "a",
    on: { PING: {} },
    states: {
      a: { on: { GO: "b" }, always: { guard: "ready", target: "c" } },
      b: {
        type: "parallel",
        states: { left: { initial: "x", states: { x: {} } }, right: { initial: "y", states: { y: {} } } },
        after: { wait: "c" },
      },
      c: { type: "final" },
    },
  });

  it("renders states, initial and final markers, guards, always and parallel regions in Mermaid", () => {
    const text = toMermaid(sample);
    expect(text.startsWith("stateDiagram-v2")).toBe(true);
    expect(text).toContain("[*] --> sample_a");
    expect(text).toContain("sample_c --> [*]");
    expect(text).toContain("sample_a --> sample_b: GO");
    expect(text).toContain("sample_a --> sample_c: always [ready]");
    expect(text).toContain("sample_b --> sample_c: after wait");
    expect(text).toMatch(/state "left" as sample_b_left[\s\S]*--[\s\S]*state "right" as sample_b_right/);
    expect(text).toContain("in any state: PING (ignored)");
  });

  it("renders clusters for compound states in DOT, dashed for parallel ones", () => {
    const text = toDot(sample);
    expect(text).toContain("subgraph cluster_sample_b");
    expect(text).toContain("(parallel)");
    expect(text).toContain('label="always [ready]"');
    expect(text).toContain("peripheries=2");
  });

  it("names xstate's generated events and composed guards readably", () => {
    expect(eventLabel("xstate.after.drainTimeout.worker.active.lifecycle.draining")).toBe("after drainTimeout");
    expect(eventLabel("xstate.done.actor.registryLink")).toBe("done(registryLink)");
    expect(eventLabel("xstate.error.actor.slot.*")).toBe("error(slot.*)");
    const worker = toMermaid(workerMachine);
    expect(worker).toContain("⟨invoke registryLink⟩");
    expect(worker).toMatch(/belowWarmTarget/);
  });
});
