import { type Actor, type AnyActorRef, createActor, fromCallback } from "xstate";
import {
  type ConnectionInput,
  connectionMachine,
  type SocketCommand,
  type SocketEvent,
} from "../../../machines/connection.ts";
import type { JobOutput } from "../../../machines/job.ts";
import type { ProcessCommand, ProcessEvent, ProcessInput } from "../../../machines/slot.ts";
import { slotMachine } from "../../../machines/slot.ts";
import { type WorkerInput, workerMachine } from "../../../machines/worker.ts";
import { LeaseClock } from "../../../src/worker/lease-clock.ts";
import { parseRegistryFrame, toSocketEvent, toWorkerMessage } from "../../../src/worker/registry-wire.ts";
import { FakeProcess } from "../fake-process.ts";
import type { SimContext } from "./context.ts";
import { traceTransitions } from "./inspect.ts";
import type { Connection, WorkerSocket } from "./network.ts";

export interface WorkerShape {
  agentName: string;
  maxProcesses: number;
  numIdleProcesses: number;
}

/** Worker-side durations, scaled down like the registry's so a seed covers many lifecycles. */
export const SIM_WORKER_TIMING = {
  worker: { drainTimeoutMs: 4_000, spawnBackoffBaseMs: 100, spawnBackoffMaxMs: 800 },
  job: { offerTtlMs: 1_000, launchTimeoutMs: 1_500, maxDurationMs: 10_000 },
  slot: {
    initializeTimeoutMs: 2_000,
    closeTimeoutMs: 500,
    killGraceMs: 300,
    // Fake processes answer at once: their heartbeat and memory watch would only add events.
    pingIntervalMs: 30_000,
    pongTimeoutMs: 5_000,
    memorySampleIntervalMs: 60_000,
    memoryWarnIntervalMs: 60_000,
  },
  link: {
    registrationTimeoutMs: 2_000,
    pingIntervalMs: 3_000,
    pongTimeoutMs: 2_000,
    backoffBaseMs: 100,
    backoffMaxMs: 1_000,
  },
};

/** How a job's process behaves once it has the job. */
type JobPersonality = "completes" | "throws" | "crashes" | "hangs";

export interface JobHolder {
  process: FakeProcess;
  worker: SimWorker;
  jobId: string;
}

/** Every process that has been handed a job, world-wide: who holds which job, and how often each started. */
export class JobStarts {
  readonly holders = new Set<JobHolder>();
  readonly counts = new Map<string, number>();
  onStart: (started: JobHolder) => void = () => {};
}

/** The worker each actor system belongs to: the provided machine is built once, not per worker. */
const workerOfSystem = new WeakMap<object, SimWorker>();
const workerOf = (system: object) => workerOfSystem.get(system) as SimWorker;

const processLogic = fromCallback<ProcessCommand, ProcessInput, ProcessEvent>(({ input, sendBack, receive, system }) =>
  workerOf(system).startProcess(input.slotId, sendBack, receive),
);

const socketLogic = fromCallback<SocketCommand, ConnectionInput, SocketEvent>(({ sendBack, receive, system }) =>
  workerOf(system).openSocket(sendBack, receive),
);

const simWorkerMachine = workerMachine.provide({
  actors: {
    slot: slotMachine.provide({ actors: { process: processLogic } }),
    registryLink: connectionMachine.provide({ actors: { socket: socketLogic } }) as never,
  },
});

/**
 * One incarnation of a worker process: the real worker root machine, its slot and job machines on
 * fake processes, and the real connection machine whose socket actor is a connection of the simulated
 * network. Commands become wire messages and frames become machine events through the same
 * functions the real socket uses (src/worker/registry-wire.ts).
 */
export class SimWorker {
  readonly name: string;
  readonly actor: Actor<typeof workerMachine>;
  /** Every process this incarnation started, oldest first. */
  readonly processes: FakeProcess[] = [];
  /** Jobs this incarnation's job machines ended, with how they ended. */
  readonly finished = new Map<string, JobOutput["status"]>();
  /** The connection attempts of this incarnation, latest last. */
  readonly sockets: WorkerSocket[] = [];
  crashed = false;
  /** The registry ids this incarnation was registered under (one, unless a registry renamed it). */
  readonly registeredIds = new Set<string>();
  /** Per job, the assignments and terminations this incarnation received, in order. */
  readonly received = new Map<string, string[]>();
  readonly #liveProcesses = new Set<FakeProcess>();
  #seenProcesses = 0;

