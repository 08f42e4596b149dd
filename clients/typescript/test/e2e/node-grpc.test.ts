// The Node path, for real: @connectrpc/connect-node's gRPC (HTTP/2)
// transport against a real presenced, the generated client for every RPC,
// and PresenceClient surviving a server restart.
import { createHmac, randomBytes, randomUUID } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-node";
import { durationFromMs, timestampDate } from "@bufbuild/protobuf/wkt";
import { afterEach, describe, expect, inject, it } from "vitest";
import {
  PresenceClient,
  createNodePresenceServiceClient,
  createNodeTransport,
  createPresenceServiceClient,
  type PresenceServiceClient,
  type RoomSnapshot,
} from "../../src/node.js";
import { freePort, sleep, startPresenced, type Presenced } from "./harness.js";

const presencedUrl = inject("presencedUrl");
const rpc = createNodePresenceServiceClient(presencedUrl);

function newRoom(name: string): string {
  return `node-${name}-${randomUUID().slice(0, 8)}`;
}

function heartbeat(client: PresenceServiceClient, roomId: string, userId: string, sessionId = randomUUID(), intervalMs = 30_000) {
  return client.heartbeat({ roomId, userId, sessionId, interval: durationFromMs(intervalMs) });
}

async function codeOf(call: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await call;
    return "ok";
  } catch (e) {
    return ConnectError.from(e).code;
  }
}

/** The code and message a call failed with ("ok" if it did not fail). */
async function failure(call: Promise<unknown>): Promise<[Code, string] | "ok"> {
  try {
    await call;
    return "ok";
  } catch (e) {
    const error = ConnectError.from(e);
    return [error.code, error.rawMessage];
  }
}

/** A WatchRoom stream read in the background into an array. */
function watch(client: PresenceServiceClient, roomToken: string, limit = 0) {
  const abort = new AbortController();
  const snapshots: RoomSnapshot[] = [];
  const done = (async () => {
    try {
      for await (const res of client.watchRoom({ roomToken, limit }, { signal: abort.signal })) {
        if (res.snapshot) snapshots.push(res.snapshot);
      }
    } catch (e) {
      if (!abort.signal.aborted) throw e;
    }
  })();
  return {
    snapshots,
    /** Waits for a snapshot matching `test` that arrived after index `from`. */
    async next(test: (s: RoomSnapshot) => boolean, from = 0, timeoutMs = 5_000): Promise<RoomSnapshot> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = snapshots.slice(from).find(test);
        if (found) return found;
        if (Date.now() > deadline) {
          throw new Error(`no matching snapshot in ${timeoutMs} ms; got ${snapshots.length}`);
        }
        await sleep(10);
      }
    },
    async close() {
      abort.abort();
      await done;
    },
  };
}

const summary = (s: RoomSnapshot) => s.users.map((u) => `${u.userId}:${u.online ? "on" : "off"}`);

