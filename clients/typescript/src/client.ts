/**
 * The framework-free presence client: one session of one user in one room.
 *
 * It heartbeats (never two heartbeats in flight), keeps the last good tokens
 * when a heartbeat fails and retries with jittered backoff, watches the room
 * (its own WatchRoom stream, re-subscribed when it breaks or the room token
 * changes; or the stream the browser's tabs share, see tabs.ts; or polling
 * List), and hands the latest snapshot to its subscribers. In a browser it ends its
 * session with `navigator.sendBeacon` on `pagehide`, and by default while the
 * page is hidden (a hidden tab's timers are throttled, so its heartbeats
 * would come late and the user would flap between online and offline).
 *
 * Phases:
 * - `idle`: constructed, `start()` not called yet.
 * - `active`: heartbeating and watching.
 * - `hidden`: the page is hidden (and `disconnectWhenHidden`): the session is
 *   ended, no heartbeats, still watching the room.
 * - `suspended`: after `pagehide` (the page closed, or went into the
 *   back/forward cache): the session is ended and nothing runs; `pageshow`
 *   from the cache resumes.
 * - `stopped`: `stop()` was called; final.
 */
import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { backoffDelay, type BackoffOptions } from "./backoff.js";
import { browserEnvironment, type PresenceEnvironment } from "./environment.js";
import { PresenceService, type RoomSnapshot } from "./gen/presence/v1/presence_pb.js";
import { randomUUID } from "./ids.js";
import { tabHubFor, type SharedWatch, type TabHub } from "./tabs.js";
import { toPresenceList, type PresenceList } from "./users.js";

/** Default heartbeat interval: the session ends 25 s after the last one. */
export const DEFAULT_INTERVAL_MS = 10_000;
/** The server's bounds on the heartbeat interval. */
export const MIN_INTERVAL_MS = 1_000;
export const MAX_INTERVAL_MS = 600_000;
/** Path of the server's beacon route (POST, session token as text/plain). */
export const DISCONNECT_PATH = "/v1/disconnect";
/** Default and least time between two List calls when watching by polling. */
export const DEFAULT_POLL_INTERVAL_MS = 3_000;
export const MIN_POLL_INTERVAL_MS = 1_000;

/** What went wrong, for {@link PresenceOptions.onError}. */
export type PresenceOperation = "heartbeat" | "watch" | "disconnect";

/** See the module comment. */
export type PresencePhase = "idle" | "active" | "hidden" | "suspended" | "stopped";

