import WebSocket from "ws";
import { PROTOCOL_VERSION } from "../../src/protocol/registry.ts";

/**
 * A well-behaved worker over a real WebSocket: registers, says it is available, accepts every offer,
 * runs each assigned job for `jobMs` (reporting running, then completed) and answers pings. It counts
 * what it was given, so a test can tell that dispatching kept working while the registry was fuzzed.
 */
export class GoodWorker {
  workerId = "";
  readonly offered = new Set<string>();
  readonly assigned = new Set<string>();
  readonly completed = new Set<string>();
  readonly problems: string[] = [];
  closed: { code: number; reason: string } | undefined;
  #running = 0;
  readonly #timers = new Set<NodeJS.Timeout>();

  private constructor(
    readonly ws: WebSocket,
    readonly agentName: string,
    readonly maxProcesses: number,
    readonly jobMs: number,
  ) {
    ws.on("message", (data) => this.#onMessage(data.toString()));
    ws.on("close", (code, reason) => {
      this.closed = { code, reason: reason.toString() };
    });
    ws.on("error", (error) => this.problems.push(`socket error: ${error.message}`));
  }

  static async start(
    registryUrl: string,
    token: string,
    { agentName, maxProcesses = 8, jobMs = 20 }: { agentName: string; maxProcesses?: number; jobMs?: number },
  ): Promise<GoodWorker> {
    const ws = new WebSocket(`${registryUrl.replace(/^http/, "ws")}/agent`, {
      headers: { authorization: `Bearer ${token}` },
      perMessageDeflate: false,
    });
    await new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("error", reject);
      ws.once("unexpected-response", (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
    });
    const worker = new GoodWorker(ws, agentName, maxProcesses, jobMs);
    const registered = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("the good worker was not registered in time")), 10_000);
      const check = (data: WebSocket.RawData) => {
        const frame = JSON.parse(data.toString()) as { type: string; success?: boolean; worker_id?: string };
        if (frame.type !== "register") return;
        ws.off("message", check);
        clearTimeout(timer);
        if (frame.success && frame.worker_id) resolve();
        else reject(new Error(`registration refused: ${JSON.stringify(frame)}`));
      };
      ws.on("message", check);
    });
    worker.#send({
      type: "register",
      protocol_version: PROTOCOL_VERSION,
      worker_id: "",
      agent_name: agentName,
      capabilities: [],
      load_threshold: 1,
      max_processes: maxProcesses,
      jobs: [],
    });
    await registered;
    return worker;
  }

  get open(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  close(): void {
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
    this.ws.terminate();
  }

  #send(message: Record<string, unknown>): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  #status(): void {
    this.#send({
      type: "status_update",
      worker_id: this.workerId,
      status: this.#running >= this.maxProcesses ? "full" : "available",
      load: 0,
      job_count: this.#running,
    });
  }

  #onMessage(text: string): void {
    let frame: { type?: string; [key: string]: unknown };
    try {
      frame = JSON.parse(text) as typeof frame;
    } catch {
      this.problems.push(`registry sent a frame that is not JSON: ${text.slice(0, 100)}`);
      return;
    }
    switch (frame.type) {
      case "register":
        this.workerId = String(frame.worker_id ?? "");
        this.#status();
        break;
      case "availability_request": {
        const jobId = String(frame.job_id);
        this.offered.add(jobId);
        this.#send({ type: "availability_response", job_id: jobId, available: true });
        break;
      }
      case "job_assignment": {
        const jobId = String(frame.job_id);
        this.assigned.add(jobId);
        this.#running++;
        this.#send({ type: "job_update", job_id: jobId, status: "running" });
        this.#status();
        const timer = setTimeout(() => {
          this.#timers.delete(timer);
          this.#running--;
          this.completed.add(jobId);
          this.#send({ type: "job_update", job_id: jobId, status: "completed" });
          this.#status();
        }, this.jobMs);
        this.#timers.add(timer);
        break;
      }
      case "job_termination":
        this.problems.push(`job ${String(frame.job_id)} terminated: ${String(frame.reason)}`);
        break;
      case "ping":
        this.#send({ type: "pong", timestamp: frame.timestamp });
        break;
      case "error":
        this.problems.push(`error frame: ${text.slice(0, 200)}`);
        break;
      default:
        break;
    }
  }
}