describe("generated client over gRPC (connect-node)", () => {
  it("heartbeat, list and disconnect", async () => {
    const room = newRoom("basic");
    const hb = await heartbeat(rpc, room, "ada");
    expect(hb.roomToken).not.toBe("");
    expect(hb.sessionToken).not.toBe("");
    expect(hb.sessionToken).not.toBe(hb.roomToken);

    const listed = (await rpc.list({ roomToken: hb.roomToken })).snapshot!;
    expect(listed.roomId).toBe(room);
    expect(summary(listed)).toEqual(["ada:on"]);
    expect(listed.onlineCount).toBe(1);
    expect(listed.totalCount).toBe(1);
    expect(listed.users[0]!.lastDisconnected).toBeUndefined();

    const before = Date.now();
    await rpc.disconnect({ sessionToken: hb.sessionToken });
    await rpc.disconnect({ sessionToken: hb.sessionToken }); // idempotent
    const after = (await rpc.list({ roomToken: hb.roomToken })).snapshot!;
    expect(summary(after)).toEqual(["ada:off"]);
    expect(after.onlineCount).toBe(0);
    expect(after.totalCount).toBe(1);
    const seen = timestampDate(after.users[0]!.lastDisconnected!).getTime();
    expect(seen).toBeGreaterThanOrEqual(before - 1_000);
    expect(seen).toBeLessThanOrEqual(Date.now() + 1_000);
    expect(after.version).toBeGreaterThan(listed.version);
  });

  it("lists online users in arrival order, then offline ones most recent first, with counts past the limit", async () => {
    const room = newRoom("order");
    const tokens = new Map<string, string>();
    for (const user of ["u1", "u2", "u3", "u4", "u5"]) {
      const hb = await heartbeat(rpc, room, user);
      tokens.set(user, hb.sessionToken);
    }
    await rpc.disconnect({ sessionToken: tokens.get("u2")! });
    await sleep(5);
    await rpc.disconnect({ sessionToken: tokens.get("u4")! });
    const hb = await heartbeat(rpc, room, "u1");
    const all = (await rpc.list({ roomToken: hb.roomToken })).snapshot!;
    expect(summary(all)).toEqual(["u1:on", "u3:on", "u5:on", "u4:off", "u2:off"]);

    const limited = (await rpc.list({ roomToken: hb.roomToken, limit: 2 })).snapshot!;
    expect(summary(limited)).toEqual(["u1:on", "u3:on"]);
    expect(limited.onlineCount).toBe(3);
    expect(limited.totalCount).toBe(5);
  });

  it("WatchRoom: a snapshot at once, one per change, none for a plain heartbeat", async () => {
    const room = newRoom("watch");
    const ada = await heartbeat(rpc, room, "ada");
    const w = watch(rpc, ada.roomToken);
    try {
      const first = await w.next(() => true, 0, 2_000);
      expect(summary(first)).toEqual(["ada:on"]);

      const graceSession = randomUUID();
      const grace = await heartbeat(rpc, room, "grace", graceSession);
      const joined = await w.next((s) => s.users.length === 2);
      expect(summary(joined)).toEqual(["ada:on", "grace:on"]);
      expect(joined.version).toBeGreaterThan(first.version);

      // Heartbeats that change nothing visible emit nothing: a repeat, and a
      // second session of a user already online.
      const count = w.snapshots.length;
      await heartbeat(rpc, room, "grace", graceSession);
      await heartbeat(rpc, room, "ada", randomUUID());
      await sleep(400);
      expect(w.snapshots.length).toBe(count);

      await rpc.disconnect({ sessionToken: grace.sessionToken });
      const left = await w.next((s) => s.onlineCount === 1, count);
      expect(summary(left)).toEqual(["ada:on", "grace:off"]);
      const leftAt = timestampDate(left.users[1]!.lastDisconnected!).getTime();
      expect(Math.abs(leftAt - Date.now())).toBeLessThan(5_000);

      const versions = w.snapshots.map((s) => s.version);
      expect([...versions].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))).toEqual(versions);
      expect(new Set(versions).size).toBe(versions.length);
    } finally {
      await w.close();
    }
  });

  it("refuses bad input with precise codes", async () => {
    const room = newRoom("errors");
    expect(await codeOf(heartbeat(rpc, room, "ada", randomUUID(), 500))).toBe(Code.InvalidArgument);
    expect(await codeOf(heartbeat(rpc, room, "ada", randomUUID(), 11 * 60_000))).toBe(Code.InvalidArgument);
    expect(await codeOf(heartbeat(rpc, "", "ada"))).toBe(Code.InvalidArgument);
    expect(await codeOf(heartbeat(rpc, room, ""))).toBe(Code.InvalidArgument);
    const session = randomUUID();
    await heartbeat(rpc, room, "ada", session);
    expect(await codeOf(heartbeat(rpc, room, "grace", session))).toBe(Code.FailedPrecondition);
    expect(await codeOf(rpc.list({ roomToken: "not-a-token" }))).toBe(Code.InvalidArgument);
    // A session token is not a room token, and the refusal says which was which.
    const hb = await heartbeat(rpc, room, "ada", session);
    expect(await failure(rpc.list({ roomToken: hb.sessionToken }))).toEqual([
      Code.InvalidArgument,
      "room_token: expected a room token, got a session token",
    ]);
    expect(await failure(rpc.disconnect({ sessionToken: hb.roomToken }))).toEqual([
      Code.InvalidArgument,
      "session_token: expected a session token, got a room token",
    ]);
    // …and the session lives on.
    expect(summary((await rpc.list({ roomToken: hb.roomToken })).snapshot!)).toEqual(["ada:on"]);
  });

  it("trusted calls: UpdateRoomUser, ListRoom, ListUser, RemoveRoomUser, RemoveRoom", async () => {
    const room = newRoom("trusted");
    const user = `user-${randomUUID().slice(0, 8)}`;
    const hb = await heartbeat(rpc, room, user);
    const other = await heartbeat(rpc, room, "other");
    await rpc.disconnect({ sessionToken: other.sessionToken });
    const w = watch(rpc, hb.roomToken);
    try {
      await w.next(() => true);
      await rpc.updateRoomUser({ roomId: room, userId: user, data: { typing: true, colour: "#f00", n: 3 } });
      const updated = await w.next((s) => s.users.some((u) => u.data !== undefined));
      expect(updated.users.find((u) => u.userId === user)!.data).toEqual({ typing: true, colour: "#f00", n: 3 });
      expect(await codeOf(rpc.updateRoomUser({ roomId: room, userId: "nobody", data: {} }))).toBe(Code.NotFound);

      const online = (await rpc.listRoom({ roomId: room, onlineOnly: true })).snapshot!;
      expect(summary(online)).toEqual([`${user}:on`]);
      expect(online.totalCount).toBe(2);

      const rooms = (await rpc.listUser({ userId: user })).rooms;
      expect(rooms.map((r) => [r.roomId, r.online])).toEqual([[room, true]]);

      const count = w.snapshots.length;
      await rpc.removeRoomUser({ roomId: room, userId: "other" });
      await rpc.removeRoomUser({ roomId: room, userId: "other" }); // idempotent
      const removed = await w.next((s) => s.totalCount === 1, count);
      expect(summary(removed)).toEqual([`${user}:on`]);

      await rpc.removeRoom({ roomId: room });
      const empty = await w.next((s) => s.totalCount === 0, count);
      expect(empty.users).toEqual([]);
      await rpc.removeRoom({ roomId: room }); // idempotent
    } finally {
      await w.close();
    }
  });

  it("grpc-web over HTTP/1.1 reaches the same server", async () => {
    const web = createPresenceServiceClient(
      createGrpcWebTransport({ baseUrl: presencedUrl, httpVersion: "1.1" }),
    );
    const room = newRoom("web");
    const hb = await heartbeat(web, room, "ada");
    const snapshot = (await rpc.list({ roomToken: hb.roomToken })).snapshot!;
    expect(summary(snapshot)).toEqual(["ada:on"]);
  });

  it("POST /v1/disconnect takes the session token as text/plain and answers 204 with CORS", async () => {
    const room = newRoom("beacon");
    const hb = await heartbeat(rpc, room, "ada");
    const response = await fetch(`${presencedUrl}/v1/disconnect`, {
      method: "POST",
      headers: { "content-type": "text/plain;charset=UTF-8", origin: "http://127.0.0.1:1" },
      body: hb.sessionToken,
    });
    expect(response.status).toBe(204);
    expect(response.headers.get("access-control-allow-origin")).toBe("*"); // the default, --cors-allowed-origins '*'
    const snapshot = (await rpc.list({ roomToken: hb.roomToken })).snapshot!;
    expect(summary(snapshot)).toEqual(["ada:off"]);
  });
});

