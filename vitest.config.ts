import { configDefaults, defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // dist/ is the build `npm pack` makes; never tests.
    exclude: [...configDefaults.exclude, "dist/**"],
    globalSetup: ["test/support/global-setup.ts"],
    setupFiles: ["test/support/setup-coverage.ts"],
    testTimeout: 30_000,
    hookTimeout: 30_000,
  },
});
