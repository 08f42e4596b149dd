// Many tabs of one origin in one Chromium profile, over plain http (grpc-web
// over HTTP/1.1: at most six connections to presenced's host:port). The tabs
// share one set of WatchRoom streams (a leader elected with Web Locks, or by
// messages where there are none), and every tab stays its own session.
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import type { Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { PresenceService } from "../../src/gen/presence/v1/presence_pb.js";
import { createNodePresenceServiceClient } from "../../src/node.js";
import { launchChromium, sleep, startPresenced, type Chromium, type Presenced } from "./harness.js";

const run = promisify(execFile);

const presencedUrl = inject("presencedUrl");
const appUrl = inject("appUrl");
const backend = createNodePresenceServiceClient(presencedUrl);

/**
 * A short heartbeat interval: a session ends 5 s after its last heartbeat,
 * so heartbeats stuck behind other tabs' streams show within seconds.
 */
const INTERVAL_MS = 2_000;
const TABS = 8;

let chrome: Chromium;

beforeAll(async () => {
  // presenced.test is this machine too, but an origin that is not a secure
  // context (plain http, not localhost): no Web Locks, no crypto.randomUUID.
  // --ignore-certificate-errors: the https tests' presenced has a
  // certificate made for them.
  chrome = await launchChromium(["--host-resolver-rules=MAP presenced.test 127.0.0.1", "--ignore-certificate-errors"]);
});

afterAll(async () => {
  await chrome?.close();
});

interface Tab {
  user: string;
  page: Page;
}

type Sharing = { tabId: string; leader: boolean; election: string; streams: number; polls: number } | null;

function pageUrl(room: string, user: string, extra: Record<string, string> = {}, host?: string): string {
  const url = new URL(appUrl);
  if (host) url.hostname = host;
  url.search = new URLSearchParams({ server: presencedUrl, room, user, interval: String(INTERVAL_MS), strict: "0", ...extra }).toString();
  return url.toString();
}

async function openTabs(room: string | string[], users: string[], extra?: Record<string, string>, host?: string): Promise<Tab[]> {
  const tabs: Tab[] = [];
  for (const [i, user] of users.entries()) {
    const page = await chrome.openWindow(pageUrl(typeof room === "string" ? room : room[i]!, user, extra, host));
    page.on("pageerror", (error) => console.error(`[${user}] page error: ${error.message}`));
    tabs.push({ user, page });
  }
  return tabs;
}

/** `user:online` for every user the page's latest list shows. */
async function shown(page: Page): Promise<string[]> {
  return page.evaluate(() => {
    const last = window.presenceDemo.lists.at(-1);
    return last ? last.users.map((u) => `${u.userId}:${u.online}`).sort() : [];
  });
}

/** Waits until every tab shows exactly `expected` (sorted `user:online`). */
async function expectAllShow(tabs: Tab[], expected: string[], timeoutMs: number): Promise<number> {
  const start = Date.now();
  const want = [...expected].sort();
  await expect
    .poll(async () => {
      const views = await Promise.all(tabs.map((t) => shown(t.page)));
      return views.every((v) => JSON.stringify(v) === JSON.stringify(want)) ? "all" : JSON.stringify(views);
    }, { timeout: timeoutMs, interval: 100 })
    .toBe("all");
  return Date.now() - start;
}

async function sharing(tabs: Tab[]): Promise<Sharing[]> {
  return Promise.all(tabs.map((t) => t.page.evaluate(() => window.presenceDemo.sharing())));
}

async function leaders(tabs: Tab[]): Promise<Tab[]> {
  const states = await sharing(tabs);
  return tabs.filter((_, i) => states[i]?.leader);
}

/** Every online state of `user` that `page` rendered since `sinceMs`. */
async function statesSince(page: Page, user: string, sinceMs: number): Promise<boolean[]> {
  return page.evaluate(
    ({ user, sinceMs }) =>
      window.presenceDemo.lists
        .filter((l) => l.at >= sinceMs)
        .map((l) => l.users.find((u) => u.userId === user)?.online)
        .filter((o): o is boolean => o !== undefined),
    { user, sinceMs },
  );
}

async function errorsOf(tabs: Tab[]): Promise<string[]> {
  return (await Promise.all(tabs.map((t) => t.page.evaluate(() => window.presenceDemo.errors)))).flat();
}

async function roomState(room: string): Promise<string[]> {
  const { snapshot } = await backend.listRoom({ roomId: room });
  return snapshot!.users.map((u) => `${u.userId}:${u.online}`).sort();
}

/** The shared scenario: open, hand over the lead, join, close all. */
async function scenario(room: string, election: "locks" | "messages", host?: string): Promise<void> {
  const users = Array.from({ length: TABS }, (_, i) => `u${i + 1}`);
  const tabs = await openTabs(room, users, {}, host);
  const allOnline = users.map((u) => `${u}:true`);
  const joinedMs = await expectAllShow(tabs, allOnline, 20_000);
  console.log(`${election}: ${TABS} tabs each see all ${TABS} online after ${joinedMs} ms`);

  const states = await sharing(tabs);
  expect(states.map((s) => s?.election)).toEqual(users.map(() => election));
  const lead = await leaders(tabs);
  expect(lead).toHaveLength(1);
  // One stream for the room, held by the leader; none in the other tabs.
  expect(states.map((s) => s!.streams).sort()).toEqual([...users.slice(1).map(() => 0), 1]);

  // Longer than a session lives without heartbeats (2.5 × 2 s): every tab's
  // heartbeats get through, so no one drops, and no call failed.
  const steadyFrom = Date.now();
  await sleep(6_000);
  for (const tab of tabs) {
    for (const user of users) expect(await statesSince(tab.page, user, steadyFrom)).not.toContain(false);
  }
  expect(await errorsOf(tabs)).toEqual([]);
  expect(await roomState(room)).toEqual(allOnline);

  // The leader goes: the others stay online, one of them takes over within
  // a few seconds, and its stream is live (the leaver shows offline).
  const old = lead[0]!;
  const rest = tabs.filter((t) => t !== old);
  const closedAt = Date.now();
  await old.page.close();
  await expect.poll(async () => (await leaders(rest)).length, { timeout: 3_000, interval: 50 }).toBe(1);
  const takeoverMs = Date.now() - closedAt;
  const expectedAfter = users.map((u) => `${u}:${u !== old.user}`);
  const shownMs = await expectAllShow(rest, expectedAfter, 5_000);
  console.log(`${election}: new leader after ${takeoverMs} ms; ${old.user} offline everywhere ${shownMs} ms later`);
  const newLeader = (await leaders(rest))[0]!;
  expect(newLeader).not.toBe(old);
  await sleep(6_000);
  for (const tab of rest) {
    for (const user of users.filter((u) => u !== old.user)) {
      expect(await statesSince(tab.page, user, closedAt)).not.toContain(false);
    }
  }
  expect(await roomState(room)).toEqual(expectedAfter);

  // A tab that comes now is served by the new leader's stream, like the rest.
  const [late] = await openTabs(room, ["u9"], {}, host);
  const withLate = [...expectedAfter, "u9:true"];
  await expectAllShow([...rest, late!], withLate, 10_000);
  expect((await leaders([...rest, late!])).map((t) => t.user)).toEqual([newLeader.user]);
  expect(await errorsOf([...rest, late!])).toEqual([]);

  // Every tab closes: everyone is offline at once (beacons, not timeouts).
  const endAt = Date.now();
  await Promise.all([...rest, late!].map((t) => t.page.close()));
  await expect.poll(() => roomState(room), { timeout: 3_000, interval: 100 }).toEqual(
    [...users, "u9"].map((u) => `${u}:false`).sort(),
  );
  console.log(`${election}: all offline ${Date.now() - endAt} ms after the last tabs closed`);
}

describe("many tabs of one origin over plain http", () => {
  it("eight tabs (Web Locks): all online and seeing each other; the leader's close hands over; closing all ends every session", async () => {
    await scenario(`tabs-locks-${randomUUID().slice(0, 8)}`, "locks");
  });

  it("the same where Web Locks are missing (http on a non-local host: not a secure context)", async () => {
    const probe = await chrome.openWindow(pageUrl("probe", "probe", {}, "presenced.test"));
    // No Web Locks and no crypto.randomUUID: the election by messages and the
    // session ids from getRandomValues are what the tabs below run on.
    expect(await probe.evaluate(() => [window.isSecureContext, "locks" in navigator, "randomUUID" in crypto])).toEqual([
      false,
      false,
      false,
    ]);
    await probe.close();
    await scenario(`tabs-messages-${randomUUID().slice(0, 8)}`, "messages", "presenced.test");
  });

  it("eight tabs in eight rooms: the leader streams four (the connections stay free) and polls the rest", async () => {
    const id = randomUUID().slice(0, 8);
    const rooms = Array.from({ length: TABS }, (_, i) => `tabs-rooms-${id}-${i + 1}`);
    const users = rooms.map((_, i) => `u${i + 1}`);
    const tabs = await openTabs(rooms, users);
    for (const [i, tab] of tabs.entries()) await expectAllShow([tab], [`${users[i]}:true`], 20_000);
    const lead = await leaders(tabs);
    expect(lead).toHaveLength(1);
    const state = (await sharing(lead))[0]!;
    expect([state.streams, state.polls]).toEqual([4, 4]);

    // A change in each room reaches its tab: by stream, or by the next poll.
    for (const room of rooms) {
      await backend.heartbeat({ roomId: room, userId: "visitor", sessionId: randomUUID(), interval: durationFromMs(30_000) });
    }
    const seenAt = Date.now();
    for (const [i, tab] of tabs.entries()) await expectAllShow([tab], [`${users[i]}:true`, "visitor:true"], 6_000);
    console.log(`eight rooms: the visitor shown in all eight tabs after ${Date.now() - seenAt} ms`);
    const steadyFrom = Date.now();
    await sleep(6_000);
    for (const [i, tab] of tabs.entries()) expect(await statesSince(tab.page, users[i]!, steadyFrom)).not.toContain(false);
    expect(await errorsOf(tabs)).toEqual([]);
    await Promise.all(tabs.map((t) => t.page.close()));
    await expect.poll(async () => (await Promise.all(rooms.map(roomState))).flat().filter((u) => u.startsWith("u")), { timeout: 3_000 }).toEqual(
      users.map((u) => `${u}:false`),
    );
  });

  it("a leader the browser freezes hands over, and joins again as a follower when it resumes", async () => {
    const room = `tabs-freeze-${randomUUID().slice(0, 8)}`;
    const users = ["u1", "u2", "u3"];
    const tabs = await openTabs(room, users);
    await expectAllShow(tabs, users.map((u) => `${u}:true`), 20_000);
    const old = (await leaders(tabs))[0]!;
    const rest = tabs.filter((t) => t !== old);
    const cdp = await old.page.context().newCDPSession(old.page);
    // What a browser does to a background tab to save energy: no code runs.
    await chrome.setWindowVisible(old.page, false);
    await cdp.send("Page.setWebLifecycleState", { state: "frozen" });
    await expect.poll(async () => (await leaders(rest)).length, { timeout: 3_000, interval: 50 }).toBe(1);
    await backend.heartbeat({ roomId: room, userId: "visitor", sessionId: randomUUID(), interval: durationFromMs(30_000) });
    // The new leader's stream is live: the visitor shows in the other tabs
    // (whatever the frozen tab's own session does meanwhile).
    await expect
      .poll(async () => (await Promise.all(rest.map((t) => shown(t.page)))).every((v) => v.includes("visitor:true")), {
        timeout: 5_000,
        interval: 100,
      })
      .toBe(true);
    await cdp.send("Page.setWebLifecycleState", { state: "active" });
    await chrome.setWindowVisible(old.page, true);
    await cdp.detach();
    // One leader among all three, not the one that was frozen; it is served again.
    await expect.poll(async () => (await leaders(tabs)).map((t) => t.user), { timeout: 3_000, interval: 50 }).toEqual(
      [(await leaders(rest))[0]!.user],
    );
    await expectAllShow(tabs, [...users.map((u) => `${u}:true`), "visitor:true"], 10_000);
    expect(await errorsOf(rest)).toEqual([]);
    await Promise.all(tabs.map((t) => t.page.close()));
  });

  it("a tab that crashes (no pagehide, no bye) is noticed by its lock: the leader drops its room", async () => {
    const id = randomUUID().slice(0, 8);
    const tabs = await openTabs([`tabs-crash-${id}-a`, `tabs-crash-${id}-b`], ["u1", "u2"]);
    await expectAllShow([tabs[0]!], ["u1:true"], 20_000);
    await expectAllShow([tabs[1]!], ["u2:true"], 20_000);
    const [leader] = await leaders(tabs);
    const other = tabs.find((t) => t !== leader)!;
    expect((await sharing([leader!]))[0]!.streams).toBe(2);
    const cdp = await other.page.context().newCDPSession(other.page);
    const crashedAt = Date.now();
    void cdp.send("Page.crash").catch(() => {}); // the renderer dies with the page: no answer comes
    await expect.poll(async () => (await sharing([leader!]))[0]!.streams, { timeout: 15_000, interval: 200 }).toBe(1);
    console.log(`crashed tab's room dropped after ${Date.now() - crashedAt} ms`);
    expect(await errorsOf([leader!])).toEqual([]);
    await leader!.page.close();
    await Promise.race([other.page.close().catch(() => {}), sleep(2_000)]);
  });

  it("control: without sharing, eight tabs starve the six connections and heartbeats fail", async () => {
    const room = `tabs-alone-${randomUUID().slice(0, 8)}`;
    const users = Array.from({ length: TABS }, (_, i) => `u${i + 1}`);
    const tabs = await openTabs(room, users, { share: "0" });
    await sleep(8_000);
    const views = await Promise.all(tabs.map((t) => shown(t.page)));
    const complete = views.filter((v) => v.length === TABS && v.every((s) => s.endsWith(":true")));
    // Some tab never sees all eight online, and heartbeats time out.
    expect(complete.length).toBeLessThan(TABS);
    expect((await errorsOf(tabs)).some((e) => e.startsWith("heartbeat: ConnectError: [deadline_exceeded]"))).toBe(true);
    await Promise.all(tabs.map((t) => t.page.close()));
  });
});

describe("over https (HTTP/2: one connection for every call of every tab)", () => {
  let tls: Presenced;
  let httpsUrl: string;
  let tlsBackend: ReturnType<typeof createNodePresenceServiceClient>;

  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), "presenced-tls-"));
    await run("openssl", [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
      "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
      "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem"),
    ]);
    tls = await startPresenced(["--tls-cert", join(dir, "cert.pem"), "--tls-key", join(dir, "key.pem")]);
    httpsUrl = `https://127.0.0.1:${tls.port}`;
    tlsBackend = createClient(
      PresenceService,
      createGrpcTransport({ baseUrl: httpsUrl, nodeOptions: { ca: readFileSync(join(dir, "cert.pem")) } }),
    );
  });

  afterAll(async () => {
    await tls?.stop();
  });

  async function tlsRoomState(room: string): Promise<string[]> {
    const { snapshot } = await tlsBackend.listRoom({ roomId: room });
    return snapshot!.users.map((u) => `${u.userId}:${u.online}`).sort();
  }

  it("eight tabs each with its own stream (sharing off) all stay online: the six-connection limit is gone", async () => {
    const room = `tabs-h2-${randomUUID().slice(0, 8)}`;
    const users = Array.from({ length: TABS }, (_, i) => `u${i + 1}`);
    const tabs = await openTabs(room, users, { share: "0", server: httpsUrl });
    const all = users.map((u) => `${u}:true`);
    await expectAllShow(tabs, all, 20_000);
    // The protocol the calls went over, as Chromium's network log has it
    // (the page cannot see it cross-origin): the next heartbeat's.
    const cdp = await tabs[0]!.page.context().newCDPSession(tabs[0]!.page);
    const protocols = new Set<string>();
    cdp.on("Network.responseReceived", (event) => {
      if (event.response.url.startsWith(httpsUrl)) protocols.add(event.response.protocol ?? "");
    });
    await cdp.send("Network.enable");
    await expect.poll(() => protocols.size, { timeout: 5_000 }).toBeGreaterThan(0);
    await cdp.detach();
    expect([...protocols]).toEqual(["h2"]);
    const steadyFrom = Date.now();
    await sleep(6_000);
    for (const tab of tabs) for (const user of users) expect(await statesSince(tab.page, user, steadyFrom)).not.toContain(false);
    expect(await errorsOf(tabs)).toEqual([]);
    expect(await tlsRoomState(room)).toEqual(all);
    await Promise.all(tabs.map((t) => t.page.close()));
    await expect.poll(() => tlsRoomState(room), { timeout: 3_000 }).toEqual(users.map((u) => `${u}:false`));
  });

  it("with sharing on, the leader streams every room: no four-stream cap over https", async () => {
    const id = randomUUID().slice(0, 8);
    const rooms = Array.from({ length: 6 }, (_, i) => `tabs-h2-rooms-${id}-${i + 1}`);
    const users = rooms.map((_, i) => `u${i + 1}`);
    const tabs = await openTabs(rooms, users, { server: httpsUrl });
    for (const [i, tab] of tabs.entries()) await expectAllShow([tab], [`${users[i]}:true`], 20_000);
    const [leader] = await leaders(tabs);
    const state = (await sharing([leader!]))[0]!;
    expect([state.streams, state.polls]).toEqual([6, 0]);
    await Promise.all(tabs.map((t) => t.page.close()));
  });
});
