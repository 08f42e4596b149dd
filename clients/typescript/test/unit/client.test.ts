// The client's state machine against an in-memory fake server, with fake
// timers: single-flight heartbeats, token retention, backoff, re-subscription,
// the beacon, hidden pages and stop().
import { Code, ConnectError } from "@connectrpc/connect";
import { durationMs } from "@bufbuild/protobuf/wkt";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { backoffDelay } from "../../src/backoff.js";
import { PresenceClient, type PresenceOptions } from "../../src/client.js";
import type { RoomSnapshot } from "../../src/gen/presence/v1/presence_pb.js";
import { FakeEnvironment, FakeServer, settle, snapshot } from "./fake.js";

const INTERVAL = 10_000;

let server: FakeServer;
let env: FakeEnvironment;
let clients: PresenceClient[];

beforeEach(() => {
  vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval", "Date"] });
  server = new FakeServer();
  env = new FakeEnvironment();
  clients = [];
});

afterEach(async () => {
  for (const c of clients) void c.stop();
  await settle();
  vi.useRealTimers();
});

function newClient(options: Partial<PresenceOptions> = {}): PresenceClient {
  const client = new PresenceClient({
    baseUrl: "http://presenced.test:50051/",
    transport: server.transport,
    roomId: "room",
    userId: "ada",
    sessionId: "tab-1",
    intervalMs: INTERVAL,
    environment: env,
    random: () => 0.5,
    ...options,
  });
  clients.push(client);
  return client;
}

async function started(options: Partial<PresenceOptions> = {}): Promise<PresenceClient> {
  const client = newClient(options).start();
  await settle();
  return client;
}

describe("heartbeats", () => {
  it("heartbeat at once, then every interval, naming room, user, session and interval", async () => {
    const client = await started();
    expect(server.heartbeats).toHaveLength(1);
    const { request } = server.heartbeats[0]!;
    expect([request.roomId, request.userId, request.sessionId]).toEqual(["room", "ada", "tab-1"]);
    expect(durationMs(request.interval!)).toBe(INTERVAL);
    expect(client.online).toBe(true);
    expect(client.currentPhase).toBe("active");

    await vi.advanceTimersByTimeAsync(INTERVAL - 1);
    expect(server.heartbeats).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(server.heartbeats).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(3 * INTERVAL);
    expect(server.heartbeats).toHaveLength(5);
    expect(new Set(server.heartbeats.map((h) => h.request.sessionId))).toEqual(new Set(["tab-1"]));
  });

  it("is single-flight: never two heartbeats in flight, however they are asked for", async () => {
    server.heartbeatMode = "manual";
    const client = await started();
    expect(server.heartbeats).toHaveLength(1);
    // Hidden and shown again while the first is in flight: the second
    // heartbeat joins the one in flight instead of starting another.
    env.hide();
    env.show();
    env.hide();
    env.show();
    await vi.advanceTimersByTimeAsync(INTERVAL / 2);
    expect(server.heartbeats).toHaveLength(1);
    expect(server.maxInflight).toBe(1);

    // Once answered, one more heartbeat (the beacon sent on hiding may have
    // landed after the first), and still one at a time.
    server.answer();
    await settle();
    expect(server.heartbeats).toHaveLength(2);
    server.answer();
    await settle();
    expect(server.maxInflight).toBe(1);
    expect(client.online).toBe(true);

    // A heartbeat slower than the interval is not doubled by the timer: it
    // times out (the call's deadline is the interval) and is retried.
    await vi.advanceTimersByTimeAsync(INTERVAL);
    expect(server.heartbeats).toHaveLength(3);
    await vi.advanceTimersByTimeAsync(INTERVAL - 1);
    expect(server.heartbeats).toHaveLength(3);
    expect(server.maxInflight).toBe(1);
  });

  it("keeps the last good tokens when heartbeats fail", async () => {
    const client = await started();
    expect(server.watches).toHaveLength(1);
    server.heartbeatMode = "fail";
    server.roomToken = "room-B"; // never handed out: every heartbeat fails
    await vi.advanceTimersByTimeAsync(INTERVAL * 3);
    expect(server.heartbeats.length).toBeGreaterThan(3);
    expect(client.online).toBe(false);
    // The watch goes on with the last good room token…
    expect(server.watches).toHaveLength(1);
    expect(server.lastWatch.aborted).toBe(false);
    // …and closing the page ends the last good session.
    env.close();
    expect(env.beacons).toEqual([{ url: "http://presenced.test:50051/v1/disconnect", body: "session-1" }]);
  });

  it("retries failed heartbeats with growing, capped, jittered backoff, then resumes the interval", async () => {
    const errors: Array<[Code, string]> = [];
    await started({
      heartbeatBackoff: { initialMs: 400, maxMs: 3_000 },
      onError: (e, op) => errors.push([ConnectError.from(e).code, op]),
    });
    server.heartbeatMode = "fail";
    await vi.advanceTimersByTimeAsync(INTERVAL); // the scheduled heartbeat fails
    const failedAt = Date.now();
    await vi.advanceTimersByTimeAsync(20_000);
    const times = server.heartbeats.slice(1).map((h) => h.at);
    expect(times[0]).toBe(failedAt);
    const gaps = times.slice(1).map((t, i) => t - times[i]!);
    // random() = 0.5: three quarters of each ceiling, the ceiling doubling
    // from 400 ms up to the 3 s cap.
    expect(gaps.slice(0, 6)).toEqual([300, 600, 1_200, 2_250, 2_250, 2_250]);
    // Every failure was reported, as what it was.
    expect(errors).toEqual(server.heartbeats.slice(1).map(() => [Code.Unavailable, "heartbeat"]));

    // Back up: the next retry succeeds, and heartbeats go back to the interval.
    server.heartbeatMode = "auto";
    const before = server.heartbeats.length;
    await vi.advanceTimersByTimeAsync(2_250);
    expect(server.heartbeats).toHaveLength(before + 1);
    const recoveredAt = server.heartbeats.at(-1)!.at;
    await vi.advanceTimersByTimeAsync(recoveredAt + INTERVAL - 1 - Date.now());
    expect(server.heartbeats).toHaveLength(before + 1);
    await vi.advanceTimersByTimeAsync(1);
    expect(server.heartbeats).toHaveLength(before + 2);
  });

  it("jitter spreads retries between half the ceiling and the ceiling", () => {
    const options = { initialMs: 500, maxMs: 30_000 };
    for (let attempt = 1; attempt <= 12; attempt++) {
      const ceiling = Math.min(30_000, 500 * 2 ** (attempt - 1));
      expect(backoffDelay(attempt, options, () => 0)).toBe(ceiling / 2);
      expect(backoffDelay(attempt, options, () => 0.999999)).toBeCloseTo(ceiling, -1);
    }
    expect(backoffDelay(1000, options, () => 0.5)).toBe(22_500);
    const spread = new Set(Array.from({ length: 50 }, () => backoffDelay(3, options)));
    expect(spread.size).toBeGreaterThan(40);
  });
});

