/**
 * Milliseconds on a monotonic clock, as `performance.now()` reads them but from another origin. What
 * a job process runs at boot uses this one: the first touch of the `performance` global loads Node's
 * perf_hooks (eight internal modules, about 2 ms of a cold start).
 */
export function monotonicMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}
