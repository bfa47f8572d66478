/** What the picker needs to know about a worker that could take a job. */
export interface CandidateView {
  workerId: string;
  agentName: string;
  available: boolean;
  maxProcesses: number;
  /** Jobs the worker last reported (its own count; it includes offers it said yes to). */
  jobCount: number;
  /**
   * Jobs the registry has bound to the worker (assigned or running). Its report lags behind an
   * assignment, so the larger of the two counts is what the worker is busy with.
   */
  assigned: number;
  /** Offers picked or sent and not yet answered: capacity reserved that no count shows yet. */
  inflight: number;
  load: number;
}

/** Processes still free on the worker, after its jobs, the jobs just assigned to it and offers out. */
export const spareOf = (c: CandidateView) => c.maxProcesses - Math.max(c.jobCount, c.assigned) - c.inflight;

/**
 * Power of two choices: of the eligible workers, take two at random and keep the one with more
 * spare capacity (as a share of its size; then lower load). Spreads load almost as well as a global
 * best pick without herding every dispatch onto the same momentarily emptiest worker.
 */
export function pickCandidate(
  candidates: CandidateView[],
  agentName: string,
  isExcluded: (workerId: string) => boolean,
  random: () => number = Math.random,
): CandidateView | undefined {
  const eligible = candidates.filter(
    (c) => c.available && c.agentName === agentName && spareOf(c) > 0 && !isExcluded(c.workerId),
  );
  if (eligible.length === 0) return undefined;
  if (eligible.length === 1) return eligible[0];
  const a = eligible[Math.floor(random() * eligible.length)] as CandidateView;
  let b = eligible[Math.floor(random() * eligible.length)] as CandidateView;
  if (a === b) b = eligible[(eligible.indexOf(a) + 1) % eligible.length] as CandidateView;
  const share = (c: CandidateView) => spareOf(c) / c.maxProcesses;
  if (share(a) !== share(b)) return share(a) > share(b) ? a : b;
  return a.load <= b.load ? a : b;
}
