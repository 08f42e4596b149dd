/**
 * React bindings: `usePresence` joins a room and returns its users (the
 * current user first); `FacePile` shows them.
 *
 * ```tsx
 * const users = usePresence({ baseUrl, roomId: "doc:1", userId: me });
 * return <FacePile users={users} />;
 * ```
 */
import {
  useEffect,
  useRef,
  useState,
  useSyncExternalStore,
  type CSSProperties,
  type ReactElement,
} from "react";
import { PresenceClient, type PresenceOptions } from "./client.js";
import { formatLastSeen, type PresenceList, type PresenceUser } from "./users.js";

export type { PresenceList, PresenceUser } from "./users.js";

/** Options of {@link usePresence}: those of {@link PresenceClient}. */
export type UsePresenceOptions = PresenceOptions;

/**
 * A started {@link PresenceClient} for these options, or undefined during the
 * first render. A new client (and session) is made when an option that names
 * the session changes (baseUrl, roomId, userId, sessionId, intervalMs, limit,
 * disconnectWhenHidden, beaconUrl, watch, pollIntervalMs, shareAcrossTabs); `transport`, `environment` and the
 * backoff options are read when it is made; `onError` is always the latest.
 * The client is stopped (its session ended) on unmount.
 *
 * Under React StrictMode the effect runs, is cleaned up and runs again at
 * once; the client starts on the next task, so the first client never
 * reaches the server and leaves no ghost session behind.
 */
export function usePresenceClient(options: UsePresenceOptions): PresenceClient | undefined {
  const latest = useRef(options);
  useEffect(() => {
    latest.current = options;
  });
  const key = JSON.stringify([
    options.baseUrl,
    options.roomId,
    options.userId,
    options.sessionId,
    options.intervalMs,
    options.limit,
    options.disconnectWhenHidden,
    options.beaconUrl,
    options.watch,
    options.pollIntervalMs,
    options.shareAcrossTabs,
  ]);
  const [client, setClient] = useState<PresenceClient>();
  useEffect(() => {
    const created = new PresenceClient({
      ...latest.current,
      onError: (error, operation) => latest.current.onError?.(error, operation),
    });
    setClient(created);
    const timer = setTimeout(() => created.start(), 0);
    return () => {
      clearTimeout(timer);
      void created.stop();
      setClient((current) => (current === created ? undefined : current));
    };
  }, [key]);
  return client;
}

const noSubscription = () => () => {};
const nothing = () => undefined;

/**
 * Joins the room as `userId` for as long as the component is mounted, and
 * returns the room's users, the current user first, or undefined until the
 * first snapshot arrives. The list also carries `onlineCount` and
 * `totalCount`, which count users beyond the listing's limit.
 */
export function usePresence(options: UsePresenceOptions): PresenceList | undefined {
  const client = usePresenceClient(options);
  return useSyncExternalStore(
    client?.subscribe ?? noSubscription,
    client?.getUsers ?? nothing,
    nothing,
  );
}

export interface FacePileProps {
  /** The users to show, e.g. from {@link usePresence}; undefined while loading. */
  users: readonly PresenceUser[] | undefined;
  /** Users in the room in all; default: the list's `totalCount`, else its length. */
  totalCount?: number;
  /** Avatars shown before "+N"; default 5. */
  max?: number;
  /** Avatar diameter in pixels; default 36. */
  size?: number;
  /** Display name; default: `data.name` when it is a string, else the user id. */
  getName?: (user: PresenceUser) => string;
  /** Picture URL; default: `data.avatarUrl` when it is a string, else initials. */
  getImageUrl?: (user: PresenceUser) => string | undefined;
  /** Locale of "last seen …"; default "en". */
  locale?: string;
  className?: string;
  style?: CSSProperties;
}

function defaultName(user: PresenceUser): string {
  const name = user.data?.["name"];
  return typeof name === "string" && name !== "" ? name : user.userId;
}

function defaultImageUrl(user: PresenceUser): string | undefined {
  const url = user.data?.["avatarUrl"];
  return typeof url === "string" && url !== "" ? url : undefined;
}

function initials(name: string): string {
  const words = name.split(/[\s._@-]+/).filter((w) => w !== "");
  const letters = words.length > 1 ? [words[0]!, words[1]!] : [name];
  return letters
    .map((w) => Array.from(w)[0] ?? "")
    .join("")
    .toUpperCase();
}

/** A stable colour per user id, so a face keeps its colour everywhere. */
function colourOf(id: string): string {
  let hash = 0;
  for (let i = 0; i < id.length; i++) {
    hash = (Math.imul(hash, 31) + id.charCodeAt(i)) | 0;
  }
  return `hsl(${Math.abs(hash) % 360} 55% 42%)`;
}

