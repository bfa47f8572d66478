import type { WorkerMetrics } from "../observability/metrics.ts";
import type { ProcessObserver } from "./process-actor.ts";

const MIB = 1024 * 1024;

export interface ProcessRecord {
  pid: number;
  spawnedAt: number;
  memoryMb: number | null;
  jobId: string | null;
  jobStartedAt: number | null;
}

/** Remembers what the machines do not (wall-clock times, latest memory) for /worker and /metrics. */
export class ProcessTracker implements ProcessObserver {
  readonly bySlot = new Map<string, ProcessRecord>();

  constructor(private readonly metrics: WorkerMetrics) {}

  spawned(slotId: string, pid: number): void {
    this.bySlot.set(slotId, { pid, spawnedAt: Date.now(), memoryMb: null, jobId: null, jobStartedAt: null });
  }

  ready(_slotId: string, _pid: number, spawnSeconds: number): void {
    this.metrics.spawnDuration.observe(spawnSeconds);
  }

  jobRunning(slotId: string, jobId: string, startSeconds: number): void {
    const record = this.bySlot.get(slotId);
    if (record) {
      // One series per process: the idle one gives way to the job's, or both would count its memory.
      this.metrics.jobMemory.remove({ slot: slotId, job_id: record.jobId ?? "" });
      record.jobId = jobId;
      record.jobStartedAt = Date.now();
      if (record.memoryMb !== null) this.metrics.jobMemory.set({ slot: slotId, job_id: jobId }, record.memoryMb * MIB);
    }
    this.metrics.jobsStarted.inc();
    this.metrics.jobStartLatency.observe(startSeconds);
  }

  memory(slotId: string, mb: number): void {
    const record = this.bySlot.get(slotId);
    if (!record) return;
    record.memoryMb = mb;
    this.metrics.jobMemory.set({ slot: slotId, job_id: record.jobId ?? "" }, mb * MIB);
  }

  exited(slotId: string, _pid: number | undefined, code: number | null, signal: string | null): void {
    const record = this.bySlot.get(slotId);
    if (record) this.metrics.jobMemory.remove({ slot: slotId, job_id: record.jobId ?? "" });
    this.bySlot.delete(slotId);
    this.metrics.processExits.inc({ kind: signal ? `signal_${signal}` : code === 0 ? "clean" : "error" });
  }
}
