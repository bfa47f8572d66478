import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  api,
  closeRegistries,
  dispatch,
  startInProcessWorker,
  startRegistry,
  stopInProcessWorkers,
  type TestRegistry,
  tempDir,
  waitAvailableAgent,
} from "../registry/helpers.ts";
import { scrape, selectableNames } from "../support/exposition.ts";
import { metricNamesIn, selectorOfVariableQuery, withGrafanaVariables } from "../support/promql.ts";

/**
 * docs/grafana-dashboard.json and the PromQL of docs/operating.md only name metrics a real registry
 * and a real worker expose (a renamed metric breaks its panel silently otherwise), the dashboard is
 * importable as it is, and every expression is valid PromQL to promtool.
 */

const DASHBOARD = fileURLToPath(new URL("../../docs/grafana-dashboard.json", import.meta.url));
const OPERATING = fileURLToPath(new URL("../../docs/operating.md", import.meta.url));

/** Grafana replaces this with the data source picked on import (the `__inputs` entry of that name). */
// biome-ignore lint/suspicious/noTemplateCurlyInString: Grafana's placeholder, not a template literal.
const DATASOURCE_INPUT = "${DS_PROMETHEUS}";

/** Series Prometheus makes itself for every scrape target, never in an exposition. */
const PROMETHEUS_SERIES = new Set(["up", "scrape_duration_seconds", "scrape_samples_scraped"]);

const promtoolAvailable = spawnSync("promtool", ["--version"], { encoding: "utf8" }).status === 0;
if (!promtoolAvailable) {
  if (process.env.CI === "true") throw new Error("no promtool: .ci/run should have installed it");
  console.warn("promtool checks skipped: no promtool (apt-get install prometheus, or see .ci/run)");
}

interface Target {
  expr?: string;
}
interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: { type?: string; uid?: string };
  gridPos?: { h: number; w: number; x: number; y: number };
  targets?: Target[];
  panels?: Panel[];
}
interface Dashboard {
  __inputs: { name: string; type: string; pluginId: string }[];
  title: string;
  uid: string;
  schemaVersion: number;
  panels: Panel[];
  templating: { list: { name: string; type: string; query: string | { query: string } }[] };
}

const dashboard = JSON.parse(readFileSync(DASHBOARD, "utf8")) as Dashboard;
const allPanels = (panels: Panel[]): Panel[] => panels.flatMap((panel) => [panel, ...allPanels(panel.panels ?? [])]);

/** Every PromQL expression of the dashboard, with where it is (for failure messages). */
function dashboardExpressions(): { where: string; expr: string }[] {
  const found: { where: string; expr: string }[] = [];
  for (const panel of allPanels(dashboard.panels)) {
    for (const target of panel.targets ?? []) {
      if (target.expr) found.push({ where: `panel "${panel.title}"`, expr: target.expr });
    }
  }
  for (const variable of dashboard.templating.list) {
    if (variable.type !== "query") continue;
    const query = typeof variable.query === "string" ? variable.query : variable.query.query;
    found.push({ where: `variable ${variable.name}`, expr: selectorOfVariableQuery(query) });
  }
  return found;
}

/** The Prometheus rules file docs/operating.md gives (its ```yaml block that starts with `groups:`). */
function operatingRules(): string {
  const text = readFileSync(OPERATING, "utf8");
  const block = [...text.matchAll(/```yaml\n([\s\S]*?)```/g)]
    .map((m) => m[1] as string)
    .find((b) => /^groups:/.test(b));
  if (!block) throw new Error("docs/operating.md has no rules file (a ```yaml block starting with groups:)");
  return block;
}

/**
 * The autoscalers' queries in docs/operating.md's ```yaml blocks: KEDA's `query:` and
 * prometheus-adapter's `metricsQuery:`, folded scalars (`>-`) joined into one line. The adapter's
 * templates become what it would put there: `<<.Series>>` the metric its rule's `seriesQuery`
 * selects, `<<.LabelMatchers>>` an agent's matcher, `<<.GroupBy>>` the agent label.
 */
