// An in-memory presenced for unit tests of the client's state machine: a
// connect router transport whose handlers the test controls (answer or fail
// each heartbeat, push snapshots into or break each watch), and a fake page
// lifecycle.
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createRouterTransport, type Transport } from "@connectrpc/connect";
import { vi } from "vitest";
import type { PresenceEnvironment } from "../../src/environment.js";
import {
  PresenceService,
  RoomSnapshotSchema,
  UserPresenceSchema,
  type HeartbeatRequest,
  type HeartbeatResponse,
  type RoomSnapshot,
} from "../../src/gen/presence/v1/presence_pb.js";

/** Lets pending promises, microtasks and due timers run. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await vi.advanceTimersByTimeAsync(0);
}

export function snapshot(version: number, users: Array<[string, boolean]>, roomId = "room"): RoomSnapshot {
  return create(RoomSnapshotSchema, {
    roomId,
    version: BigInt(version),
    onlineCount: users.filter(([, online]) => online).length,
    totalCount: users.length,
    users: users.map(([userId, online]) => create(UserPresenceSchema, { userId, online })),
  });
}

export class FakeWatch {
  readonly token: string;
  aborted = false;
  ended = false;
  private queue: Array<RoomSnapshot | Error | null> = [];
  private wake: (() => void) | undefined;

  constructor(token: string, signal: AbortSignal) {
    this.token = token;
    signal.addEventListener("abort", () => {
      this.aborted = true;
      this.wake?.();
    });
  }

  send(s: RoomSnapshot): void {
    this.queue.push(s);
    this.wake?.();
  }

  fail(error: Error): void {
    this.queue.push(error);
    this.wake?.();
  }

  end(): void {
    this.queue.push(null);
    this.wake?.();
  }

  async *stream(): AsyncGenerator<{ snapshot: RoomSnapshot }> {
    try {
      for (;;) {
        while (this.queue.length === 0 && !this.aborted) {
          await new Promise<void>((r) => (this.wake = r));
        }
        if (this.aborted) return;
        const item = this.queue.shift()!;
        if (item === null) return;
        if (item instanceof Error) throw item;
        yield { snapshot: item };
      }
    } finally {
      this.ended = true;
    }
  }
}

type Tokens = Pick<HeartbeatResponse, "roomToken" | "sessionToken">;

interface PendingHeartbeat {
  request: HeartbeatRequest;
  resolve(response: Tokens): void;
  reject(error: Error): void;
}

export class FakeServer {
  /** Room token handed out by automatic heartbeat answers. */
  roomToken = "room-A";
  /** "auto": answer at once; "fail": UNAVAILABLE; "manual": wait for the test. */
  heartbeatMode: "auto" | "fail" | "manual" = "auto";
  readonly heartbeats: Array<{ request: HeartbeatRequest; at: number }> = [];
  readonly pending: PendingHeartbeat[] = [];
  readonly disconnects: string[] = [];
  readonly watches: FakeWatch[] = [];
  inflight = 0;
  maxInflight = 0;
  private issued = 0;

  readonly transport: Transport = createRouterTransport(({ service }) => {
    service(PresenceService, {
      heartbeat: async (request, context) => {
        this.heartbeats.push({ request, at: Date.now() });
        this.inflight++;
        this.maxInflight = Math.max(this.maxInflight, this.inflight);
        try {
          if (this.heartbeatMode === "fail") {
            throw new ConnectError("server away", Code.Unavailable);
          }
          if (this.heartbeatMode === "manual") {
            return await new Promise<Tokens>((resolve, reject) => {
              this.pending.push({ request, resolve, reject });
              context.signal.addEventListener("abort", () => reject(context.signal.reason as Error));
            });
          }
          return this.tokens();
        } finally {
          this.inflight--;
        }
      },
      disconnect: async (request) => {
        this.disconnects.push(request.sessionToken);
        return {};
      },
      watchRoom: (request, context) => {
        const watch = new FakeWatch(request.roomToken, context.signal);
        this.watches.push(watch);
        return watch.stream();
      },
    });
  });

  /** The next tokens: the current room token and a new session token. */
  tokens(): Tokens {
    this.issued++;
    return { roomToken: this.roomToken, sessionToken: `session-${this.issued}` };
  }

  /** Answers the oldest pending heartbeat with fresh tokens. */
  answer(): Tokens {
    const next = this.pending.shift();
    if (!next) throw new Error("no heartbeat pending");
    const tokens = this.tokens();
    next.resolve(tokens);
    return tokens;
  }

  get lastWatch(): FakeWatch {
    const w = this.watches.at(-1);
    if (!w) throw new Error("no watch");
    return w;
  }
}

export class FakeEnvironment implements PresenceEnvironment {
  visible = true;
  readonly beacons: Array<{ url: string; body: string }> = [];
  private readonly visibility = new Set<() => void>();
  private readonly hides = new Set<(persisted: boolean) => void>();
  private readonly shows = new Set<(persisted: boolean) => void>();

  isVisible(): boolean {
    return this.visible;
  }
  onVisibilityChange(listener: () => void): () => void {
    this.visibility.add(listener);
    return () => this.visibility.delete(listener);
  }
  onPageHide(listener: (persisted: boolean) => void): () => void {
    this.hides.add(listener);
    return () => this.hides.delete(listener);
  }
  onPageShow(listener: (persisted: boolean) => void): () => void {
    this.shows.add(listener);
    return () => this.shows.delete(listener);
  }
  sendBeacon(url: string, body: string): boolean {
    this.beacons.push({ url, body });
    return true;
  }

  get listenerCount(): number {
    return this.visibility.size + this.hides.size + this.shows.size;
  }
  hide(): void {
    this.visible = false;
    for (const l of [...this.visibility]) l();
  }
  show(): void {
    this.visible = true;
    for (const l of [...this.visibility]) l();
  }
  /** A tab closing: pagehide, then the document turns hidden. */
  close(persisted = false): void {
    for (const l of [...this.hides]) l(persisted);
    this.hide();
  }
  restore(): void {
    this.visible = true;
    for (const l of [...this.shows]) l(true);
  }
}