export interface PresenceOptions {
  /**
   * Where presenced is, e.g. `http://127.0.0.1:50051` (no trailing path).
   * Used for the default grpc-web transport and the beacon URL.
   */
  baseUrl?: string;
  /** Room id. */
  roomId: string;
  /** User id. */
  userId: string;
  /** Session id, unique per tab or device; default: a random UUID. */
  sessionId?: string;
  /** Heartbeat interval in milliseconds, 1 s to 10 min; default 10 s. */
  intervalMs?: number;
  /** Users per snapshot; 0 (default) means the server's default (100). */
  limit?: number;
  /**
   * End the session while the page is hidden and start it again when it is
   * visible (default true). Turn it off to stay online in background tabs,
   * at the cost of late heartbeats from throttled timers.
   */
  disconnectWhenHidden?: boolean;
  /** Transport to the server; default: grpc-web to `baseUrl`. */
  transport?: Transport;
  /**
   * How snapshots arrive: `"stream"` (default) holds a WatchRoom stream and
   * gets each change at once; `"poll"` calls List every `pollIntervalMs`
   * instead, for transports that cannot stream (React Native's plain fetch).
   */
  watch?: "stream" | "poll";
  /** Time between two List calls with `watch: "poll"`: at least 1 s; default 3 s. */
  pollIntervalMs?: number;
  /**
   * Share one set of WatchRoom streams among all tabs of this origin (default
   * true in a browser that has `BroadcastChannel`, when no `transport` is
   * given): one tab, elected with the Web Locks API, watches the rooms of
   * every tab and passes the snapshots on, so tabs do not each hold a
   * connection (a browser allows six per host over HTTP/1.1). Each tab still
   * heartbeats its own session.
   */
  shareAcrossTabs?: boolean;
  /**
   * The user's JWT, for a presenced that requires one (sent as
   * `authorization: Bearer …` with each heartbeat; watching and ending the
   * session use the tokens the heartbeat returns). A function is called
   * before every heartbeat, so it can hand out a refreshed token; if it
   * throws, that heartbeat fails and is retried like any other.
   */
  accessToken?: string | (() => string | Promise<string>);
  /** URL the pagehide beacon goes to; default `${baseUrl}/v1/disconnect`. */
  beaconUrl?: string;
  /** Retries after failed heartbeats; default 500 ms up to min(interval, 30 s). */
  heartbeatBackoff?: Partial<BackoffOptions>;
  /** Re-subscriptions after a broken watch; default 500 ms up to 30 s. */
  watchBackoff?: Partial<BackoffOptions>;
  /** Source of jitter, in [0, 1); default Math.random. */
  random?: () => number;
  /**
   * The page lifecycle to follow; default: the browser's when there is one.
   * `null` follows none (a Node service, a test).
   */
  environment?: PresenceEnvironment | null;
  /** Told about every failure (they are all retried); default: ignored. */
  onError?: (error: unknown, operation: PresenceOperation) => void;
}

interface Tokens {
  roomToken: string;
  sessionToken: string;
}

interface Watch {
  token: string;
  abort: AbortController;
  /** Set when the snapshots come through the tabs' shared hub. */
  shared?: SharedWatch;
}

type Listener = (snapshot: RoomSnapshot) => void;

/** `ConnectError` codes that mean the room token itself was refused. */
const TOKEN_REFUSED = new Set([
  Code.InvalidArgument,
  Code.Unauthenticated,
  Code.PermissionDenied,
  Code.NotFound,
]);

export class PresenceClient {
  readonly roomId: string;
  readonly userId: string;
  readonly sessionId: string;
  readonly intervalMs: number;

  private readonly limit: number;
  private readonly disconnectWhenHidden: boolean;
  private readonly rpc: Client<typeof PresenceService>;
  private readonly beaconUrl: string | undefined;
  private readonly env: PresenceEnvironment | undefined;
  private readonly heartbeatBackoff: BackoffOptions;
  private readonly watchBackoff: BackoffOptions;
  private readonly random: () => number;
  private readonly onError: ((error: unknown, operation: PresenceOperation) => void) | undefined;
  private readonly accessToken: PresenceOptions["accessToken"];
  private readonly watchMode: "stream" | "poll";
  private readonly pollIntervalMs: number;
  private readonly hub: TabHub | undefined;

  private phase: PresencePhase = "idle";
  /**
   * Bumped whenever the session is meant to change state (hidden, shown,
   * stopped): a heartbeat answer from an older epoch raced that change.
   */
  private epoch = 0;
  /** The last good tokens; kept when a heartbeat fails. */
  private tokens: Tokens | undefined;
  /** True once the session named by `tokens` has been ended by us. */
  private sessionEnded = false;
  private heartbeating = false;
  private inflight: Promise<void> = Promise.resolve();
  private heartbeatTimer: ReturnType<typeof setTimeout> | undefined;
  private heartbeatFailures = 0;
  private watch: Watch | undefined;
  private watchTimer: ReturnType<typeof setTimeout> | undefined;
  private watchFailures = 0;
  private snapshot: RoomSnapshot | undefined;
  private usersCache: { snapshot: RoomSnapshot; selfOnline: boolean; list: PresenceList } | undefined;
  private readonly listeners = new Set<Listener>();
  private readonly detach: Array<() => void> = [];
  private ending: Promise<void> = Promise.resolve();

