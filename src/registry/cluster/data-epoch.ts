/**
 * The cluster's epoch key as this node last read it (every presence renewal sets it if missing and
 * reads it): a value that changed means Redis lost its data (it restarted empty, or it is another
 * Redis), and what this node holds in memory must be written back. A recovery that failed is tried
 * again on the next renewal; one that finds the epoch changed again meanwhile runs once more.
 * Sans-I/O: the cluster and its simulation hand it what they read.
 */
export class DataEpoch {
  #seen: string | undefined;
  #latest: string | undefined;
  #recovering = false;

  constructor(
    private readonly recover: () => Promise<void>,
    private readonly failed: (error: Error) => void,
  ) {}

  observe(epoch: string): void {
    this.#latest = epoch;
    if (this.#seen === undefined) this.#seen = epoch;
    if (epoch !== this.#seen && !this.#recovering) this.#recoverFor(epoch);
  }

  #recoverFor(epoch: string): void {
    this.#recovering = true;
    this.recover().then(
      () => {
        this.#seen = epoch;
        this.#recovering = false;
        if (this.#latest !== undefined && this.#latest !== epoch) this.#recoverFor(this.#latest);
      },
      (error: Error) => {
        this.#recovering = false;
        this.failed(error);
      },
    );
  }
}
