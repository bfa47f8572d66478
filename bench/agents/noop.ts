import { Options, WorkerJob } from "../../src/index.ts";

/** A job that returns at once: what is measured is the machinery around it. */
new WorkerJob({ entrypoint: async () => {}, options: new Options({ register: true }) }).start();
