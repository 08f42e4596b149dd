// The package as an app gets it: installed from its folder (npm builds it on
// `prepare`) and from the tarball `npm pack` makes, into fresh projects;
// its entry points import by their public names, its types check, and its
// React hook and FacePile run against the real presenced.
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, describe, expect, inject, it } from "vitest";
import { PACKAGE_ROOT } from "./harness.js";

const run = promisify(execFile);
const presencedUrl = inject("presencedUrl");
const scratch = mkdtempSync(join(tmpdir(), "presenced-pack-"));
const devPackage = JSON.parse(readFileSync(join(PACKAGE_ROOT, "package.json"), "utf8")) as {
  version: string;
  devDependencies: Record<string, string>;
};

afterAll(() => rmSync(scratch, { recursive: true, force: true }));

async function npm(cwd: string, ...args: string[]): Promise<string> {
  const { stdout } = await run("npm", [...args, "--no-audit", "--no-fund", "--loglevel=error"], {
    cwd,
    maxBuffer: 16 << 20,
    env: { ...process.env, npm_config_update_notifier: "false" },
  });
  return stdout;
}

/** An empty ESM project in the scratch directory. */
function freshProject(name: string): string {
  const dir = join(scratch, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "package.json"), JSON.stringify({ name, private: true, type: "module" }));
  return dir;
}

const IMPORT_ALL = `
for (const entry of ["@presenced/client", "@presenced/client/react", "@presenced/client/node", "@presenced/client/gen"]) {
  const m = await import(entry);
  if (Object.keys(m).length === 0) throw new Error(entry + " exports nothing");
}
const { PresenceClient } = await import("@presenced/client");
const { usePresence, FacePile } = await import("@presenced/client/react");
console.log(JSON.stringify([typeof PresenceClient, typeof usePresence, typeof FacePile]));
`;

/** A React app in happy-dom: usePresence joins, FacePile renders, unmount leaves. */
const HOOK_APP = `
import { Window } from "happy-dom";
const window = new Window({ url: "http://127.0.0.1/" });
Object.assign(globalThis, { window, document: window.document, navigator: window.navigator, HTMLElement: window.HTMLElement });
globalThis.IS_REACT_ACT_ENVIRONMENT = false;
const React = await import("react");
const { createRoot } = await import("react-dom/client");
const { usePresence, FacePile } = await import("@presenced/client/react");
const { createNodeTransport, createNodePresenceServiceClient } = await import("@presenced/client/node");
const [url, room] = process.argv.slice(2);
const backend = createNodePresenceServiceClient(url);
function App() {
  const users = usePresence({ transport: createNodeTransport(url), environment: null, roomId: room, userId: "ada", intervalMs: 1000 });
  return React.createElement(FacePile, { users });
}
const container = document.createElement("div");
document.body.append(container);
const root = createRoot(container);
root.render(React.createElement(App));
const shown = () => [...container.querySelectorAll(".presenced-avatar")].map((el) => el.getAttribute("aria-label") + ":" + el.getAttribute("data-online"));
const until = async (test) => { for (let i = 0; i < 100 && !test(); i++) await new Promise((r) => setTimeout(r, 50)); return test(); };
await until(() => shown().length === 1);
const before = shown();
await backend.heartbeat({ roomId: room, userId: "grace", sessionId: "s-grace", interval: { seconds: 30n } });
await until(() => shown().length === 2);
const after = shown();
const styled = document.getElementById("presenced-facepile-styles") !== null;
root.unmount();
await new Promise((r) => setTimeout(r, 500));
const { snapshot } = await backend.listRoom({ roomId: room });
console.log(JSON.stringify({ before, after, styled, left: snapshot.users.map((u) => u.userId + ":" + u.online) }));
await window.happyDOM.close();
process.exit(0);
`;

const TYPES_CHECK = `
import { PresenceClient, type PresenceOptions } from "@presenced/client";
import { usePresence, FacePile, type FacePileProps } from "@presenced/client/react";
import { createNodeTransport } from "@presenced/client/node";
const options: PresenceOptions = { baseUrl: "http://127.0.0.1:1", roomId: "r", userId: "u", shareAcrossTabs: true, watch: "poll" };
const props: FacePileProps = { users: undefined, maxOffline: 2, overflow: "online", theme: "dark" };
export const used = [PresenceClient, usePresence, FacePile, createNodeTransport, options, props];
// @ts-expect-error: not an option
export const wrong: PresenceOptions = { baseUrl: "x", roomId: "r", userId: "u", nonsense: 1 };
`;

