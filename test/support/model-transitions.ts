import type { AnyStateMachine } from "xstate";

/**
 * Every transition of a flat model machine (its top-level states), as "from -EVENT-> to", each once
 * and sorted: what a model test's shortest paths must take between them.
 */
export function modelTransitions(machine: AnyStateMachine): string[] {
  const edges = new Set<string>();
  for (const node of Object.values(machine.root.states)) {
    for (const [eventType, list] of node.transitions) {
      for (const t of list) edges.add(`${node.key} -${eventType}-> ${t.target?.[0]?.key ?? node.key}`);
    }
  }
  return [...edges].sort();
}