describe("PresenceClient in Node", () => {
  let restartable: Presenced | undefined;
  afterEach(async () => {
    await restartable?.stop();
    restartable = undefined;
  });

  it("joins, shows itself first, and leaves on stop()", async () => {
    const room = newRoom("client");
    const other = await heartbeat(rpc, room, "grace");
    const errors: unknown[] = [];
    const client = new PresenceClient({
      transport: createNodeTransport(presencedUrl),
      roomId: room,
      userId: "ada",
      intervalMs: 1_000,
      environment: null,
      onError: (e) => errors.push(e),
    }).start();
    const seen: RoomSnapshot[] = [];
    client.subscribe((s) => seen.push(s));
    await expect.poll(() => client.getUsers()?.map((u) => `${u.userId}:${u.online}`), { timeout: 5_000 }).toEqual([
      "ada:true",
      "grace:true",
    ]);
    expect(client.online).toBe(true);
    // Heartbeats keep it online well past 2.5 × interval.
    await sleep(3_000);
    const w = watch(rpc, other.roomToken);
    try {
      const now = await w.next(() => true);
      expect(summary(now)).toEqual(["grace:on", "ada:on"]);
      await client.stop();
      const left = await w.next((s) => s.onlineCount === 1);
      expect(summary(left)).toEqual(["grace:on", "ada:off"]);
    } finally {
      await w.close();
    }
    expect(errors).toEqual([]);
  });

  it("survives a server restart: retries with backoff, re-subscribes, keeps the last snapshot meanwhile", async () => {
    const key = "k".repeat(40);
    const port = await freePort();
    restartable = await startPresenced(["--token-key", key], port);
    const url = restartable.url;
    const room = newRoom("restart");
    const errors: string[] = [];
    const client = new PresenceClient({
      transport: createNodeTransport(url),
      roomId: room,
      userId: "ada",
      intervalMs: 1_000,
      environment: null,
      heartbeatBackoff: { initialMs: 100, maxMs: 400 },
      watchBackoff: { initialMs: 100, maxMs: 400 },
      onError: (e, op) => errors.push(`${op}: ${Code[ConnectError.from(e).code]}`),
    }).start();
    try {
      await expect.poll(() => client.getSnapshot()?.onlineCount, { timeout: 5_000 }).toBe(1);
      const before = client.getSnapshot()!;

      await restartable.stop();
      await sleep(1_500);
      // Both were told, as what it was: the server is unavailable.
      expect([...new Set(errors)].sort()).toEqual(["heartbeat: Unavailable", "watch: Unavailable"]);
      expect(client.online).toBe(false);
      // The last good snapshot stays available while the server is away.
      expect(client.getSnapshot()).toBe(before);

      restartable = await startPresenced(["--token-key", key], port);
      // The new server knows nothing of ada until her next heartbeat; then the
      // re-subscribed watch brings a fresh snapshot with her online.
      await expect.poll(() => client.online, { timeout: 5_000 }).toBe(true);
      const backend = createNodePresenceServiceClient(url);
      await heartbeat(backend, room, "grace");
      await expect
        .poll(() => client.getSnapshot()?.users.map((u) => `${u.userId}:${u.online}`), { timeout: 5_000 })
        .toEqual(["ada:true", "grace:true"]);
    } finally {
      await client.stop();
    }
  });
});

