//! The gRPC edge: generated types, the service implementation, conversions
//! between protobuf and engine types, and the one mapping from errors to
//! `tonic::Status`. Nothing outside this module sees prost types, except the
//! transport assembly in `server.rs`.

mod convert;
mod service;
mod status;
mod wire;

pub use service::PresenceApi;
pub use status::{grpc_code, http_status};

/// Code generated from `proto/presence/v1/presence.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("presence.v1");

    pub use super::wire::WatchRoomResponse;

    /// The encoded descriptor set of `presence.v1` and its imports, with
    /// source info (doc comments), for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("presence_descriptor");

    /// The descriptor set of `grpc.health.v1` with its doc comments, for
    /// server reflection (the service itself is tonic-health's).
    pub const HEALTH_FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("health_descriptor");
}
