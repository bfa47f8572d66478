import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { AnyStateMachine, InspectionEvent } from "xstate";

/** The machines whose every state and transition must be reached by some test (their ids). */
export const COVERED_MACHINES = ["slot", "job", "lease", "worker", "connection", "session", "dispatch"] as const;
/**
 * Where the tests of one run write what they reached (emptied by global-setup.ts at the start of a run).
 * MACHINE_COVERAGE_DIR moves it, so that runs sharing a checkout do not wipe each other's recordings.
 */
export const COVERAGE_DIR =
  process.env.MACHINE_COVERAGE_DIR || join(import.meta.dirname, "..", "..", ".machine-coverage");

interface StateNodeLike {
  id: string;
  states: Record<string, StateNodeLike>;
  transitions: Map<string, TransitionLike[]>;
  always?: TransitionLike[];
}
interface TransitionLike {
  source: StateNodeLike;
  target?: StateNodeLike[];
  eventType: string;
}

export const transitionKey = (source: string, eventType: string, index: number) =>
  `${source} on ${eventType === "" ? "(always)" : eventType} #${index}`;

/** Every state node id and every transition (by source, event and position) of a machine. */
export function machineInventory(machine: AnyStateMachine): { states: string[]; transitions: string[] } {
  const states: string[] = [];
  const transitions: string[] = [];
  const visit = (node: StateNodeLike) => {
    states.push(node.id);
    for (const [eventType, list] of node.transitions) {
      for (let i = 0; i < list.length; i++) transitions.push(transitionKey(node.id, eventType, i));
    }
    for (let i = 0; i < (node.always ?? []).length; i++) transitions.push(transitionKey(node.id, "", i));
    for (const child of Object.values(node.states)) visit(child);
  };
  visit(machine.root as unknown as StateNodeLike);
  return { states, transitions };
}

const reachedStates = new Set<string>();
const takenTransitions = new Set<string>();

function indexOf(t: TransitionLike): number {
  const list = t.eventType === "" ? (t.source.always ?? []) : (t.source.transitions.get(t.eventType) ?? []);
  return list.indexOf(t);
}

/** An inspect callback that records reached states and taken transitions of the covered machines. */
export function recordCoverage(event: InspectionEvent): void {
  if (event.type !== "@xstate.microstep" && event.type !== "@xstate.snapshot") return;
  const snapshot = event.snapshot as { _nodes?: { id: string }[] };
  for (const node of snapshot._nodes ?? []) reachedStates.add(node.id);
  if (event.type === "@xstate.microstep") {
    for (const t of (event as unknown as { _transitions: TransitionLike[] })._transitions ?? []) {
      if (typeof t.eventType !== "string") continue; // initial transitions
      const i = indexOf(t);
      if (i >= 0) takenTransitions.add(transitionKey(t.source.id, t.eventType, i));
      // A transient state (left by an eventless transition at once) shows in no snapshot: its
      // transitions taken and their targets prove it was entered.
      reachedStates.add(t.source.id);
      for (const target of t.target ?? []) reachedStates.add(target.id);
    }
  }
}

export function flushCoverage(): void {
  if (reachedStates.size === 0 && takenTransitions.size === 0) return;
  mkdirSync(COVERAGE_DIR, { recursive: true });
  const file = join(COVERAGE_DIR, `${process.pid}-${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(file, JSON.stringify({ states: [...reachedStates], transitions: [...takenTransitions] }));
  reachedStates.clear();
  takenTransitions.clear();
}
