// FacePile in Chromium against a real presenced: the order, what is shown and
// counted, the theme (light, dark), the tooltip, and the screenshots
// (test-artifacts/typescript/facepile-*.png).
import { randomUUID } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import type { Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { createNodePresenceServiceClient } from "../../src/node.js";
import { ARTIFACTS, launchChromium, type Chromium } from "./harness.js";

const presencedUrl = inject("presencedUrl");
const appUrl = inject("appUrl");
const backend = createNodePresenceServiceClient(presencedUrl);

let chrome: Chromium;

beforeAll(async () => {
  chrome = await launchChromium();
  mkdirSync(ARTIFACTS, { recursive: true });
});

afterAll(async () => {
  await chrome?.close();
});

function newRoom(name: string): string {
  return `pile-${name}-${randomUUID().slice(0, 8)}`;
}

/** Backend users: `online` ones heartbeat (a minute's interval), the others join and leave in order. */
async function seed(room: string, online: string[], offline: string[]): Promise<void> {
  const beat = (user: string) =>
    backend.heartbeat({ roomId: room, userId: user, sessionId: randomUUID(), interval: durationFromMs(60_000) });
  for (const user of online) await beat(user);
  for (const user of offline) {
    const { sessionToken } = await beat(user);
    await backend.disconnect({ sessionToken });
  }
}

async function open(room: string, params: Record<string, string> = {}): Promise<Page> {
  const url = new URL(appUrl);
  url.search = new URLSearchParams({ server: presencedUrl, room, user: "ada", interval: "30000", ...params }).toString();
  const page = await chrome.openWindow(url.toString());
  await page.setViewportSize({ width: 640, height: 440 });
  return page;
}

/** `user:online` of each avatar, left to right. */
function pile(page: Page): Promise<string[]> {
  return page
    .locator(".presenced-facepile .presenced-avatar")
    .evaluateAll((els) => els.map((el) => `${el.getAttribute("data-user-id")}:${el.getAttribute("data-online")}`));
}

async function waitForCounts(page: Page, text: string): Promise<void> {
  await expect.poll(() => page.locator("#counts").textContent(), { timeout: 10_000 }).toBe(text);
}

/** The tooltip of the element under the pointer or focus, as shown. */
async function visibleTooltip(page: Page): Promise<string[]> {
  return page.locator(".presenced-tooltip").evaluateAll((els) =>
    els.filter((el) => getComputedStyle(el).visibility === "visible").map((el) => el.textContent ?? ""),
  );
}

/**
 * Saves facepile-NAME.png (the app's card) and facepile-NAME-pile.png (just
 * the pile's row and its open tooltip: the one docs/facepile.png is).
 */
async function shoot(page: Page, name: string): Promise<void> {
  await page.waitForTimeout(200); // the tooltip's fade-in
  const file = join(ARTIFACTS, `facepile-${name}.png`);
  await page.screenshot({ path: file, clip: (await page.locator("main").boundingBox())! });
  const row = (await page.locator(".pile-row").boundingBox())!;
  const tips = await page.locator(".presenced-tooltip").evaluateAll((els) =>
    els.filter((el) => getComputedStyle(el).visibility === "visible").map((el) => el.getBoundingClientRect().bottom),
  );
  const bottom = Math.max(row.y + row.height, ...tips) + 6;
  // Only the pile and its tooltip: the member list under it is hidden for this one.
  await page.locator("#members").evaluate((el) => (el.style.visibility = "hidden"));
  await page.screenshot({
    path: join(ARTIFACTS, `facepile-${name}-pile.png`),
    clip: { x: row.x - 6, y: row.y - 6, width: row.width + 12, height: bottom - row.y + 6 },
  });
  await page.locator("#members").evaluate((el) => (el.style.visibility = ""));
  console.log(`FacePile screenshot: ${file}`);
}

describe("FacePile in Chromium", () => {
  it("light: online first in colour, recent offline after a gap with last seen in the tooltip", async () => {
    const room = newRoom("light");
    await seed(room, ["grace", "alan"], ["edsger", "barbara", "donald"]);
    const page = await open(room, { theme: "light", offline: "2" });
    await waitForCounts(page, "3 online · 6 in the room");
    // Self first, online in the order they came, then at most two offline,
    // most recently gone first; nothing hidden is online, so no "+N".
    expect(await pile(page)).toEqual(["ada:true", "grace:true", "alan:true", "donald:false", "barbara:false"]);
    expect(await page.locator(".presenced-more").count()).toBe(0);
    expect(await page.locator(".presenced-facepile").getAttribute("aria-label")).toBe("3 people online, 3 offline");
    const gap = await page
      .locator('.presenced-avatar[data-user-id="donald"]')
      .evaluate((el) => getComputedStyle(el).marginLeft);
    expect(gap).toBe("8px"); // a gap (size / 5) instead of the overlap before the offline group

    expect(await visibleTooltip(page)).toEqual([]);
    await page.locator('.presenced-avatar[data-user-id="donald"]').hover();
    await expect.poll(() => visibleTooltip(page), { timeout: 2_000 }).toEqual(["donaldlast seen just now"]);
    await shoot(page, "light");
    // Keyboard users get the same tooltip on focus; Escape hides it.
    await page.mouse.move(600, 400);
    await page.locator('.presenced-avatar[data-user-id="grace"]').focus();
    await page.keyboard.press("Tab");
    await expect.poll(() => visibleTooltip(page), { timeout: 2_000 }).toEqual(["alanonline"]);
    await page.keyboard.press("Escape");
    await expect.poll(() => visibleTooltip(page), { timeout: 2_000 }).toEqual([]);

    // Theming as the README says: a plain class rule of the app wins over
    // the pile's own stylesheet, for variables and for properties.
    await page.addStyleTag({
      content: `.presenced-facepile { --presenced-surface: rgb(1, 2, 3); }
        .presenced-avatar[data-online="false"] { background: rgb(200, 0, 0); }`,
    });
    const themed = await page.locator('.presenced-avatar[data-user-id="donald"]').evaluate((el) => {
      const s = getComputedStyle(el);
      return [s.boxShadow, s.backgroundColor];
    });
    expect(themed).toEqual(["rgb(1, 2, 3) 0px 0px 0px 2px", "rgb(200, 0, 0)"]);
    await page.close();
  });

  it("dark: follows the system's colour scheme", async () => {
    const room = newRoom("dark");
    await seed(room, ["grace", "alan"], ["edsger", "barbara", "donald"]);
    const page = await open(room, { offline: "2" });
    const surface = () =>
      page.locator(".presenced-facepile").evaluate((el) => getComputedStyle(el).getPropertyValue("--presenced-surface").trim());
    await page.emulateMedia({ colorScheme: "light" });
    await waitForCounts(page, "3 online · 6 in the room");
    expect(await surface()).toBe("#ffffff");
    await page.emulateMedia({ colorScheme: "dark" });
    expect(await surface()).toBe("#0f172a");
    const offlineBg = await page
      .locator('.presenced-avatar[data-user-id="donald"]')
      .evaluate((el) => getComputedStyle(el).backgroundColor);
    expect(offlineBg).toBe("rgb(51, 65, 85)");
    await page.locator('.presenced-avatar[data-user-id="alan"]').hover();
    await expect.poll(() => visibleTooltip(page), { timeout: 2_000 }).toEqual(["alanonline"]);
    await shoot(page, "dark");
    await page.close();
  });

  it("many offline: the offline shown stay as few as the app says", async () => {
    const room = newRoom("ghosts");
    const gone = Array.from({ length: 30 }, (_, i) => `left-${String(i).padStart(2, "0")}`);
    await seed(room, ["grace"], gone);
    const page = await open(room, { theme: "light", offline: "2" });
    await waitForCounts(page, "2 online · 32 in the room");
    expect(await pile(page)).toEqual(["ada:true", "grace:true", "left-29:false", "left-28:false"]);
    expect(await page.locator(".presenced-more").count()).toBe(0);
    expect(await page.locator(".presenced-facepile").getAttribute("aria-label")).toBe("2 people online, 30 offline");
    await shoot(page, "many-offline");
    await page.close();

    const onlineOnly = await open(room, { theme: "light", offline: "0" });
    await waitForCounts(onlineOnly, "2 online · 32 in the room");
    expect(await pile(onlineOnly)).toEqual(["ada:true", "grace:true"]);
    await onlineOnly.close();
  });

  it("+N: counts the online users not shown, and says so", async () => {
    const room = newRoom("crowd");
    const here = Array.from({ length: 11 }, (_, i) => `user-${i + 1}`);
    await seed(room, here, ["edsger", "barbara"]);
    const page = await open(room, { theme: "light", offline: "2" });
    await waitForCounts(page, "12 online · 14 in the room");
    // Five slots, all online: no offline avatar, and "+7" for the 7 online
    // not shown (the two offline are not counted).
    expect(await pile(page)).toEqual(["ada:true", "user-1:true", "user-2:true", "user-3:true", "user-4:true"]);
    const more = page.locator(".presenced-more");
    expect(await more.locator("span").first().textContent()).toBe("+7");
    expect(await more.getAttribute("aria-label")).toBe("7 more online");
    await more.hover();
    await expect.poll(() => visibleTooltip(page), { timeout: 2_000 }).toEqual(["7 more online"]);
    await shoot(page, "overflow");
    await page.close();
  });
});
