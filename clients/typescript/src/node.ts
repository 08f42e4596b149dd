/**
 * Node entry point: service-to-service calls over gRPC (HTTP/2) with
 * `@connectrpc/connect-node`. Backends use it for the trusted RPCs
 * (ListRoom, UpdateRoomUser, RemoveRoomUser, RemoveRoom, ListUser) and to
 * heartbeat on behalf of their users (a `PresenceClient` with this transport).
 */
import { createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, type GrpcTransportOptions } from "@connectrpc/connect-node";
import { PresenceService } from "./gen/presence/v1/presence_pb.js";
import type { PresenceServiceClient } from "./index.js";

export * from "./index.js";

/**
 * A gRPC (HTTP/2) transport to presenced at `baseUrl` (`http://host:port`);
 * `options` tune it (interceptors for credentials, keepalive pings, …).
 */
export function createNodeTransport(
  baseUrl: string,
  options: Omit<GrpcTransportOptions, "baseUrl"> = {},
): Transport {
  return createGrpcTransport({ ...options, baseUrl });
}

/** A PresenceService client over gRPC, for Node services. */
export function createNodePresenceServiceClient(baseUrl: string): PresenceServiceClient {
  return createClient(PresenceService, createNodeTransport(baseUrl));
}
