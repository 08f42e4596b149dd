/**
 * React Native entry: `usePresence` with the same API as the web hook.
 *
 * ```tsx
 * import { fetch } from "expo/fetch";
 * import { usePresence } from "@presenced/client/react-native";
 *
 * const users = usePresence({ baseUrl, roomId: "doc:1", userId: me, fetch });
 * ```
 *
 * What differs from the web:
 * - **App lifecycle, not page visibility**: the app going to the background
 *   ends the session (a Disconnect call; there is no `sendBeacon`) unless
 *   `disconnectWhenHidden` is false; coming back to the foreground resumes it
 *   at once. An app killed in the background cannot call anything: its
 *   session ends by the deadline, 2.5 × `intervalMs` after its last heartbeat.
 * - **Transport**: React Native's own `fetch` cannot stream a response body.
 *   Give a `fetch` that can (Expo's `expo/fetch`, or a polyfill you install)
 *   and the client watches the room with a WatchRoom stream over it, every
 *   change at once. Without one, it polls List every `pollIntervalMs`
 *   (default 3 s, at least 1 s) over grpc-web-text, which needs nothing but
 *   `fetch` and `response.text()`; polling pauses in the background.
 * - **Session ids** come from `expo-crypto` when the app has it, else from
 *   `crypto.randomUUID` / `crypto.getRandomValues` where present; else give
 *   a `sessionId`.
 */
import { AppState } from "react-native";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { PresenceClient, type PresenceOptions } from "./client.js";
import type { PresenceEnvironment } from "./environment.js";
import { useClient, useClientUsers } from "./hooks.js";
import { randomUUID } from "./ids.js";
import { createGrpcWebTextTransport } from "./text-transport.js";
import type { PresenceList } from "./users.js";

export { PresenceClient } from "./client.js";
export { formatLastSeen, toPresenceList, type PresenceList, type PresenceUser } from "./users.js";
export { presenceStatus, describeUser } from "./status.js";
export { createGrpcWebTextTransport } from "./text-transport.js";

/** Options of the React Native {@link usePresence}. */
export interface ReactNativePresenceOptions
  extends Omit<PresenceOptions, "beaconUrl" | "shareAcrossTabs" | "environment"> {
  /**
   * A fetch that can stream response bodies (`import { fetch } from
   * "expo/fetch"`). With it, snapshots come from a WatchRoom stream; without
   * it, from polling List (see the module comment). Ignored when a
   * `transport` is given.
   */
  fetch?: typeof globalThis.fetch;
  /**
   * The app lifecycle to follow; default React Native's `AppState`. `null`
   * follows none.
   */
  environment?: PresenceEnvironment | null;
}

/** The part of React Native's `AppState` the client uses. */
export interface AppStateLike {
  readonly currentState: string | null | undefined;
  addEventListener(type: "change", listener: (state: string) => void): { remove(): void };
}

/**
 * The app lifecycle as a {@link PresenceEnvironment}: "visible" unless the
 * app is in the background (iOS's passing `inactive` state, e.g. while the
 * control centre is open, counts as visible). No pagehide/pageshow and no
 * beacon on React Native.
 */
export function appStateEnvironment(appState: AppStateLike = AppState as unknown as AppStateLike): PresenceEnvironment {
  const none = () => () => {};
  return {
    isVisible: () => appState.currentState !== "background",
    onVisibilityChange: (listener) => {
      const subscription = appState.addEventListener("change", () => listener());
      return () => subscription.remove();
    },
    onPageHide: none,
    onPageShow: none,
  };
}

// Metro treats a require inside try/catch as optional: an app without
// expo-crypto still bundles. Jest's and Node's require work the same way.
declare const require: (id: string) => unknown;

/** A random session id: expo-crypto's when the app has it, else Web Crypto's. */
export function reactNativeSessionId(): string {
  try {
    const expoCrypto = require("expo-crypto") as { randomUUID?: () => string };
    if (typeof expoCrypto?.randomUUID === "function") return expoCrypto.randomUUID();
  } catch {
    // not installed
  }
  return randomUUID();
}

/**
 * A {@link PresenceClient} set up for React Native: AppState lifecycle,
 * Disconnect instead of a beacon, streaming over `fetch` when given one and
 * polling otherwise, and a session id from expo-crypto.
 */
export function createReactNativePresenceClient(options: ReactNativePresenceOptions): PresenceClient {
  const { fetch, environment, ...rest } = options;
  const baseUrl = options.baseUrl?.replace(/\/+$/, "");
  let transport = options.transport;
  let watch = options.watch;
  if (!transport && baseUrl) {
    if (fetch) {
      transport = createGrpcWebTransport({ baseUrl, fetch });
    } else {
      transport = createGrpcWebTextTransport({ baseUrl });
      watch = "poll"; // a plain fetch cannot carry a server stream
    }
  }
  return new PresenceClient({
    ...rest,
    ...(transport ? { transport } : {}),
    ...(watch ? { watch } : {}),
    sessionId: options.sessionId ?? reactNativeSessionId(),
    environment: environment === undefined ? appStateEnvironment() : environment,
    shareAcrossTabs: false,
  });
}

/**
 * A started client for these options, or undefined during the first render;
 * as the web `usePresenceClient` (a new client and session when an option
 * naming the session changes; stopped, its session ended, on unmount).
 */
export function usePresenceClient(options: ReactNativePresenceOptions): PresenceClient | undefined {
  return useClient(options, createReactNativePresenceClient);
}

/**
 * Joins the room as `userId` while the component is mounted and returns the
 * room's users, the current user first, or undefined until the first
 * snapshot: the same as the web `usePresence`.
 */
export function usePresence(options: ReactNativePresenceOptions): PresenceList | undefined {
  return useClientUsers(usePresenceClient(options));
}
