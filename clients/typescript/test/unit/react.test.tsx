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
import { FacePile, usePresence, type PresenceList } from "../../src/react.js";
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
  it("shows the first avatars, +N from total_count, and offline users greyed with last seen", async () => {
    vi.setSystemTime(new Date("2026-01-01T12:00:00Z"));
    const list = users(
      [
        { userId: "grace", online: true, data: { name: "Grace Hopper" } },
        { userId: "ada", online: true },
        { userId: "alan", online: false, lastDisconnected: new Date("2026-01-01T11:55:00Z") },
        { userId: "edsger", online: false, lastDisconnected: new Date("2026-01-01T09:00:00Z") },
      ],
      1_000,
    );
    await act(async () => root.render(<FacePile users={list} max={3} />));
    const avatars = [...container.querySelectorAll<HTMLElement>(".presenced-avatar")];
    expect(avatars.map((a) => a.dataset.userId)).toEqual(["ada", "grace", "alan"]);
    expect(avatars.map((a) => a.getAttribute("aria-label"))).toEqual([
      "ada (you): online",
      "Grace Hopper: online",
      "alan: last seen 5 minutes ago",
    ]);
    expect(avatars.map((a) => a.textContent)).toEqual(["A", "GH", "A"]);
    expect(avatars[2]!.dataset.online).toBe("false");
    expect(avatars[2]!.style.filter).toBe("grayscale(1)");
    expect(avatars[1]!.style.filter).toBe("");
    expect(container.querySelector(".presenced-facepile-more")?.textContent).toBe("+997");
    expect(container.querySelector("[role=list]")?.getAttribute("aria-label")).toBe("1000 people, 2 online");
  });

  it("no +N when everyone is shown; totalCount can be given for plain arrays", async () => {
    const list = users([{ userId: "ada", online: true }]);
    await act(async () => root.render(<FacePile users={list} />));
    expect(container.querySelector(".presenced-facepile-more")).toBeNull();
    await act(async () => root.render(<FacePile users={[...list]} totalCount={3} />));
    expect(container.querySelector(".presenced-facepile-more")?.textContent).toBe("+2");
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