function autoscalerExpressions(markdown: string): { where: string; expr: string }[] {
  const found: { where: string; expr: string }[] = [];
  for (const [, block] of markdown.matchAll(/```yaml\n([\s\S]*?)```/g)) {
    const lines = (block as string).split("\n");
    let series = "";
    lines.forEach((line, i) => {
      const seriesQuery = /^\s*(?:-\s+)?seriesQuery: '(.+)'$/.exec(line);
      if (seriesQuery) series = metricNamesIn(seriesQuery[1] as string)[0] ?? "";
      const start = /^(\s*(?:-\s+)?)(query|metricsQuery): (>-?|\|-?)?\s*(.*)$/.exec(line);
      if (!start) return;
      const [, indent = "", key = "", folded, inline = ""] = start;
      const parts = folded ? [] : [inline];
      for (const next of lines.slice(i + 1)) {
        if (!folded || next.trim() === "" || next.length - next.trimStart().length <= indent.length) break;
        if (!next.trim().startsWith("#")) parts.push(next.trim());
      }
      const expr = parts
        .join(" ")
        .replace(/<<\.Series>>/g, series)
        .replace(/<<\.LabelMatchers>>/g, 'agent="support-agent"')
        .replace(/<<\.GroupBy>>/g, "agent");
      found.push({ where: `operating.md ${key}`, expr });
    });
  }
  return found;
}

/** The PromQL of docs/operating.md: its ```promql blocks (one expression a line) and its rules' `expr:`. */
function operatingExpressions(): { where: string; expr: string }[] {
  const text = readFileSync(OPERATING, "utf8");
  const found: { where: string; expr: string }[] = [];
  for (const [, block] of text.matchAll(/```promql\n([\s\S]*?)```/g)) {
    for (const line of (block as string).split("\n")) {
      if (line.trim() && !line.trim().startsWith("#")) found.push({ where: "operating.md promql", expr: line });
    }
  }
  for (const [, expr] of operatingRules().matchAll(/^\s+expr: (.+)$/gm)) {
    found.push({ where: "operating.md rules", expr: expr as string });
  }
  return [...found, ...autoscalerExpressions(text)];
}

/** promtool's verdict on rules: the expressions as recording rules, or a rules file as it is. */
function promtoolCheckRules(rulesFile: string, dir: string): { status: number | null; output: string } {
  const path = join(dir, `rules-${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(path, rulesFile);
  const result = spawnSync("promtool", ["check", "rules", path], { encoding: "utf8" });
  return { status: result.status, output: `${result.stdout}${result.stderr}`.trim() };
}

describe("extracting metric names from PromQL", () => {
  it("skips functions, matchers, grouping, ranges, numbers and keywords; keeps every metric", () => {
    expect(
      metricNamesIn(
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{agent=~"$agent",x="by(y)"}[$__rate_interval])))',
      ),
    ).toEqual(["a_bucket"]);
    expect(
      metricNamesIn("sum(rate(b_total[5m])) by (agent) / ignoring(x) group_left c > bool 0.5 or d offset 1h"),
    ).toEqual(["b_total", "c", "d"]);
    expect(metricNamesIn("topk(10, e) unless on(job) up == 0")).toEqual(["e", "up"]);
    expect(selectorOfVariableQuery("label_values(f{job='x'}, agent)")).toBe("f{job='x'}");
    expect(withGrafanaVariables('g{a=~"$agent"}[$__rate_interval]')).toBe('g{a=~".*"}[5m]');
  });

  it("finds KEDA's and prometheus-adapter's queries in YAML, folded, with the adapter's templates filled in", () => {
    const markdown = [
      "```yaml",
      "triggers:",
      "  - metadata:",
      "      query: >-",
      '        sum(h{agent="x"})',
      "        + 4",
      "      threshold: '4'",
      "rules:",
      "  - seriesQuery: 'i{agent!=\"\"}'",
      "    metricsQuery: sum by (<<.GroupBy>>) (<<.Series>>{<<.LabelMatchers>>})",
      "```",
    ].join("\n");
    expect(autoscalerExpressions(markdown)).toEqual([
      { where: "operating.md query", expr: 'sum(h{agent="x"}) + 4' },
      { where: "operating.md metricsQuery", expr: 'sum by (agent) (i{agent="support-agent"})' },
    ]);
  });

  it("docs/operating.md gives both autoscalers' queries", () => {
    const wheres = autoscalerExpressions(readFileSync(OPERATING, "utf8")).map((found) => found.where);
    expect(wheres).toEqual(expect.arrayContaining(["operating.md query", "operating.md metricsQuery"]));
  });
});