  constructor(
    private readonly sim: SimContext,
    readonly slot: number,
    readonly incarnation: number,
    readonly shape: WorkerShape,
    private readonly starts: JobStarts,
  ) {
    this.name = incarnation === 0 ? `w${slot}` : `w${slot}#${incarnation}`;
    const linkInput: ConnectionInput = {
      agentName: shape.agentName,
      maxProcesses: shape.maxProcesses,
      loadThreshold: 1,
      maxRetry: 1_000_000,
      timing: SIM_WORKER_TIMING.link,
      random: sim.rng.next,
    };
    const input: WorkerInput = {
      maxProcesses: shape.maxProcesses,
      numIdleProcesses: shape.numIdleProcesses,
      loadThreshold: 1,
      timing: SIM_WORKER_TIMING.worker,
      job: SIM_WORKER_TIMING.job,
      slot: { timing: SIM_WORKER_TIMING.slot, memoryWarnMb: 0, memoryLimitMb: 0 },
      link: linkInput,
      random: sim.rng.next,
    };
    this.actor = createActor(simWorkerMachine, {
      id: "worker",
      clock: sim.clock,
      input,
      // Slots are left out of the trace: their heartbeats would drown the rest.
      ...(sim.tracing
        ? { inspect: traceTransitions(sim, this.name, (id) => id.startsWith("slot.") || id === "socket") }
        : {}),
    });
    workerOfSystem.set(this.actor.system, this);
    this.actor.on("job.finished", ({ output }) => {
      this.finished.set(output.jobId, output.status);
      if (sim.tracing)
        sim.trace(this.name, `job ${output.jobId} ${output.status}${output.reason ? ` (${output.reason})` : ""}`);
    });
  }

  start(): void {
    this.actor.start();
  }

  get alive(): boolean {
    return !this.crashed && this.actor.getSnapshot().status === "active";
  }

  get link(): AnyActorRef | undefined {
    return this.actor.getSnapshot().children.registryLink as AnyActorRef | undefined;
  }

  /** Registered on its current connection (the link's own view). */
  get registered(): boolean {
    const value = this.link?.getSnapshot().value as { online?: unknown } | string | undefined;
    return (
      typeof value === "object" &&
      typeof value.online === "object" &&
      value.online !== null &&
      "registered" in value.online
    );
  }

  /** The id the registry knows this worker by now. */
  get workerId(): string | undefined {
    const id = (this.link?.getSnapshot().context as { workerId?: string } | undefined)?.workerId;
    return id || undefined;
  }

  /** Processes alive now (spawned, not exited, not stopped). */
  liveProcesses(): number {
    for (; this.#seenProcesses < this.processes.length; this.#seenProcesses++) {
      this.#liveProcesses.add(this.processes[this.#seenProcesses] as FakeProcess);
    }
    for (const p of this.#liveProcesses) if (p.exited || p.disposed) this.#liveProcesses.delete(p);
    return this.#liveProcesses.size;
  }

  get currentConnection(): Connection | undefined {
    const id = this.sockets.at(-1)?.connectionId;
    return id ? this.sim.network.connections.get(id) : undefined;
  }

  /** The process dies: loud, the kernel resets its connections; silent, the machine is gone. */
  crash(loud: boolean): void {
    if (this.crashed) return;
    this.crashed = true;
    for (const socket of this.sockets) {
      const connection = socket.connectionId ? this.sim.network.connections.get(socket.connectionId) : undefined;
      if (connection) this.sim.network.workerDied(connection, loud);
    }
    // Its job processes die with it (the parent watch in each child).
    this.actor.stop();
  }

  describe(): string {
    const snapshot = this.actor.getSnapshot();
    if (this.crashed) return "crashed";
    if (snapshot.status !== "active") return snapshot.status;
    const value = snapshot.value as { active?: { lifecycle?: unknown } };
    const lifecycle = JSON.stringify(value.active?.lifecycle ?? value);
    const link = JSON.stringify(this.link?.getSnapshot().value ?? "none");
    const jobs = Object.entries(snapshot.context.jobs)
      .map(([id, job]) => `${id}:${job.phase}`)
      .join(",");
    const idle = Object.values(snapshot.context.slots).filter((s) => s.phase === "idle").length;
    return `${lifecycle} link=${link} jobs=[${jobs}] idle=${idle}`;
  }

  /** The connection machine's socket actor: one attempt over the simulated network. */
  openSocket(sendBack: (event: SocketEvent) => void, receive: (listener: (command: SocketCommand) => void) => void) {
    const sim = this.sim;
    /** Ended (one ending event sent) or stopped: this attempt says nothing more. */
    let finished = false;
    const end = (event: SocketEvent) => {
      if (finished) return;
      finished = true;
      sendBack(event);
    };
    const leaseClock = new LeaseClock();
    const socket = sim.network.connect(this.slot, this.name, {
      open: () => {
        if (!finished) sendBack({ type: "socket.open" });
      },
      frame: (message) => {
        if (finished) return;
        if (sim.tracing) sim.trace(this.name, `← ${describeFrame(message)}`);
        if (message.type === "job_assignment" || message.type === "job_termination") {
          const seen = this.received.get(message.job_id) ?? [];
          seen.push(message.type);
          this.received.set(message.job_id, seen);
        }
        // The real socket's path (JSON text, the schema, the translation); for the frequent pings and pongs
        // only in some seeds (SimContext.validateAll), the translation alone in the rest.
        const frequent = message.type === "ping" || message.type === "pong";
        const now = sim.clock.now();
        sendBack(
          sim.validateAll || !frequent
            ? parseRegistryFrame(JSON.stringify(message), { clock: leaseClock, now }).event
            : leaseClock.received(message, toSocketEvent(message), now),
        );
      },
      closed: (code, reason) => {
        if (sim.tracing && !finished) sim.trace(this.name, `socket closed ${code} ${reason}`);
        end({ type: "socket.closed", code, reason });
      },
      failed: (error) => {
        if (sim.tracing && !finished) sim.trace(this.name, `connection failed: ${error}`);
        end({ type: "socket.failed", error });
      },
    });
    this.sockets.push(socket);
    if (this.sockets.length > 8) this.sockets.shift();
    receive((command) => {
      if (finished) return;
      const now = sim.clock.now();
      const message = toWorkerMessage(command, now);
      leaseClock.sent(message, now);
      socket.send(message);
    });
    return () => {
      finished = true;
      if (!this.crashed) socket.close();
    };
  }

  /** The slot's process actor: a fake process that warms after a moment and runs what it is given. */
  startProcess(
    slotId: string,
    sendBack: (event: ProcessEvent) => void,
    receive: (listener: (command: ProcessCommand) => void) => void,
  ) {
    const sim = this.sim;
    const p = new FakeProcess(slotId, 1000 + this.processes.length, sendBack);
    this.processes.push(p);
    receive((command) => {
      p.commands.push(command);
      this.#onCommand(p, command);
    });
    const spawnFails = !sim.calm && sim.rng.chance(0.03);
    sim.clock.after(sim.rng.int(5, 80), () => {
      if (spawnFails) {
        p.emit({ type: "proc.spawn_failed", error: { name: "Error", message: "EAGAIN" } });
        return;
      }
      p.emit({ type: "proc.spawned", pid: p.pid });
      p.emit({ type: "proc.ready" });
    });
    return () => {
      p.disposed = true;
    };
  }

  #onCommand(p: FakeProcess, command: ProcessCommand): void {
    switch (command.type) {
      case "ping":
        p.emit({ type: "proc.pong" });
        break;
      case "sample_memory":
        p.emit({ type: "proc.memory", mb: 50 });
        break;
      case "start_job":
        this.#startJob(p, command.job.jobId);
        break;
      case "shutdown":
        p.emit({ type: "proc.job_ending" });
        p.emit({ type: "proc.done", result: { ok: true } });
        p.emit({ type: "proc.exit", code: 0, signal: null });
        break;
      case "signal":
        p.emit({ type: "proc.exit", code: null, signal: command.signal });
        break;
    }
  }

