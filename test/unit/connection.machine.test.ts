import { describe, expect, it } from "vitest";
import { fromCallback } from "xstate";
import {
  type ConnectionEvent,
  type ConnectionInput,
  type ConnectionOutput,
  connectionMachine,
  MAX_RECENT_FINAL,
  type SocketCommand,
  type SocketEvent,
  specFromAssignment,
} from "../../machines/connection.ts";
import type { WorkerStatus } from "../../machines/shared.ts";
import { hostChild } from "../support/host.ts";

const timing = {
  registrationTimeoutMs: 1_000,
  pingIntervalMs: 500,
  pongTimeoutMs: 200,
  backoffBaseMs: 100,
  backoffMaxMs: 1_000,
};

class FakeSocket {
  readonly commands: SocketCommand[][] = [];
  sendBack: ((event: SocketEvent) => void) | undefined;
  connections = 0;
  readonly logic = fromCallback<SocketCommand, ConnectionInput, SocketEvent>(({ sendBack, receive }) => {
    this.connections++;
    const mine: SocketCommand[] = [];
    this.commands.push(mine);
    this.sendBack = sendBack;
    receive((command) => mine.push(command));
  });
  get current(): SocketCommand[] {
    return this.commands.at(-1) ?? [];
  }
  sent(type: string) {
    return this.current
      .filter((c) => c.type === "send" && c.message.type === type)
      .map((c) => (c as { message: unknown }).message);
  }
  emit(event: SocketEvent) {
    this.sendBack?.(event);
  }
}

const available: WorkerStatus = { status: "available", load: 0.25, jobCount: 1, idleProcesses: 1 };

function connection(options: { maxRetry?: number; random?: () => number } = {}) {
  const socket = new FakeSocket();
  const t = hostChild(connectionMachine.provide({ actors: { socket: socket.logic } }), {
    agentName: "A",
    maxProcesses: 4,
    loadThreshold: 0.75,
    maxRetry: options.maxRetry ?? 3,
    timing,
    random: options.random ?? (() => 0.5),
  });
  const value = () => t.snapshot().value;
  return { ...t, socket, value };
}

function registered(options: Parameters<typeof connection>[0] = {}) {
  const t = connection(options);
  t.socket.emit({ type: "socket.open" });
  t.socket.emit({ type: "registry.register", message: { type: "register", success: true, worker_id: "w-1" } });
  return t;
}

const drop = (t: ReturnType<typeof connection>) => t.socket.emit({ type: "socket.closed", code: 1006, reason: "" });