describe("watching", () => {
  it("hands subscribers the latest snapshot at once, then only newer ones", async () => {
    const client = await started();
    const early: RoomSnapshot[] = [];
    client.subscribe((s) => early.push(s));
    expect(server.lastWatch.token).toBe("room-A");
    server.lastWatch.send(snapshot(5, [["ada", true]]));
    await settle();
    expect(early.map((s) => s.version)).toEqual([5n]);

    const late: RoomSnapshot[] = [];
    const unsubscribe = client.subscribe((s) => late.push(s));
    expect(late.map((s) => s.version)).toEqual([5n]);

    server.lastWatch.send(snapshot(5, [["ada", true]])); // same version: dropped
    server.lastWatch.send(snapshot(4, [["ada", false]])); // older: dropped
    server.lastWatch.send(snapshot(7, [["ada", true], ["grace", true]]));
    await settle();
    expect(early.map((s) => s.version)).toEqual([5n, 7n]);
    expect(client.getSnapshot()?.version).toBe(7n);
    unsubscribe();
    server.lastWatch.send(snapshot(8, [["ada", true]]));
    await settle();
    expect(late.map((s) => s.version)).toEqual([5n, 7n]);
    expect(early.map((s) => s.version)).toEqual([5n, 7n, 8n]);
  });

  it("a throwing subscriber does not stop the others", async () => {
    const client = await started();
    const seen: bigint[] = [];
    const thrown: unknown[] = [];
    const onError = (e: unknown) => thrown.push(e);
    process.on("uncaughtException", onError);
    try {
      client.subscribe(() => {
        throw new Error("subscriber bug");
      });
      client.subscribe((s) => seen.push(s.version));
      server.lastWatch.send(snapshot(1, [["ada", true]]));
      await settle();
      expect(seen).toEqual([1n]);
    } finally {
      await settle();
      process.off("uncaughtException", onError);
    }
    // The bug is not swallowed: it is rethrown, outside the client.
    expect(thrown.map(String)).toEqual(["Error: subscriber bug"]);
  });

  it("re-subscribes with backoff when the stream breaks, without repeating a snapshot", async () => {
    const errors: string[] = [];
    const client = await started({ onError: (_e, op) => errors.push(op) });
    const seen: bigint[] = [];
    client.subscribe((s) => seen.push(s.version));
    server.lastWatch.send(snapshot(3, [["ada", true]]));
    await settle();

    server.lastWatch.fail(new ConnectError("connection reset", Code.Unavailable));
    await settle();
    expect(errors).toEqual(["watch"]);
    expect(server.watches).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(375); // 500 ms ceiling, random 0.5
    expect(server.watches).toHaveLength(2);
    expect(server.lastWatch.token).toBe("room-A");
    server.lastWatch.send(snapshot(3, [["ada", true]])); // the current one again
    server.lastWatch.send(snapshot(4, [["ada", true], ["grace", true]]));
    await settle();
    expect(seen).toEqual([3n, 4n]);

    // A stream that ends cleanly (a server going away) is re-subscribed too.
    server.lastWatch.end();
    await settle();
    await vi.advanceTimersByTimeAsync(375);
    expect(server.watches).toHaveLength(3);
    // No heartbeat was needed for any of it.
    expect(server.heartbeats).toHaveLength(1);
  });

  it("backs off further while re-subscriptions keep failing", async () => {
    await started();
    const opened: number[] = [];
    for (let i = 0; i < 4; i++) {
      server.lastWatch.fail(new ConnectError("down", Code.Unavailable));
      const before = server.watches.length;
      const from = Date.now();
      while (server.watches.length === before) await vi.advanceTimersByTimeAsync(25);
      opened.push(Date.now() - from);
    }
    expect(opened).toEqual([375, 750, 1_500, 3_000]);
  });

  it("re-subscribes when a heartbeat brings a new room token", async () => {
    await started();
    const first = server.lastWatch;
    expect(first.token).toBe("room-A");
    server.roomToken = "room-B";
    await vi.advanceTimersByTimeAsync(INTERVAL);
    expect(first.aborted).toBe(true);
    expect(server.watches).toHaveLength(2);
    expect(server.lastWatch.token).toBe("room-B");
    // The same token again: nothing to do.
    await vi.advanceTimersByTimeAsync(INTERVAL);
    expect(server.watches).toHaveLength(2);
  });

  it("a refused room token makes it heartbeat for a fresh one before watching again", async () => {
    await started();
    server.roomToken = "room-B";
    server.lastWatch.fail(new ConnectError("room token expired", Code.Unauthenticated));
    await settle();
    await vi.advanceTimersByTimeAsync(375);
    expect(server.heartbeats).toHaveLength(2);
    expect(server.lastWatch.token).toBe("room-B");
    expect(server.watches).toHaveLength(2);
  });
});

