import { afterEach, describe, expect, it } from "vitest";
import { registryInternals } from "../../src/registry/server.ts";
import { closeRegistries, RawConnection, registerMessage, startRegistry } from "./helpers.ts";

afterEach(closeRegistries);

/**
 * Any frame from a worker shows it is alive, so the registry pings only workers it has not heard
 * from within a ping interval: thousands of heartbeating workers cost it no ping writes, and a silent
 * one is still pinged and, if it does not answer, declared gone.
 */
describe("registry pings only quiet workers", () => {
  it("sends no pings to a worker that keeps talking, and pings it once it goes quiet", async () => {
    const r = await startRegistry({ pingIntervalMs: 300, pongTimeoutMs: 5_000, registrationTimeoutMs: 5_000 });
    const c = await RawConnection.open(r);
    c.send(registerMessage("chatty"));
    const registered = await c.next(0, (f) => f.type === "register", "the register answer");
    const workerId = (registered as unknown as { worker_id: string }).worker_id;
    const status = JSON.stringify({
      type: "status_update",
      worker_id: workerId,
      status: "available",
      load: 0,
      job_count: 0,
    });
    const talking = setInterval(() => c.send(status), 20);
    const from = c.frames.length;
    // A stalled test process may let one or two pings through; without the rule there would be ten.
    // A measurement window, not a wait for something to happen: ten ping intervals of steady traffic.
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    clearInterval(talking);
    const pingsWhileTalking = c.frames.slice(from).filter((f) => f.type === "ping").length;
    expect(pingsWhileTalking).toBeLessThanOrEqual(2);
    const quietFrom = c.frames.length;
    const ping = await c.next(quietFrom, (f) => f.type === "ping", "a ping once the worker is quiet", 5_000);
    expect(ping.type).toBe("ping");
    expect([...registryInternals(r.registry).core.directory.workers()].some((w) => w.workerId === workerId)).toBe(true);
    c.close();
  });
});
