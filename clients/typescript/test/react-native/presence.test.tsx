// The React Native entry under Jest with React Native's preset, against a
// real presenced over real sockets. AppState is the preset's mock, driven
// here; the two transports are the two an app has: a fetch that streams
// (expo/fetch's role, played by Node's fetch) and React Native's own fetch,
// which cannot stream (played by a fetch whose responses have only text()).
import { spawn, type ChildProcess } from "node:child_process";
import { connect, createServer } from "node:net";
import { randomUUID } from "node:crypto";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, jest } from "@jest/globals";
import { AppState } from "react-native";
import { act, renderHook, waitFor } from "@testing-library/react-native";
import { createNodePresenceServiceClient } from "../../src/node.js";
import {
  createReactNativePresenceClient,
  reactNativeSessionId,
  usePresence,
  usePresenceClient,
  type ReactNativePresenceOptions,
} from "../../src/react-native.js";

// Snapshots arrive from the network, not from an act() scope: tell React
// this is not an act environment (the preset says it is), so it does not
// warn about updates it cannot batch; waitFor polls for the result instead.
(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = false;

// --- a real presenced -------------------------------------------------------

let server: ChildProcess | undefined;
let baseUrl = process.env.PRESENCED_URL ?? "";

async function freePort(): Promise<number> {
  for (;;) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    const free = await new Promise<boolean>((done) => {
      const s = createServer();
      s.once("error", () => done(false));
      s.listen(port, "127.0.0.1", () => s.close(() => done(true)));
    });
    if (free) return port;
  }
}

beforeAll(async () => {
  if (baseUrl) return;
  const bin = process.env.PRESENCED_BIN;
  if (!bin) throw new Error("set PRESENCED_URL or PRESENCED_BIN");
  const port = await freePort();
  server = spawn(bin, ["--listen", `127.0.0.1:${port}`], { stdio: "ignore" });
  for (let i = 0; ; i++) {
    const up = await new Promise<boolean>((r) => {
      const socket = connect({ host: "127.0.0.1", port }, () => (socket.end(), r(true)));
      socket.on("error", () => r(false));
    });
    if (up) break;
    if (i > 200) throw new Error("presenced did not start");
    await new Promise((r) => setTimeout(r, 50));
  }
  baseUrl = `http://127.0.0.1:${port}`;
});

afterAll(() => {
  server?.kill("SIGTERM");
});

// --- AppState, driven -------------------------------------------------------

let appState = "active";
const appStateListeners = new Set<(state: string) => void>();
Object.defineProperty(AppState, "currentState", { get: () => appState, configurable: true });
(AppState.addEventListener as unknown as { mockImplementation(fn: unknown): void }).mockImplementation((_type: string, listener: (state: string) => void) => {
  appStateListeners.add(listener);
  return { remove: () => appStateListeners.delete(listener) };
});

function setAppState(state: "active" | "inactive" | "background"): void {
  act(() => {
    appState = state;
    for (const listener of [...appStateListeners]) listener(state);
  });
}

// --- the two fetches --------------------------------------------------------

const nodeFetch = globalThis.fetch;
/** RPCs as they went out: "Heartbeat", "List", "WatchRoom", "Disconnect". */
let calls: string[] = [];

function record(url: string): void {
  calls.push(url.slice(url.lastIndexOf("/") + 1));
}

/** A fetch that streams response bodies, like expo/fetch. */
const streamingFetch: typeof fetch = (input, init) => {
  record(String(input));
  return nodeFetch(input, init);
};

/** React Native's fetch as far as we rely on it: a response with status, headers and text(), no body stream. */
async function plainFetch(input: string, init: RequestInit) {
  record(input);
  const response = await nodeFetch(input, init);
  const text = await response.text();
  return { status: response.status, headers: response.headers, text: async () => text };
}

const backend = () => createNodePresenceServiceClient(baseUrl);

async function roomState(roomId: string): Promise<string[]> {
  const { snapshot } = await backend().listRoom({ roomId });
  return snapshot!.users.map((u) => `${u.userId}:${u.online}`);
}

beforeEach(() => {
  calls = [];
  appState = "active";
  appStateListeners.clear();
  globalThis.fetch = nodeFetch;
});

