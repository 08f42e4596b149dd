/**
 * Tabs of one origin share their WatchRoom streams.
 *
 * Over HTTP/1.1 (plain http: every local setup and many intranets) a browser
 * opens at most six connections to one host, and a server stream holds one
 * for as long as it is open. With a stream per tab, the seventh tab's calls
 * queue behind the others' streams forever, and so do the heartbeats of all of
 * them: every user goes offline. So one tab, the leader, holds one stream per
 * watched (room, limit) for every tab of the origin, and hands the snapshots
 * to the others over a `BroadcastChannel`. The other tabs only make short
 * unary calls (their own heartbeats: each tab is still its own session).
 *
 * The leader is the holder of a Web Lock (`navigator.locks`). When it goes
 * (closed, navigated away, or it stops watching), the lock passes to the next
 * tab that asked for it, at once; that tab opens the streams. Web Locks exist
 * only in secure contexts (https, or http on localhost); elsewhere (a page on
 * `http://intranet-host/`) the tabs elect the one that started first among
 * those alive, with messages on the same channel: "bye" when a tab goes,
 * "alive" every few seconds so a crashed one is dropped after
 * {@link PEER_TIMEOUT_MS}. Two leaders for a moment cost a duplicate stream,
 * nothing else: receivers drop snapshots they already have (by version).
 *
 * Over plain http the leader itself could exhaust the six connections with
 * streams for many rooms, so there it holds at most {@link HTTP1_STREAMS}
 * streams (the rooms wanted first) and polls List for the others every
 * {@link SHARED_POLL_INTERVAL_MS}, leaving connections for everyone's
 * heartbeats. Over https (HTTP/2: one connection carries every call of every
 * tab) there is no such limit.
 *
 * A tab the browser freezes (the Page Lifecycle API's `freeze`: a background
 * tab put to sleep to save energy or memory) runs no code, so as leader it
 * would pass nothing on: on `freeze` it stops sharing (the lock passes on),
 * and on `resume` it joins again.
 *
 * Messages on the channel `presenced:<baseUrl>`:
 * - `hello`: a tab starts sharing; everyone answers with its wants, and the
 *   leader with `leader`.
 * - `wants`: all (room, limit, room token) a tab wants, replacing its last.
 * - `bye`: a tab stops sharing.
 * - `leader`: the sender leads now.
 * - `alive`: (without Web Locks) the sender is alive, sharing since `since`.
 * - `snapshot`: a room's snapshot (binary protobuf), from the leader.
 * - `refresh`: the leader's stream was refused its room token: tabs in that
 *   room heartbeat now, which brings a fresh token in their next `wants`.
 */
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { backoffDelay, type BackoffOptions } from "./backoff.js";
import { PresenceService, RoomSnapshotSchema, type RoomSnapshot } from "./gen/presence/v1/presence_pb.js";
import { randomUUID } from "./ids.js";

/** Without Web Locks: a tab silent for this long is taken for gone. */
export const PEER_TIMEOUT_MS = 90_000;
/** Without Web Locks: how often a tab says it is alive. */
export const ALIVE_EVERY_MS = 5_000;
/** Over http: streams the leader holds at most; more rooms are polled. */
export const HTTP1_STREAMS = 4;
/** Over http, past {@link HTTP1_STREAMS} rooms: how often the leader lists each of the others. */
export const SHARED_POLL_INTERVAL_MS = 3_000;
/** With Web Locks: how often the leader looks for tabs that went without a word. */
const GC_EVERY_MS = 5_000;
/** Without Web Locks: how long a new tab listens before it may lead. */
const ELECTION_GRACE_MS = 300;

/** What a client asks the hub for. */
export interface SharedRequest {
  roomId: string;
  roomToken: string;
  limit: number;
}

/** Where the hub delivers to one client. */
export interface SharedSink {
  /** A snapshot of the room; `first` when it opens a new stream. */
  snapshot(snapshot: RoomSnapshot, first: boolean): void;
  /** The room token was refused: heartbeat for a fresh one (then call `update`). */
  refreshToken(): void;
}

/** One client's subscription to the hub. */
export interface SharedWatch {
  /** The client's latest room token (after every good heartbeat). */
  update(roomToken: string): void;
  close(): void;
}

