/**
 * The React hooks, shared by the web (`@presenced/client/react`) and React
 * Native (`@presenced/client/react-native`) entries; each passes the way it
 * makes its clients.
 */
import { useEffect, useRef, useState, useSyncExternalStore } from "react";
import type { PresenceClient, PresenceOptions } from "./client.js";
import type { PresenceList } from "./users.js";

/**
 * The options that name a session (or change how it is watched): a new
 * client is made when one of them changes.
 */
const SESSION_KEYS = [
  "baseUrl",
  "roomId",
  "userId",
  "sessionId",
  "intervalMs",
  "limit",
  "disconnectWhenHidden",
  "beaconUrl",
  "watch",
  "pollIntervalMs",
  "shareAcrossTabs",
] as const;

/**
 * A started client for `options`, made by `create`, or undefined during the
 * first render. See `usePresenceClient` in either entry.
 */
export function useClient<O extends Pick<PresenceOptions, "onError">>(
  options: O,
  create: (options: O) => PresenceClient,
): PresenceClient | undefined {
  const latest = useRef(options);
  useEffect(() => {
    latest.current = options;
  });
  const record = options as Record<string, unknown>;
  const key = JSON.stringify(SESSION_KEYS.map((k) => record[k]));
  const [client, setClient] = useState<PresenceClient>();
  useEffect(() => {
    const created = create({
      ...latest.current,
      onError: (error, operation) => latest.current.onError?.(error, operation),
    });
    setClient(created);
    // Under StrictMode this effect is cleaned up at once: the timer never
    // fires, so the first client never reaches the server.
    const timer = setTimeout(() => created.start(), 0);
    return () => {
      clearTimeout(timer);
      void created.stop();
      setClient((current) => (current === created ? undefined : current));
    };
    // `create` is fixed per entry; `key` names everything else that matters.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [key]);
  return client;
}

const noSubscription = () => () => {};
const nothing = () => undefined;

/** The client's users, re-rendering on every change; undefined until the first snapshot. */
export function useClientUsers(client: PresenceClient | undefined): PresenceList | undefined {
  return useSyncExternalStore(client?.subscribe ?? noSubscription, client?.getUsers ?? nothing, nothing);
}
