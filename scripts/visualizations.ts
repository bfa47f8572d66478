import type { AnyStateMachine } from "xstate";
import { connectionMachine } from "../machines/connection.ts";
import { jobMachine } from "../machines/job.ts";
import { leaseMachine } from "../machines/lease.ts";
import { dispatchMachine } from "../machines/registry/dispatch.ts";
import { sessionMachine } from "../machines/registry/session.ts";
import { slotMachine } from "../machines/slot.ts";
import { workerMachine } from "../machines/worker.ts";
import { renderSvg, toDot, toMermaid } from "./diagram.ts";

export const MACHINES: Record<string, AnyStateMachine> = {
  worker: workerMachine,
  slot: slotMachine,
  job: jobMachine,
  lease: leaseMachine,
  connection: connectionMachine,
  "registry-session": sessionMachine,
  "registry-dispatch": dispatchMachine,
};

/** File name → content for every machine: Mermaid, DOT and the SVG rendered from the DOT. */
export async function generateVisualizations(): Promise<Record<string, string>> {
  const files: Record<string, string> = {};
  for (const [name, machine] of Object.entries(MACHINES)) {
    const dot = toDot(machine);
    files[`${name}.mmd`] = toMermaid(machine);
    files[`${name}.dot`] = dot;
    files[`${name}.svg`] = await renderSvg(dot);
  }
  return files;
}
