import type { AnyStateMachine } from "xstate";

/**
 * Mermaid and Graphviz diagrams generated from machine objects, so the pictures in visualizations/
 * can never drift from the code. Deliberately ignored events and action-only handlers are listed in
 * a note per state rather than drawn as self-loops, so the diagrams stay readable.
 */

interface Node {
  id: string;
  key: string;
  type: "atomic" | "compound" | "parallel" | "final" | "history";
  states: Record<string, Node>;
  initial?: { target: Node[] };
  transitions: Map<string, Transition[]>;
  always?: Transition[];
  invoke: { src: string; id: string }[];
  parent?: Node;
}
interface Transition {
  eventType: string;
  target?: Node[];
  guard?: unknown;
  actions: unknown[];
}

interface Edge {
  from: Node;
  to: Node;
  label: string;
}

const safeId = (node: Node) => node.id.replace(/[^A-Za-z0-9_]/g, "_");

function guardName(guard: unknown): string {
  if (guard === undefined || guard === null) return "";
  if (typeof guard === "string") return guard;
  if (typeof guard === "object" && "type" in (guard as object)) return String((guard as { type: string }).type);
  const fn = guard as { guards?: unknown[]; stateValue?: unknown; check?: { name?: string }; name?: string };
  if (fn.stateValue !== undefined) return `in ${String(fn.stateValue).replace(/^#worker\.active\.lifecycle\./, "")}`;
  if (fn.guards) {
    const kind = fn.check?.name ?? "";
    const parts = fn.guards.map(guardName);
    if (kind.includes("Not") || kind === "F" || parts.length === 1) return `!${parts[0]}`;
    return parts.join(kind.includes("Or") || kind === "H" ? " || " : " && ");
  }
  return fn.name && fn.name !== "guard" ? fn.name : "inline guard";
}

export function eventLabel(eventType: string): string {
  if (eventType === "") return "always";
  return eventType
    .replace(/^xstate\.after\.([^.]+)\..*/, "after $1")
    .replace(/^xstate\.done\.actor\.(.*)/, "done($1)")
    .replace(/^xstate\.error\.actor\.(.*)/, "error($1)");
}

function children(node: Node): Node[] {
  return Object.values(node.states).filter((child) => child.type !== "history");
}

function collect(machine: AnyStateMachine) {
  const root = machine.root as unknown as Node;
  const edges: Edge[] = [];
  const notes = new Map<Node, string[]>();
  const visit = (node: Node) => {
    const quiet: string[] = [];
    const entries: [string, Transition[]][] = [...node.transitions.entries()];
    if (node.always?.length) entries.push(["", node.always]);
    for (const [eventType, list] of entries) {
      for (const t of list) {
        const guard = guardName(t.guard);
        const label = `${eventLabel(eventType)}${guard ? ` [${guard}]` : ""}`;
        if (!t.target || t.target.length === 0) {
          quiet.push(t.actions.length > 0 ? label : `${label} (ignored)`);
          continue;
        }
        for (const to of t.target) edges.push({ from: node, to, label });
      }
    }
    if (quiet.length > 0) notes.set(node, [...new Set(quiet)]);
    for (const child of children(node)) visit(child);
  };
  visit(root);
  return { root, edges, notes };
}

function stateLabel(node: Node): string {
  const invokes = node.invoke.map((i) => `⟨invoke ${i.src.replace(/^xstate\.invoke\..*/, i.id)}⟩`).join(" ");
  return invokes ? `${node.key} ${invokes}` : node.key;
}

/** Mermaid stateDiagram-v2. */
export function toMermaid(machine: AnyStateMachine): string {
  const { root, edges, notes } = collect(machine);
  const lines = ["stateDiagram-v2", "  direction LR"];
  const declare = (node: Node, indent: string) => {
    const kids = children(node);
    if (kids.length === 0) {
      lines.push(`${indent}state "${stateLabel(node)}" as ${safeId(node)}`);
      return;
    }
    lines.push(`${indent}state "${stateLabel(node)}" as ${safeId(node)} {`);
    if (node.type === "parallel") {
      kids.forEach((kid, i) => {
        if (i > 0) lines.push(`${indent}  --`);
        declare(kid, `${indent}  `);
      });
    } else {
      for (const kid of kids) declare(kid, `${indent}  `);
      const initial = node.initial?.target[0];
      if (initial) lines.push(`${indent}  [*] --> ${safeId(initial)}`);
      for (const kid of kids) if (kid.type === "final") lines.push(`${indent}  ${safeId(kid)} --> [*]`);
    }
    lines.push(`${indent}}`);
  };
  for (const kid of children(root)) declare(kid, "  ");
  const initial = root.initial?.target[0];
  if (initial) lines.push(`  [*] --> ${safeId(initial)}`);
  for (const kid of children(root)) if (kid.type === "final") lines.push(`  ${safeId(kid)} --> [*]`);
  for (const edge of edges) {
    if (edge.from === root) continue;
    lines.push(`  ${safeId(edge.from)} --> ${safeId(edge.to)}: ${edge.label.replace(/:/g, "∶")}`);
  }
  for (const [node, quiet] of notes) {
    const where = node === root ? safeId(initial ?? root) : safeId(node);
    const heading = node === root ? "in any state" : "handled here without a transition";
    lines.push(`  note right of ${where}`, `    ${heading}: ${quiet.join(", ").replace(/:/g, "∶")}`, "  end note");
  }
  for (const edge of edges.filter((e) => e.from === root)) {
    lines.push(
      `  note right of ${safeId(edge.to)}`,
      `    from any state: ${edge.label.replace(/:/g, "∶")}`,
      "  end note",
    );
  }
  return `${lines.join("\n")}\n`;
}

