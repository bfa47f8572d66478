import { fileURLToPath } from "node:url";
import type { TestContext } from "vitest";
import {
  type AnyActorRef,
  type AnyEventObject,
  fromCallback,
  type Subscription,
  sendParent,
  sendTo,
  setup,
} from "xstate";
import type { JobOutput } from "../../../machines/job.ts";
import type { JobUpdate } from "../../../machines/shared.ts";
import type { SlotContext, SlotOutput } from "../../../machines/slot.ts";
import type { LinkCommand, WorkerContext } from "../../../machines/worker.ts";
import { createLogger } from "../../../src/observability/logger.ts";
import { type LogLevel, Options, type OptionsInput } from "../../../src/options.ts";
import { runWorker, type WorkerHandle } from "../../../src/worker/runtime.ts";
import { within } from "../../support/wait.ts";
import { fileMarker, ProcessScope } from "./processes.ts";
import { Recorder } from "./recorder.ts";

export const fixture = (name: string) => fileURLToPath(new URL(`../../fixtures/agents/${name}.ts`, import.meta.url));

/** Small timeouts for every in-process worker; a test overrides what it exercises. */
export const FAST_OPTIONS = {
  ipcPingInterval: 0.2,
  ipcPongTimeout: 1,
  memorySampleInterval: 0.1,
  closeTimeout: 1,
  killTimeout: 0.5,
  // Booting a job process (tsx, the fixture) takes a second or more on a busy 2-core machine: the
  // tests that are not about warming must never see it time out.
  initializeTimeout: 20,
  launchTimeout: 30,
  spawnBackoffBase: 0.2,
  spawnBackoffMax: 1,
  drainTimeout: 5,
} satisfies OptionsInput;

export type LogLine = { level: number; msg: string; [field: string]: unknown };

type FakeLinkEvent = { type: "fake.forward"; event: AnyEventObject } | LinkCommand;

/**
 * Stands in for the registry link: a machine whose state is `online.registered` (so /readyz can be
 * ready), that forwards test events (assignments, terminations) to the worker and records every
 * command the worker sends it (status, job updates).
 */
export class FakeRegistry {
  readonly commands = new Recorder<LinkCommand>((c) => ("update" in c ? c.update : c.type));
  #toWorker: ((event: AnyEventObject) => void) | undefined;

  readonly logic = setup({
    types: { events: {} as FakeLinkEvent },
    actors: {
      bridge: fromCallback<AnyEventObject>(({ sendBack, receive }) => {
        this.#toWorker = (event) => sendBack({ type: "fake.forward", event });
        receive((command) => this.commands.push(command as LinkCommand));
        return () => {
          this.#toWorker = undefined;
        };
      }),
    },
  }).createMachine({
    id: "fakeRegistryLink",
    invoke: { id: "bridge", src: "bridge" },
    initial: "online",
    states: { online: { initial: "registered", states: { registered: {} } } },
    on: {
      "fake.forward": { actions: sendParent(({ event }) => (event as { event: AnyEventObject }).event as never) },
      "link.*": { actions: sendTo("bridge", ({ event }) => event) },
    },
  });

