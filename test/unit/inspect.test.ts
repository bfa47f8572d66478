import { describe, expect, it } from "vitest";
import { createActor, createMachine } from "xstate";
import { ActorEventLog } from "../../src/observability/actor-events.ts";
import { Options } from "../../src/options.ts";
import { runOneJob } from "../support/inspected-worker.ts";

describe("inspect option", () => {
  it("logs every transition with actor id, from, event and to at debug level", async () => {
    const { actor, lines } = await runOneJob(new Options({ inspect: true, logLevel: "DEBUG" }, {}), "DEBUG");
    expect(actor.getSnapshot().status).toBe("done");
    const transitions = lines.filter((l) => l.msg === "transition");
    expect(transitions.length).toBeGreaterThan(5);
    for (const t of transitions) {
      expect(t.level).toBe(20);
      expect(typeof t.actor).toBe("string");
      expect(typeof t.event).toBe("string");
      expect(typeof t.to).toBe("string");
    }
    const worker = transitions.filter((t) => t.actor === "worker");
    expect(worker.some((t) => t.from === null && String(t.to).includes("lifecycle.starting"))).toBe(true);
    expect(worker.some((t) => t.event === "worker.stop" && String(t.to).includes("lifecycle.stopping"))).toBe(true);
    expect(worker.at(-1)?.to).toBe("stopped");
    const slot = transitions.filter((t) => t.actor === "slot.0");
    expect(slot.some((t) => t.event === "slot.assign" && String(t.to).includes("work.busy"))).toBe(true);
    expect(slot.at(-1)?.to).toBe("exited");
    const job = transitions.filter((t) => t.actor === "job.j1");
    expect(job.map((t) => t.to)).toContain("running");
  });

  it("logs nothing when inspect is off", async () => {
    const { lines } = await runOneJob(new Options({ inspect: false, logLevel: "DEBUG" }, {}), "DEBUG");
    expect(lines.filter((l) => l.msg === "transition")).toEqual([]);
  });

  it("logs nothing below debug level even when inspect is on", async () => {
    const { lines } = await runOneJob(new Options({ inspect: true }, {}), "INFO");
    expect(lines.filter((l) => l.msg === "transition")).toEqual([]);
  });
});

/** A root actor with two states, on a log; `go` moves a → b → a, `tick` stays, `secret` carries a payload. */
function loggedActor(log: ActorEventLog, id: string) {
  const machine = createMachine({
    initial: "a",
    states: {
      a: { on: { go: "b", tick: {}, secret: {} } },
      b: { on: { go: "a", finish: "end" } },
      end: { type: "final" },
    },
  });
  return createActor(machine, { id, inspect: log.observer }).start();
}

describe("the registry's actor event log", () => {
  it("keeps event types and from → to states, one counted entry for a repeated event, never payloads", () => {
    let now = 1000;
    const log = new ActorEventLog(() => now);
    const actor = loggedActor(log, "dispatch.job-1");
    now = 2000;
    actor.send({ type: "tick" });
    now = 3000;
    actor.send({ type: "tick" });
    actor.send({ type: "secret", token: "do-not-keep-me" } as never);
    actor.send({ type: "go" });
    const recent = log.recent("dispatch.job-1");
    expect(recent).toEqual({
      actor: "dispatch.job-1",
      ended: false,
      events: [
        { at: 1000, event: "xstate.init", from: null, to: "a", count: 1 },
        { at: 3000, event: "tick", from: "a", to: "a", count: 2 },
        { at: 3000, event: "secret", from: "a", to: "a", count: 1 },
        { at: 3000, event: "go", from: "a", to: "b", count: 1 },
      ],
    });
    expect(JSON.stringify(recent)).not.toContain("do-not-keep-me");
    expect(log.lastState("dispatch.job-1")).toBe("b");
  });

  it("marks an actor ended when it reaches a final state or is stopped", () => {
    const log = new ActorEventLog(() => 0);
    const done = loggedActor(log, "dispatch.done");
    done.send({ type: "go" });
    done.send({ type: "finish" });
    const stopped = loggedActor(log, "session.stopped");
    stopped.stop();
    expect(log.recent("dispatch.done")?.ended).toBe(true);
    expect(log.recent("dispatch.done")?.events.at(-1)).toMatchObject({ event: "finish", from: "b", to: "end" });
    expect(log.recent("session.stopped")?.ended).toBe(true);
    expect(log.recent("session.stopped")?.events.at(-1)?.event).toBe("xstate.stop");
  });

  it("is bounded per actor, in actors (the quietest forgotten first) and in ended actors", () => {
    const log = new ActorEventLog(() => 0, { perActor: 3, maxActors: 4, maxEnded: 2 });
    const busy = loggedActor(log, "session.busy");
    for (let i = 0; i < 10; i++) busy.send({ type: "go" });
    expect(log.recent("session.busy")?.events).toHaveLength(3);

    const ended = ["dispatch.e1", "dispatch.e2", "dispatch.e3"].map((id) => loggedActor(log, id));
    for (const actor of ended) actor.stop();
    // Three ended, two kept: the one that ended first is forgotten.
    expect(log.recent("dispatch.e1")).toBeUndefined();
    expect(log.recent("dispatch.e2")?.ended).toBe(true);
    expect(log.size).toBe(3);

    busy.send({ type: "go" });
    loggedActor(log, "dispatch.new1");
    loggedActor(log, "dispatch.new2");
    // Four at most: the quietest (e2) goes; the busy one, just heard from, stays.
    expect(log.size).toBe(4);
    expect(log.recent("dispatch.e2")).toBeUndefined();
    expect(log.recent("session.busy")).toBeDefined();
    expect(log.recent("dispatch.new2")).toBeDefined();
  });
});