describe("page lifecycle", () => {
  it("pagehide sends the session token to /v1/disconnect with sendBeacon, once, and stops", async () => {
    const client = await started();
    const watch = server.lastWatch;
    env.close(); // pagehide, then visibilitychange to hidden
    expect(env.beacons).toEqual([{ url: "http://presenced.test:50051/v1/disconnect", body: "session-1" }]);
    expect(client.currentPhase).toBe("suspended");
    await settle();
    expect(watch.aborted).toBe(true);
    expect(server.disconnects).toEqual([]); // the beacon, not an RPC the page may not live to finish
    await vi.advanceTimersByTimeAsync(5 * INTERVAL);
    expect(server.heartbeats).toHaveLength(1);
    expect(env.beacons).toHaveLength(1);
  });

  it("hidden first, then pagehide: still one beacon", async () => {
    await started();
    env.hide();
    env.close();
    expect(env.beacons.map((b) => b.body)).toEqual(["session-1"]);
  });

  it("a page restored from the back/forward cache rejoins and watches again", async () => {
    const client = await started();
    env.close(true);
    await settle();
    env.restore();
    await settle();
    expect(client.currentPhase).toBe("active");
    expect(server.heartbeats).toHaveLength(2);
    expect(server.watches).toHaveLength(2);
    expect(server.lastWatch.aborted).toBe(false);
    expect(client.online).toBe(true);
  });

  it("a hidden page ends its session, stops heartbeating, keeps watching, and rejoins when visible", async () => {
    const client = await started();
    env.hide();
    expect(client.currentPhase).toBe("hidden");
    expect(env.beacons.map((b) => b.body)).toEqual(["session-1"]);
    expect(client.online).toBe(false);
    await vi.advanceTimersByTimeAsync(6 * INTERVAL);
    expect(server.heartbeats).toHaveLength(1);
    expect(server.watches).toHaveLength(1);
    expect(server.lastWatch.aborted).toBe(false);

    env.show();
    await settle();
    expect(server.heartbeats).toHaveLength(2);
    expect(server.heartbeats[1]!.request.sessionId).toBe("tab-1");
    expect(client.online).toBe(true);
    await vi.advanceTimersByTimeAsync(INTERVAL);
    expect(server.heartbeats).toHaveLength(3);
  });

  it("a heartbeat answered after the page was hidden is ended again", async () => {
    server.heartbeatMode = "manual";
    await started();
    env.hide();
    expect(env.beacons).toEqual([]); // no session yet
    server.answer();
    await settle();
    expect(env.beacons.map((b) => b.body)).toEqual(["session-1"]);
    await vi.advanceTimersByTimeAsync(3 * INTERVAL);
    expect(server.heartbeats).toHaveLength(1);
  });

  it("disconnectWhenHidden: false keeps the session while hidden", async () => {
    const client = await started({ disconnectWhenHidden: false });
    env.hide();
    await vi.advanceTimersByTimeAsync(2 * INTERVAL);
    expect(env.beacons).toEqual([]);
    expect(server.heartbeats).toHaveLength(3);
    expect(client.online).toBe(true);
    env.close(); // closing still ends it
    expect(env.beacons.map((b) => b.body)).toEqual(["session-3"]);
  });

  it("a page that starts hidden joins only once visible", async () => {
    env.visible = false;
    const client = await started();
    expect(client.currentPhase).toBe("hidden");
    expect(server.heartbeats).toHaveLength(0);
    env.show();
    await settle();
    expect(server.heartbeats).toHaveLength(1);
    expect(server.watches).toHaveLength(1);
  });

  it("without sendBeacon the session is ended by a Disconnect call", async () => {
    const bare = Object.assign(Object.create(env), { sendBeacon: undefined }) as FakeEnvironment;
    await started({ environment: bare });
    env.close();
    await settle();
    expect(server.disconnects).toEqual(["session-1"]);
  });
});

