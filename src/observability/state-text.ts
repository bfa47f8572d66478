/** Active states as the dotted paths the diagrams in visualizations/ give their states. */

/**
 * Every active state of a state value as a full dotted path from the root: one path per active
 * region, so `{ active: { lifecycle: "running", pool: "ready" } }` gives `active.lifecycle.running`
 * and `active.pool.ready`. These are the ids the diagrams give their states (`<machine>.<path>`,
 * drawn as `<machine>_<path with _>`), which is how the dashboard marks every region of a parallel
 * state.
 */
export function activeStatePaths(value: unknown, prefix = ""): string[] {
  if (typeof value === "string") return [prefix ? `${prefix}.${value}` : value];
  if (value && typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>);
    // A compound state whose value is `{}` (no active child recorded) is itself the active state.
    if (entries.length === 0) return prefix ? [prefix] : [];
    return entries.flatMap(([key, child]) =>
      child === undefined
        ? [prefix ? `${prefix}.${key}` : key]
        : activeStatePaths(child, prefix ? `${prefix}.${key}` : key),
    );
  }
  return [];
}

/** A state value as one string: its active paths, full from the root, joined with ` | `. */
export function stateText(value: unknown): string {
  return activeStatePaths(value).join(" | ");
}