describe("connection machine", () => {
  it("connects, registers with its inventory and keeps the worker id", () => {
    const t = connection();
    expect(t.value()).toEqual({ online: "connecting" });
    t.socket.emit({ type: "socket.open" });
    expect(t.value()).toEqual({ online: "registering" });
    expect(t.socket.sent("register")).toEqual([
      {
        type: "register",
        protocol_version: 1,
        worker_id: "",
        agent_name: "A",
        capabilities: ["room"],
        load_threshold: 0.75,
        max_processes: 4,
        jobs: [],
      },
    ]);
    t.socket.emit({ type: "registry.register", message: { type: "register", success: true, worker_id: "w-1" } });
    expect(t.value()).toEqual({ online: { registered: "quiet" } });
    expect(t.snapshot().context.workerId).toBe("w-1");
  });

  it("sends status updates when registered, and the last status on registering", () => {
    const t = connection();
    t.send({ type: "link.status", status: available });
    t.socket.emit({ type: "socket.open" });
    t.socket.emit({ type: "registry.register", message: { type: "register", success: true, worker_id: "w-1" } });
    expect(t.socket.sent("status_update")).toEqual([
      {
        type: "status_update",
        worker_id: "w-1",
        agent_name: "A",
        status: "available",
        load: 0.25,
        job_count: 1,
        idle_processes: 1,
      },
    ]);
    t.send({ type: "link.status", status: { ...available, status: "full", jobCount: 4 } });
    expect(t.socket.sent("status_update").at(-1)).toMatchObject({ status: "full", job_count: 4 });
  });

  it("a refused registration, a registration timeout and a drop all back off", () => {
    const refused = connection();
    refused.socket.emit({ type: "socket.open" });
    refused.socket.emit({
      type: "registry.register",
      message: { type: "register", success: false, message: "bad agent" },
    });
    expect(refused.value()).toBe("backoff");
    expect(refused.snapshot().context.lastProblem).toBe("registration refused: bad agent");
    const timeout = connection();
    timeout.socket.emit({ type: "socket.open" });
    timeout.clock.increment(1_000);
    expect(timeout.value()).toBe("backoff");
    expect(timeout.snapshot().context.lastProblem).toBe("registration timed out");
    for (const make of [connection, registered]) {
      const t = make();
      drop(t);
      expect(t.value()).toBe("backoff");
      expect(t.snapshot().context.lastProblem).toBe("connection closed (1006)");
    }
  });

  it("a socket actor that throws backs off", () => {
    const throwing = fromCallback(() => {
      throw new Error("no network");
    });
    const t = hostChild(connectionMachine.provide({ actors: { socket: throwing as never } }), {
      agentName: "A",
      maxProcesses: 1,
      loadThreshold: 1,
      maxRetry: 5,
      timing,
      random: () => 0,
    });
    expect(t.snapshot().value).toBe("backoff");
    expect(t.snapshot().context.lastProblem).toBe("socket failed: no network");
  });

  it("heartbeats: a ping every interval, a pong keeps it, silence drops it", () => {
    const t = registered();
    t.clock.increment(500);
    expect(t.value()).toEqual({ online: { registered: "awaitingPong" } });
    expect(t.socket.current.filter((c) => c.type === "send_ping")).toHaveLength(1);
    t.socket.emit({ type: "registry.pong", message: { type: "pong", timestamp: 1 } });
    expect(t.value()).toEqual({ online: { registered: "quiet" } });
    t.clock.increment(500);
    t.clock.increment(200);
    expect(t.value()).toBe("backoff");
    expect(t.snapshot().context.lastProblem).toBe("pong timed out");
  });

  it.each([0, 0.5, 0.999])("reconnects after a full-jitter delay (random %s), not a millisecond before", (r) => {
    const t = connection({ random: () => r, maxRetry: 10 });
    drop(t);
    const first = r * 100;
    if (first >= 1) {
      t.clock.increment(first - 1);
      expect(t.value()).toBe("backoff");
      t.clock.increment(1);
    } else {
      t.clock.increment(first);
    }
    expect(t.value()).toEqual({ online: "connecting" });
    expect(t.socket.connections).toBe(2);
    drop(t);
    const second = r * 200;
    if (second >= 1) {
      t.clock.increment(second - 1);
      expect(t.value()).toBe("backoff");
      t.clock.increment(1);
    } else {
      t.clock.increment(second);
    }
    expect(t.value()).toEqual({ online: "connecting" });
  });

  it("caps the backoff and resets the count after registering", () => {
    const t = connection({ random: () => 0.999, maxRetry: 20 });
    for (let i = 0; i < 6; i++) {
      drop(t);
      t.clock.increment(1_000);
    }
    expect(t.snapshot().context.retries).toBe(6);
    drop(t);
    t.clock.increment(999);
    expect(t.value()).toEqual({ online: "connecting" });
    t.socket.emit({ type: "socket.open" });
    t.socket.emit({ type: "registry.register", message: { type: "register", success: true, worker_id: "w-1" } });
    expect(t.snapshot().context.retries).toBe(0);
  });

  it("gives up after maxRetry consecutive failures, saying why", () => {
    const t = connection({ maxRetry: 2, random: () => 0 });
    drop(t);
    t.clock.increment(0);
    drop(t);
    expect(t.snapshot().status).toBe("done");
    expect(t.snapshot().output as ConnectionOutput).toEqual({
      reason: "max_retry",
      retries: 2,
      lastProblem: "connection closed (1006)",
    });
    expect(t.ofType("xstate.done.actor.sut")).toHaveLength(1);
    const none = connection({ maxRetry: 0 });
    drop(none);
    expect(none.snapshot().status).toBe("done");
  });

  it("buffers job updates while down and replays them in order; reuses its worker id", () => {
    const t = registered({ maxRetry: 10, random: () => 0 });
    t.send({ type: "link.job_update", update: { jobId: "a", status: "running" } });
    expect(t.socket.sent("job_update")).toEqual([{ type: "job_update", job_id: "a", status: "running" }]);
    drop(t);
    t.send({ type: "link.job_update", update: { jobId: "a", status: "completed" } });
    t.send({ type: "link.job_update", update: { jobId: "b", status: "running" } });
    t.send({
      type: "link.job_update",
      update: { jobId: "b", status: "failed", reason: "crashed", error: { name: "E", message: "x" } },
    });
    t.clock.increment(0);
    t.socket.emit({ type: "socket.open" });
    const register = t.socket.sent("register")[0] as { worker_id: string; jobs: unknown[] };
    expect(register.worker_id).toBe("w-1");
    expect(register.jobs).toEqual([
      { job_id: "a", status: "completed" },
      { job_id: "b", status: "failed", reason: "crashed" },
    ]);
    t.socket.emit({ type: "registry.register", message: { type: "register", success: true, worker_id: "w-1" } });
    expect(t.socket.sent("job_update")).toEqual([
      { type: "job_update", job_id: "a", status: "completed" },
      { type: "job_update", job_id: "b", status: "running" },
      { type: "job_update", job_id: "b", status: "failed", reason: "crashed", error: { name: "E", message: "x" } },
    ]);
    expect(t.snapshot().context.buffer).toEqual([]);
  });

  it("keeps running jobs and only the most recent final ones in its inventory", () => {
    const t = registered();
    t.send({ type: "link.job_update", update: { jobId: "long", status: "running" } });
    for (let i = 0; i < MAX_RECENT_FINAL + 20; i++) {
      t.send({ type: "link.job_update", update: { jobId: `j${i}`, status: "completed" } });
    }
    const inventory = t.snapshot().context.inventory as { job_id: string; status: string }[];
    expect(inventory.filter((e) => e.status !== "running")).toHaveLength(MAX_RECENT_FINAL);
    expect(inventory.find((e) => e.job_id === "long")?.status).toBe("running");
    expect(inventory.find((e) => e.job_id === "j0")).toBeUndefined();
  });

  it("answers offers only on a live session and forwards the registry's requests", () => {
    const down = connection();
    down.send({ type: "link.offer_answer", jobId: "x", accept: true });
    expect(down.socket.current).toEqual([]);
    const t = registered();
    t.send({ type: "link.offer_answer", jobId: "x", accept: false, error: "full" });
    expect(t.socket.sent("availability_response")).toEqual([
      { type: "availability_response", job_id: "x", available: false, error: "full" },
    ]);
    t.socket.emit({
      type: "registry.availability_request",
      message: { type: "availability_request", job_id: "x", agent_name: "A", room_id: "r", metadata: { m: 1 } },
    });
    expect(t.ofType("worker.offer")).toEqual([
      { type: "worker.offer", spec: { jobId: "x", agentName: "A", roomId: "r", metadata: { m: 1 } } },
    ]);
    const assignment = {
      type: "job_assignment" as const,
      job_id: "x",
      agent_name: "A",
      room_id: "r",
      token: "t",
      url: "ws://u",
      room_options: { name: "n" },
      metadata: { m: 1 },
      max_duration: 2,
    };
    t.socket.emit({ type: "registry.job_assignment", message: assignment });
    expect(t.ofType("worker.assignment")).toEqual([
      { type: "worker.assignment", spec: specFromAssignment(assignment) },
    ]);
    expect(specFromAssignment(assignment)).toMatchObject({
      roomToken: "t",
      maxDurationMs: 2_000,
      roomOptions: { name: "n" },
    });
    t.socket.emit({ type: "registry.job_termination", message: { type: "job_termination", job_id: "x" } });
    expect(t.ofType("worker.terminate")).toEqual([
      { type: "worker.terminate", jobId: "x", reason: "terminated by registry" },
    ]);
    t.socket.emit({ type: "registry.ping", message: { type: "ping", timestamp: 42 } });
    expect(t.socket.current.at(-1)).toEqual({ type: "send_pong", timestamp: 42 });
  });

  it("records registry errors and invalid frames", () => {
    const t = registered();
    t.socket.emit({ type: "registry.error", message: { type: "error", message: "bad frame" } });
    expect(t.snapshot().context.lastProblem).toBe("registry error: bad frame");
    t.socket.emit({ type: "socket.invalid", error: "not JSON" });
    expect(t.snapshot().context.lastProblem).toBe("invalid frame from registry: not JSON");
  });

  it("no event in any state it can reach puts it in error", () => {
    const events: ConnectionEvent[] = [
      { type: "socket.open" },
      { type: "socket.invalid", error: "x" },
      { type: "registry.register", message: { type: "register", success: true, worker_id: "w" } },
      {
        type: "registry.availability_request",
        message: { type: "availability_request", job_id: "j", agent_name: "A" },
      },
      { type: "registry.job_assignment", message: { type: "job_assignment", job_id: "j", agent_name: "A" } },
      { type: "registry.job_termination", message: { type: "job_termination", job_id: "j" } },
      { type: "registry.ping", message: { type: "ping", timestamp: 1 } },
      { type: "registry.pong", message: { type: "pong", timestamp: 1 } },
      { type: "registry.error", message: { type: "error", message: "e" } },
      { type: "link.status", status: available },
      { type: "link.job_update", update: { jobId: "j", status: "running" } },
      { type: "link.offer_answer", jobId: "j", accept: true },
      { type: "socket.closed", code: 1000, reason: "" },
    ];
    const reach = [
      () => connection(),
      () => {
        const t = connection();
        t.socket.emit({ type: "socket.open" });
        return t;
      },
      () => registered(),
      () => {
        const t = registered();
        t.clock.increment(500);
        return t;
      },
      () => {
        const t = registered();
        drop(t);
        return t;
      },
    ];
    for (const make of reach) {
      for (const event of events) {
        const t = make();
        if (t.snapshot().status === "active") t.send(event);
        expect(t.snapshot().status).not.toBe("error");
        expect(t.host.getSnapshot().status).toBe("active");
      }
    }
  });
});
