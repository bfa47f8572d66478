/**
 * The metric names a PromQL expression selects, for checking dashboards and documented queries
 * against what /metrics really exposes. Not a PromQL parser: it removes what cannot be a metric name
 * (strings, label matchers, grouping clauses, range selectors, numbers and durations, Grafana
 * variables), then every identifier left that is neither a keyword nor a function call is one.
 */

/** Operators and modifiers written as words; an identifier such as `by` is never a metric. */
const KEYWORDS = new Set([
  "and",
  "or",
  "unless",
  "bool",
  "offset",
  "by",
  "without",
  "on",
  "ignoring",
  "group_left",
  "group_right",
  "inf",
  "nan",
  "atan2",
]);

/**
 * Grafana's variables replaced by values PromQL accepts, so an expression from a dashboard can also
 * be handed to `promtool check rules`: intervals become 5m, anything else a match-all regex.
 */
export function withGrafanaVariables(expr: string): string {
  return expr
    .replace(/\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}/g, "5m")
    .replace(/\$\{\w+(:\w+)?\}|\$\w+/g, ".*");
}

export function metricNamesIn(expr: string): string[] {
  const stripped = withGrafanaVariables(expr)
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, " ") // strings
    .replace(/\{[^}]*\}/g, " ") // label matchers
    .replace(/\[[^\]]*\]/g, " ") // range selectors and subqueries
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ") // grouping clauses
    .replace(/\b\d+(\.\d+)?(e[+-]?\d+)?(ms|s|m|h|d|w|y)?\b/gi, " "); // numbers and durations
  const names = new Set<string>();
  for (const match of stripped.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*/g)) {
    const name = match[0];
    const after = stripped.slice((match.index ?? 0) + name.length);
    if (/^\s*\(/.test(after) || KEYWORDS.has(name.toLowerCase())) continue;
    names.add(name);
  }
  return [...names];
}

/** The selector inside a Grafana `label_values(selector, label)` query (the whole query otherwise). */
export function selectorOfVariableQuery(query: string): string {
  const match = /^\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*$/.exec(query);
  return match ? (match[1] as string) : query;
}
