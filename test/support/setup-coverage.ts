import { afterAll } from "vitest";
import { flushCoverage } from "./coverage.ts";

afterAll(() => flushCoverage());