const escapeDot = (text: string) => text.replace(/\\/g, "\\\\").replace(/"/g, '\\"');

/** Graphviz DOT; compound and parallel states are clusters (parallel ones dashed). */
export function toDot(machine: AnyStateMachine): string {
  const { root, edges, notes } = collect(machine);
  const lines = [
    `digraph "${escapeDot(machine.id)}" {`,
    "  compound=true; rankdir=LR; fontname=Helvetica;",
    '  node [shape=box, style="rounded,filled", fillcolor="#f5f7fa", fontname=Helvetica, fontsize=11];',
    '  edge [fontname=Helvetica, fontsize=9, color="#556"];',
  ];
  const anchor = (node: Node) => (children(node).length > 0 ? `${safeId(node)}__anchor` : safeId(node));
  const declare = (node: Node, indent: string) => {
    const kids = children(node);
    const note = notes.get(node);
    const noteText = note ? `\\n— ${escapeDot(note.join(", "))}` : "";
    if (kids.length === 0) {
      const shape = node.type === "final" ? ", peripheries=2" : "";
      lines.push(`${indent}${safeId(node)} [label="${escapeDot(stateLabel(node))}${noteText}"${shape}];`);
      return;
    }
    lines.push(`${indent}subgraph cluster_${safeId(node)} {`);
    lines.push(
      `${indent}  label="${escapeDot(stateLabel(node))}${node.type === "parallel" ? " (parallel)" : ""}${noteText}"; style="rounded${node.type === "parallel" ? ",dashed" : ""}"; color="#889";`,
    );
    lines.push(`${indent}  ${anchor(node)} [shape=point, width=0.01, style=invis];`);
    for (const kid of kids) declare(kid, `${indent}  `);
    const initial = node.type !== "parallel" ? node.initial?.target[0] : undefined;
    if (initial) {
      lines.push(`${indent}  ${safeId(node)}__start [shape=circle, width=0.12, label="", fillcolor="#333"];`);
      lines.push(`${indent}  ${safeId(node)}__start -> ${anchor(initial)};`);
    }
    lines.push(`${indent}}`);
  };
  lines.push(`  ${safeId(root)}__start [shape=circle, width=0.15, label="", fillcolor="#333"];`);
  for (const kid of children(root)) declare(kid, "  ");
  const initial = root.initial?.target[0];
  if (initial) lines.push(`  ${safeId(root)}__start -> ${anchor(initial)};`);
  const rootNote = notes.get(root);
  if (rootNote) {
    lines.push(
      `  ${safeId(root)}__note [shape=note, fillcolor="#fffbe6", label="in any state: ${escapeDot(rootNote.join(", "))}"];`,
    );
  }
  for (const edge of edges) {
    const attrs = [`label="${escapeDot(edge.label)}"`];
    if (children(edge.to).length > 0) attrs.push(`lhead=cluster_${safeId(edge.to)}`);
    if (edge.from !== root && children(edge.from).length > 0) attrs.push(`ltail=cluster_${safeId(edge.from)}`);
    const from = edge.from === root ? `${safeId(root)}__note` : anchor(edge.from);
    if (edge.from === root && !rootNote) {
      lines.push(`  ${safeId(root)}__note [shape=note, fillcolor="#fffbe6", label="in any state"];`);
    }
    lines.push(`  ${from} -> ${anchor(edge.to)} [${attrs.join(", ")}];`);
  }
  lines.push("}");
  return `${lines.join("\n")}\n`;
}

/** Renders DOT to SVG with Graphviz compiled to wasm: pure npm, byte-identical across runs. */
export async function renderSvg(dot: string): Promise<string> {
  const { instance } = await import("@viz-js/viz");
  const viz = await instance();
  return viz.renderString(dot, { format: "svg" });
}
