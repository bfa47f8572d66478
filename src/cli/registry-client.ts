import type { JobRecord } from "../registry/store.ts";

export class RegistryClientError extends Error {}

/** Statuses a job record ends in (a `lost` one may still be corrected by its worker's late report). */
export const FINAL_JOB_STATUSES: readonly string[] = ["completed", "failed", "cancelled", "lost", "rejected"];

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A small client of the registry's HTTP API, for the CLI and for tests. */
export class RegistryClient {
  constructor(
    private readonly baseUrl: string,
    private readonly token: string,
  ) {}

  async #request(method: string, path: string, body?: unknown): Promise<unknown> {
    let response: Response;
    try {
      response = await fetch(new URL(path, this.baseUrl), {
        method,
        headers: {
          authorization: `Bearer ${this.token}`,
          ...(body === undefined ? {} : { "content-type": "application/json" }),
        },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
    } catch (error) {
      throw new RegistryClientError(`cannot reach the registry at ${this.baseUrl}: ${(error as Error).message}`);
    }
    const text = await response.text();
    let data: { error?: string } | null = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      throw new RegistryClientError(
        `${this.baseUrl} answered ${response.status} with something that is not JSON: is it a troupe registry?`,
      );
    }
    if (response.status === 401 || response.status === 403) {
      throw new RegistryClientError(`the registry refused the token: ${data?.error ?? response.statusText}`);
    }
    if (!response.ok) throw new RegistryClientError(`registry answered ${response.status}: ${data?.error ?? text}`);
    return data;
  }

  dispatch(body: Record<string, unknown>) {
    return this.#request("POST", "/v1/jobs", body);
  }
  job(id: string) {
    return this.#request("GET", `/v1/jobs/${encodeURIComponent(id)}`);
  }
  jobs(filter: { status?: string; agent?: string } = {}) {
    const query = new URLSearchParams();
    if (filter.status) query.set("status", filter.status);
    if (filter.agent) query.set("agent", filter.agent);
    return this.#request("GET", `/v1/jobs${query.size ? `?${query}` : ""}`);
  }
  cancel(id: string) {
    return this.#request("DELETE", `/v1/jobs/${encodeURIComponent(id)}`);
  }
  workers() {
    return this.#request("GET", "/v1/workers");
  }

  /**
   * Polls the job until its record is final and returns it: every 100 ms at first, backing off to
   * once a second for long jobs. `onChange` sees each status it passes through.
   */
  async waitForFinal(id: string, onChange?: (job: JobRecord) => void): Promise<JobRecord> {
    let intervalMs = 100;
    let last: string | undefined;
    for (;;) {
      const { job } = (await this.job(id)) as { job: JobRecord };
      if (job.status !== last) {
        last = job.status;
        onChange?.(job);
      }
      if (FINAL_JOB_STATUSES.includes(job.status)) return job;
      await sleep(intervalMs);
      intervalMs = Math.min(1_000, Math.round(intervalMs * 1.5));
    }
  }
}