  constructor(options: PresenceOptions) {
    if (!options.roomId) throw new Error("presence: roomId must be a non-empty string");
    if (!options.userId) throw new Error("presence: userId must be a non-empty string");
    const intervalMs = options.intervalMs ?? DEFAULT_INTERVAL_MS;
    if (!(intervalMs >= MIN_INTERVAL_MS && intervalMs <= MAX_INTERVAL_MS)) {
      throw new Error(
        `presence: intervalMs must be from ${MIN_INTERVAL_MS} to ${MAX_INTERVAL_MS}, got ${intervalMs}`,
      );
    }
    const baseUrl = options.baseUrl?.replace(/\/+$/, "");
    if (!options.transport && !baseUrl) {
      throw new Error("presence: give a baseUrl or a transport");
    }
    this.roomId = options.roomId;
    this.userId = options.userId;
    this.sessionId = options.sessionId ?? randomUUID();
    this.intervalMs = intervalMs;
    this.limit = options.limit ?? 0;
    this.disconnectWhenHidden = options.disconnectWhenHidden ?? true;
    this.accessToken = options.accessToken;
    const pollIntervalMs = options.pollIntervalMs ?? DEFAULT_POLL_INTERVAL_MS;
    if (!(pollIntervalMs >= MIN_POLL_INTERVAL_MS)) {
      throw new Error(`presence: pollIntervalMs must be at least ${MIN_POLL_INTERVAL_MS}, got ${pollIntervalMs}`);
    }
    this.watchMode = options.watch ?? "stream";
    this.pollIntervalMs = pollIntervalMs;
    const transport = options.transport ?? createGrpcWebTransport({ baseUrl: baseUrl! });
    this.rpc = createClient(PresenceService, transport);
    const share = options.shareAcrossTabs ?? (options.transport === undefined && options.environment === undefined);
    this.hub = share && baseUrl && this.watchMode === "stream" ? tabHubFor(baseUrl) : undefined;
    this.beaconUrl = options.beaconUrl ?? (baseUrl ? baseUrl + DISCONNECT_PATH : undefined);
    this.env = options.environment === null ? undefined : (options.environment ?? browserEnvironment());
    this.heartbeatBackoff = {
      initialMs: 500,
      maxMs: Math.min(intervalMs, 30_000),
      ...options.heartbeatBackoff,
    };
    this.watchBackoff = { initialMs: 500, maxMs: 30_000, ...options.watchBackoff };
    this.random = options.random ?? Math.random;
    this.onError = options.onError;
  }

  /**
   * This tab's share of the origin's streams (see `shareAcrossTabs`), or
   * undefined when this client watches on its own.
   */
  get sharing(): TabHub | undefined {
    return this.hub;
  }

  /** Where the client is in its life (see the module comment). */
  get currentPhase(): PresencePhase {
    return this.phase;
  }

  /** True while the last heartbeat succeeded and the session was not ended since. */
  get online(): boolean {
    return (
      this.phase === "active" &&
      this.tokens !== undefined &&
      !this.sessionEnded &&
      this.heartbeatFailures === 0
    );
  }

  /** The latest room snapshot, or undefined before the first one. */
  getSnapshot = (): RoomSnapshot | undefined => this.snapshot;

  /**
   * The latest snapshot as a {@link PresenceList} (the current user first),
   * or undefined before the first one. The same object until something
   * changes, as React's useSyncExternalStore needs.
   */
  getUsers = (): PresenceList | undefined => {
    const snapshot = this.snapshot;
    if (!snapshot) return undefined;
    const selfOnline = this.online;
    const cache = this.usersCache;
    if (cache && cache.snapshot === snapshot && cache.selfOnline === selfOnline) {
      return cache.list;
    }
    const list = toPresenceList(snapshot, { userId: this.userId, online: selfOnline });
    this.usersCache = { snapshot, selfOnline, list };
    return list;
  };

