// @vitest-environment happy-dom
// usePresence under React StrictMode (one session, none left behind),
// FacePile's rendering, and the browser environment's event listeners.
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { act, StrictMode, useState } from "react";
import { createRoot, type Root } from "react-dom/client";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { PresenceClient } from "../../src/client.js";
import { RoomSnapshotSchema, UserPresenceSchema } from "../../src/gen/presence/v1/presence_pb.js";
import { FACEPILE_CSS, FacePile, usePresence, type PresenceList } from "../../src/react.js";
import { toPresenceList, type PresenceUser } from "../../src/users.js";
import { FakeEnvironment, FakeServer, settle, snapshot } from "./fake.js";

(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = true;

let container: HTMLDivElement;
let root: Root;

beforeEach(() => {
  vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval", "Date"] });
  container = document.createElement("div");
  document.body.append(container);
  root = createRoot(container);
});

afterEach(async () => {
  await act(async () => root.unmount());
  container.remove();
  vi.useRealTimers();
});

async function settleAct(): Promise<void> {
  await act(async () => {
    await settle();
  });
}

describe("usePresence", () => {
  it("under StrictMode makes one session, returns undefined then the users (self first), and ends it on unmount", async () => {
    const server = new FakeServer();
    const env = new FakeEnvironment();
    const rendered: Array<PresenceList | undefined> = [];
    function Probe({ room }: { room: string }) {
      const users = usePresence({
        transport: server.transport,
        baseUrl: "http://presenced.test",
        roomId: room,
        userId: "ada",
        intervalMs: 5_000,
        environment: env,
      });
      rendered.push(users);
      return <FacePile users={users} />;
    }
    await act(async () =>
      root.render(
        <StrictMode>
          <Probe room="room" />
        </StrictMode>,
      ),
    );
    expect(rendered.length).toBeGreaterThan(0);
    expect(rendered.every((u) => u === undefined)).toBe(true);
    expect(container.querySelector("[role=list]")?.getAttribute("aria-busy")).toBe("true");
    await settleAct();

    // StrictMode mounted, unmounted and mounted the effect: still one session
    // reached the server, and nothing was disconnected.
    expect(server.heartbeats).toHaveLength(1);
    expect(server.disconnects).toEqual([]);
    expect(server.watches).toHaveLength(1);
    const sessionId = server.heartbeats[0]!.request.sessionId;

    await act(async () => {
      server.lastWatch.send(snapshot(1, [["grace", true], ["ada", true]]));
      await settle();
    });
    const last = rendered.at(-1)!;
    expect(last.map((u) => u.userId)).toEqual(["ada", "grace"]);
    expect(container.querySelectorAll(".presenced-avatar")).toHaveLength(2);

    await act(async () => {
      await vi.advanceTimersByTimeAsync(15_000);
    });
    expect(new Set(server.heartbeats.map((h) => h.request.sessionId))).toEqual(new Set([sessionId]));

    await act(async () => root.render(<div />));
    await settleAct();
    // The session is ended with the token of its latest heartbeat.
    expect(server.heartbeats).toHaveLength(4);
    expect(server.disconnects).toEqual(["session-4"]);
    expect(server.lastWatch.aborted).toBe(true);
    expect(env.listenerCount).toBe(0);
  });

  it("a new room means a new session; the old one is ended", async () => {
    const server = new FakeServer();
    const env = new FakeEnvironment();
    let setRoom: (room: string) => void = () => {};
    function Probe() {
      const [room, set] = useState("one");
      setRoom = set;
      usePresence({ transport: server.transport, baseUrl: "http://x", roomId: room, userId: "ada", environment: env });
      return null;
    }
    await act(async () => root.render(<Probe />));
    await settleAct();
    expect(server.heartbeats.map((h) => h.request.roomId)).toEqual(["one"]);
    await act(async () => setRoom("two"));
    await settleAct();
    expect(server.heartbeats.map((h) => h.request.roomId)).toEqual(["one", "two"]);
    expect(server.disconnects).toEqual(["session-1"]);
    const [a, b] = server.heartbeats.map((h) => h.request.sessionId);
    expect(a).not.toBe(b);
  });
});

function users(list: Array<Partial<PresenceUser> & { userId: string }>, totalCount?: number): PresenceList {
  const s = create(RoomSnapshotSchema, {
    roomId: "r",
    version: 1n,
    totalCount: totalCount ?? list.length,
    onlineCount: list.filter((u) => u.online).length,
    users: list.map((u) =>
      create(UserPresenceSchema, {
        userId: u.userId,
        online: u.online ?? false,
        lastDisconnected: u.lastDisconnected ? timestampFromDate(u.lastDisconnected) : undefined,
        data: u.data,
      }),
    ),
  });
  return toPresenceList(s, { userId: "ada", online: true });
}

describe("FacePile", () => {
  beforeEach(() => {
    document.getElementById("presenced-facepile-styles")?.remove();
    vi.setSystemTime(new Date("2026-01-01T12:00:00Z"));
  });

  const room = () =>
    users(
      [
        { userId: "grace", online: true, data: { name: "Grace Hopper" } },
        { userId: "ada", online: true },
        { userId: "alan", online: false, lastDisconnected: new Date("2026-01-01T11:55:00Z") },
        { userId: "edsger", online: false, lastDisconnected: new Date("2026-01-01T09:00:00Z") },
      ],
      1_000,
    );
  const avatars = () => [...container.querySelectorAll<HTMLElement>(".presenced-avatar")];
  const description = (el: HTMLElement) =>
    document.getElementById(el.getAttribute("aria-describedby")!)?.textContent;

  it("shows online users only by default, the current user first, and says what the room holds", async () => {
    await act(async () => root.render(<FacePile users={room()} onlineCount={2} />));
    expect(avatars().map((a) => [a.dataset.userId, a.dataset.online])).toEqual([
      ["ada", "true"],
      ["grace", "true"],
    ]);
    expect(avatars().map((a) => a.getAttribute("aria-label"))).toEqual(["ada (you)", "Grace Hopper"]);
    expect(avatars().map(description)).toEqual(["online", "online"]);
    expect(avatars().map((a) => a.firstElementChild?.textContent)).toEqual(["A", "GH"]); // initials
    // Every online user is shown: no "+N" (the 998 offline are not "more").
    expect(container.querySelector(".presenced-more")).toBeNull();
    expect(container.querySelector("[role=list]")?.getAttribute("aria-label")).toBe("2 people online, 998 offline");
  });

  it("offline users only as far as maxOffline and offlineWithinMs allow, after a gap, with last seen", async () => {
    await act(async () => root.render(<FacePile users={room()} onlineCount={2} maxOffline={5} />));
    expect(avatars().map((a) => a.dataset.userId)).toEqual(["ada", "grace", "alan", "edsger"]);
    const alan = avatars()[2]!;
    expect(alan.dataset.online).toBe("false");
    expect(alan.hasAttribute("data-first-offline")).toBe(true);
    expect(avatars()[3]!.hasAttribute("data-first-offline")).toBe(false);
    expect(avatars().map(description)).toEqual(["online", "online", "last seen 5 minutes ago", "last seen 3 hours ago"]);

    await act(async () => root.render(<FacePile users={room()} onlineCount={2} maxOffline={1} />));
    expect(avatars().map((a) => a.dataset.userId)).toEqual(["ada", "grace", "alan"]);

    await act(async () => root.render(<FacePile users={room()} onlineCount={2} maxOffline={5} offlineWithinMs={3_600_000} />));
    expect(avatars().map((a) => a.dataset.userId)).toEqual(["ada", "grace", "alan"]);

    // Offline users only fill slots the online ones leave free.
    await act(async () => root.render(<FacePile users={room()} onlineCount={2} maxOffline={5} max={3} />));
    expect(avatars().map((a) => a.dataset.userId)).toEqual(["ada", "grace", "alan"]);
  });

  it("+N counts the online users not shown, and says so; overflow=all counts everyone not shown", async () => {
    const crowd = users(
      [
        ...Array.from({ length: 8 }, (_, i) => ({ userId: `u${i}`, online: true })),
        { userId: "gone", online: false, lastDisconnected: new Date("2026-01-01T11:59:00Z") },
      ],
      40,
    );
    await act(async () => root.render(<FacePile users={crowd} onlineCount={12} max={5} maxOffline={2} />));
    expect(avatars()).toHaveLength(5);
    expect(avatars().every((a) => a.dataset.online === "true")).toBe(true);
    const more = container.querySelector<HTMLElement>(".presenced-more")!;
    expect(more.textContent?.startsWith("+7")).toBe(true);
    expect(more.getAttribute("aria-label")).toBe("7 more online");
    expect(more.dataset.counts).toBe("online");

    await act(async () => root.render(<FacePile users={crowd} onlineCount={12} max={5} overflow="all" />));
    const all = container.querySelector<HTMLElement>(".presenced-more")!;
    expect(all.textContent?.startsWith("+35")).toBe(true);
    expect(all.getAttribute("aria-label")).toBe("35 more: 7 online, 28 offline");
  });

  it("plain arrays take the counts as props", async () => {
    const list = users([{ userId: "ada", online: true }]);
    await act(async () => root.render(<FacePile users={[...list]} totalCount={3} onlineCount={3} />));
    expect(container.querySelector(".presenced-more")?.getAttribute("aria-label")).toBe("2 more online");
  });

  it("puts its stylesheet in the document once (unless told not to), themed by data-theme", async () => {
    await act(async () => root.render(<FacePile users={room()} injectStyles={false} />));
    expect(document.getElementById("presenced-facepile-styles")).toBeNull();
    await act(async () =>
      root.render(
        <>
          <FacePile users={room()} theme="dark" />
          <FacePile users={room()} />
        </>,
      ),
    );
    expect(document.querySelectorAll("#presenced-facepile-styles")).toHaveLength(1);
    expect(document.getElementById("presenced-facepile-styles")?.textContent).toBe(FACEPILE_CSS);
    expect([...container.querySelectorAll(".presenced-facepile")].map((el) => el.getAttribute("data-theme"))).toEqual([
      "dark",
      "auto",
    ]);
  });

  it("avatars are focusable, and Escape dismisses the tooltip until focus leaves", async () => {
    await act(async () => root.render(<FacePile users={room()} />));
    const ada = avatars()[0]!;
    expect(ada.tabIndex).toBe(0);
    expect(document.getElementById(ada.getAttribute("aria-describedby")!)?.closest("[role=tooltip]")?.parentElement).toBe(ada);
    await act(async () => {
      ada.focus();
      ada.dispatchEvent(new KeyboardEvent("keydown", { key: "Escape", bubbles: true }));
    });
    expect(ada.hasAttribute("data-tooltip-dismissed")).toBe(true);
    await act(async () => {
      ada.blur();
    });
    expect(ada.hasAttribute("data-tooltip-dismissed")).toBe(false);
  });

  it("shows the current user even when the listing was cut before them", () => {
    const s = snapshot(1, [["u1", true], ["u2", true]]);
    s.totalCount = 500;
    const list = toPresenceList(s, { userId: "ada", online: true });
    expect(list.map((u) => [u.userId, u.isSelf])).toEqual([
      ["ada", true],
      ["u1", false],
      ["u2", false],
    ]);
    // …but never invents them when the listing is complete.
    expect(toPresenceList(snapshot(1, [["u1", true]]), { userId: "ada", online: true }).map((u) => u.userId)).toEqual([
      "u1",
    ]);
  });
});

describe("browserEnvironment", () => {
  it("listens to visibilitychange, pagehide and pageshow, never unload or beforeunload", async () => {
    const added: string[] = [];
    const spyWindow = vi.spyOn(window, "addEventListener").mockImplementation((type: string) => {
      added.push(type);
    });
    const spyDocument = vi.spyOn(document, "addEventListener").mockImplementation((type: string) => {
      added.push(type);
    });
    const server = new FakeServer();
    const client = new PresenceClient({ transport: server.transport, baseUrl: "http://x", roomId: "r", userId: "u" });
    client.start();
    await settle();
    expect(added.sort()).toEqual(["pagehide", "pageshow", "visibilitychange"]);
    spyWindow.mockRestore();
    spyDocument.mockRestore();
    await client.stop();
  });
});
