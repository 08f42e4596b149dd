/**
 * @presenced/client: talk to presenced from a browser (grpc-web) or from
 * Node (see `@presenced/client/node`), and keep a live view of a room.
 *
 * ```ts
 * const presence = new PresenceClient({ baseUrl, roomId: "doc:1", userId: "ada" }).start();
 * presence.subscribe((snapshot) => render(snapshot.users));
 * ```
 *
 * React users: `@presenced/client/react` has `usePresence` and `FacePile`;
 * React Native users: `@presenced/client/react-native` has the same hook.
 */
import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { PresenceService } from "./gen/presence/v1/presence_pb.js";

export {
  PresenceClient,
  DEFAULT_INTERVAL_MS,
  MIN_INTERVAL_MS,
  MAX_INTERVAL_MS,
  DISCONNECT_PATH,
  DEFAULT_POLL_INTERVAL_MS,
  MIN_POLL_INTERVAL_MS,
  type PresenceOptions,
  type PresencePhase,
  type PresenceOperation,
} from "./client.js";
export { backoffDelay, type BackoffOptions } from "./backoff.js";
export { browserEnvironment, type PresenceEnvironment } from "./environment.js";
export { tabHubFor, PEER_TIMEOUT_MS, type TabHub } from "./tabs.js";
export { createGrpcWebTextTransport, type GrpcWebTextTransportOptions } from "./text-transport.js";
export { randomUUID } from "./ids.js";
export { toPresenceList, formatLastSeen, type PresenceUser, type PresenceList } from "./users.js";
export * from "./gen/presence/v1/presence_pb.js";

/** The generated PresenceService client type (every RPC, typed). */
export type PresenceServiceClient = Client<typeof PresenceService>;

/** A PresenceService client over a transport of your choice. */
export function createPresenceServiceClient(transport: Transport): PresenceServiceClient {
  return createClient(PresenceService, transport);
}

/** A PresenceService client over grpc-web, for browsers. */
export function createWebPresenceServiceClient(baseUrl: string): PresenceServiceClient {
  return createClient(PresenceService, createGrpcWebTransport({ baseUrl }));
}