  /**
   * Calls `listener` with the latest snapshot now (when there is one) and
   * with every newer one; returns the unsubscriber.
   */
  subscribe = (listener: Listener): (() => void) => {
    this.listeners.add(listener);
    if (this.snapshot) {
      this.call(listener, this.snapshot);
    }
    return () => {
      this.listeners.delete(listener);
    };
  };

  /** Starts heartbeating and watching. Idempotent. */
  start(): this {
    if (this.phase !== "idle") return this;
    const env = this.env;
    if (env) {
      this.detach.push(
        env.onVisibilityChange(() => this.visibilityChanged()),
        env.onPageHide(() => this.pageHidden()),
        env.onPageShow((persisted) => this.pageShown(persisted)),
      );
    }
    if (this.disconnectWhenHidden && env && !env.isVisible()) {
      this.phase = "hidden";
    } else {
      this.phase = "active";
      void this.heartbeat();
    }
    return this;
  }

  /**
   * Stops for good: no more heartbeats or snapshots, and the session is
   * ended on the server (waiting for a heartbeat in flight first, so that it
   * cannot bring the session back). Resolves when the Disconnect call is
   * answered; never rejects.
   */
  async stop(): Promise<void> {
    if (this.phase === "stopped") return this.ending;
    this.phase = "stopped";
    this.epoch++;
    for (const undo of this.detach.splice(0)) undo();
    this.clearHeartbeatTimer();
    this.stopWatching();
    if (this.heartbeating) {
      await this.inflight;
    }
    this.ending = this.endSession("rpc");
    return this.ending;
  }

  /** Sends a heartbeat now, or joins the one in flight. */
  private heartbeat(): Promise<void> {
    if (this.heartbeating) return this.inflight;
    this.clearHeartbeatTimer();
    this.heartbeating = true;
    this.inflight = this.runHeartbeat(this.epoch);
    return this.inflight;
  }

  private async runHeartbeat(epoch: number): Promise<void> {
    let tokens: Tokens | undefined;
    try {
      const jwt = typeof this.accessToken === "function" ? await this.accessToken() : this.accessToken;
      const response = await this.rpc.heartbeat(
        {
          roomId: this.roomId,
          userId: this.userId,
          sessionId: this.sessionId,
          interval: durationFromMs(this.intervalMs),
        },
        { timeoutMs: this.intervalMs, headers: jwt ? { authorization: `Bearer ${jwt}` } : undefined },
      );
      tokens = { roomToken: response.roomToken, sessionToken: response.sessionToken };
    } catch (error) {
      this.heartbeatFailures++;
      this.report(error, "heartbeat");
    }
    this.heartbeating = false;
    if (tokens) {
      this.tokens = tokens;
      this.sessionEnded = false;
      this.heartbeatFailures = 0;
    }
    if (this.phase === "stopped") {
      return; // stop() ends the session once this has settled
    }
    if (this.phase !== "active") {
      // Hidden or page hidden while in flight: the heartbeat may have brought
      // the session back after it was ended, so end it again.
      if (tokens) void this.endSession("beacon");
      return;
    }
    if (epoch !== this.epoch) {
      // Hidden and shown again while in flight: the disconnect sent on hiding
      // may have reached the server after this heartbeat. Heartbeat again.
      void this.heartbeat();
      return;
    }
    if (tokens) {
      this.ensureWatch();
      this.scheduleHeartbeat(this.intervalMs);
    } else {
      this.scheduleHeartbeat(backoffDelay(this.heartbeatFailures, this.heartbeatBackoff, this.random));
    }
    this.notifySelfChange();
  }

  private scheduleHeartbeat(delayMs: number): void {
    this.clearHeartbeatTimer();
    this.heartbeatTimer = setTimeout(() => {
      this.heartbeatTimer = undefined;
      void this.heartbeat();
    }, delayMs);
  }

