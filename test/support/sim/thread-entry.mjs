// A worker thread of the cluster simulation: TypeScript through tsx, then the seeds it is given.
import { register } from "tsx/esm/api";

register();
await import("./thread.ts");
