import { defineConfig } from "vitest/config";

// End-to-end tests: a real presenced (PRESENCED_BIN, or PRESENCED_URL), the
// example app in Debian's Chromium (pages, many tabs, FacePile), the Node
// gRPC client, and the package installed into fresh projects. One file at a
// time: the machine has two cores and Chromium wants both.
export default defineConfig({
  test: {
    include: ["test/e2e/**/*.test.ts"],
    globalSetup: ["test/e2e/global-setup.ts"],
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ["default"],
  },
});
