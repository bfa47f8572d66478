export class RegistryClientError extends Error {}

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
    const data = text ? JSON.parse(text) : null;
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
}