/** An HS256 JWT for `sub`, signed with `secret`, valid for a minute. */
function jwt(sub: string, secret: string): string {
  const part = (value: object) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub, iss: "ts-e2e", aud: "presence", exp: now + 60 })}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

describe("PresenceClient against a presenced that requires JWTs", () => {
  it("sends a fresh token with each heartbeat, and fails without one", async () => {
    const secret = randomBytes(32).toString("hex");
    const secretFile = join(mkdtempSync(join(tmpdir(), "presenced-jwt-")), "jwt.secret");
    writeFileSync(secretFile, secret);
    const server = await startPresenced([
      "--jwt-hs256-secret-file",
      secretFile,
      "--jwt-issuer",
      "ts-e2e",
      "--jwt-audience",
      "presence",
    ]);
    const room = newRoom("jwt");
    const clients: PresenceClient[] = [];
    try {
      const refused: unknown[] = [];
      clients.push(
        new PresenceClient({
          transport: createNodeTransport(server.url),
          roomId: room,
          userId: "eve",
          intervalMs: 1_000,
          environment: null,
          onError: (e) => refused.push(e),
        }).start(),
      );
      await expect.poll(() => refused.length, { timeout: 5_000 }).toBeGreaterThan(0);
      expect(ConnectError.from(refused[0]).code).toBe(Code.Unauthenticated);

      let issued = 0;
      const errors: unknown[] = [];
      const ada = new PresenceClient({
        transport: createNodeTransport(server.url),
        roomId: room,
        userId: "ada",
        intervalMs: 1_000,
        environment: null,
        accessToken: async () => {
          issued++;
          return jwt("ada", secret);
        },
        onError: (e) => errors.push(e),
      }).start();
      clients.push(ada);
      await expect.poll(() => ada.getUsers()?.map((u) => `${u.userId}:${u.online}`), { timeout: 5_000 }).toEqual([
        "ada:true",
      ]);
      // One token per heartbeat: a refreshed token reaches the server.
      await expect.poll(() => issued, { timeout: 5_000 }).toBeGreaterThanOrEqual(3);
      expect(errors).toEqual([]);

      // Someone else's token does not let a client act as ada.
      const denied: unknown[] = [];
      clients.push(
        new PresenceClient({
          transport: createNodeTransport(server.url),
          roomId: room,
          userId: "ada",
          intervalMs: 1_000,
          environment: null,
          accessToken: jwt("mallory", secret),
          onError: (e) => denied.push(e),
        }).start(),
      );
      await expect.poll(() => denied.length, { timeout: 5_000 }).toBeGreaterThan(0);
      expect(ConnectError.from(denied[0]).code).toBe(Code.PermissionDenied);
    } finally {
      await Promise.all(clients.map((c) => c.stop()));
      await server.stop();
    }
  });
});
