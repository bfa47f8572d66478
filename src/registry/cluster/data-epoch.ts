/**
 * The cluster's epoch key as this node last read it (every presence renewal sets it if missing and
 * reads it): a value that changed means Redis lost its data (it restarted empty, or it is another
 * Redis), and what this node holds in memory must be written back. Until that has worked, every
 * renewal tries again. Sans-I/O: the cluster and its simulation hand it what they read.
 */
export class DataEpoch {
  #seen: string | undefined;
  #recovering = false;

  constructor(
    private readonly recover: () => Promise<void>,
    private readonly failed: (error: Error) => void,
  ) {}

  observe(epoch: string): void {
    if (this.#seen === undefined) {
      this.#seen = epoch;
      return;
    }
    if (epoch === this.#seen || this.#recovering) return;
    this.#recovering = true;
    this.recover()
      .then(
        () => {
          this.#seen = epoch;
        },
        (error: Error) => this.failed(error),
      )
      .finally(() => {
        this.#recovering = false;
      });
  }
}
