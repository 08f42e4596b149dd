/**
 * React bindings: `usePresence` joins a room and returns its users (the
 * current user first); `FacePile` shows them.
 *
 * ```tsx
 * const users = usePresence({ baseUrl, roomId: "doc:1", userId: me });
 * return <FacePile users={users} />;
 * ```
 */
import { PresenceClient, type PresenceOptions } from "./client.js";
import { useClient, useClientUsers } from "./hooks.js";
import type { PresenceList } from "./users.js";

export type { PresenceList, PresenceUser } from "./users.js";
export { presenceStatus, describeUser } from "./status.js";
export { FacePile, FACEPILE_CSS, type FacePileProps } from "./facepile.js";

/** Options of {@link usePresence}: those of {@link PresenceClient}. */
export type UsePresenceOptions = PresenceOptions;

const create = (options: UsePresenceOptions) => new PresenceClient(options);

/**
 * A started {@link PresenceClient} for these options, or undefined during the
 * first render. A new client (and session) is made when an option that names
 * the session changes (baseUrl, roomId, userId, sessionId, intervalMs, limit,
 * disconnectWhenHidden, beaconUrl, watch, pollIntervalMs, shareAcrossTabs);
 * `transport`, `environment` and the backoff options are read when it is
 * made; `onError` is always the latest. The client is stopped (its session
 * ended) on unmount.
 *
 * Under React StrictMode the effect runs, is cleaned up and runs again at
 * once; the client starts on the next task, so the first client never
 * reaches the server and leaves no ghost session behind.
 */
export function usePresenceClient(options: UsePresenceOptions): PresenceClient | undefined {
  return useClient(options, create);
}

/**
 * Joins the room as `userId` for as long as the component is mounted, and
 * returns the room's users, the current user first, or undefined until the
 * first snapshot arrives. The list also carries `onlineCount` and
 * `totalCount`, which count users beyond the listing's limit.
 */
export function usePresence(options: UsePresenceOptions): PresenceList | undefined {
  return useClientUsers(usePresenceClient(options));
}
