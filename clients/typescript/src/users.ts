import type { JsonObject } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { RoomSnapshot } from "./gen/presence/v1/presence_pb.js";

/** One user of a room, in plain types. */
export interface PresenceUser {
  /** User id. */
  readonly userId: string;
  /** True while at least one of the user's sessions in the room is alive. */
  readonly online: boolean;
  /** When the user's last session ended; undefined while online. */
  readonly lastDisconnected: Date | undefined;
  /** The user's data in the room (set by a backend with UpdateRoomUser). */
  readonly data: JsonObject | undefined;
  /** True for the user this client heartbeats as. */
  readonly isSelf: boolean;
}

/**
 * The users of a room as listed by one snapshot, the current user first,
 * with the room-wide counts (which cover users beyond the listing's limit).
 */
export interface PresenceList extends ReadonlyArray<PresenceUser> {
  /** Room id. */
  readonly roomId: string;
  /** Users online in the room, listed or not. */
  readonly onlineCount: number;
  /** Users in the room, online and offline, listed or not. */
  readonly totalCount: number;
  /** The snapshot's version (grows with every change of the room). */
  readonly version: bigint;
}

/**
 * Turns a snapshot into a {@link PresenceList}: the server's order (online
 * users in the order they came, then offline users, most recent first) with
 * the current user moved to the front. When the listing was cut by its limit
 * and the current user is online but not in it, an entry for them is put in
 * front anyway: a face pile always shows its own user.
 */
export function toPresenceList(
  snapshot: RoomSnapshot,
  self?: { userId: string; online: boolean },
): PresenceList {
  const users: PresenceUser[] = snapshot.users.map((u) => ({
    userId: u.userId,
    online: u.online,
    lastDisconnected: u.lastDisconnected ? timestampDate(u.lastDisconnected) : undefined,
    data: u.data,
    isSelf: self !== undefined && u.userId === self.userId,
  }));
  if (self) {
    const at = users.findIndex((u) => u.isSelf);
    if (at > 0) {
      users.unshift(...users.splice(at, 1));
    } else if (at < 0 && self.online && snapshot.users.length < snapshot.totalCount) {
      users.unshift({
        userId: self.userId,
        online: true,
        lastDisconnected: undefined,
        data: undefined,
        isSelf: true,
      });
    }
  }
  return Object.assign(users, {
    roomId: snapshot.roomId,
    onlineCount: snapshot.onlineCount,
    totalCount: snapshot.totalCount,
    version: snapshot.version,
  });
}

/**
 * "just now", "5 minutes ago", "yesterday": how long ago `then` was, for a
 * "last seen …" label.
 */
export function formatLastSeen(then: Date, now: Date = new Date(), locale = "en"): string {
  const seconds = Math.round((now.getTime() - then.getTime()) / 1000);
  if (seconds < 45) {
    return "just now";
  }
  const format = new Intl.RelativeTimeFormat(locale, { numeric: "auto" });
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) {
    return format.format(-minutes, "minute");
  }
  const hours = Math.round(minutes / 60);
  if (hours < 24) {
    return format.format(-hours, "hour");
  }
  return format.format(-Math.round(hours / 24), "day");
}