  private clearHeartbeatTimer(): void {
    if (this.heartbeatTimer !== undefined) {
      clearTimeout(this.heartbeatTimer);
      this.heartbeatTimer = undefined;
    }
  }

  /**
   * Ends the session named by the last tokens, once. `beacon` when the page
   * may be going away (only a beacon is sure to leave it); `rpc` otherwise.
   */
  private endSession(via: "beacon" | "rpc"): Promise<void> {
    const tokens = this.tokens;
    if (!tokens || this.sessionEnded) return Promise.resolve();
    this.sessionEnded = true;
    this.notifySelfChange();
    if (via === "beacon" && this.env?.sendBeacon && this.beaconUrl) {
      if (this.env.sendBeacon(this.beaconUrl, tokens.sessionToken)) {
        return Promise.resolve();
      }
    }
    return this.rpc.disconnect({ sessionToken: tokens.sessionToken }, { timeoutMs: 10_000 }).then(
      () => undefined,
      (error: unknown) => this.report(error, "disconnect"),
    );
  }

  private visibilityChanged(): void {
    if (!this.env) return;
    if (!this.disconnectWhenHidden) {
      if (this.phase !== "active") return;
      if (this.env.isVisible()) {
        // Back in front: heartbeat now, as the timers of a hidden page (or a
        // suspended app) may have let the session lapse.
        void this.heartbeat();
        this.ensureWatch();
      } else if (this.watchMode === "poll") {
        this.stopWatching(); // still online, but a poll has nothing to show to no one
      }
      return;
    }
    if (!this.env.isVisible()) {
      if (this.phase !== "active") return;
      this.phase = "hidden";
      this.epoch++;
      this.clearHeartbeatTimer();
      if (this.watchMode === "poll") this.stopWatching();
      void this.endSession("beacon");
    } else if (this.phase === "hidden") {
      this.phase = "active";
      this.epoch++;
      void this.heartbeat();
      this.ensureWatch();
    }
  }

  private pageHidden(): void {
    if (this.phase !== "active" && this.phase !== "hidden") return;
    this.phase = "suspended";
    this.epoch++;
    this.clearHeartbeatTimer();
    this.stopWatching();
    void this.endSession("beacon");
  }

  private pageShown(persisted: boolean): void {
    if (this.phase !== "suspended" || !persisted) return;
    this.epoch++;
    if (this.disconnectWhenHidden && this.env && !this.env.isVisible()) {
      this.phase = "hidden";
    } else {
      this.phase = "active";
      void this.heartbeat();
    }
    this.ensureWatch();
  }

  /** Watches the room with the latest room token, unless already doing so. */
  private ensureWatch(): void {
    if (this.phase !== "active" && this.phase !== "hidden") return;
    if (this.watchMode === "poll" && this.env && !this.env.isVisible()) return; // polls pause while hidden
    const token = this.tokens?.roomToken;
    if (!token) return;
    if (this.watch) {
      if (this.watch.shared) {
        // The hub keeps its stream; a new token is for its next one, and any
        // token is the answer to its asking for a fresh one.
        this.watch.token = token;
        this.watch.shared.update(token);
        return;
      }
      if (this.watch.token === token) return;
      this.watch.abort.abort(); // the room token changed: re-subscribe with the new one
      this.watch = undefined;
    }
    if (this.watchTimer !== undefined) {
      clearTimeout(this.watchTimer);
      this.watchTimer = undefined;
    }
    const watch: Watch = { token, abort: new AbortController() };
    this.watch = watch;
    if (this.hub) {
      watch.shared = this.hub.watch(
        { roomId: this.roomId, roomToken: token, limit: this.limit },
        {
          snapshot: (snapshot, first) => {
            if (this.watch === watch) this.accept(snapshot, first);
          },
          refreshToken: () => {
            if (this.watch === watch && this.phase === "active") void this.heartbeat();
          },
        },
      );
      return;
    }
    void this.runWatch(watch);
  }

