import { describe, expect, it } from "vitest";
import type { InspectionEvent } from "xstate";
import { Options, OptionsError } from "../../src/options.ts";
import { createRegistry } from "../../src/registry/server.ts";
import { runOneJob } from "../support/inspected-worker.ts";

/**
 * `inspect` as an XState inspection observer: Options takes a function or an object with next(),
 * refuses anything else plainly, and the observer sees the worker root and every actor it spawns.
 */

/** Actor ids seen per inspection event type. */
function actorsByType(events: InspectionEvent[]): Record<string, Set<string>> {
  const out: Record<string, Set<string>> = {};
  for (const event of events) {
    out[event.type] ??= new Set();
    out[event.type]?.add((event.actorRef as { id?: string }).id ?? "");
  }
  return out;
}

function problemOf(input: unknown): string {
  try {
    new Options({ inspect: input } as never, {});
  } catch (error) {
    expect(error).toBeInstanceOf(OptionsError);
    return (error as Error).message;
  }
  throw new Error("Options accepted it");
}

describe("the inspect option", () => {
  it("accepts true, false, a function and an observer object, and keeps the observer as given", () => {
    const fn = (_event: InspectionEvent) => {};
    const observer = { next: (_event: InspectionEvent) => {} };
    expect(new Options({}, {}).inspect).toBe(false);
    expect(new Options({ inspect: true }, {}).inspect).toBe(true);
    expect(new Options({ inspect: false }, {}).inspect).toBe(false);
    expect(new Options({ inspect: fn }, {}).inspect).toBe(fn);
    expect(new Options({ inspect: observer }, {}).inspect).toBe(observer);
  });

  it("refuses anything else with an error that says what it takes", () => {
    const said = "inspect: inspect must be true, false, a function or an observer object with a next(event) method";
    for (const bad of ["yes", 1, null, {}, { next: "soon" }, [() => {}]]) {
      expect(problemOf(bad)).toContain(said);
    }
  });

  it("prints an observer as [observer] and a function as [function] in toJSON", () => {
    // An observer from @statelyai/inspect holds a socket: it must not be serialised.
    const socketish: Record<string, unknown> = { next: () => {} };
    socketish.self = socketish;
    expect(new Options({ inspect: socketish as never }, {}).toJSON().inspect).toBe("[observer]");
    expect(new Options({ inspect: () => {} }, {}).toJSON().inspect).toBe("[function]");
    expect(JSON.stringify(new Options({ inspect: socketish as never }, {}))).toContain('"inspect":"[observer]"');
  });

  it("gives a function observer every inspection event of the worker root and of its slots and jobs", async () => {
    const events: InspectionEvent[] = [];
    const { actor, lines } = await runOneJob(new Options({ inspect: (event) => events.push(event) }, {}));
    expect(actor.getSnapshot().status).toBe("done");
    const byType = actorsByType(events);
    for (const id of ["worker", "slot.0", "job.j1"]) {
      expect(byType["@xstate.actor"]).toContain(id);
      expect(byType["@xstate.snapshot"]).toContain(id);
    }
    expect(events.some((e) => e.type === "@xstate.event" && e.event.type === "worker.run")).toBe(true);
    // An observer replaces the debug log of transitions (that is `inspect: true`).
    expect(lines.filter((l) => l.msg === "transition")).toEqual([]);
  });

  it("gives an observer object's next() the same events", async () => {
    const events: InspectionEvent[] = [];
    const { actor } = await runOneJob(new Options({ inspect: { next: (event) => events.push(event) } }, {}));
    expect(actor.getSnapshot().status).toBe("done");
    const byType = actorsByType(events);
    expect([...(byType["@xstate.actor"] ?? [])]).toEqual(expect.arrayContaining(["worker", "slot.0", "job.j1"]));
  });

  it("keeps the worker running when the observer throws, and logs that once", async () => {
    let calls = 0;
    const { actor, lines } = await runOneJob(
      new Options(
        {
          inspect: () => {
            calls++;
            throw new Error("inspector broke");
          },
        },
        {},
      ),
    );
    expect(actor.getSnapshot().status).toBe("done");
    expect(calls).toBeGreaterThan(10);
    const warnings = lines.filter((l) => l.msg === "an inspect observer threw; its errors are ignored");
    expect(warnings).toHaveLength(1);
    expect(warnings[0]?.err).toBe("inspector broke");
  });
});

describe("createRegistry's inspect option", () => {
  it("refuses a value that is not true, false or an observer before it listens", async () => {
    const creds = { apiKey: "k", apiSecret: "a-secret-of-at-least-thirty-two-bytes!" };
    for (const bad of ["yes", 3, { next: 1 }]) {
      await expect(createRegistry({ ...creds, port: 0, inspect: bad as never })).rejects.toThrow(
        "inspect must be true, false, a function or an observer object with a next(event) method",
      );
    }
  });
});
