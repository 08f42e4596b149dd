// Real processes for the end-to-end tests: a presenced server, the example
// app built and served by vite, and Debian's Chromium driven by
// playwright-core. Every process started here is ended here, by its PID.
import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";

export const PACKAGE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const REPO_ROOT = resolve(PACKAGE_ROOT, "../..");
/** Where screenshots and logs go (gitignored). */
export const ARTIFACTS = process.env.TEST_ARTIFACTS ?? join(REPO_ROOT, "test-artifacts", "typescript");

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * A TCP port that was free on 127.0.0.1 a moment ago, below Linux's
 * ephemeral range (32768 and up), so that no outgoing connection is given it
 * before the server binds it (the Rust and Python tests do the same).
 */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 1000; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    const free = await new Promise<boolean>((done) => {
      const server = createServer();
      server.unref();
      server.once("error", () => done(false));
      server.listen(port, "127.0.0.1", () => server.close(() => done(true)));
    });
    if (free) return port;
  }
  throw new Error("no free port in 20000-31999 on 127.0.0.1");
}

/** Resolves once 127.0.0.1:port accepts a TCP connection. */
export async function waitForPort(port: number, timeoutMs = 20_000, child?: ChildProcess): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child && child.exitCode !== null) {
      throw new Error(`process exited with ${child.exitCode} before listening on ${port}`);
    }
    const ok = await new Promise<boolean>((r) => {
      const socket = connect({ host: "127.0.0.1", port }, () => {
        socket.end();
        r(true);
      });
      socket.on("error", () => r(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listening on 127.0.0.1:${port} after ${timeoutMs} ms`);
    await sleep(50);
  }
}

/** Stops a child: SIGTERM, then SIGKILL after `graceMs`. */
export async function stopProcess(child: ChildProcess, graceMs = 5_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
  await exited;
  clearTimeout(timer);
}

export interface Presenced {
  url: string;
  port: number;
  process: ChildProcess;
  stop(): Promise<void>;
}

/**
 * Starts `$PRESENCED_BIN --listen 127.0.0.1:PORT ...args` and waits until it
 * accepts connections. Its output goes to test-artifacts/typescript/.
 */
export async function startPresenced(args: string[] = [], port?: number): Promise<Presenced> {
  const bin = process.env.PRESENCED_BIN ?? join(REPO_ROOT, "target/debug/presenced");
  const listenPort = port ?? (await freePort());
  mkdirSync(ARTIFACTS, { recursive: true });
  const log = createWriteStream(join(ARTIFACTS, `presenced-${listenPort}.log`), { flags: "a" });
  const child = spawn(bin, ["--listen", `127.0.0.1:${listenPort}`, ...args], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout!.pipe(log);
  child.stderr!.pipe(log);
  const spawned = new Promise<void>((ok, fail) => {
    child.once("spawn", ok);
    child.once("error", (e) => fail(new Error(`cannot start presenced (${bin}): ${e.message}`)));
  });
  await spawned;
  const kill = () => child.kill("SIGKILL");
  process.once("exit", kill);
  try {
    await waitForPort(listenPort, 20_000, child);
  } catch (e) {
    child.kill("SIGKILL");
    throw e;
  }
  return {
    url: `http://127.0.0.1:${listenPort}`,
    port: listenPort,
    process: child,
    stop: async () => {
      process.off("exit", kill);
      await stopProcess(child);
    },
  };
}

/** The Chromium flags for this machine: no network but loopback, no GPU. */
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--no-first-run",
  "--disable-quic",
  "--disable-component-update",
  "--disable-sync",
];

export interface Chromium {
  browser: Browser;
  context: BrowserContext;
  /** Opens `url` in a new window of its own (so it can be hidden alone). */
  openWindow(url: string): Promise<Page>;
  /** Minimizes (hidden) or restores (visible) the page's window. */
  setWindowVisible(page: Page, visible: boolean): Promise<void>;
  close(): Promise<void>;
}

/**
 * Starts Debian's Chromium (never a downloaded one) with a fresh profile and
 * drives it with playwright-core over CDP. Chromium is started by us rather
 * than by `chromium.launch` because Playwright's launch enables focus
 * emulation, which keeps every page "visible" whatever its window does;
 * connecting with `noDefaults` leaves real page visibility alone, so a
 * minimized window really is `document.visibilityState === "hidden"`.
 */
export async function launchChromium(extraArgs: string[] = []): Promise<Chromium> {
  const executable = process.env.CHROMIUM ?? "/usr/bin/chromium";
  const profile = mkdtempSync(join(tmpdir(), "presenced-chromium-"));
  const child = spawn(
    executable,
    [...CHROMIUM_ARGS, ...extraArgs, "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", `--user-data-dir=${profile}`, "about:blank"],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  const kill = () => child.kill("SIGKILL");
  process.once("exit", kill);
  const endpoint = await new Promise<string>((ok, fail) => {
    let seen = "";
    const timer = setTimeout(() => fail(new Error(`chromium did not start: ${seen.slice(-2000)}`)), 30_000);
    child.once("error", (e) => fail(new Error(`cannot start ${executable}: ${e.message}`)));
    child.stderr!.on("data", (chunk: Buffer) => {
      seen += chunk.toString();
      const match = /DevTools listening on (ws:\/\/\S+)/.exec(seen);
      if (match) {
        clearTimeout(timer);
        ok(match[1]!);
      }
    });
  });
  const browser = await chromium.connectOverCDP(endpoint, { noDefaults: true, isLocal: true });
  const context = browser.contexts()[0]!;
  const cdp = await browser.newBrowserCDPSession();
  return {
    browser,
    context,
    openWindow: async (url) => {
      const opened = context.waitForEvent("page");
      await cdp.send("Target.createTarget", { url: "about:blank", newWindow: true });
      const page = await opened;
      await page.goto(url);
      return page;
    },
    setWindowVisible: async (page, visible) => {
      const session = await context.newCDPSession(page);
      const { windowId } = await session.send("Browser.getWindowForTarget");
      await session.send("Browser.setWindowBounds", {
        windowId,
        bounds: { windowState: visible ? "normal" : "minimized" },
      });
      await session.detach();
    },
    close: async () => {
      // Ask Chromium to quit (closing a CDP connection only disconnects),
      // then make sure it did.
      await cdp.send("Browser.close").catch(() => {});
      await browser.close().catch(() => {});
      const exited = child.exitCode !== null || child.signalCode !== null;
      if (!exited) {
        await Promise.race([new Promise((r) => child.once("exit", r)), sleep(5_000)]);
      }
      await stopProcess(child);
      process.off("exit", kill);
      // Chromium's helper processes may still be writing the profile for a moment.
      rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 200 });
    },
  };
}
