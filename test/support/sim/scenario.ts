import type { World } from "./world.ts";

type Fault = (world: World) => void;

/** Faults, each with its weight; one that finds nothing to act on is a no-op. */
const FAULTS: [number, string, Fault][] = [
  [3, "partition", partition],
  [2, "stall", stall],
  [2, "reset", reset],
  [2, "node crash", nodeCrash],
  [2, "redis outage", redisOutage],
  [1, "redis link outage", redisLinkOutage],
  [1, "redis restarted empty", redisRestartedEmpty],
  [2, "bus faults", busFaults],
  [2, "worker crash", workerCrash],
  [1, "drain", drain],
  [2, "process crash", processCrash],
];

/**
 * Schedules one seed's requests and faults over its fault phase: dispatches (some with an
 * idempotency key from a small pool, so keys repeat, some with redispatch, a few for agents no
 * worker serves), cancels of known jobs, and the faults above at random times.
 */
export function schedule(world: World): void {
  const { rng, clock, shape } = world;
  const start = clock.now();
  const at = () => start + rng.int(200, shape.faultPhaseMs);
  for (let slot = 0; slot < shape.nodes; slot++) clock.at(start, () => world.startNode(slot, false));
  for (let slot = 0; slot < shape.workers.length; slot++)
    clock.at(start + rng.int(0, 300), () => world.startWorker(slot));
  const dispatches = rng.int(2, 10);
  for (let i = 0; i < dispatches; i++) {
    const roll = rng.next();
    const agentName = roll < 0.9 ? "agent" : roll < 0.95 ? "other" : "ghost";
    const key = rng.chance(0.3) ? `key-${rng.int(1, 3)}` : undefined;
    const redispatch = rng.chance(0.4);
    clock.at(at(), () => world.dispatch({ agentName, redispatch, ...(key ? { idempotencyKey: key } : {}) }));
  }
  const cancels = rng.int(0, 4);
  for (let i = 0; i < cancels; i++) {
    clock.at(at(), () => {
      const jobId = rng.pick(world.knownJobs);
      if (jobId) world.cancel(jobId);
    });
  }
  const total = FAULTS.reduce((sum, [weight]) => sum + weight, 0);
  const faults = rng.int(0, 10);
  for (let i = 0; i < faults; i++) {
    const act = pickFault(rng.next() * total);
    clock.at(at(), () => {
      if (!world.calm) act(world);
    });
  }
  clock.at(start + shape.faultPhaseMs, () => world.becomeCalm());
}

/** The fault whose share of the total weight `roll` falls in. */
function pickFault(roll: number): Fault {
  let rest = roll;
  for (const [weight, , act] of FAULTS) {
    if (rest < weight) return act;
    rest -= weight;
  }
  return partition;
}

function partition(world: World): void {
  const { rng, clock, shape } = world;
  const worker = rng.int(0, shape.workers.length - 1);
  const node = rng.int(0, shape.nodes - 1);
  const ms = rng.int(300, 6_000);
  world.trace("fault", `partition w${worker} | node slot ${node} for ${ms} ms`);
  world.network.partition(worker, node, clock.now() + ms);
}

function stall(world: World): void {
  const { rng, clock } = world;
  const connection = rng.pick([...world.network.connections.values()]);
  if (!connection) return;
  const toNode = rng.chance(0.5);
  const ms = rng.int(200, 4_000);
  world.trace("fault", `stall ${connection.id} ${toNode ? "worker → node" : "node → worker"} for ${ms} ms`);
  world.network.stall(connection, toNode, clock.now() + ms);
}

function reset(world: World): void {
  const connection = world.rng.pick([...world.network.connections.values()]);
  if (connection) world.network.reset(connection);
}

function nodeCrash(world: World): void {
  const { rng, clock, shape } = world;
  if (!shape.clustered) return;
  const slot = rng.int(0, shape.nodes - 1);
  if (!world.nodes[slot]?.up) return;
  world.crashNode(slot, rng.chance(0.6));
  const newId = rng.chance(0.5);
  clock.after(rng.int(300, 5_000), () => {
    if (!world.calm && !world.nodes[slot]?.up) world.startNode(slot, newId);
  });
}

function redisOutage(world: World): void {
  const { rng, clock } = world;
  const ms = rng.int(200, 3_000);
  const mode = rng.chance(0.5) ? "fail" : "hang";
  world.trace("fault", `redis unavailable (${mode}) for ${ms} ms`);
  world.redis.outage = { until: clock.now() + ms, mode };
}

/** Redis goes away, and comes back without its data (no persistence, or a new instance). */
function redisRestartedEmpty(world: World): void {
  const { rng, clock, shape } = world;
  if (!shape.clustered) return;
  const ms = rng.int(200, 2_000);
  world.trace("fault", `redis restarts empty, unavailable for ${ms} ms`);
  world.redis.outage = { until: clock.now() + ms, mode: "fail" };
  world.wipeRedis();
}

function redisLinkOutage(world: World): void {
  const { rng, clock, shape } = world;
  const slot = rng.int(0, shape.nodes - 1);
  const ms = rng.int(200, 3_000);
  const mode = rng.chance(0.5) ? "fail" : "hang";
  world.trace("fault", `node slot ${slot} cut off from redis (${mode}) for ${ms} ms`);
  world.redis.linkOutages.set(slot, { until: clock.now() + ms, mode });
}

function busFaults(world: World): void {
  const { rng, clock, shape } = world;
  if (!shape.clustered) return;
  const faults = { lose: rng.next() * 0.5, duplicate: rng.next() * 0.3, maxDelayMs: rng.int(0, 2_000) };
  const ms = rng.int(500, 6_000);
  world.trace(
    "fault",
    `bus loses ${faults.lose.toFixed(2)}, doubles ${faults.duplicate.toFixed(2)}, delays ≤ ${faults.maxDelayMs} ms, for ${ms} ms`,
  );
  world.redis.busFaults = faults;
  clock.after(ms, () => {
    if (world.redis.busFaults === faults) world.redis.busFaults = undefined;
  });
}

function workerCrash(world: World): void {
  const { rng, clock } = world;
  const worker = rng.pick(world.workers.filter((w) => w?.alive));
  if (!worker) return;
  const loud = rng.chance(0.6);
  world.trace(worker.name, `crashes (${loud ? "connections reset" : "silently"})`);
  worker.crash(loud);
  clock.after(rng.int(200, 4_000), () => {
    if (!world.calm && world.workers[worker.slot] === worker) world.startWorker(worker.slot);
  });
}

function drain(world: World): void {
  const worker = world.rng.pick(world.workers.filter((w) => w?.alive));
  if (!worker) return;
  world.trace(worker.name, "drains");
  worker.actor.send({ type: "worker.drain" });
}

function processCrash(world: World): void {
  const { rng } = world;
  const worker = rng.pick(world.workers.filter((w) => w?.alive));
  const process = worker && rng.pick(worker.processes.filter((p) => !p.exited && !p.disposed));
  if (!worker || !process) return;
  world.trace(worker.name, `process ${process.slotId} crashes`);
  process.emit({ type: "proc.exit", code: null, signal: "SIGSEGV" });
}