describe("stop()", () => {
  it("waits for the heartbeat in flight, then ends that session by RPC", async () => {
    server.heartbeatMode = "manual";
    const client = await started();
    const stopped = client.stop();
    await settle();
    expect(server.disconnects).toEqual([]);
    server.answer();
    await stopped;
    expect(server.disconnects).toEqual(["session-1"]);
    expect(client.currentPhase).toBe("stopped");
    await vi.advanceTimersByTimeAsync(5 * INTERVAL);
    expect(server.heartbeats).toHaveLength(1);
    expect(server.watches).toHaveLength(0);
    expect(env.listenerCount).toBe(0);
    await client.stop(); // idempotent
    expect(server.disconnects).toEqual(["session-1"]);
  });

  it("ends the watch and notifies no one afterwards", async () => {
    const client = await started();
    const seen: bigint[] = [];
    client.subscribe((s) => seen.push(s.version));
    const watch = server.lastWatch;
    await client.stop();
    await settle();
    expect(watch.aborted).toBe(true);
    expect(server.disconnects).toEqual(["session-1"]);
    expect(seen).toEqual([]);
  });

  it("a client stopped before it started never calls the server", async () => {
    const client = newClient();
    await client.stop();
    client.start();
    await settle();
    expect(server.heartbeats).toHaveLength(0);
    expect(server.disconnects).toHaveLength(0);
  });

  it("rejects bad options early", () => {
    expect(() => newClient({ intervalMs: 999 })).toThrow(/intervalMs/);
    expect(() => newClient({ intervalMs: 600_001 })).toThrow(/intervalMs/);
    expect(() => newClient({ roomId: "" })).toThrow(/roomId/);
    expect(() => newClient({ userId: "" })).toThrow(/userId/);
    expect(
      () => new PresenceClient({ roomId: "r", userId: "u", environment: null }),
    ).toThrow(/baseUrl/);
  });
});

describe("getUsers()", () => {
  it("puts the current user first and keeps the counts", async () => {
    const client = await started();
    server.lastWatch.send(snapshot(2, [["grace", true], ["ada", true], ["alan", false]]));
    await settle();
    const users = client.getUsers()!;
    expect(users.map((u) => [u.userId, u.online, u.isSelf])).toEqual([
      ["ada", true, true],
      ["grace", true, false],
      ["alan", false, false],
    ]);
    expect([users.onlineCount, users.totalCount, users.version]).toEqual([2, 3, 2n]);
    expect(client.getUsers()).toBe(users); // stable until something changes
  });
});
