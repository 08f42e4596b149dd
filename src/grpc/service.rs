//! `presence.v1.PresenceService` over any [`Store`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio_stream::Stream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::convert;
use super::pb;
use super::pb::presence_service_server::PresenceService;
use super::status::token_status;
use crate::auth::quota::{Quotas, WatchPermit};
use crate::auth::{Authenticator, Principal};
use crate::presence::{Snapshot, Store, Subscription};
use crate::token;

/// The gRPC service. Cheap to clone (every field is a handle).
#[derive(Clone)]
pub struct PresenceApi<S> {
    store: S,
    tokens: token::Signer,
    auth: Arc<Authenticator>,
    quotas: Arc<Quotas>,
    /// Cancelled at shutdown: open watch streams end with UNAVAILABLE.
    shutdown: CancellationToken,
}

impl<S: Store> PresenceApi<S> {
    /// A service over `store`, signing tokens with `tokens`, admitting
    /// callers through `auth` and `limits`, whose streams end when `shutdown`
    /// is cancelled.
    pub fn new(
        store: S,
        tokens: token::Signer,
        auth: Arc<Authenticator>,
        quotas: Arc<Quotas>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            tokens,
            auth,
            quotas,
            shutdown,
        }
    }

    /// The caller of `request`, counted against the rate limits.
    async fn caller<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let certs = request.peer_certs();
        let cert = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
        let principal = self.auth.authenticate(authorization, cert).await?;
        self.quotas
            .check_rate(Some(&principal), request.remote_addr())?;
        Ok(principal)
    }

    /// The caller of `request` if it presents a valid credential (with
    /// authentication on), without counting it against any rate.
    async fn identified<T>(&self, request: &Request<T>) -> Option<Principal> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let certs = request.peer_certs();
        let cert = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
        if authorization.is_none() && cert.is_none() {
            return None;
        }
        match self.auth.authenticate(authorization, cert).await {
            Ok(Principal::Open) | Err(_) => None,
            Ok(principal) => Some(principal),
        }
    }

    /// Admits a call authorized by a capability token alone (per-peer rate).
    fn capability_call<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.quotas.check_rate(None, request.remote_addr())?;
        Ok(())
    }

    /// Ends the session a session token names. Shared by the Disconnect RPC
    /// and the `POST /v1/disconnect` beacon route (which checks the per-peer
    /// rate itself).
    pub async fn disconnect_token(&self, session_token: &str) -> Result<(), Status> {
        let claims = self
            .tokens
            .verify_session(session_token)
            .map_err(|e| token_status("session_token", e))?;
        self.store
            .disconnect(
                &claims.room_id,
                &claims.user_id,
                &claims.session_id,
                Some(claims.incarnation),
            )
            .await?;
        Ok(())
    }

    /// Activity a beacon from `peer` against the per-peer rate.
    pub fn check_peer_rate(&self, peer: Option<std::net::SocketAddr>) -> Result<(), Status> {
        self.quotas.check_rate(None, peer)?;
        Ok(())
    }

    fn room_of(&self, room_token: &str) -> Result<String, Status> {
        self.tokens
            .verify_room(room_token)
            .map_err(|e| token_status("room_token", e))
    }
}

