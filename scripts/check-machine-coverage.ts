import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { AnyStateMachine } from "xstate";
import { connectionMachine } from "../machines/connection.ts";
import { jobMachine } from "../machines/job.ts";
import { leaseMachine } from "../machines/lease.ts";
import { dispatchMachine } from "../machines/registry/dispatch.ts";
import { sessionMachine } from "../machines/registry/session.ts";
import { slotMachine } from "../machines/slot.ts";
import { workerMachine } from "../machines/worker.ts";
import { COVERAGE_DIR, COVERED_MACHINES, machineInventory } from "../test/support/coverage.ts";

/** Fails (exit 1) when a state or transition of the covered machines was reached by no test in this run. */
const machines: AnyStateMachine[] = [
  slotMachine,
  jobMachine,
  leaseMachine,
  workerMachine,
  connectionMachine,
  sessionMachine,
  dispatchMachine,
];
const ids = machines.map((m) => m.id);
if (ids.join() !== COVERED_MACHINES.join()) {
  console.error(`machine coverage: the machines checked (${ids}) are not COVERED_MACHINES (${COVERED_MACHINES})`);
  process.exit(1);
}

let files: string[] = [];
try {
  files = readdirSync(COVERAGE_DIR).filter((f) => f.endsWith(".json"));
} catch {
  files = [];
}
const states = new Set<string>();
const transitions = new Set<string>();
for (const file of files) {
  const data = JSON.parse(readFileSync(join(COVERAGE_DIR, file), "utf8")) as {
    states: string[];
    transitions: string[];
  };
  for (const s of data.states) states.add(s);
  for (const t of data.transitions) transitions.add(t);
}

let missing = 0;
const lines: string[] = [];
for (const machine of machines) {
  const inventory = machineInventory(machine);
  const missedStates = inventory.states.filter((s) => !states.has(s));
  const missedTransitions = inventory.transitions.filter((t) => !transitions.has(t));
  missing += missedStates.length + missedTransitions.length;
  lines.push(
    `${machine.id}: states ${inventory.states.length - missedStates.length}/${inventory.states.length}, ` +
      `transitions ${inventory.transitions.length - missedTransitions.length}/${inventory.transitions.length}`,
  );
  for (const s of missedStates) lines.push(`  unreached state: ${s}`);
  for (const t of missedTransitions) lines.push(`  untaken transition: ${t}`);
}
console.log(`machine coverage (${files.length} recordings)`);
console.log(lines.join("\n"));
if (missing > 0) {
  console.error(`machine coverage: ${missing} states or transitions reached by no test`);
  process.exit(1);
}
console.log("machine coverage: every state and transition reached");
