/**
 * Reading Prometheus text exposition (what GET /metrics answers) in tests: samples, metric families
 * with their types, and the series names PromQL can select.
 */

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Family {
  type: string;
  labelNames: Set<string>;
}

export function parseSamples(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match) throw new Error(`not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const [, key, value] of (match[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels[key as string] = value as string;
    }
    samples.push({ name: match[1] as string, labels, value: Number(match[3]) });
  }
  return samples;
}

/** Every metric family by name, with its type and the label names its samples carry (`le` aside). */
export function parseFamilies(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  for (const [, name, type] of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    families.set(name as string, { type: type as string, labelNames: new Set() });
  }
  for (const sample of parseSamples(text)) {
    const base = families.has(sample.name) ? sample.name : sample.name.replace(/_(bucket|sum|count)$/, "");
    const family = families.get(base);
    if (!family) throw new Error(`sample ${sample.name} has no # TYPE line`);
    for (const label of Object.keys(sample.labels)) if (label !== "le") family.labelNames.add(label);
  }
  return families;
}

/**
 * The series names a PromQL expression can select in this exposition: a counter's or gauge's own
 * name (declared, even before its first sample), and a histogram's `_bucket`, `_sum` and `_count`
 * (never the histogram's bare name, which Prometheus does not store).
 */
export function selectableNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const [name, family] of parseFamilies(text)) {
    if (family.type === "histogram") for (const suffix of ["_bucket", "_sum", "_count"]) names.add(name + suffix);
    else if (family.type === "summary") for (const suffix of ["", "_sum", "_count"]) names.add(name + suffix);
    else names.add(name);
  }
  return names;
}

export const samplesOf = (text: string, name: string) => parseSamples(text).filter((s) => s.name === name);
export const sumOf = (text: string, name: string) => samplesOf(text, name).reduce((sum, s) => sum + s.value, 0);
export const seriesValue = (text: string, name: string, labels: Record<string, string>) =>
  samplesOf(text, name).find((s) => Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;

/** GET `url` and its body; throws on any answer but 200. */
export async function scrape(url: string): Promise<string> {
  const response = await fetch(url);
  const text = await response.text();
  if (response.status !== 200) throw new Error(`${url} answered ${response.status}: ${text.slice(0, 200)}`);
  return text;
}
