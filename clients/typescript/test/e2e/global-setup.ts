// Starts what every end-to-end test file shares: one presenced (unless
// PRESENCED_URL names a running one) and the example app, built by vite and
// served by `vite preview` on loopback.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { build, preview } from "vite";
import type { TestProject } from "vitest/node";
import { PACKAGE_ROOT, startPresenced } from "./harness.js";

declare module "vitest" {
  export interface ProvidedContext {
    /** presenced's base URL, e.g. http://127.0.0.1:50051 */
    presencedUrl: string;
    /** The example app's URL, ending in "/". */
    appUrl: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const cleanups: Array<() => Promise<void>> = [];
  const teardown = async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  };
  try {
    let presencedUrl = process.env.PRESENCED_URL;
    if (!presencedUrl) {
      const server = await startPresenced();
      cleanups.push(server.stop);
      presencedUrl = server.url;
    }
    const configFile = join(PACKAGE_ROOT, "example/vite.config.ts");
    const outDir = mkdtempSync(join(tmpdir(), "presenced-example-"));
    cleanups.push(async () => rmSync(outDir, { recursive: true, force: true }));
    await build({ configFile, logLevel: "warn", build: { outDir } });
    const app = await preview({
      configFile,
      logLevel: "warn",
      build: { outDir },
      // presenced.test: a name the tabs test maps to 127.0.0.1 in Chromium, for
      // an origin that is not a secure context (no Web Locks there).
      preview: { host: "127.0.0.1", port: 0, strictPort: false, allowedHosts: ["presenced.test"] },
    });
    cleanups.push(() => app.close());
    const appUrl = app.resolvedUrls?.local[0];
    if (!appUrl) throw new Error("vite preview did not say where it listens");
    project.provide("presencedUrl", presencedUrl);
    project.provide("appUrl", appUrl);
  } catch (e) {
    await teardown();
    throw e;
  }
  return teardown;
}
