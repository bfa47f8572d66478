import type { AnyStateMachine, AnyStateNode, AnyTransitionDefinition } from "xstate";
import { type DirectedGraphNode, toDirectedGraph } from "xstate/graph";

/**
 * Mermaid and Graphviz diagrams generated from machine objects, so the pictures in visualizations/
 * can never drift from the code. Pure functions of the machine: same machine, same bytes.
 *
 * What is drawn: every state (compound states as composites or clusters, parallel regions
 * separated, final states marked), the invoked actors of a state (⟨invoke src⟩), and every
 * transition that has a target, labelled with its event (`after <delay>`, `done(<actor>)`,
 * `error(<actor>)`, `always`) and its guard (`[isFull]`, `[!isFull]`, `[a && b]`, `[in draining]`,
 * `[else]` for the fallback branch). Handlers without a target (action-only, or `{}` to ignore an
 * event on purpose) are listed in one compact note per state instead of dozens of self-loops.
 *
 * `toDirectedGraph` gives the nodes and the event edges; `always` transitions are not among its
 * edges, so they are read from `stateNode.always`.
 */

interface Edge {
  from: AnyStateNode;
  to: AnyStateNode;
  label: string;
}

/**
 * A handler drawn as a line of the state's note rather than an arrow: it only runs actions, it
 * swallows the event on purpose, or it re-enters the compound state that owns it (a loop on a
 * cluster draws badly in both formats).
 */
interface Handler {
  event: string;
  guard: string | null;
  kind: "actions" | "ignored" | "re-enters";
}

interface Model {
  root: AnyStateNode;
  edges: Edge[];
  handlers: Map<AnyStateNode, Handler[]>;
}

/** Notes are wrapped at this many characters so a state with many handlers stays narrow. */
const NOTE_WIDTH = 56;

const safeId = (node: AnyStateNode) => node.id.replace(/[^A-Za-z0-9_]/g, "_");

/** `xstate.after.retry.job.backoff` → `after retry`; `xstate.done.actor.slot.*` → `done(slot.*)`. */
export function eventLabel(eventType: string): string {
  if (eventType === "") return "always";
  const after = /^xstate\.after\.([^.]+)\./.exec(eventType);
  if (after?.[1] !== undefined) return `after ${/^\d+$/.test(after[1]) ? `${after[1]}ms` : after[1]}`;
  return eventType
    .replace(/^xstate\.done\.actor\.(.*)$/, "done($1)")
    .replace(/^xstate\.error\.actor\.(.*)$/, "error($1)")
    .replace(/^xstate\.done\.state\..*$/, "done");
}

type GuardLike = {
  type?: unknown;
  guards?: unknown[];
  stateValue?: unknown;
  check?: { name?: string };
  name?: string;
};

function stateValueText(value: unknown): string {
  if (typeof value === "string") return value.startsWith("#") ? (value.split(".").at(-1) ?? value) : value;
  if (value && typeof value === "object") {
    return Object.entries(value as Record<string, unknown>)
      .map(([key, inner]) =>
        inner && typeof inner === "object" && Object.keys(inner).length === 0 ? key : `${key}.${stateValueText(inner)}`,
      )
      .join(", ");
  }
  return String(value);
}

/** Readable guard text: names, `!x` for not(), `a && b` / `a || b` for and()/or(), `in s` for stateIn(). */
export function guardName(guard: unknown): string {
  if (guard === undefined || guard === null) return "";
  if (typeof guard === "string") return guard;
  const g = guard as GuardLike;
  if (typeof guard === "object" && typeof g.type === "string") return g.type; // { type, params }
  if (g.stateValue !== undefined) return `in ${stateValueText(g.stateValue)}`;
  if (Array.isArray(g.guards)) {
    const kind = (candidate: unknown) => {
      const fn = candidate as GuardLike | null;
      const name = fn && Array.isArray(fn.guards) ? (fn.check?.name ?? fn.name ?? "") : "";
      return /not/i.test(name) ? "not" : /or/i.test(name) ? "or" : /and/i.test(name) ? "and" : "leaf";
    };
    // and()/or() operands are parenthesized when they are themselves and()/or().
    const operand = (inner: unknown) => {
      const k = kind(inner);
      return k === "and" || k === "or" ? `(${guardName(inner)})` : guardName(inner);
    };
    const k = kind(guard);
    if (k === "not") return `!${operand(g.guards[0])}`;
    return g.guards.map(operand).join(k === "or" ? " || " : " && ");
  }
  return typeof g.name === "string" && g.name !== "" && g.name !== "guard" ? g.name : "inline guard";
}

