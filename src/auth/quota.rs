//! Per-caller quotas: request rates per principal and per peer address, and
//! open watch streams per connection and per principal. A caller over its
//! quota is refused with RESOURCE_EXHAUSTED; nobody else is slowed or
//! evicted (the counters are per key).
//!
//! Bounds on stored state (sessions, rooms: the engine's `Limits`) live in
//! the engine.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::Principal;

/// A limit was reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} limit reached: at most {limit}")]
pub struct Exceeded {
    /// Which limit.
    pub what: &'static str,
    /// Its configured value.
    pub limit: u64,
}

/// The configured values (`--rate-*`, `--max-watches-*`); 0 turns a limit
/// off.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
#[group(id = "caller_limits")]
pub struct Config {
    /// Requests per second per authenticated user, burst twice that (0 = no
    /// limit).
    #[arg(long, env = "PRESENCE_RATE_PER_USER", default_value_t = 50)]
    pub rate_per_user: u32,

    /// Requests per second per service, burst twice that (0 = no limit).
    #[arg(long, env = "PRESENCE_RATE_PER_SERVICE", default_value_t = 0)]
    pub rate_per_service: u32,

    /// Requests per second per peer IP address, burst twice that (0 = no
    /// limit; many users can share one address behind a NAT or proxy).
    #[arg(long, env = "PRESENCE_RATE_PER_PEER", default_value_t = 0)]
    pub rate_per_peer: u32,

    /// Open watch streams per connection (0 = no limit).
    #[arg(
        id = "max_watches_per_connection",
        value_name = "MAX_WATCHES_PER_CONNECTION",
        long = "max-watches-per-connection",
        env = "PRESENCE_MAX_WATCHES_PER_CONNECTION",
        default_value_t = 1000
    )]
    pub watches_per_connection: usize,

    /// Open watch streams per caller: per user or service when the watch
    /// presents a credential, else per peer IP address (0 = no limit).
    #[arg(
        id = "max_watches_per_principal",
        value_name = "MAX_WATCHES_PER_PRINCIPAL",
        long = "max-watches-per-principal",
        env = "PRESENCE_MAX_WATCHES_PER_PRINCIPAL",
        default_value_t = 0
    )]
    pub watches_per_principal: usize,
}

/// Tracks the quotas of [`Config`] for every caller.
pub struct Quotas {
    config: Config,
    users: Option<DefaultKeyedRateLimiter<Arc<str>>>,
    services: Option<DefaultKeyedRateLimiter<Arc<str>>>,
    peers: Option<DefaultKeyedRateLimiter<IpAddr>>,
    watches: Mutex<WatchCounts>,
}

#[derive(Default)]
struct WatchCounts {
    by_connection: HashMap<SocketAddr, usize>,
    by_principal: HashMap<String, usize>,
}

fn keyed<K: std::hash::Hash + Eq + Clone>(per_second: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(per_second.saturating_mul(2)).expect("non-zero");
    Some(RateLimiter::keyed(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

impl Quotas {
    /// A limiter enforcing `config`.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            users: keyed(config.rate_per_user),
            services: keyed(config.rate_per_service),
            peers: keyed(config.rate_per_peer),
            watches: Mutex::default(),
        }
    }

    /// Activity one request of `principal` from `peer` against the rates.
    pub fn check_rate(
        &self,
        principal: Option<&Principal>,
        peer: Option<SocketAddr>,
    ) -> Result<(), Exceeded> {
        if let (Some(limiter), Some(peer)) = (&self.peers, peer) {
            limiter.check_key(&peer.ip()).map_err(|_| Exceeded {
                what: "requests per second per peer address",
                limit: self.config.rate_per_peer.into(),
            })?;
        }
        match principal {
            Some(Principal::User(user)) => {
                if let Some(limiter) = &self.users {
                    limiter.check_key(user).map_err(|_| Exceeded {
                        what: "requests per second per user",
                        limit: self.config.rate_per_user.into(),
                    })?;
                }
            }
            Some(Principal::Service(name)) => {
                if let Some(limiter) = &self.services {
                    limiter.check_key(name).map_err(|_| Exceeded {
                        what: "requests per second per service",
                        limit: self.config.rate_per_service.into(),
                    })?;
                }
            }
            Some(Principal::Open) | None => {}
        }
        Ok(())
    }

    /// Registers an open watch stream on connection `conn` for `owner`; the
    /// permit unregisters it when dropped.
    pub fn open_watch(
        self: &Arc<Self>,
        conn: Option<SocketAddr>,
        owner: String,
    ) -> Result<WatchPermit, Exceeded> {
        let mut counts = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        let per_conn = self.config.watches_per_connection;
        let per_owner = self.config.watches_per_principal;
        if let Some(conn) = conn {
            if per_conn > 0 && counts.by_connection.get(&conn).copied().unwrap_or(0) >= per_conn {
                return Err(Exceeded {
                    what: "watch streams per connection",
                    limit: per_conn as u64,
                });
            }
        }
        if per_owner > 0 && counts.by_principal.get(&owner).copied().unwrap_or(0) >= per_owner {
            return Err(Exceeded {
                what: "watch streams per principal",
                limit: per_owner as u64,
            });
        }
        if let Some(conn) = conn {
            *counts.by_connection.entry(conn).or_default() += 1;
        }
        *counts.by_principal.entry(owner.clone()).or_default() += 1;
        Ok(WatchPermit {
            quotas: self.clone(),
            conn,
            owner,
        })
    }

    /// Forgets idle rate-limit keys; call now and then.
    pub fn housekeeping(&self) {
        if let Some(l) = &self.users {
            l.retain_recent();
        }
        if let Some(l) = &self.services {
            l.retain_recent();
        }
        if let Some(l) = &self.peers {
            l.retain_recent();
        }
    }
}

/// An open watch stream's place in the counts.
pub struct WatchPermit {
    quotas: Arc<Quotas>,
    conn: Option<SocketAddr>,
    owner: String,
}

impl Drop for WatchPermit {
    fn drop(&mut self) {
        let mut counts = self
            .quotas
            .watches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
        if let Some(conn) = self.conn {
            release(&mut counts.by_connection, &conn);
        }
        release(&mut counts.by_principal, &self.owner);
    }
}