  private stopWatching(): void {
    if (this.watchTimer !== undefined) {
      clearTimeout(this.watchTimer);
      this.watchTimer = undefined;
    }
    this.watch?.abort.abort();
    this.watch?.shared?.close();
    this.watch = undefined;
  }

  private async runWatch(watch: Watch): Promise<void> {
    let error: unknown;
    let first = true;
    try {
      if (this.watchMode === "poll") {
        await this.poll(watch);
      } else {
        const stream = this.rpc.watchRoom(
          { roomToken: watch.token, limit: this.limit },
          { signal: watch.abort.signal },
        );
        for await (const response of stream) {
          if (this.watch !== watch) return;
          this.watchFailures = 0;
          if (response.snapshot) {
            this.accept(response.snapshot, first);
            first = false;
          }
        }
      }
    } catch (e) {
      error = e;
    }
    if (this.watch !== watch || watch.abort.signal.aborted) return; // replaced or stopped on purpose
    this.watch = undefined;
    this.watchFailures++;
    if (error !== undefined) this.report(error, "watch");
    const refreshToken =
      error instanceof ConnectError && TOKEN_REFUSED.has(error.code);
    this.watchTimer = setTimeout(() => {
      this.watchTimer = undefined;
      if (refreshToken && this.phase === "active") {
        // A fresh heartbeat brings a fresh room token, then watches with it.
        void this.heartbeat().then(() => this.ensureWatch());
      } else {
        this.ensureWatch();
      }
    }, backoffDelay(this.watchFailures, this.watchBackoff, this.random));
  }

  /**
   * Watching by polling: List now, then every `pollIntervalMs` (one call at a
   * time), until the watch is replaced or aborted. Each answer is the
   * server's word on the room now, so it is taken like the first snapshot of
   * a stream. Returns when aborted; throws when a call fails.
   */
  private async poll(watch: Watch): Promise<void> {
    const signal = watch.abort.signal;
    while (this.watch === watch && !signal.aborted) {
      const response = await this.rpc.list(
        { roomToken: watch.token, limit: this.limit },
        { signal, timeoutMs: Math.max(this.pollIntervalMs, 5_000) },
      );
      if (this.watch !== watch) return;
      this.watchFailures = 0;
      if (response.snapshot) this.accept(response.snapshot, true);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, this.pollIntervalMs);
        function done() {
          clearTimeout(timer);
          signal.removeEventListener("abort", done);
          resolve();
        }
        signal.addEventListener("abort", done);
      });
    }
  }

  /**
   * Takes a snapshot from the stream unless it is the one we have (a
   * re-subscription starts with the current snapshot) or older than it. The
   * first snapshot of a new stream is the server's word on the room now, so
   * it is taken even if its version went down.
   */
  private accept(snapshot: RoomSnapshot, firstOfStream: boolean): void {
    const current = this.snapshot;
    if (current && current.roomId === snapshot.roomId) {
      if (snapshot.version === current.version) return;
      if (snapshot.version < current.version && !firstOfStream) return;
    }
    this.snapshot = snapshot;
    for (const listener of [...this.listeners]) {
      this.call(listener, snapshot);
    }
  }

  /** Our own online state feeds getUsers(); tell subscribers it changed. */
  private notifySelfChange(): void {
    const snapshot = this.snapshot;
    const cache = this.usersCache;
    if (!snapshot || !cache || cache.selfOnline === this.online) return;
    for (const listener of [...this.listeners]) {
      this.call(listener, snapshot);
    }
  }

  private call(listener: Listener, snapshot: RoomSnapshot): void {
    try {
      listener(snapshot);
    } catch (error) {
      // A subscriber's bug must not stop the others or the client.
      queueMicrotask(() => {
        throw error;
      });
    }
  }

  private report(error: unknown, operation: PresenceOperation): void {
    try {
      this.onError?.(error, operation);
    } catch {
      // ignore: the callback is informational
    }
  }
}