/** The guard text of one branch: `else` marks an unguarded fallback after guarded branches. */
function branchGuard(transition: AnyTransitionDefinition, branches: readonly AnyTransitionDefinition[]): string | null {
  if (transition.guard) return guardName(transition.guard);
  return branches.indexOf(transition) > 0 ? "else" : null;
}

function children(node: AnyStateNode): AnyStateNode[] {
  return Object.values(node.states ?? {}) as AnyStateNode[];
}

const isCompound = (node: AnyStateNode) => node.type !== "history" && children(node).length > 0;

function collect(machine: AnyStateMachine): Model {
  const edges: Edge[] = [];
  const handlers = new Map<AnyStateNode, Handler[]>();
  const visit = (graph: DirectedGraphNode) => {
    const node = graph.stateNode;
    const own: Handler[] = [];
    const add = (transition: AnyTransitionDefinition, event: string, branches: readonly AnyTransitionDefinition[]) => {
      const guard = branchGuard(transition, branches);
      if (!transition.target || transition.target.length === 0) {
        own.push({ event: eventLabel(event), guard, kind: transition.actions.length > 0 ? "actions" : "ignored" });
        return;
      }
      const label = `${eventLabel(event)}${guard ? ` [${guard}]` : ""}`;
      for (const to of transition.target) {
        if (to === node && isCompound(node)) own.push({ event: eventLabel(event), guard, kind: "re-enters" });
        else edges.push({ from: node, to, label });
      }
    };
    // One edge per target; a targetless transition comes back as one self-edge. Take each transition once.
    const seen = new Set<AnyTransitionDefinition>();
    for (const edge of graph.edges) {
      if (seen.has(edge.transition)) continue;
      seen.add(edge.transition);
      add(edge.transition, edge.transition.eventType, node.transitions.get(edge.transition.eventType) ?? []);
    }
    const always = node.always ?? [];
    for (const transition of always) add(transition, "", always);
    if (own.length > 0) handlers.set(node, own);
    for (const child of graph.children) visit(child);
  };
  visit(toDirectedGraph(machine));
  return { root: machine.root, edges, handlers };
}

function invokeLabels(node: AnyStateNode): string[] {
  return node.invoke.map((invoke) => {
    const src = typeof invoke.src === "string" && !invoke.src.startsWith("xstate.invoke.") ? invoke.src : invoke.id;
    return src === invoke.id ? `⟨invoke ${src}⟩` : `⟨invoke ${src} as ${invoke.id}⟩`;
  });
}

function stateName(node: AnyStateNode): string {
  if (node.type === "history") return node.history === "deep" ? "H*" : "H";
  return node.key;
}

function stateLabel(node: AnyStateNode): string {
  return [stateName(node), ...invokeLabels(node)].join(" ");
}

/** Greedy word wrap of `prefix item, item, …` into lines of at most `width` characters. */
function wrap(prefix: string, items: string[], width = NOTE_WIDTH): string[] {
  const lines: string[] = [];
  let line = prefix;
  items.forEach((item, i) => {
    const piece = i < items.length - 1 ? `${item},` : item;
    if (line !== prefix && line.length + 1 + piece.length > width) {
      lines.push(line);
      line = `  ${piece}`;
    } else {
      line = `${line} ${piece}`;
    }
  });
  lines.push(line);
  return lines;
}

/** `re-enters: e`, `actions: a, b [g1 / else]` and `ignored: c, d`, wrapped; events in document order. */
function noteLines(handlers: Handler[] | undefined): string[] {
  if (!handlers) return [];
  const kinds: Handler["kind"][] = ["re-enters", "actions", "ignored"];
  const groups = new Map(kinds.map((kind) => [kind, new Map<string, string[]>()]));
  for (const handler of handlers) {
    const group = groups.get(handler.kind) as Map<string, string[]>;
    const guards = group.get(handler.event) ?? [];
    if (handler.guard) guards.push(handler.guard);
    group.set(handler.event, guards);
  }
  const lines: string[] = [];
  for (const [kind, group] of groups) {
    if (group.size === 0) continue;
    // One item per event (`e [g1 / g2]`) when it fits on a line, else one item per guarded branch.
    const items = [...group].flatMap(([event, guards]) => {
      if (guards.length === 0) return [event];
      const joined = `${event} [${guards.join(" / ")}]`;
      return joined.length <= NOTE_WIDTH - 2 ? [joined] : guards.map((guard) => `${event} [${guard}]`);
    });
    lines.push(...wrap(`${kind}:`, items));
  }
  return lines;
}

