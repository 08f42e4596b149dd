// The browser path, for real: Debian's Chromium runs the example app (React
// StrictMode, FacePile) against a real presenced over grpc-web, with CORS
// (the app and the server are on different ports), and the pagehide beacon.
import { randomUUID } from "node:crypto";
import type { Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { launchChromium, sleep, type Chromium } from "./harness.js";

const presencedUrl = inject("presencedUrl");
const appUrl = inject("appUrl");

/**
 * Heartbeat interval of the pages: 30 s, so a session would only time out
 * 75 s after its last heartbeat. Anything that goes offline within seconds
 * in these tests was ended by the client (beacon), not by the timeout.
 */
const INTERVAL_MS = 30_000;

let chrome: Chromium;

beforeAll(async () => {
  chrome = await launchChromium();
});

afterAll(async () => {
  await chrome?.close();
});

function newRoom(name: string): string {
  return `e2e-${name}-${randomUUID().slice(0, 8)}`;
}

function pageUrl(room: string, user: string, extra: Record<string, string> = {}): string {
  const url = new URL(appUrl);
  url.search = new URLSearchParams({
    server: presencedUrl,
    room,
    user,
    interval: String(INTERVAL_MS),
    ...extra,
  }).toString();
  return url.toString();
}

async function openUser(room: string, user: string, extra?: Record<string, string>): Promise<Page> {
  const page = await chrome.openWindow(pageUrl(room, user, extra));
  page.on("pageerror", (error) => console.error(`[${user}] page error: ${error.message}`));
  return page;
}

function avatar(page: Page, user: string) {
  return page.locator(`.presenced-facepile .presenced-avatar[data-user-id="${user}"]`);
}

/** Waits until `page`'s FacePile shows `user` online (true) or offline (false). */
async function expectShown(page: Page, user: string, online: boolean, timeoutMs: number): Promise<number> {
  const start = Date.now();
  await expect
    .poll(() => avatar(page, user).getAttribute("data-online", { timeout: 1_000 }).catch(() => null), {
      timeout: timeoutMs,
      interval: 25,
    })
    .toBe(online ? "true" : "false");
  return Date.now() - start;
}

/** Every state of `user` that `page` has rendered since `sinceMs` (epoch ms). */
async function renderedStates(page: Page, user: string, sinceMs: number): Promise<boolean[]> {
  return page.evaluate(
    ({ user, sinceMs }) =>
      window.presenceDemo.lists
        .filter((list) => list.at >= sinceMs)
        .map((list) => list.users.find((u) => u.userId === user)?.online)
        .filter((online): online is boolean => online !== undefined),
    { user, sinceMs },
  );
}

/**
 * "name: description" of `user`'s avatar as Chromium's accessibility tree
 * has them (what a screen reader announces: the name, then the tooltip).
 */
async function announced(page: Page, user: string): Promise<string> {
  const cdp = await page.context().newCDPSession(page);
  try {
    const { root } = await cdp.send("DOM.getDocument", { depth: 0 });
    const { nodeId } = await cdp.send("DOM.querySelector", {
      nodeId: root.nodeId,
      selector: `.presenced-facepile .presenced-avatar[data-user-id="${user}"]`,
    });
    const { nodes } = await cdp.send("Accessibility.getPartialAXTree", { nodeId, fetchRelatives: false });
    const node = nodes[0]!;
    return `${node.name?.value ?? ""}: ${node.description?.value ?? ""}`;
  } finally {
    await cdp.detach();
  }
}

async function pageErrors(page: Page): Promise<string[]> {
  return page.evaluate(() => window.presenceDemo.errors);
}

describe("presence in Chromium over grpc-web", () => {
  it("two users in two pages see each other in the FacePile, themselves first", async () => {
    const room = newRoom("two");
    const ada = await openUser(room, "ada");
    const grace = await openUser(room, "grace");

    await expectShown(ada, "grace", true, 10_000);
    await expectShown(grace, "ada", true, 10_000);
    await expectShown(ada, "ada", true, 1_000);

    const order = (page: Page) =>
      page.locator(".presenced-facepile .presenced-avatar").evaluateAll((els) =>
        els.map((el) => el.getAttribute("data-user-id")),
      );
    expect(await order(ada)).toEqual(["ada", "grace"]);
    expect(await order(grace)).toEqual(["grace", "ada"]);
    expect(await announced(ada, "ada")).toBe("ada (you): online");
    expect(await announced(ada, "grace")).toBe("grace: online");
    expect(await ada.locator("#counts").textContent()).toBe("2 online · 2 in the room");
    expect(await pageErrors(ada)).toEqual([]);
    expect(await pageErrors(grace)).toEqual([]);
    await Promise.all([ada.close(), grace.close()]);
  });

  it("a closed page shows offline on the other within 2 s (the beacon, not the timeout)", async () => {
    const room = newRoom("close");
    const ada = await openUser(room, "ada");
    const grace = await openUser(room, "grace");
    await expectShown(ada, "grace", true, 10_000);
    // Ada can see grace before grace's page has the answer to its first
    // heartbeat; only with that answer does the page hold the session token
    // its beacon needs. Its own listing shows once it has it.
    await expectShown(grace, "grace", true, 10_000);
    // Both pages render under React StrictMode: if its double mount had left
    // a ghost session behind, grace would stay online for 75 s after closing.
    const closedAt = Date.now();
    await grace.close();
    const tookMs = await expectShown(ada, "grace", false, 2_000);
    expect(Date.now() - closedAt).toBeLessThan(2_000);
    console.log(`closed page shown offline after ${tookMs} ms`);

    expect(await announced(ada, "grace")).toBe("grace: last seen just now");
    // Offline is a muted, opaque tone (no transparency to turn overlaps
    // muddy) with a hollow dot; online is the user's colour with a filled one.
    const look = (user: string) =>
      avatar(ada, user).evaluate((el) => {
        const s = getComputedStyle(el);
        const dot = getComputedStyle(el.querySelector(".presenced-dot")!);
        return { bg: s.backgroundColor, opacity: s.opacity, dotBorder: dot.borderTopWidth, dotBg: dot.backgroundColor };
      });
    const [offline, online] = [await look("grace"), await look("ada")];
    expect(offline).toEqual({ bg: "rgb(226, 232, 240)", opacity: "1", dotBorder: "2px", dotBg: "rgb(255, 255, 255)" });
    expect(online.opacity).toBe("1");
    expect(online.dotBg).toBe("rgb(22, 163, 74)");
    expect(online.bg).not.toBe(offline.bg);
    // Online users first, then offline ones.
    expect(await ada.locator("#members li").evaluateAll((els) => els.map((el) => el.className))).toEqual([
      "online",
      "offline",
    ]);
    await ada.close();
  });

  it("one user in two tabs closing one stays online, with no flicker", async () => {
    const room = newRoom("tabs");
    const ada = await openUser(room, "ada");
    const graceTab1 = await openUser(room, "grace");
    const graceTab2 = await openUser(room, "grace");
    await expectShown(ada, "grace", true, 10_000);
    await expectShown(graceTab1, "grace", true, 10_000);
    await expectShown(graceTab2, "grace", true, 10_000);

    const closedAt = Date.now();
    await graceTab1.close();
    await sleep(2_500); // longer than the beacon takes to land (see the test above)
    expect(await avatar(ada, "grace").getAttribute("data-online")).toBe("true");
    const states = await renderedStates(ada, "grace", closedAt);
    expect(states).not.toContain(false);
    expect(await ada.locator("#counts").textContent()).toBe("2 online · 2 in the room");

    // The view is live: closing the last tab does show grace offline.
    await graceTab2.close();
    await expectShown(ada, "grace", false, 2_000);
    await ada.close();
  });

  it("a hidden page goes offline and comes back online when visible", async () => {
    const room = newRoom("hidden");
    const ada = await openUser(room, "ada");
    const grace = await openUser(room, "grace");
    await expectShown(ada, "grace", true, 10_000);

    await chrome.setWindowVisible(grace, false);
    expect(await grace.evaluate(() => document.visibilityState)).toBe("hidden");
    const offlineMs = await expectShown(ada, "grace", false, 2_000);

    await chrome.setWindowVisible(grace, true);
    expect(await grace.evaluate(() => document.visibilityState)).toBe("visible");
    const onlineMs = await expectShown(ada, "grace", true, 2_000);
    console.log(`hidden: offline after ${offlineMs} ms; visible: online after ${onlineMs} ms`);
    // Still one session: closing the page ends it.
    await grace.close();
    await expectShown(ada, "grace", false, 2_000);
    expect(await pageErrors(ada)).toEqual([]);
    await ada.close();
  });

  it("with hidden=stay a hidden page stays online", async () => {
    const room = newRoom("stay");
    const ada = await openUser(room, "ada");
    const grace = await openUser(room, "grace", { hidden: "stay" });
    await expectShown(ada, "grace", true, 10_000);
    const hiddenAt = Date.now();
    await chrome.setWindowVisible(grace, false);
    expect(await grace.evaluate(() => document.visibilityState)).toBe("hidden");
    await sleep(2_000);
    expect(await renderedStates(ada, "grace", hiddenAt)).not.toContain(false);
    expect(await avatar(ada, "grace").getAttribute("data-online")).toBe("true");
    await Promise.all([ada.close(), grace.close()]);
  });

  it("leaving for another page goes offline; coming back from the back/forward cache rejoins", async () => {
    const room = newRoom("bfcache");
    const ada = await openUser(room, "ada");
    const grace = await openUser(room, "grace");
    await expectShown(ada, "grace", true, 10_000);
    await expectShown(grace, "grace", true, 10_000);
    await grace.evaluate(() => {
      (window as unknown as { marker: string }).marker = "same document";
    });

    await grace.goto("about:blank");
    await expectShown(ada, "grace", false, 2_000);
    await grace.goBack({ waitUntil: "commit" });
    // Restored from the cache (no unload handler kept it out): the same
    // document, not a reload.
    expect(await grace.evaluate(() => (window as unknown as { marker?: string }).marker)).toBe("same document");
    await expectShown(ada, "grace", true, 2_000);
    await expectShown(grace, "grace", true, 2_000);
    await Promise.all([ada.close(), grace.close()]);
  });

  it("a server error reaches the page with its gRPC code through grpc-web and CORS", async () => {
    const tooLong = "r".repeat(300); // room ids are capped at 256 bytes
    const page = await chrome.openWindow(pageUrl(tooLong, "ada"));
    await expect.poll(() => pageErrors(page), { timeout: 5_000 }).toContainEqual(
      expect.stringMatching(/^heartbeat: ConnectError: \[invalid_argument\] .*256/),
    );
    expect(await page.locator(".presenced-facepile").getAttribute("aria-busy")).toBe("true");
    await page.close();
  });
});
