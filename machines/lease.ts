import { assign, setup } from "xstate";

export interface LeaseInput {
  /**
   * How long the job may run from now without a renewal; absent = the job holds no lease (the
   * registry never gives it to another worker, so nothing needs to stop it when contact is lost).
   */
  validForMs?: number;
}

export type LeaseEvent =
  /** The registry vouched for the job again: it may run this long from now (measured by the socket). */
  { type: "lease.renewed"; validForMs: number };

export interface LeaseContext {
  /** The validity last granted; null while the job holds no lease. */
  validForMs: number | null;
}

/**
 * A job's lease from the registry, for a job dispatched with `redispatch`: the registry gives such a
 * job to another worker once it has lost contact with this one, but only after the lease it last
 * granted has run out. So the job must stop when its lease runs out unrenewed, however this worker
 * sees its link. none (no lease) | held (a timer of the validity last granted; every renewal starts
 * it again) → lapsed (final: the job actor that invokes it stops the job at once).
 */
export const leaseMachine = setup({
  types: {
    input: {} as LeaseInput,
    context: {} as LeaseContext,
    events: {} as LeaseEvent,
  },
  delays: {
    validFor: ({ context }) => context.validForMs ?? 0,
  },
  guards: {
    notLeased: ({ context }) => context.validForMs === null,
    stillValid: ({ context }) => (context.validForMs ?? 0) > 0,
    leaseGiven: ({ event }) => event.validForMs > 0,
  },
  actions: {
    renew: assign({ validForMs: ({ event }) => event.validForMs }),
  },
}).createMachine({
  id: "lease",
  context: ({ input }) => ({ validForMs: input.validForMs ?? null }),
  initial: "start",
  states: {
    start: {
      always: [
        { guard: "notLeased", target: "none" },
        { guard: "stillValid", target: "held" },
        // Granted, but already run out by the time the job arrived: no time to run at all.
        { target: "lapsed" },
      ],
    },
    none: {
      on: {
        "lease.renewed": [{ guard: "leaseGiven", target: "held", actions: "renew" }, { target: "lapsed" }],
      },
    },
    held: {
      after: { validFor: "lapsed" },
      on: {
        // Pongs arrive in the order their pings left, so a renewal never shortens the lease.
        "lease.renewed": { guard: "leaseGiven", target: "held", reenter: true, actions: "renew" },
      },
    },
    lapsed: { type: "final" },
  },
});

export type LeaseMachine = typeof leaseMachine;
