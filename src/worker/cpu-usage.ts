import { readFileSync } from "node:fs";
import { cpus } from "node:os";

export interface CpuUsage {
  atMs: number;
  /** CPU time used by the container (cgroup v2) or the whole machine, in microseconds. */
  usageMicros: number;
  /** Cores the container may use (its quota), when a quota is set. */
  cores: number | undefined;
}

function cgroupQuotaCores(): number | undefined {
  try {
    const [quota, period] = readFileSync("/sys/fs/cgroup/cpu.max", "utf8").trim().split(/\s+/);
    if (!quota || quota === "max" || !period) return undefined;
    return Number(quota) / Number(period);
  } catch {
    return undefined;
  }
}

function cgroupUsageMicros(): number | undefined {
  try {
    const match = /^usage_usec (\d+)/m.exec(readFileSync("/sys/fs/cgroup/cpu.stat", "utf8"));
    return match ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}

function machineUsageMicros(): number {
  let busyMs = 0;
  for (const cpu of cpus()) busyMs += cpu.times.user + cpu.times.nice + cpu.times.sys + cpu.times.irq;
  return busyMs * 1000;
}

export function readCpuUsage(): CpuUsage {
  return {
    atMs: performance.now(),
    usageMicros: cgroupUsageMicros() ?? machineUsageMicros(),
    cores: cgroupQuotaCores(),
  };
}