/** The state of this tab's sharing, for display and tests. */
export interface TabHub {
  /** This tab's id on the channel (not a session id). */
  readonly tabId: string;
  /** True while this tab holds the streams for all tabs. */
  readonly isLeader: boolean;
  /** How the leader is chosen here: Web Locks, or messages (no secure context). */
  readonly election: "locks" | "messages";
  /** Rooms (room, limit) this tab holds a stream for: 0 unless it leads. */
  readonly streams: number;
  /** Rooms this tab polls for the others (over http, past {@link HTTP1_STREAMS}): 0 unless it leads. */
  readonly polls: number;
  watch(request: SharedRequest, sink: SharedSink): SharedWatch;
}

type Want = { key: string; roomId: string; limit: number; roomToken: string };

type Message =
  | { kind: "hello"; tab: string }
  | { kind: "wants"; tab: string; wants: Want[] }
  | { kind: "bye"; tab: string }
  | { kind: "leader"; tab: string }
  | { kind: "alive"; tab: string; since: number }
  | { kind: "snapshot"; key: string; data: Uint8Array; first: boolean }
  | { kind: "refresh"; key: string };

const TOKEN_REFUSED = new Set([Code.InvalidArgument, Code.Unauthenticated, Code.PermissionDenied, Code.NotFound]);
const BACKOFF: BackoffOptions = { initialMs: 500, maxMs: 30_000 };

const hubs = new Map<string, Hub>();

/**
 * This tab's hub for presenced at `baseUrl`, or undefined where tabs cannot
 * share (no `BroadcastChannel`, or not in a page).
 */
export function tabHubFor(baseUrl: string): TabHub | undefined {
  if (typeof BroadcastChannel === "undefined" || typeof window === "undefined") return undefined;
  let hub = hubs.get(baseUrl);
  if (!hub) {
    hub = new Hub(baseUrl);
    hubs.set(baseUrl, hub);
  }
  return hub;
}

function keyOf(roomId: string, limit: number): string {
  return JSON.stringify([roomId, limit]);
}

interface Local {
  key: string;
  roomId: string;
  limit: number;
  roomToken: string;
  sink: SharedSink;
}

class Hub implements TabHub {
  readonly tabId = randomUUID();
  readonly election: "locks" | "messages";
  isLeader = false;

  private readonly name: string;
  private readonly rpc: Client<typeof PresenceService>;
  private channel: BroadcastChannel | undefined;
  private readonly locals = new Set<Local>();
  /** Every sharing tab's wants, this one's included. */
  private readonly wants = new Map<string, Want[]>();
  /** The latest snapshot of each key, from the leader (or our own streams). */
  private readonly latest = new Map<string, RoomSnapshot>();
  private readonly feeds = new Map<string, Feed>();
  /** The newest room token seen for each key, any tab's. */
  private readonly tokens = new Map<string, string>();
  // Lock election.
  private lockAbort: AbortController | undefined;
  private releaseLock: (() => void) | undefined;
  /** Each sharing tab holds a lock of its own, so the leader can see who is gone. */
  private releaseTabLock: (() => void) | undefined;
  private gcTimer: ReturnType<typeof setInterval> | undefined;
  private readonly wantsAt = new Map<string, number>();
  /** Order in which keys were first wanted: the first ones get the streams. */
  private readonly order = new Map<string, number>();
  private readonly maxStreams: number;
  // Message election.
  private since = 0;
  private readonly peers = new Map<string, { since: number; seenAt: number }>();
  private aliveTimer: ReturnType<typeof setInterval> | undefined;
  private graceTimer: ReturnType<typeof setTimeout> | undefined;
  private electing = false;
  /** Frozen while sharing: join again on resume. */
  private frozen = false;

