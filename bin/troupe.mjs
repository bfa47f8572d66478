#!/usr/bin/env node
// The `troupe` command. Runs the TypeScript sources through tsx (compiled builds import dist/).
import { register } from "tsx/esm/api";

register();
const { main } = await import("../src/cli/main.ts");
await main();
