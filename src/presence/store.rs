//! The storage boundary: everything the RPC layer asks of presence state.
//!
//! The embedded [`Memory`](super::Memory) store implements it; a shared
//! store (Redis) implements the same trait and slots in without touching
//! the RPC layer. Methods are async because a shared store is remote.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::Stream;

use super::memory::{Memory, Subscription};
use super::model::{Error, Limits, RoomPresence, Snapshot};

/// Presence state: sessions in, listings and snapshot streams out.
/// See DESIGN §2 for the semantics every implementation keeps.
pub trait Store: Clone + Send + Sync + 'static {
    /// A stream of a room's snapshots: the current one first, then the latest
    /// after each change. Dropping it unsubscribes.
    type Subscription: Stream<Item = Arc<Snapshot>> + Send + Unpin + 'static;

    /// The bounds this store enforces.
    fn limits(&self) -> &Limits;

    /// Creates the session or pushes its deadline to now + 2.5 × interval.
    fn heartbeat(
        &self,
        room_id: &str,
        user_id: &str,
        session_id: &str,
        interval: Duration,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Ends a session; idempotent.
    fn disconnect(
        &self,
        room_id: &str,
        user_id: &str,
        session_id: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Replaces a listed user's data in a room.
    fn update_room_user(
        &self,
        room_id: &str,
        user_id: &str,
        data: serde_json::Map<String, serde_json::Value>,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Removes a user from a room; idempotent.
    fn remove_room_user(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Removes a room; idempotent.
    fn remove_room(&self, room_id: &str) -> impl Future<Output = Result<(), Error>> + Send;

    /// The room's listing now.
    fn list_room(
        &self,
        room_id: &str,
        online_only: bool,
        limit: u32,
    ) -> impl Future<Output = Result<Snapshot, Error>> + Send;

    /// The rooms where a user is listed.
    fn list_user(
        &self,
        user_id: &str,
        online_only: bool,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<RoomPresence>, Error>> + Send;

    /// Subscribes to a room's snapshots.
    fn watch(
        &self,
        room_id: &str,
    ) -> impl Future<Output = Result<Self::Subscription, Error>> + Send;
}

impl Store for Memory {
    type Subscription = Subscription;

    fn limits(&self) -> &Limits {
        Memory::limits(self)
    }

    async fn heartbeat(
        &self,
        room_id: &str,
        user_id: &str,
        session_id: &str,
        interval: Duration,
    ) -> Result<(), Error> {
        Memory::heartbeat(self, room_id, user_id, session_id, interval)
    }

    async fn disconnect(
        &self,
        room_id: &str,
        user_id: &str,
        session_id: &str,
    ) -> Result<(), Error> {
        Memory::disconnect(self, room_id, user_id, session_id);
        Ok(())
    }

    async fn update_room_user(
        &self,
        room_id: &str,
        user_id: &str,
        data: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), Error> {
        Memory::update_room_user(self, room_id, user_id, data)
    }

    async fn remove_room_user(&self, room_id: &str, user_id: &str) -> Result<(), Error> {
        Memory::remove_room_user(self, room_id, user_id)
    }

    async fn remove_room(&self, room_id: &str) -> Result<(), Error> {
        Memory::remove_room(self, room_id)
    }

    async fn list_room(
        &self,
        room_id: &str,
        online_only: bool,
        limit: u32,
    ) -> Result<Snapshot, Error> {
        Memory::list_room(self, room_id, online_only, limit)
    }

    async fn list_user(
        &self,
        user_id: &str,
        online_only: bool,
        limit: u32,
    ) -> Result<Vec<RoomPresence>, Error> {
        Memory::list_user(self, user_id, online_only, limit)
    }

    async fn watch(&self, room_id: &str) -> Result<Subscription, Error> {
        Memory::watch(self, room_id)
    }
}