  #startJob(p: FakeProcess, jobId: string): void {
    const sim = this.sim;
    const holder = { process: p, worker: this, jobId };
    this.starts.holders.add(holder);
    this.starts.counts.set(jobId, (this.starts.counts.get(jobId) ?? 0) + 1);
    this.starts.onStart(holder);
    if (sim.tracing) sim.trace(this.name, `process ${p.slotId} starts ${jobId}`);
    const roll = sim.rng.next();
    const personality: JobPersonality =
      roll < 0.8 ? "completes" : roll < 0.9 ? "throws" : roll < 0.95 ? "crashes" : "hangs";
    // Now and then a job takes a while to start (a slow entrypoint), while faults are on.
    const startsIn = !sim.calm && sim.rng.chance(0.1) ? sim.rng.int(0, 2_500) : 0;
    sim.clock.after(startsIn, () => {
      if (!p.exited && !p.disposed) p.emit({ type: "proc.job_running" });
    });
    if (personality === "hangs") return;
    // Most jobs are short; one in ten runs past the registry's deadlines, as real sessions do.
    const runsFor = sim.rng.chance(0.1) ? sim.rng.int(4_000, 9_000) : sim.rng.int(100, 3_000);
    sim.clock.after(startsIn + runsFor, () => {
      if (p.exited || p.disposed) return;
      if (personality === "crashes") {
        p.emit({ type: "proc.exit", code: 1, signal: null });
        return;
      }
      p.emit({ type: "proc.job_ending" });
      p.emit({
        type: "proc.done",
        result: personality === "completes" ? { ok: true } : { ok: false, error: { name: "Error", message: "boom" } },
      });
      p.emit({ type: "proc.exit", code: personality === "completes" ? 0 : 1, signal: null });
    });
  }
}

export function describeFrame(message: {
  type: string;
  job_id?: string;
  status?: string;
  available?: boolean;
}): string {
  const parts: string[] = [message.type];
  if (message.job_id) parts.push(message.job_id);
  if (message.status) parts.push(message.status);
  if (message.available !== undefined) parts.push(message.available ? "yes" : "no");
  return parts.join(" ");
}