#[tonic::async_trait]
impl<S: Store> PresenceService for PresenceApi<S> {
    #[instrument(level = "debug", skip_all, fields(room_id = %request.get_ref().room_id, user_id = %request.get_ref().user_id))]
    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let principal = self.caller(&request).await?;
        let req = request.into_inner();
        principal.act_as(&req.user_id)?;
        let interval = convert::interval(req.interval)?;
        let lease = self
            .store
            .heartbeat(&req.room_id, &req.user_id, &req.session_id, interval)
            .await?;
        Ok(Response::new(pb::HeartbeatResponse {
            room_token: self.tokens.room_token(&req.room_id),
            session_token: self.tokens.session_token(
                &req.room_id,
                &req.user_id,
                &req.session_id,
                lease.incarnation,
                lease.deadline,
            ),
        }))
    }

    #[instrument(level = "debug", skip_all)]
    async fn disconnect(
        &self,
        request: Request<pb::DisconnectRequest>,
    ) -> Result<Response<pb::DisconnectResponse>, Status> {
        self.capability_call(&request)?;
        self.disconnect_token(&request.get_ref().session_token)
            .await?;
        Ok(Response::new(pb::DisconnectResponse {}))
    }

    #[instrument(level = "debug", skip_all)]
    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        self.capability_call(&request)?;
        let req = request.into_inner();
        let room_id = self.room_of(&req.room_token)?;
        let limit = self.store.limits().list_limit(req.limit);
        let snapshot = self.store.list_room(&room_id, false, req.limit).await?;
        Ok(Response::new(pb::ListResponse {
            snapshot: Some(convert::snapshot(&snapshot, limit)),
        }))
    }

    type WatchRoomStream = WatchRoomStream;

    #[instrument(level = "debug", skip_all)]
    async fn watch_room(
        &self,
        request: Request<pb::WatchRoomRequest>,
    ) -> Result<Response<Self::WatchRoomStream>, Status> {
        self.capability_call(&request)?;
        let peer = request.remote_addr();
        // The room token is all a watch needs; a caller that also presents
        // a valid credential is counted as itself, anyone else by address.
        let owner = match self.identified(&request).await {
            Some(principal) => principal.key(),
            None => peer.map_or_else(|| "peer:unknown".to_owned(), |p| format!("peer:{}", p.ip())),
        };
        let req = request.into_inner();
        let room_id = self.room_of(&req.room_token)?;
        let permit = self.quotas.open_watch(peer, owner)?;
        let limit = self.store.limits().list_limit(req.limit);
        if self.shutdown.is_cancelled() {
            return Err(crate::presence::Error::ShuttingDown.into());
        }
        let subscription = self.store.watch(&room_id).await?;
        Ok(Response::new(WatchRoomStream {
            subscription,
            _permit: permit,
            limit,
            last: None,
            shutdown: Box::pin(self.shutdown.clone().cancelled_owned()),
            done: false,
        }))
    }

    #[instrument(level = "debug", skip_all, fields(user_id = %request.get_ref().user_id))]
    async fn list_user(
        &self,
        request: Request<pb::ListUserRequest>,
    ) -> Result<Response<pb::ListUserResponse>, Status> {
        let principal = self.caller(&request).await?;
        let req = request.into_inner();
        principal.act_as(&req.user_id)?;
        let rooms = self
            .store
            .list_user(&req.user_id, req.online_only, req.limit)
            .await?;
        Ok(Response::new(pb::ListUserResponse {
            rooms: rooms.into_iter().map(convert::room_presence).collect(),
        }))
    }

    #[instrument(level = "debug", skip_all, fields(room_id = %request.get_ref().room_id, user_id = %request.get_ref().user_id))]
    async fn update_room_user(
        &self,
        request: Request<pb::UpdateRoomUserRequest>,
    ) -> Result<Response<pb::UpdateRoomUserResponse>, Status> {
        let principal = self.caller(&request).await?;
        let req = request.into_inner();
        principal.act_as(&req.user_id)?;
        let data = convert::data(req.data)?;
        self.store
            .update_room_user(&req.room_id, &req.user_id, data)
            .await?;
        Ok(Response::new(pb::UpdateRoomUserResponse {}))
    }

    #[instrument(level = "debug", skip_all, fields(room_id = %request.get_ref().room_id))]
    async fn list_room(
        &self,
        request: Request<pb::ListRoomRequest>,
    ) -> Result<Response<pb::ListRoomResponse>, Status> {
        self.caller(&request).await?.trusted("ListRoom")?;
        let req = request.into_inner();
        let limit = self.store.limits().list_limit(req.limit);
        let snapshot = self
            .store
            .list_room(&req.room_id, req.online_only, req.limit)
            .await?;
        Ok(Response::new(pb::ListRoomResponse {
            snapshot: Some(convert::snapshot(&snapshot, limit)),
        }))
    }

    #[instrument(level = "debug", skip_all, fields(room_id = %request.get_ref().room_id, user_id = %request.get_ref().user_id))]
    async fn remove_room_user(
        &self,
        request: Request<pb::RemoveRoomUserRequest>,
    ) -> Result<Response<pb::RemoveRoomUserResponse>, Status> {
        self.caller(&request).await?.trusted("RemoveRoomUser")?;
        let req = request.into_inner();
        self.store
            .remove_room_user(&req.room_id, &req.user_id)
            .await?;
        Ok(Response::new(pb::RemoveRoomUserResponse {}))
    }

    #[instrument(level = "debug", skip_all, fields(room_id = %request.get_ref().room_id))]
    async fn remove_room(
        &self,
        request: Request<pb::RemoveRoomRequest>,
    ) -> Result<Response<pb::RemoveRoomResponse>, Status> {
        self.caller(&request).await?.trusted("RemoveRoom")?;
        self.store.remove_room(&request.get_ref().room_id).await?;
        Ok(Response::new(pb::RemoveRoomResponse {}))
    }
}

/// The response stream of one WatchRoom call: the store's snapshots as this
/// watcher sees them (its `limit`), skipping any that would look identical to
/// the one it sent last; it ends with the store's error if the store cannot
/// read the room, and with UNAVAILABLE at shutdown. Dropping it (the client
/// went away) drops the subscription, which unregisters it.
pub struct WatchRoomStream {
    subscription: Subscription,
    /// Holds this stream's place in the per-connection/per-caller counts.
    _permit: WatchPermit,
    limit: usize,
    last: Option<Arc<Snapshot>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    done: bool,
}

impl Stream for WatchRoomStream {
    type Item = Result<pb::WatchRoomResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.subscription).poll_next(cx) {
                Poll::Ready(Some(Err(err))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(err.into())));
                }
                Poll::Ready(Some(Ok(snapshot))) => {
                    if let Some(last) = &this.last {
                        if last.same_view(&snapshot, this.limit) {
                            continue;
                        }
                    }
                    // Encoded once per change (and view), shared by watchers.
                    let message = pb::WatchRoomResponse::shared(&snapshot, this.limit);
                    this.last = Some(snapshot);
                    return Poll::Ready(Some(Ok(message)));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                // Shutdown is looked at only when there is nothing to send
                // (its future takes a lock per poll, and this stream is
                // polled twice per delivery); its waker stays registered.
                Poll::Pending => {
                    if this.shutdown.as_mut().poll(cx).is_ready() {
                        this.done = true;
                        return Poll::Ready(Some(Err(Status::unavailable(
                            "the presence service is shutting down; reconnect",
                        ))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}