// ---------------------------------------------------------------------------------------------
// Mermaid

/** Characters that end a Mermaid statement or label early. */
const mermaidText = (text: string) => text.replace(/:/g, "∶").replace(/;/g, ",").replace(/#/g, "♯");

/** Mermaid stateDiagram-v2. States are declared in their composites first; edges follow at top level. */
export function toMermaid(machine: AnyStateMachine): string {
  const { root, edges, handlers } = collect(machine);
  const lines = ["stateDiagram-v2", "  direction LR"];
  const note = (node: AnyStateNode, text: string[], indent: string) => {
    if (text.length === 0) return;
    lines.push(`${indent}note right of ${safeId(node)}`);
    for (const line of text) lines.push(`${indent}  ${line.trim()}`);
    lines.push(`${indent}end note`);
  };
  const body = (parent: AnyStateNode, indent: string) => {
    const kids = children(parent);
    if (parent.type === "parallel") {
      kids.forEach((kid, i) => {
        if (i > 0) lines.push(`${indent}--`);
        declare(kid, indent);
      });
      return;
    }
    for (const kid of kids) declare(kid, indent);
    const initial = parent.initial?.target[0];
    if (initial) lines.push(`${indent}[*] --> ${safeId(initial)}`);
    for (const kid of kids) if (kid.type === "final") lines.push(`${indent}${safeId(kid)} --> [*]`);
    if (parent === root)
      note(initial ?? kids[0] ?? root, withHeading("in any state:", noteLines(handlers.get(root))), indent);
  };
  const declare = (node: AnyStateNode, indent: string) => {
    const label = mermaidText(`${stateLabel(node)}${node.type === "parallel" ? " (parallel)" : ""}`);
    if (!isCompound(node)) {
      lines.push(`${indent}state "${label}" as ${safeId(node)}`);
    } else {
      lines.push(`${indent}state "${label}" as ${safeId(node)} {`);
      body(node, `${indent}  `);
      lines.push(`${indent}}`);
    }
    note(node, noteLines(handlers.get(node)), indent);
  };
  body(root, "  ");
  for (const edge of edges) {
    if (edge.from === root) continue;
    lines.push(`  ${safeId(edge.from)} --> ${safeId(edge.to)}: ${mermaidText(edge.label)}`);
  }
  // Mermaid has no node for "any state": a root-level transition becomes a note on its target.
  const fromAnywhere = new Map<AnyStateNode, string[]>();
  for (const edge of edges.filter((e) => e.from === root)) {
    fromAnywhere.set(edge.to, [...(fromAnywhere.get(edge.to) ?? []), edge.label]);
  }
  for (const [target, labels] of fromAnywhere) note(target, wrap("from any state:", labels), "  ");
  return `${lines.join("\n")}\n`;
}

function withHeading(heading: string, lines: string[]): string[] {
  return lines.length > 0 ? [heading, ...lines] : [];
}

// ---------------------------------------------------------------------------------------------
// Graphviz DOT

const html = (text: string) =>
  text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
const quoted = (text: string) => `"${text.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;

/**
 * An HTML-like label: the state name, its invokes, and its handler note in small grey type. Note
 * lines are left-aligned; a cluster's title is too, so it sits above its note in the corner.
 */
function dotLabel(node: AnyStateNode, note: string[], suffix = "", cluster = false): string {
  const br = cluster ? '<BR ALIGN="LEFT"/>' : "<BR/>";
  const invokes = invokeLabels(node);
  let label = `<B>${html(stateName(node))}</B>${html(suffix)}`;
  if (invokes.length > 0) label += `${br}<FONT POINT-SIZE="10">${html(invokes.join(" "))}</FONT>`;
  if (note.length > 0) {
    const lines = note.map((line) => `${html(line)}<BR ALIGN="LEFT"/>`).join("");
    label += `${br}<FONT POINT-SIZE="9" COLOR="#5a6270">${lines}</FONT>`;
  } else if (cluster) {
    label += br;
  }
  return `<${label}>`;
}

/**
 * Graphviz DOT. Compound states are clusters (parallel ones dashed, one sub-cluster per region);
 * an invisible point in each cluster anchors edges, clipped at the border with lhead/ltail.
 * Edges between the same two boxes are merged into one with a multi-line label.
 */
export function toDot(machine: AnyStateMachine): string {
  const { root, edges, handlers } = collect(machine);
  const rootId = safeId(root);
  const lines = [
    `digraph ${quoted(machine.id)} {`,
    `  compound=true; rankdir=LR; newrank=true; nodesep=0.3; ranksep=0.45;`,
    `  fontname="Helvetica"; fontsize=13; labelloc=t; label=<<B>${html(machine.id)}</B>>;`,
    '  node [shape=box, style="rounded,filled", fillcolor="#f5f7fa", color="#4a5160", fontname="Helvetica", fontsize=11];',
    '  edge [fontname="Helvetica", fontsize=9, color="#556070", fontcolor="#333a45", arrowsize=0.7];',
  ];
  const anchor = (node: AnyStateNode) => (isCompound(node) ? `${safeId(node)}__anchor` : safeId(node));
  const start = (id: string, indent: string, target: AnyStateNode) => {
    lines.push(`${indent}${id}__start [shape=circle, width=0.12, label="", style=filled, fillcolor="#333333"];`);
    const head = isCompound(target) ? ` [lhead=cluster_${safeId(target)}]` : "";
    lines.push(`${indent}${id}__start -> ${anchor(target)}${head};`);
  };
  const declare = (node: AnyStateNode, indent: string) => {
    const note = noteLines(handlers.get(node));
    if (!isCompound(node)) {
      const extra =
        node.type === "final"
          ? ", peripheries=2"
          : node.type === "history"
            ? ', shape=circle, width=0.3, fixedsize=true, fillcolor="#ffffff"'
            : "";
      lines.push(`${indent}${safeId(node)} [label=${dotLabel(node, note)}${extra}];`);
      return;
    }
    const parallel = node.type === "parallel";
    lines.push(`${indent}subgraph cluster_${safeId(node)} {`);
    lines.push(
      `${indent}  label=${dotLabel(node, note, parallel ? " ‖ parallel" : "", true)}; labeljust=l; style=${parallel ? '"rounded,dashed"' : "rounded"}; color="#8a93a3"; fontsize=11;`,
    );
    lines.push(`${indent}  ${anchor(node)} [shape=point, width=0.01, style=invis, label=""];`);
    for (const kid of children(node)) declare(kid, `${indent}  `);
    const initial = parallel ? undefined : node.initial?.target[0];
    if (initial) start(safeId(node), `${indent}  `, initial);
    lines.push(`${indent}}`);
  };
  for (const kid of children(root)) declare(kid, "  ");
  const initial = root.initial?.target[0];
  if (initial) start(rootId, "  ", initial);

  const rootNote = withHeading("in any state:", noteLines(handlers.get(root)));
  const fromAnywhere = edges.some((e) => e.from === root);
  if (rootNote.length > 0 || fromAnywhere) {
    const text = (rootNote.length > 0 ? rootNote : ["in any state:"])
      .map((l) => `${quoted(l).slice(1, -1)}\\l`)
      .join("");
    lines.push(`  ${rootId}__any [shape=note, style=filled, fillcolor="#fffbe6", fontsize=9, label="${text}"];`);
  }

  // Merge edges between the same two boxes: one arrow, one label line per transition.
  const merged = new Map<string, { from: string; to: string; attrs: string[]; labels: string[] }>();
  for (const edge of edges) {
    const from = edge.from === root ? `${rootId}__any` : anchor(edge.from);
    const to = anchor(edge.to);
    const attrs: string[] = [];
    // A compound state's own transition into one of its descendants starts inside its cluster.
    const intoOwnChild = edge.to.id.startsWith(`${edge.from.id}.`);
    if (edge.from !== root && isCompound(edge.from) && !intoOwnChild) attrs.push(`ltail=cluster_${safeId(edge.from)}`);
    if (isCompound(edge.to) && edge.from !== edge.to && !edge.from.id.startsWith(`${edge.to.id}.`)) {
      attrs.push(`lhead=cluster_${safeId(edge.to)}`);
    }
    const key = `${from} -> ${to} ${attrs.join(",")}`;
    const entry = merged.get(key) ?? { from, to, attrs, labels: [] };
    if (!entry.labels.includes(edge.label)) entry.labels.push(edge.label);
    merged.set(key, entry);
  }
  for (const { from, to, attrs, labels } of merged.values()) {
    const label = `label=${quoted(labels.join("\n")).replace(/\n/g, "\\n")}`;
    lines.push(`  ${from} -> ${to} [${[label, ...attrs].join(", ")}];`);
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