afterEach(() => {
  globalThis.fetch = nodeFetch;
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const modes: Array<[string, "stream" | "poll"]> = [
  ["a streaming fetch (expo/fetch): WatchRoom", "stream"],
  ["React Native's plain fetch: polling List", "poll"],
];

describe.each(modes)("usePresence over %s", (_name, mode) => {
  /** Options for this mode; in poll mode the app's global fetch is the plain one. */
  function options(roomId: string, extra: Partial<ReactNativePresenceOptions> = {}): ReactNativePresenceOptions {
    if (mode === "poll") globalThis.fetch = plainFetch as unknown as typeof fetch;
    return {
      baseUrl,
      roomId,
      userId: "ada",
      intervalMs: 1_000,
      pollIntervalMs: 1_000,
      ...(mode === "stream" ? { fetch: streamingFetch } : {}),
      ...extra,
    };
  }

  it("joins, lists itself first, sees another user join, and leaves on unmount", async () => {
    const roomId = `rn-${mode}-${randomUUID().slice(0, 8)}`;
    const { result, unmount } = renderHook(() => usePresence(options(roomId)));
    expect(result.current).toBeUndefined();
    await waitFor(() => expect(result.current?.map((u) => `${u.userId}:${u.online}`)).toEqual(["ada:true"]), { timeout: 5_000 });
    await backend().heartbeat({ roomId, userId: "grace", sessionId: randomUUID(), interval: { seconds: 30n } });
    const joinedAt = Date.now();
    await waitFor(() => expect(result.current?.map((u) => `${u.userId}:${u.online}`)).toEqual(["ada:true", "grace:true"]), { timeout: 5_000 });
    // A stream brings the change at once; a poll within one poll interval.
    expect(Date.now() - joinedAt).toBeLessThan(mode === "stream" ? 500 : 2_000);
    if (mode === "stream") {
      expect(calls).toContain("WatchRoom");
      expect(calls).not.toContain("List");
    } else {
      expect(calls).toContain("List");
      expect(calls).not.toContain("WatchRoom");
    }
    unmount();
    await waitFor(async () => expect(await roomState(roomId)).toEqual(["grace:true", "ada:false"]), { timeout: 2_000 });
    expect(calls).toContain("Disconnect");
  });

  it("background ends the session with a Disconnect at once; foreground resumes it", async () => {
    const roomId = `rn-bg-${mode}-${randomUUID().slice(0, 8)}`;
    const { result, unmount } = renderHook(() => usePresenceClient(options(roomId)));
    await waitFor(() => expect(result.current?.online).toBe(true), { timeout: 5_000 });
    const client = result.current!;
    await waitFor(async () => expect(await roomState(roomId)).toEqual(["ada:true"]));

    const hiddenAt = Date.now();
    setAppState("background");
    // Well before the deadline (2.5 s): it was the Disconnect call.
    await waitFor(async () => expect(await roomState(roomId)).toEqual(["ada:false"]), { timeout: 1_500 });
    expect(Date.now() - hiddenAt).toBeLessThan(1_500);
    expect(calls.filter((c) => c === "Disconnect")).toHaveLength(1);
    const beatsHidden = calls.filter((c) => c === "Heartbeat").length;
    const listsHidden = calls.filter((c) => c === "List").length;
    await sleep(2_500);
    expect(calls.filter((c) => c === "Heartbeat")).toHaveLength(beatsHidden); // no heartbeats in the background
    if (mode === "poll") expect(calls.filter((c) => c === "List")).toHaveLength(listsHidden); // nor polls
    expect(await roomState(roomId)).toEqual(["ada:false"]);

    // iOS passes through "inactive" on the way back: that already counts as in front.
    const shownAt = Date.now();
    setAppState("inactive");
    await waitFor(async () => expect(await roomState(roomId)).toEqual(["ada:true"]), { timeout: 1_500 });
    expect(Date.now() - shownAt).toBeLessThan(1_500);
    setAppState("active");
    expect(result.current).toBe(client); // the same client and session id, resumed
    await waitFor(() => expect(client.getUsers()?.map((u) => `${u.userId}:${u.online}`)).toEqual(["ada:true"]), { timeout: 3_000 });
    unmount();
  });
});

describe("React Native entry", () => {
  it("disconnectWhenHidden: false keeps the session in the background, and heartbeats at once on return", async () => {
    const roomId = `rn-stay-${randomUUID().slice(0, 8)}`;
    const { result, unmount } = renderHook(() =>
      usePresenceClient({ baseUrl, roomId, userId: "ada", intervalMs: 5_000, fetch: streamingFetch, disconnectWhenHidden: false }),
    );
    await waitFor(() => expect(result.current?.online).toBe(true), { timeout: 5_000 });
    setAppState("background");
    await sleep(1_000);
    expect(await roomState(roomId)).toEqual(["ada:true"]);
    expect(calls).not.toContain("Disconnect");
    const beats = calls.filter((c) => c === "Heartbeat").length;
    setAppState("active");
    // The interval is 5 s: a heartbeat within 500 ms is the one sent on return.
    await waitFor(() => expect(calls.filter((c) => c === "Heartbeat")).toHaveLength(beats + 1), { timeout: 500 });
    unmount();
  });

  it("polls at a bounded rate: never below 1 s, one List per interval", async () => {
    globalThis.fetch = plainFetch as unknown as typeof fetch;
    expect(() => createReactNativePresenceClient({ baseUrl, roomId: "r", userId: "u", pollIntervalMs: 999 })).toThrow(
      /pollIntervalMs must be at least 1000/,
    );
    const roomId = `rn-rate-${randomUUID().slice(0, 8)}`;
    const client = createReactNativePresenceClient({ baseUrl, roomId, userId: "ada", intervalMs: 10_000, pollIntervalMs: 1_000 });
    client.start();
    await waitFor(() => expect(client.getUsers()).toBeDefined(), { timeout: 3_000 });
    const from = calls.filter((c) => c === "List").length;
    await sleep(3_500);
    const polls = calls.filter((c) => c === "List").length - from;
    expect(polls).toBeGreaterThanOrEqual(3);
    expect(polls).toBeLessThanOrEqual(4);
    await client.stop();
  });

  it("session ids come from expo-crypto when the app has it, else from Web Crypto", () => {
    expect(reactNativeSessionId()).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    // expo-crypto is a native module (nothing to run here): a stand-in with its API.
    jest.doMock("expo-crypto", () => ({ randomUUID: () => "from-expo-crypto" }), { virtual: true });
    expect(reactNativeSessionId()).toBe("from-expo-crypto");
    expect(createReactNativePresenceClient({ baseUrl, roomId: "r", userId: "u" }).sessionId).toBe("from-expo-crypto");
    jest.dontMock("expo-crypto");
  });
});
