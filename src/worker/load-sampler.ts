import { cpus } from "node:os";
import { fromCallback } from "xstate";
import type { LoadFn } from "../options.ts";
import { readCpuUsage } from "./cpu-usage.ts";

export interface LoadSamplerSettings {
  intervalMs: number;
  loadFn?: LoadFn;
  onError?: (error: unknown) => void;
}

/**
 * Sends `worker.load` samples: the user's loadFn when given, else CPU use of the container (cgroup
 * quota aware), smoothed with an exponential moving average so one busy second does not flip
 * availability.
 */
export function createLoadSampler(settings: LoadSamplerSettings) {
  return fromCallback(({ sendBack }) => {
    let previous = readCpuUsage();
    let smoothed = 0;
    const timer = setInterval(async () => {
      try {
        let value: number;
        if (settings.loadFn) {
          value = Number(await settings.loadFn());
        } else {
          const current = readCpuUsage();
          const elapsedMicros = (current.atMs - previous.atMs) * 1000;
          const usedMicros = current.usageMicros - previous.usageMicros;
          previous = current;
          const capacity = current.cores ?? cpus().length;
          const instant = elapsedMicros > 0 ? usedMicros / (elapsedMicros * capacity) : 0;
          smoothed = smoothed * 0.7 + Math.min(1, Math.max(0, instant)) * 0.3;
          value = smoothed;
        }
        if (Number.isFinite(value)) sendBack({ type: "worker.load", value: Math.min(1, Math.max(0, value)) });
      } catch (error) {
        settings.onError?.(error);
      }
    }, settings.intervalMs);
    timer.unref();
    return () => clearInterval(timer);
  });
}