  constructor(baseUrl: string) {
    this.name = `presenced:${baseUrl}`;
    this.rpc = createClient(PresenceService, createGrpcWebTransport({ baseUrl }));
    this.election = typeof navigator !== "undefined" && navigator.locks ? "locks" : "messages";
    // Browsers speak HTTP/2 only over TLS: http: is HTTP/1.1, six connections.
    this.maxStreams = baseUrl.startsWith("http:") ? HTTP1_STREAMS : Infinity;
    if (typeof document !== "undefined") {
      document.addEventListener("freeze", () => {
        if (!this.channel) return;
        this.deactivate();
        this.frozen = true;
      });
      document.addEventListener("resume", () => {
        if (!this.frozen) return;
        this.frozen = false;
        if (this.locals.size > 0) {
          this.activate();
          this.announce();
        }
      });
    }
  }

  get streams(): number {
    return [...this.feeds.values()].filter((f) => f.mode === "stream").length;
  }

  get polls(): number {
    return [...this.feeds.values()].filter((f) => f.mode === "poll").length;
  }

  watch(request: SharedRequest, sink: SharedSink): SharedWatch {
    const local: Local = { key: keyOf(request.roomId, request.limit), ...request, sink };
    const wasIdle = this.locals.size === 0;
    this.locals.add(local);
    this.tokens.set(local.key, request.roomToken);
    if (wasIdle) this.activate();
    this.announce();
    const known = this.latest.get(local.key);
    if (known) sink.snapshot(known, false);
    return {
      update: (roomToken) => {
        if (!this.locals.has(local)) return;
        const changed = roomToken !== local.roomToken;
        local.roomToken = roomToken;
        this.tokens.set(local.key, roomToken);
        if (changed) this.announce();
        this.feeds.get(local.key)?.update(roomToken);
      },
      close: () => {
        if (!this.locals.delete(local)) return;
        if (this.locals.size === 0) {
          if (this.channel) this.deactivate();
          this.frozen = false;
        } else if (this.channel) {
          this.announce();
        }
      },
    };
  }

  // --- membership ---------------------------------------------------------

  private activate(): void {
    this.channel = new BroadcastChannel(this.name);
    this.channel.onmessage = (event: MessageEvent<Message>) => this.receive(event.data);
    this.post({ kind: "hello", tab: this.tabId });
    if (this.election === "locks") {
      const abort = new AbortController();
      this.lockAbort = abort;
      navigator.locks
        .request(`${this.name}#${this.tabId}`, { signal: abort.signal }, () =>
          abort.signal.aborted ? undefined : new Promise<void>((release) => (this.releaseTabLock = release)),
        )
        .catch(() => {
          // AbortError: we stopped sharing before it was ours.
        });
      this.gcTimer = setInterval(() => void this.collect(), GC_EVERY_MS);
      navigator.locks
        .request(this.name, { signal: abort.signal }, () => {
          if (abort.signal.aborted) return;
          return new Promise<void>((release) => {
            this.releaseLock = release;
            this.lead(true);
          });
        })
        .catch(() => {
          // AbortError: we stopped sharing before the lock was ours.
        });
    } else {
      this.since = Date.now();
      this.post({ kind: "alive", tab: this.tabId, since: this.since });
      this.aliveTimer = setInterval(() => {
        this.post({ kind: "alive", tab: this.tabId, since: this.since });
        this.elect();
      }, ALIVE_EVERY_MS);
      this.electing = false;
      this.graceTimer = setTimeout(() => {
        this.electing = true;
        this.elect();
      }, ELECTION_GRACE_MS);
    }
  }

  private deactivate(): void {
    this.post({ kind: "bye", tab: this.tabId });
    this.lockAbort?.abort();
    this.lockAbort = undefined;
    this.releaseLock?.();
    this.releaseLock = undefined;
    this.releaseTabLock?.();
    this.releaseTabLock = undefined;
    clearInterval(this.gcTimer);
    clearInterval(this.aliveTimer);
    clearTimeout(this.graceTimer);
    this.aliveTimer = this.graceTimer = undefined;
    this.peers.clear();
    this.lead(false);
    this.wants.clear();
    this.latest.clear();
    this.channel?.close();
    this.channel = undefined;
  }

  /** Tells every tab (and ourselves) what this tab's clients want. */
  private announce(): void {
    const mine = new Map<string, Want>();
    for (const l of this.locals) {
      mine.set(l.key, { key: l.key, roomId: l.roomId, limit: l.limit, roomToken: this.tokens.get(l.key) ?? l.roomToken });
    }
    const wants = [...mine.values()];
    this.wants.set(this.tabId, wants);
    this.post({ kind: "wants", tab: this.tabId, wants });
    this.reconcile();
  }

