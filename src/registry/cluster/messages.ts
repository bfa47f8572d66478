import { z } from "zod";

/**
 * What registry nodes tell each other over Redis pub/sub. Parsed on receipt like any boundary input:
 * a node on another version or a stray publisher gets logged, never acted on half-understood.
 */

/** A worker as every node sees it: enough to pick it for a dispatch and to list it. */
export const workerView = z.object({
  workerId: z.string(),
  nodeId: z.string(),
  agentName: z.string(),
  available: z.boolean(),
  maxProcesses: z.number(),
  jobCount: z.number(),
  assigned: z.number(),
  inflight: z.number(),
  load: z.number(),
  availabilityEpoch: z.number(),
  loadThreshold: z.number().optional(),
  state: z.string(),
  status: z.string(),
  jobs: z.array(z.string()),
  /** Date.now() when its node published it. */
  at: z.number(),
});
export type WorkerView = z.infer<typeof workerView>;

export const viewMessage = z.discriminatedUnion("type", [
  z.object({ type: z.literal("view"), view: workerView }),
  z.object({ type: z.literal("gone"), nodeId: z.string(), workerId: z.string() }),
]);
export type ViewMessage = z.infer<typeof viewMessage>;

export const nodeMessage = z.discriminatedUnion("type", [
  /**
   * The job is now yours (its record names you): run its dispatch, offering `prefer` first. `tried`
   * carries the workers that already said no, with the availability epoch they said it at.
   */
  z.object({
    type: z.literal("dispatch"),
    jobId: z.string(),
    from: z.string(),
    prefer: z.string().optional(),
    tried: z.array(z.tuple([z.string(), z.number()])),
    hops: z.number().int().nonnegative(),
    room: z.object({ url: z.string(), token: z.string() }).optional(),
  }),
  /** Terminate the job you own (a DELETE that reached another node). */
  z.object({ type: z.literal("cancel"), jobId: z.string(), reason: z.string() }),
  /** Another node claimed this job (its worker reconnected there): drop your dispatch, write nothing. */
  z.object({ type: z.literal("handover"), jobId: z.string(), to: z.string() }),
  /** Its owner node died and its worker is yours: adopt the job as running there. */
  z.object({ type: z.literal("adopt"), jobId: z.string(), workerId: z.string(), from: z.string() }),
]);
export type NodeMessage = z.infer<typeof nodeMessage>;
