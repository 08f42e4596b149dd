import { defineConfig } from "vitest/config";

// Unit tests: the client's state machine against an in-memory fake server,
// the React hook and FacePile in happy-dom. No network, fake timers.
export default defineConfig({
  test: {
    include: ["test/unit/**/*.test.{ts,tsx}"],
    reporters: ["default"],
  },
});