  send(event: AnyEventObject): void {
    if (!this.#toWorker) throw new Error("the worker's registry link is not running");
    this.#toWorker(event);
  }

  assign(jobId: string, metadata: Record<string, unknown> = {}): void {
    this.send({ type: "worker.assignment", spec: { jobId, agentName: "Fixture", roomId: `room-${jobId}`, metadata } });
  }

  terminate(jobId: string): void {
    this.send({ type: "worker.terminate", jobId });
  }

  updates(jobId: string): JobUpdate[] {
    return this.commands.items.flatMap((c) =>
      c.type === "link.job_update" && c.update.jobId === jobId ? [c.update] : [],
    );
  }

  waitForUpdate(jobId: string, status: JobUpdate["status"], timeoutMs: number): Promise<JobUpdate> {
    return this.commands
      .waitFor(
        (c) => c.type === "link.job_update" && c.update.jobId === jobId && c.update.status === status,
        timeoutMs,
        `job update ${jobId} ${status}`,
      )
      .then((c) => (c as Extract<LinkCommand, { type: "link.job_update" }>).update);
  }
}

type WorkerSnapshot = { context: WorkerContext; status: string; children: Record<string, AnyActorRef | undefined> };

export interface InProcessWorker {
  handle: WorkerHandle;
  registry: FakeRegistry;
  scope: ProcessScope;
  finished: Recorder<JobOutput>;
  exited: Recorder<SlotOutput>;
  logs: Recorder<LogLine>;
  options: Options;
  get(path: string): Promise<{ status: number; text: string; json: () => unknown }>;
  snapshot(): WorkerSnapshot;
  slotContext(slotId: string): SlotContext | undefined;
  /** The pid of the process running this job, once the job has a slot that spawned. */
  pidOfJob(jobId: string): number | null;
  idleSlotIds(): string[];
  waitForWorker(check: (snapshot: WorkerSnapshot) => boolean, timeoutMs: number, label: string): Promise<void>;
  waitForIdle(count: number, timeoutMs: number): Promise<void>;
  finishedJob(jobId: string, timeoutMs: number): Promise<JobOutput>;
  /** Stops the worker and waits until it is done; resolves with its exit code. */
  stop(): Promise<number>;
}

/**
 * Runs a worker in this process (real job processes of a fixture agent, a fake registry link) and
 * registers its teardown with the test: stop, wait, and fail the test if any process it started
 * outlives it.
 */
export async function startInProcessWorker(
  context: Pick<TestContext, "onTestFinished">,
  fixtureName: string,
  overrides: OptionsInput = {},
  settings: { logLevel?: LogLevel } = {},
): Promise<InProcessWorker> {
  // Job processes inherit this process's environment when forked: the file's marker finds any of them
  // for the sweep after the file. This worker's own processes are tracked by pid (its slots, its logs).
  fileMarker();
  const scope = new ProcessScope();
  const logs = new Recorder<LogLine>((l) => ({ msg: l.msg, jobId: l.jobId, slotId: l.slotId }));
  const logger = createLogger(settings.logLevel ?? "INFO", {
    write(chunk: string) {
      for (const text of chunk.split("\n")) {
        if (!text) continue;
        const line = JSON.parse(text) as LogLine;
        if (typeof line.jobPid === "number") scope.track(line.jobPid);
        logs.push(line);
      }
    },
  });
  const registry = new FakeRegistry();
  const options = new Options(
    { agentId: "Fixture", register: true, host: "127.0.0.1", port: 0, maxProcesses: 2, ...FAST_OPTIONS, ...overrides },
    {},
  );
  const handle = await runWorker(
    { entrypoint: async () => {}, jobctx: undefined, options, agentModule: fixture(fixtureName) },
    { handleSignals: false, logger, registryLink: () => ({ logic: registry.logic, input: undefined }) },
  );
  const finished = new Recorder<JobOutput>();
  const exited = new Recorder<SlotOutput>((o) => ({ slotId: o.slotId, jobId: o.jobId, stopReason: o.stopReason }));
  handle.actor.on("job.finished", ({ output }) => finished.push(output));
  handle.actor.on("slot.exited", ({ output }) => {
    scope.track(output.pid);
    exited.push(output);
  });

  const snapshot = () => handle.actor.getSnapshot() as unknown as WorkerSnapshot;
  const slotContext = (slotId: string) =>
    (snapshot().children[slotId]?.getSnapshot() as { context?: SlotContext } | undefined)?.context;
  // Learn every job process pid as soon as its slot records it.
  const trackPids = () => {
    for (const [id, child] of Object.entries(snapshot().children)) {
      if (id.startsWith("slot.") && child) scope.track((child.getSnapshot() as { context: SlotContext }).context.pid);
    }
  };
  const pidTimer = setInterval(trackPids, 20);

  let stopped: Promise<number> | undefined;
  const stop = () => {
    if (!stopped) {
      if (handle.actor.getSnapshot().status === "active") handle.stop();
      stopped = within("the worker to stop", handle.done, 20_000).finally(() => {
        trackPids();
        clearInterval(pidTimer);
      });
    }
    return stopped;
  };

  const waitForWorker = (check: (s: WorkerSnapshot) => boolean, timeoutMs: number, label: string) =>
    new Promise<void>((resolve, reject) => {
      let subscription: Subscription | undefined;
      const timer = setTimeout(() => {
        subscription?.unsubscribe();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${label}`));
      }, timeoutMs);
      const test = () => {
        if (!check(snapshot())) return false;
        clearTimeout(timer);
        subscription?.unsubscribe();
        resolve();
        return true;
      };
      if (test()) return;
      subscription = handle.actor.subscribe({ next: () => void test() });
    });

  const idleSlotIds = () =>
    Object.entries(snapshot().context.slots)
      .filter(([, view]) => view.phase === "idle")
      .map(([id]) => id);

  const worker: InProcessWorker = {
    handle,
    registry,
    scope,
    finished,
    exited,
    logs,
    options,
    async get(path) {
      const response = await fetch(`http://127.0.0.1:${handle.port}${path}`);
      const text = await response.text();
      return { status: response.status, text, json: () => JSON.parse(text) };
    },
    snapshot,
    slotContext,
    pidOfJob(jobId) {
      const slotId = snapshot().context.jobs[jobId]?.slotId;
      return slotId ? (slotContext(slotId)?.pid ?? null) : null;
    },
    idleSlotIds,
    waitForWorker,
    waitForIdle: (count, timeoutMs) =>
      waitForWorker((s) => s.status === "active" && idleSlotIds().length >= count, timeoutMs, `${count} idle slot(s)`),
    finishedJob: (jobId, timeoutMs) => finished.waitFor((o) => o.jobId === jobId, timeoutMs, `job ${jobId} to finish`),
    stop,
  };

  context.onTestFinished(async () => {
    let stopError: unknown;
    try {
      await stop();
    } catch (error) {
      stopError = error;
    }
    // After the worker stopped, every job process must be gone already (allow a moment to be reaped).
    const survivors = await scope.cleanup(2_000);
    if (survivors.length > 0) {
      throw new Error(`processes outlived the worker and had to be killed: ${JSON.stringify(survivors)}`);
    }
    if (stopError) throw stopError;
  });
  return worker;
}