describe("the Grafana dashboard and the PromQL of docs/operating.md against a real registry and worker", () => {
  let r: TestRegistry;
  const files = tempDir();
  let exposed = new Set<string>();

  beforeAll(async () => {
    // A short dispatch timeout: a dispatch for an agent nobody serves is rejected within the test.
    r = await startRegistry({ dispatchTimeoutMs: 1_000 });
    const worker = await startInProcessWorker(r.url, {
      agentId: "dashboard-fixture",
      maxProcesses: 2,
      numIdleProcesses: 1,
      memorySampleInterval: 0.1,
      launchTimeout: 60,
    });
    await waitAvailableAgent(r, "dashboard-fixture", 30_000);
    const completes = await dispatch(r, { agent_name: "dashboard-fixture", metadata: { holdMs: 30 } });
    const cancelled = await dispatch(r, { agent_name: "dashboard-fixture", metadata: { hang: true } });
    const rejected = await dispatch(r, { agent_name: "dashboard-nobody" });
    await r.store.until(cancelled.id, (record) => record.status === "running", 60_000, "running");
    expect((await api(r.url, r.dispatcher, "DELETE", `/v1/jobs/${cancelled.id}`)).status).toBe(202);
    for (const job of [completes, cancelled, rejected]) await r.store.untilFinal(job.id, 60_000);
    const [registryText, workerText] = await Promise.all([
      scrape(`${r.url}/metrics`),
      scrape(`http://127.0.0.1:${worker.port}/metrics`),
    ]);
    exposed = new Set([...selectableNames(registryText), ...selectableNames(workerText)]);
  }, 120_000);

  afterAll(async () => {
    await stopInProcessWorkers();
    await closeRegistries();
    files.remove();
  });

  it("the dashboard is importable: a Prometheus datasource input, unique panel ids, every query on it", () => {
    expect(dashboard.__inputs).toContainEqual(
      expect.objectContaining({ name: "DS_PROMETHEUS", type: "datasource", pluginId: "prometheus" }),
    );
    expect(dashboard.title).toBeTruthy();
    expect(dashboard.uid).toMatch(/^[\w-]{1,40}$/);
    expect(dashboard.schemaVersion).toBeGreaterThan(30);
    const panels = allPanels(dashboard.panels);
    expect(new Set(panels.map((p) => p.id)).size).toBe(panels.length);
    for (const panel of panels) {
      expect(panel.gridPos, panel.title).toBeDefined();
      if (panel.type === "row") continue;
      expect(panel.datasource, panel.title).toEqual({ type: "prometheus", uid: DATASOURCE_INPUT });
      expect(panel.targets?.length, panel.title).toBeGreaterThan(0);
    }
  });

  it("every metric a dashboard query or an operating.md query names is exposed", () => {
    const expressions = [...dashboardExpressions(), ...operatingExpressions()];
    expect(expressions.length).toBeGreaterThan(20);
    const unknown: string[] = [];
    for (const { where, expr } of expressions) {
      const names = metricNamesIn(expr);
      expect(names.length, `${where}: no metric in ${expr}`).toBeGreaterThan(0);
      for (const name of names) {
        if (!exposed.has(name) && !PROMETHEUS_SERIES.has(name)) unknown.push(`${name} (${where}: ${expr})`);
      }
    }
    expect(unknown).toEqual([]);
  });

  it("the autoscaling signals the dashboard and the docs lean on are all there", () => {
    for (const name of [
      "troupe_registry_free_slots",
      "troupe_registry_dispatches_waiting",
      "troupe_registry_workers",
      "troupe_registry_dispatches_rejected_total",
      "troupe_registry_job_duration_seconds_bucket",
      "troupe_job_start_latency_seconds_bucket",
      "troupe_process_kills_total",
      "troupe_job_memory_bytes",
    ]) {
      expect(exposed, name).toContain(name);
    }
  });

  it.skipIf(!promtoolAvailable)("promtool accepts every dashboard and operating.md query and its rules file", () => {
    const asRules = [
      "groups:",
      "  - name: dashboard",
      "    rules:",
      ...[...dashboardExpressions(), ...operatingExpressions()].flatMap(({ expr }, i) => [
        `      - record: dashboard:query_${i}`,
        `        expr: ${JSON.stringify(withGrafanaVariables(expr))}`,
      ]),
    ].join("\n");
    const queries = promtoolCheckRules(`${asRules}\n`, files.dir);
    expect(queries.status, queries.output).toBe(0);
    const rules = promtoolCheckRules(operatingRules(), files.dir);
    expect(rules.status, rules.output).toBe(0);
  });
});
