import { fileURLToPath } from "node:url";
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

// The example app: a face pile of one room, served by `vite` (see run.mjs).
export default defineConfig({
  root: fileURLToPath(new URL(".", import.meta.url)),
  plugins: [react()],
  clearScreen: false,
  server: { host: "127.0.0.1", strictPort: true },
  preview: { host: "127.0.0.1" },
  build: { emptyOutDir: true, sourcemap: true, chunkSizeWarningLimit: 1024 },
});