/** Re-renders every `periodMs` while `enabled`, for relative times. */
function useNow(periodMs: number, enabled: boolean): Date {
  const [now, setNow] = useState(() => new Date());
  useEffect(() => {
    if (!enabled) return;
    setNow(new Date());
    const timer = setInterval(() => setNow(new Date()), periodMs);
    return () => clearInterval(timer);
  }, [periodMs, enabled]);
  return now;
}

/** "online", "last seen 5 minutes ago", or "offline" (left at an unknown time). */
export function presenceStatus(user: PresenceUser, now: Date = new Date(), locale = "en"): string {
  if (user.online) return "online";
  if (!user.lastDisconnected) return "offline";
  return `last seen ${formatLastSeen(user.lastDisconnected, now, locale)}`;
}

/** Tooltip and accessible label of one avatar: "ada (you): online". */
export function describeUser(
  user: PresenceUser,
  name: string,
  now: Date = new Date(),
  locale = "en",
): string {
  return `${user.isSelf ? `${name} (you)` : name}: ${presenceStatus(user, now, locale)}`;
}

/**
 * The first `max` users as overlapping round avatars (online ones with a
 * green dot, offline ones greyed out, each titled "… online" or "… last seen
 * 5 minutes ago"), then "+N" for the rest of the room's `totalCount`.
 */
export function FacePile({
  users,
  totalCount,
  max = 5,
  size = 36,
  getName = defaultName,
  getImageUrl = defaultImageUrl,
  locale = "en",
  className,
  style,
}: FacePileProps): ReactElement {
  const shown = users ? users.slice(0, Math.max(0, max)) : [];
  const now = useNow(30_000, shown.some((u) => !u.online));
  const total = totalCount ?? (users as Partial<PresenceList> | undefined)?.totalCount ?? users?.length ?? 0;
  const rest = Math.max(0, total - shown.length);
  const online = users?.filter((u) => u.online).length ?? 0;
  const onlineCount = (users as Partial<PresenceList> | undefined)?.onlineCount ?? online;
  const label = users
    ? `${total} ${total === 1 ? "person" : "people"}, ${onlineCount} online`
    : "loading presence";
  const disc: CSSProperties = {
    boxSizing: "border-box",
    flex: "none",
    width: size,
    height: size,
    borderRadius: "50%",
    border: "2px solid #fff",
    display: "flex",
    alignItems: "center",
    justifyContent: "center",
    position: "relative",
    fontFamily: "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
    fontSize: Math.round(size * 0.38),
    fontWeight: 600,
    lineHeight: 1,
    userSelect: "none",
  };
  return (
    <div
      role="list"
      aria-label={label}
      aria-busy={users === undefined}
      className={className ? `presenced-facepile ${className}` : "presenced-facepile"}
      style={{ display: "flex", alignItems: "center", minHeight: size, ...style }}
    >
      {shown.map((user, i) => {
        const name = getName(user);
        const image = getImageUrl(user);
        const description = describeUser(user, name, now, locale);
        return (
          <div
            key={user.userId}
            role="listitem"
            className="presenced-avatar"
            data-user-id={user.userId}
            data-online={user.online ? "true" : "false"}
            title={description}
            aria-label={description}
            style={{
              ...disc,
              marginLeft: i === 0 ? 0 : -Math.round(size / 4),
              zIndex: shown.length - i,
              background: colourOf(user.userId),
              color: "#fff",
              filter: user.online ? undefined : "grayscale(1)",
              opacity: user.online ? 1 : 0.5,
            }}
          >
            {image ? (
              <img
                src={image}
                alt=""
                style={{ width: "100%", height: "100%", borderRadius: "50%", objectFit: "cover" }}
              />
            ) : (
              <span aria-hidden="true">{initials(name)}</span>
            )}
            {user.online ? (
              <span
                aria-hidden="true"
                style={{
                  position: "absolute",
                  right: -2,
                  bottom: -2,
                  width: Math.round(size / 3.5),
                  height: Math.round(size / 3.5),
                  borderRadius: "50%",
                  background: "#22c55e",
                  border: "2px solid #fff",
                  boxSizing: "border-box",
                }}
              />
            ) : null}
          </div>
        );
      })}
      {rest > 0 ? (
        <div
          role="listitem"
          className="presenced-facepile-more"
          title={`${rest} more`}
          aria-label={`${rest} more`}
          style={{
            ...disc,
            marginLeft: shown.length === 0 ? 0 : -Math.round(size / 4),
            background: "#e5e7eb",
            color: "#374151",
            fontSize: Math.round(size * (rest > 99 ? 0.28 : 0.34)),
          }}
        >
          +{rest}
        </div>
      ) : null}
    </div>
  );
}
