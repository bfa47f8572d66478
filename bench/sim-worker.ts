import WebSocket from "ws";
import { PROTOCOL_VERSION } from "../src/protocol/registry.ts";

export interface SimWorkerOptions {
  url: string;
  token: string;
  agentName: string;
  maxProcesses: number;
  /** Milliseconds a job "runs" before it completes; -1 = never completes. */
  jobMs: number;
  /** Called when a job_assignment arrives, before the worker answers it. */
  onAssignment?: (jobId: string) => void;
}

/**
 * A lightweight simulated worker speaking the registry protocol: registers, answers pings, accepts
 * every offer it has room for, reports running at once and completed after jobMs.
 */
export class SimWorker {
  ws: WebSocket;
  running = 0;
  completed = 0;
  ready: Promise<void>;
  #workerId = "";

  constructor(private readonly options: SimWorkerOptions) {
    const endpoint = `${options.url.replace(/^http/, "ws")}/agent`;
    this.ws = new WebSocket(endpoint, {
      headers: { authorization: `Bearer ${options.token}` },
      perMessageDeflate: false,
    });
    this.ready = new Promise((resolve, reject) => {
      this.ws.once("error", reject);
      this.ws.on("message", (data) => {
        const message = JSON.parse(data.toString());
        if (message.type === "register" && message.success) {
          this.#workerId = message.worker_id;
          this.#status();
          resolve();
        }
        this.#onMessage(message);
      });
      this.ws.once("open", () =>
        this.#send({
          type: "register",
          protocol_version: PROTOCOL_VERSION,
          worker_id: "",
          agent_name: options.agentName,
          capabilities: ["room"],
          load_threshold: 1,
          max_processes: options.maxProcesses,
          jobs: [],
        }),
      );
    });
  }

  #send(message: unknown) {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  #status() {
    this.#send({
      type: "status_update",
      worker_id: this.#workerId,
      agent_name: this.options.agentName,
      status: this.running >= this.options.maxProcesses ? "full" : "available",
      load: this.running / this.options.maxProcesses,
      job_count: this.running,
    });
  }

  #onMessage(message: { type: string; job_id?: string; timestamp?: number }) {
    switch (message.type) {
      case "ping":
        this.#send({ type: "pong", timestamp: message.timestamp });
        break;
      case "availability_request": {
        const available = this.running < this.options.maxProcesses;
        if (available) this.running++;
        this.#send({ type: "availability_response", job_id: message.job_id, available });
        if (available) this.#status();
        break;
      }
      case "job_assignment":
        this.options.onAssignment?.(message.job_id as string);
        this.#send({ type: "job_update", job_id: message.job_id, status: "running" });
        if (this.options.jobMs >= 0) {
          setTimeout(() => {
            this.running--;
            this.completed++;
            this.#send({ type: "job_update", job_id: message.job_id, status: "completed" });
            this.#status();
          }, this.options.jobMs);
        }
        break;
      case "job_termination":
        this.running--;
        this.#send({ type: "job_update", job_id: message.job_id, status: "cancelled" });
        this.#status();
        break;
    }
  }

  heartbeat() {
    this.#send({ type: "ping", timestamp: Date.now() });
  }

  close() {
    this.ws.terminate();
  }
}
