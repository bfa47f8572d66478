import { appendFileSync } from "node:fs";
import { Options, WorkerJob } from "../../src/index.ts";

/**
 * A job that returns at once, having noted when its entrypoint's first line ran: `<jobId>
 * <process.hrtime.bigint()>` appended to $TROUPE_BENCH_ENTRY_FILE. That clock is CLOCK_MONOTONIC on
 * Linux, the same in every process of the machine, so bench/job-start compares it with the
 * worker's. The line is written after the clock was read: its cost is not measured.
 */
const entryFile = process.env.TROUPE_BENCH_ENTRY_FILE;

new WorkerJob({
  entrypoint: (ctx) => {
    const enteredAt = process.hrtime.bigint();
    if (entryFile) appendFileSync(entryFile, `${ctx.jobId} ${enteredAt}\n`);
  },
  options: new Options({ register: true }),
  agentModule: import.meta.url,
}).start();