  private receive(message: Message): void {
    switch (message.kind) {
      case "hello":
        if (this.isLeader) this.post({ kind: "leader", tab: this.tabId });
        if (this.election === "messages") this.post({ kind: "alive", tab: this.tabId, since: this.since });
        this.announce();
        break;
      case "wants": {
        const before = this.wants.get(message.tab);
        this.wants.set(message.tab, message.wants);
        this.wantsAt.set(message.tab, Date.now());
        for (const w of message.wants) {
          if (before?.find((b) => b.key === w.key)?.roomToken !== w.roomToken) {
            this.tokens.set(w.key, w.roomToken);
            this.feeds.get(w.key)?.update(w.roomToken);
          }
        }
        this.reconcile();
        if (this.isLeader) {
          // A tab that just came needs the rooms' current state now.
          for (const w of message.wants) {
            const known = this.latest.get(w.key);
            if (known) this.post({ kind: "snapshot", key: w.key, data: toBinary(RoomSnapshotSchema, known), first: false });
          }
        }
        break;
      }
      case "bye":
        this.wants.delete(message.tab);
        this.peers.delete(message.tab);
        this.elect();
        this.reconcile();
        break;
      case "leader":
        // Our wants may have gone out before the new leader listened.
        this.announce();
        break;
      case "alive":
        this.peers.set(message.tab, { since: message.since, seenAt: Date.now() });
        this.elect();
        break;
      case "snapshot":
        this.deliver(message.key, fromBinary(RoomSnapshotSchema, message.data), message.first);
        break;
      case "refresh":
        for (const l of this.locals) if (l.key === message.key) l.sink.refreshToken();
        break;
    }
  }

  private post(message: Message): void {
    try {
      this.channel?.postMessage(message);
    } catch {
      // A closed channel (the page is going away): nothing to tell.
    }
  }

  /**
   * Lock election: drops the wants of tabs that went without a "bye" (a
   * crash), seen by their own lock no longer being held.
   */
  private async collect(): Promise<void> {
    if (!this.isLeader) return;
    const { held = [] } = await navigator.locks.query();
    const alive = new Set(held.map((lock) => lock.name));
    let dropped = false;
    for (const tab of [...this.wants.keys()]) {
      if (tab === this.tabId || alive.has(`${this.name}#${tab}`)) continue;
      if (Date.now() - (this.wantsAt.get(tab) ?? 0) < GC_EVERY_MS) continue; // its lock may be on its way
      this.wants.delete(tab);
      this.wantsAt.delete(tab);
      dropped = true;
    }
    if (dropped) this.reconcile();
  }

  // --- leading -------------------------------------------------------------

  /** Message election: the live tab that started sharing first leads. */
  private elect(): void {
    if (this.election !== "messages" || !this.electing || !this.channel) return;
    const now = Date.now();
    let leader = { tab: this.tabId, since: this.since };
    for (const [tab, peer] of this.peers) {
      if (now - peer.seenAt > PEER_TIMEOUT_MS) {
        this.peers.delete(tab);
        this.wants.delete(tab);
        continue;
      }
      if (peer.since < leader.since || (peer.since === leader.since && tab < leader.tab)) {
        leader = { tab, since: peer.since };
      }
    }
    this.lead(leader.tab === this.tabId);
  }

  private lead(leader: boolean): void {
    if (leader === this.isLeader) return;
    this.isLeader = leader;
    if (leader) {
      this.post({ kind: "leader", tab: this.tabId });
      this.reconcile();
    } else {
      for (const feed of this.feeds.values()) feed.close();
      this.feeds.clear();
    }
  }

