import { fromCallback } from "xstate";
import type { ProcessCommand, ProcessEvent, ProcessInput } from "../../machines/slot.ts";

/** One fake child process: the test sends its events and reads the commands it got. */
export class FakeProcess {
  readonly commands: ProcessCommand[] = [];
  disposed = false;
  exited = false;
  constructor(
    readonly slotId: string,
    readonly pid: number,
    private readonly sendBack: (event: ProcessEvent) => void,
  ) {}
  emit(event: ProcessEvent): void {
    if (this.disposed) return;
    if (event.type === "proc.exit") this.exited = true;
    this.sendBack(event);
  }
  last(type: ProcessCommand["type"]): ProcessCommand | undefined {
    return this.commands.filter((c) => c.type === type).at(-1);
  }
  count(type: ProcessCommand["type"]): number {
    return this.commands.filter((c) => c.type === type).length;
  }
}

export interface FakeBehaviour {
  /** Called when the process actor starts; default: report spawned. */
  onStart?: (p: FakeProcess) => void;
  /** Called for each command; default: nothing (the test answers). */
  onCommand?: (p: FakeProcess, command: ProcessCommand) => void;
}

/** A process-actor factory for slotMachine.provide({ actors: { process } }). */
export class FakeProcesses {
  readonly all: FakeProcess[] = [];
  private nextPid = 1000;
  constructor(public behaviour: FakeBehaviour = {}) {}

  bySlot(slotId: string): FakeProcess {
    const found = this.all.filter((p) => p.slotId === slotId).at(-1);
    if (!found) throw new Error(`no fake process for ${slotId}`);
    return found;
  }

  get live(): FakeProcess[] {
    return this.all.filter((p) => !p.disposed && !p.exited);
  }

  readonly logic = fromCallback<ProcessCommand, ProcessInput, ProcessEvent>(({ input, sendBack, receive }) => {
    const p = new FakeProcess(input.slotId, this.nextPid++, sendBack);
    this.all.push(p);
    receive((command) => {
      p.commands.push(command);
      this.behaviour.onCommand?.(p, command);
    });
    if (this.behaviour.onStart) this.behaviour.onStart(p);
    else p.emit({ type: "proc.spawned", pid: p.pid });
    return () => {
      p.disposed = true;
    };
  });
}

/** A well-behaved child: warms at once, answers pings, runs jobs until told, exits cleanly. */
export function cooperativeBehaviour(): FakeBehaviour {
  return {
    onStart: (p) => {
      p.emit({ type: "proc.spawned", pid: p.pid });
      p.emit({ type: "proc.ready" });
    },
    onCommand: (p, command) => {
      switch (command.type) {
        case "ping":
          p.emit({ type: "proc.pong" });
          break;
        case "start_job":
          p.emit({ type: "proc.job_running" });
          break;
        case "shutdown":
          p.emit({ type: "proc.done", result: { ok: true } });
          p.emit({ type: "proc.exit", code: 0, signal: null });
          break;
        case "signal":
          p.emit({ type: "proc.exit", code: null, signal: command.signal });
          break;
        case "sample_memory":
          p.emit({ type: "proc.memory", mb: 50 });
          break;
      }
    },
  };
}
