#!/usr/bin/env node
// Builds dist/ (tsc -p tsconfig.build.json). npm runs it as `prepare`:
// after `npm ci` here, before `npm pack` / `npm publish`, and when an app
// installs the package from a folder (`npm install ./clients/typescript`) or
// from git, so every way of installing it gives a built package. A folder
// install of a fresh clone has no TypeScript here yet: then the toolchain
// is installed first, exactly as package-lock.json pins it.
import { execFileSync } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const tsc = join(here, "node_modules", "typescript", "bin", "tsc");
const run = (cmd, args) => execFileSync(cmd, args, { cwd: here, stdio: ["ignore", "inherit", "inherit"] });

if (!existsSync(tsc)) {
  console.error("@presenced/client: installing its build tools (npm ci) to build dist/");
  run(process.platform === "win32" ? "npm.cmd" : "npm", ["ci", "--ignore-scripts", "--include=dev", "--no-audit", "--no-fund", "--loglevel=error"]);
}
rmSync(join(here, "dist"), { recursive: true, force: true });
run(process.execPath, [tsc, "-p", "tsconfig.build.json"]);