describe("the package as a dependency", () => {
  it("npm install <folder> builds it (prepare) and every entry point imports", async () => {
    rmSync(join(PACKAGE_ROOT, "dist"), { recursive: true, force: true });
    const app = freshProject("from-folder");
    await npm(app, "install", PACKAGE_ROOT);
    expect(existsSync(join(PACKAGE_ROOT, "dist", "react-native.js"))).toBe(true);
    writeFileSync(join(app, "import.mjs"), IMPORT_ALL);
    const { stdout } = await run(process.execPath, ["import.mjs"], { cwd: app });
    expect(JSON.parse(stdout)).toEqual(["function", "function", "function"]);
  });

  it("npm pack makes a tarball with dist/, the license and no tests; a fresh project installs it, types check, the hook runs", async () => {
    const out = await npm(PACKAGE_ROOT, "pack", "--json", "--pack-destination", scratch);
    const [packed] = JSON.parse(out) as Array<{ filename: string; files: Array<{ path: string }> }>;
    const files = packed!.files.map((f) => f.path);
    for (const f of [
      "LICENSE",
      "README.md",
      "package.json",
      "dist/index.js",
      "dist/index.d.ts",
      "dist/react.js",
      "dist/react-native.js",
      "dist/react-native.d.ts",
      "dist/node.js",
      "dist/gen/presence/v1/presence_pb.js",
    ]) {
      expect(files).toContain(f);
    }
    expect(files.filter((f) => /^(test|example|node_modules)\//.test(f) || f.endsWith(".test.ts"))).toEqual([]);

    const app = freshProject("from-tarball");
    const tarball = join(scratch, packed!.filename);
    const dev = devPackage.devDependencies;
    await npm(
      app,
      "install",
      "--prefer-offline",
      tarball,
      `react@${dev.react}`,
      `react-dom@${dev["react-dom"]}`,
      `happy-dom@${dev["happy-dom"]}`,
      `@types/react@${dev["@types/react"]}`,
      `@types/node@${dev["@types/node"]}`,
    );
    const installed = join(app, "node_modules", "@presenced", "client");
    const manifest = JSON.parse(readFileSync(join(installed, "package.json"), "utf8")) as { license: string; version: string };
    expect([manifest.license, manifest.version]).toEqual(["Apache-2.0", devPackage.version]);
    expect(readFileSync(join(installed, "LICENSE"), "utf8")).toMatch(/^\s*Apache License\s+Version 2\.0, January 2004/);

    writeFileSync(join(app, "import.mjs"), IMPORT_ALL);
    expect(JSON.parse((await run(process.execPath, ["import.mjs"], { cwd: app })).stdout)).toEqual([
      "function",
      "function",
      "function",
    ]);

    // An app's TypeScript sees the types (strict, NodeNext, no skipLibCheck).
    writeFileSync(join(app, "check.ts"), TYPES_CHECK);
    writeFileSync(
      join(app, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: { strict: true, module: "NodeNext", moduleResolution: "NodeNext", target: "ES2022", lib: ["ES2022", "DOM"], noEmit: true, skipLibCheck: false, types: ["node"] },
        files: ["check.ts"],
      }),
    );
    const tsc = join(PACKAGE_ROOT, "node_modules", "typescript", "bin", "tsc");
    const typed = await run(process.execPath, [tsc, "-p", "tsconfig.json"], { cwd: app }).then(
      () => "",
      (e: { stdout?: string }) => e.stdout ?? String(e),
    );
    expect(typed).toBe("");

    writeFileSync(join(app, "hook.mjs"), HOOK_APP);
    const room = `pack-${Date.now()}`;
    const { stdout } = await run(process.execPath, ["hook.mjs", presencedUrl, room], { cwd: app, timeout: 30_000 });
    expect(JSON.parse(stdout)).toEqual({
      before: ["ada (you):true"],
      after: ["ada (you):true", "grace:true"],
      styled: true,
      left: ["grace:true", "ada:false"],
    });
  });
});
