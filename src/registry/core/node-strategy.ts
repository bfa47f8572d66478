import type { TriedWorkers } from "../../../machines/registry/dispatch.ts";
import type { NodeMessage, WorkerView } from "../cluster/messages.ts";
import { type JobRecord, writeBack } from "../store.ts";
import { HAND_OFF_RECOVERY_GRACE_MS, HandOffWatch } from "./hand-off-watch.ts";
import type { NodeBus, RegistryDeps, RoomAssignment } from "./ports.ts";

/**
 * What differs between one registry node and a node of a cluster, and nothing else: who owns a
 * record, how an assignment is made safe, and how a job reaches a worker on another node. The
 * dispatcher, the directory and reconcile run the same code either way.
 */
export interface NodeStrategy {
  /** This node's id in records (absent on a single node). */
  readonly nodeId: string | undefined;
  /** The record is this node's to dispatch (a single node owns everything). */
  owns(record: JobRecord): boolean;
  /**
   * Sends the assignment once it is safe: at once on one node; in a cluster only if the record
   * still names this node when it says "assigned" (another node that took this one for dead must
   * not see the job started twice). Resolves false when the job is no longer this node's.
   */
  fenceAssignment(record: JobRecord, workerId: string): Promise<boolean>;
  /**
   * The job goes to the node of the worker picked for it. Rejects when the hand-off could not be
   * made (Redis unavailable): the job is still this node's.
   */
  forward(record: JobRecord, view: WorkerView, tried: TriedWorkers, hops: number, room?: RoomAssignment): Promise<void>;
  /** A worker's capacity or state changed. */
  publishView(view: WorkerView): void;
  publishGone(workerId: string): void;
  /** This node took a job another node held: that node lets go (it may only have been slow). */
  tookOver(previousOwner: string | undefined, jobId: string): void;
  /** Tells the owner of a job to cancel it; true when the owner is alive to do it. */
  cancelElsewhere(record: JobRecord, reason: string): boolean;
  /**
   * This node vouches for the leases of the jobs it started since then (+∞: none now). A cluster
   * node whose presence key may have lapsed may have been reaped, and a reaper counts the leases of
   * the jobs it claimed from then on; so a node vouches only while its key surely stands, and only
   * for jobs it started since it last could not rule a break out. One node vouches for all.
   */
  vouchesSince(): number;
  /**
   * Redis lost its data (it restarted empty): a hand-off this node made lately, not known to have
   * been taken, whose record no node wrote back, is recorded `lost` with why.
   */
  recoverHandOffs(): Promise<void>;
  /** Forgets the hand-offs whose node has started their dispatch (see HandOffWatch). */
  pruneHandOffs(): Promise<void>;
}

export function singleNode(): NodeStrategy {
  return {
    nodeId: undefined,
    owns: () => true,
    fenceAssignment: async () => true,
    forward: async () => {
      throw new Error("a single registry node has no other node to forward to");
    },
    publishView: () => {},
    publishGone: () => {},
    tookOver: () => {},
    cancelElsewhere: () => false,
    vouchesSince: () => Number.NEGATIVE_INFINITY,
    recoverHandOffs: async () => {},
    pruneHandOffs: async () => {},
  };
}

export function clusterNode(bus: NodeBus, deps: Pick<RegistryDeps, "store" | "logger" | "clock">): NodeStrategy {
  const nodeId = bus.nodeId;
  const handOffs = new HandOffWatch(() => deps.clock.now());
  return {
    nodeId,
    owns: (record) => !record.node || record.node === nodeId,
    async fenceAssignment(record, workerId) {
      const assigned = { status: "assigned" as const, workerId };
      let after = await deps.store.update(record.id, assigned, nodeId);
      if (!after) {
        // Redis lost the record (nobody can have claimed a record that is not there): written back first.
        await writeBack(deps.store, { ...record, status: "pending", node: nodeId, updatedAt: deps.clock.now() });
        after = await deps.store.update(record.id, assigned, nodeId);
      }
      return after?.node === nodeId && after.status === "assigned" && after.workerId === workerId;
    },
    async forward(record, view, tried, hops, room) {
      // Counted against it here until its node publishes its own count, so a burst spreads out.
      view.inflight++;
      const message: NodeMessage = {
        type: "dispatch",
        jobId: record.id,
        from: nodeId,
        prefer: view.workerId,
        tried: Object.entries(tried),
        hops,
        ...(room ? { room } : {}),
      };
      const claimed = await bus.handOff(record.id, view.nodeId, message);
      if (claimed) handOffs.sent(claimed, view.nodeId);
      // Refused because Redis lost the record (not because another node has it): still this node's.
      else if (!(await deps.store.get(record.id))) throw new Error("its record is missing (Redis lost its data)");
    },
    publishView: (view) => bus.publishView(view),
    publishGone: (workerId) => bus.publishGone(workerId),
    tookOver(previousOwner, jobId) {
      // Sent even to a node believed dead: one that was only slow must learn the job is no longer its.
      if (previousOwner && previousOwner !== nodeId) bus.send(previousOwner, { type: "handover", jobId, to: nodeId });
    },
    cancelElsewhere(record, reason) {
      const owner = record.node;
      if (!owner || owner === nodeId) return false;
      // Told even when believed dead: a node that was only slow stops its dispatch instead of waiting out the deadline.
      bus.send(owner, { type: "cancel", jobId: record.id, reason });
      return bus.isLive(owner);
    },
    vouchesSince: () => bus.presenceHeldSince(),
    pruneHandOffs: () => handOffs.dropTaken((jobId) => deps.store.get(jobId)),
    async recoverHandOffs() {
      // The nodes they went to write back what they hold first (each on its next presence renewal).
      const graceMs = Math.max(HAND_OFF_RECOVERY_GRACE_MS, 3 * bus.heartbeatMs);
      await new Promise<void>((resolve) => deps.clock.setTimeout(() => resolve(), graceMs));
      for (const { record, to } of handOffs.recent()) {
        if (await deps.store.get(record.id)) continue;
        // Not known to have been taken, and no longer known to anyone: whether it ran is unknowable.
        // It ends `lost` (a worker's own final report corrects that), never runs a second time.
        const reason = `Redis lost its record while it was handed to ${to}; whether it ran is unknown`;
        await writeBack(deps.store, { ...record, status: "pending", node: nodeId, updatedAt: deps.clock.now() });
        await deps.store.update(record.id, { status: "lost", reason }, nodeId);
        deps.logger.warn({ jobId: record.id, to }, "Redis lost a job handed to another node: recorded lost");
      }
    },
  };
}