  /** As leader: one stream per key some tab wants, none for the others. */
  private reconcile(): void {
    if (!this.isLeader) return;
    const wanted = new Map<string, Want>();
    for (const list of this.wants.values()) {
      for (const w of list) {
        wanted.set(w.key, w);
        if (!this.order.has(w.key)) this.order.set(w.key, this.order.size);
      }
    }
    const ranked = [...wanted.keys()].sort((a, b) => this.order.get(a)! - this.order.get(b)!);
    const modeOf = (key: string): "stream" | "poll" => (ranked.indexOf(key) < this.maxStreams ? "stream" : "poll");
    for (const [key, feed] of this.feeds) {
      if (!wanted.has(key) || feed.mode !== modeOf(key)) {
        feed.close();
        this.feeds.delete(key);
        if (!wanted.has(key)) {
          this.latest.delete(key);
          this.order.delete(key);
        }
      }
    }
    for (const [key, w] of wanted) {
      if (this.feeds.has(key)) continue;
      const feed = new Feed(this.rpc, modeOf(key), w.roomId, w.limit, this.tokens.get(key) ?? w.roomToken, {
        snapshot: (snapshot, first) => {
          this.post({ kind: "snapshot", key, data: toBinary(RoomSnapshotSchema, snapshot), first });
          this.deliver(key, snapshot, first);
        },
        refused: () => {
          this.post({ kind: "refresh", key });
          for (const l of this.locals) if (l.key === key) l.sink.refreshToken();
        },
      });
      this.feeds.set(key, feed);
    }
  }

  private deliver(key: string, snapshot: RoomSnapshot, first: boolean): void {
    const known = this.latest.get(key);
    if (!first && known && snapshot.version <= known.version) return;
    this.latest.set(key, snapshot);
    for (const l of [...this.locals]) if (l.key === key) l.sink.snapshot(snapshot, first);
  }
}

/**
 * The leader's stream of one (room, limit): re-subscribes with backoff when it
 * breaks, and asks the tabs for a fresh token when its token is refused.
 */
class Feed {
  private abort: AbortController | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private failures = 0;
  private refusedToken: string | undefined;
  private closed = false;

  constructor(
    private readonly rpc: Client<typeof PresenceService>,
    readonly mode: "stream" | "poll",
    private readonly roomId: string,
    private readonly limit: number,
    private token: string,
    private readonly out: { snapshot(s: RoomSnapshot, first: boolean): void; refused(): void },
  ) {
    void this.run();
  }

  update(token: string): void {
    this.token = token;
    if (this.refusedToken !== undefined && token !== this.refusedToken && this.timer !== undefined) {
      // We were waiting for this: try it now.
      clearTimeout(this.timer);
      this.timer = undefined;
      void this.run();
    }
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.abort?.abort();
  }

  private async run(): Promise<void> {
    const abort = new AbortController();
    this.abort = abort;
    const token = this.token;
    let first = true;
    let error: unknown;
    try {
      if (this.mode === "poll") {
        let version: bigint | undefined;
        while (!abort.signal.aborted) {
          const { snapshot } = await this.rpc.list(
            { roomToken: this.token, limit: this.limit },
            { signal: abort.signal, timeoutMs: 10_000 },
          );
          this.failures = 0;
          this.refusedToken = undefined;
          // Each answer is the room now: passed on when it changed.
          if (snapshot && snapshot.roomId === this.roomId && snapshot.version !== version) {
            version = snapshot.version;
            this.out.snapshot(snapshot, true);
          }
          await new Promise<void>((resolve) => {
            const timer = setTimeout(done, SHARED_POLL_INTERVAL_MS);
            function done() {
              clearTimeout(timer);
              abort.signal.removeEventListener("abort", done);
              resolve();
            }
            abort.signal.addEventListener("abort", done);
          });
        }
        return;
      }
      for await (const response of this.rpc.watchRoom({ roomToken: token, limit: this.limit }, { signal: abort.signal })) {
        this.failures = 0;
        this.refusedToken = undefined;
        if (response.snapshot && response.snapshot.roomId === this.roomId) {
          this.out.snapshot(response.snapshot, first);
          first = false;
        }
      }
    } catch (e) {
      error = e;
    }
    if (this.closed || abort.signal.aborted) return;
    this.failures++;
    if (error instanceof ConnectError && TOKEN_REFUSED.has(error.code)) {
      this.refusedToken = token;
      this.out.refused();
    }
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.run();
    }, backoffDelay(this.failures, BACKOFF));
  }
}
