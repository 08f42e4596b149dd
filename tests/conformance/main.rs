//! The store conformance suite: the same checks, unchanged, against every
//! store (the embedded memory store, standalone Redis, a Redis Cluster).
//! Each store comes with a [`Harness`] that opens a fresh, isolated store on
//! a manual clock and tells it to sweep; everything else goes through the
//! [`Store`] trait the server uses.
//!
//! - `model.rs`: a plain model and the property test against it.
//! - `scenarios.rs`: named cases (two tabs, ordering, expiry, limits under
//!   concurrency, watchers and coalescing, restarts, …).

#[path = "../common/mod.rs"]
mod common;
mod model;
mod scenarios;

use std::future::Future;
use std::sync::Arc;

use presenced::presence::redis::Target;
use presenced::presence::{Limits, ManualClock, Memory, Redis, RedisConfig, Store};

/// How the suite drives one kind of store.
pub trait Harness: Sync {
    /// The store.
    type S: Store;
    /// Whether a restart grants restored sessions one more interval (the
    /// memory store's state file does; a shared store has nothing to
    /// restore: its state never left Redis).
    const RESTART_GRACE: bool;

    /// A fresh store with no state, on `clock`.
    fn open(&self, limits: Limits, clock: &ManualClock) -> impl Future<Output = Self::S> + Send;

    /// Ends what has expired, purges what is past retention and publishes
    /// what is due, as of the clock.
    fn sweep(&self, store: &Self::S) -> impl Future<Output = ()> + Send;

    /// Waits until every change made so far has reached the store's
    /// watchers here (the memory store publishes synchronously).
    fn settle(&self, store: &Self::S) -> impl Future<Output = ()> + Send;

    /// Live sessions and rooms in all, exactly, now.
    fn counts(&self, store: &Self::S) -> impl Future<Output = (usize, usize)> + Send;

    /// The store after a restart of its process, on the same state.
    fn restart(
        &self,
        store: Self::S,
        limits: Limits,
        clock: &ManualClock,
    ) -> impl Future<Output = Self::S> + Send;
}

/// The embedded store; a restart goes through its state file's export and
/// import.
pub struct MemoryHarness;

impl Harness for MemoryHarness {
    type S = Memory;
    const RESTART_GRACE: bool = true;

    async fn open(&self, limits: Limits, clock: &ManualClock) -> Memory {
        Memory::new(limits, Arc::new(clock.clone()))
    }

    async fn sweep(&self, store: &Memory) {
        store.sweep();
    }

    async fn settle(&self, _: &Memory) {}

    async fn counts(&self, store: &Memory) -> (usize, usize) {
        let stats = store.stats();
        (stats.sessions, stats.rooms)
    }

    async fn restart(&self, store: Memory, limits: Limits, clock: &ManualClock) -> Memory {
        let state = store.export();
        drop(store);
        let restarted = Memory::new(limits, Arc::new(clock.clone()));
        restarted.import(state);
        restarted
    }
}

/// A Redis store (standalone or Cluster) on a key prefix of its own, with
/// its notifications running; time comes from the test's clock.
pub struct RedisHarness {
    url: fn() -> String,
}

impl RedisHarness {
    fn store(&self, prefix: &str, limits: Limits, clock: &ManualClock) -> Redis {
        let target = Target::parse(&(self.url)()).unwrap();
        let redis = Redis::new(RedisConfig {
            key_prefix: prefix.to_owned(),
            resync_interval: std::time::Duration::from_millis(500),
            clock: Some(Arc::new(clock.clone())),
            ..RedisConfig::new(target, limits)
        })
        .unwrap();
        tokio::spawn(redis.clone().run_notifier(Default::default()));
        redis
    }
}

impl Harness for RedisHarness {
    type S = Redis;
    const RESTART_GRACE: bool = false;

    async fn open(&self, limits: Limits, clock: &ManualClock) -> Redis {
        self.store(&common::redis::prefix(), limits, clock)
    }

    async fn sweep(&self, store: &Redis) {
        store.sweep().await;
    }

    async fn settle(&self, store: &Redis) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !store.settled().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "watchers did not catch up within 5 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    async fn counts(&self, store: &Redis) -> (usize, usize) {
        let (sessions, rooms) = store.totals().await.unwrap();
        (sessions as usize, rooms as usize)
    }

    async fn restart(&self, store: Redis, limits: Limits, clock: &ManualClock) -> Redis {
        let prefix = store.key_prefix().to_owned();
        drop(store);
        self.store(&prefix, limits, clock)
    }
}

/// Every scenario and the property test, for one harness.
macro_rules! conformance {
    ($module:ident, $harness:expr) => {
        mod $module {
            use super::*;
            use proptest::prelude::*;

            scenarios::for_each!($harness);

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(model::CASES))]
                #[test]
                fn store_matches_the_model(ops in prop::collection::vec(model::op(), 1..60)) {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    rt.block_on(async { model::run_case(&$harness, ops).await })?;
                }
            }
        }
    };
}

conformance!(memory, MemoryHarness);
conformance!(
    redis,
    RedisHarness {
        url: || common::redis::shared_redis().url()
    }
);
conformance!(
    redis_cluster,
    RedisHarness {
        url: || common::redis::shared_cluster().url()
    }
);
