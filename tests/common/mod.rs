//! A real `presenced` on an ephemeral loopback port, for integration tests.
#![allow(dead_code)] // each test file uses a different part of this

pub mod instance;
pub mod redis;

use std::net::SocketAddr;
use std::time::Duration;

use presenced::grpc::pb;
use presenced::grpc::pb::presence_service_client::PresenceServiceClient;
use presenced::presence::AnyStore;
use presenced::{App, Config};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub type Client = PresenceServiceClient<Channel>;

/// The store a test's servers use: the embedded one, or a Redis server or
/// Cluster the test binary started (each test on a key prefix of its own,
/// shared by all the servers it starts, so they are instances of one
/// deployment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Redis,
    Cluster,
}

tokio::task_local! {
    static STORE: (StoreKind, String);
}

/// Runs a test with its servers on `kind`.
pub async fn with_store<F: std::future::Future>(kind: StoreKind, test: F) -> F::Output {
    STORE.scope((kind, redis::prefix()), test).await
}

/// The store of the running test (memory outside [`with_store`]).
pub fn store_kind() -> StoreKind {
    STORE
        .try_with(|(kind, _)| *kind)
        .unwrap_or(StoreKind::Memory)
}

/// Points `config` at the running test's store.
pub fn use_test_store(config: &mut Config) {
    let Ok((kind, prefix)) = STORE.try_with(|s| s.clone()) else {
        return;
    };
    let url = match kind {
        StoreKind::Memory => return,
        StoreKind::Redis => redis::shared_redis().url(),
        StoreKind::Cluster => redis::shared_cluster().url(),
    };
    config.store.url = url;
    config.store.key_prefix = prefix;
    // Debug builds of the server, its clients and Redis share two cores.
    config.store.timeout = (Duration::from_secs(5)).into();
}

/// Each named `async fn` as a test on every store: `memory::name`,
/// `redis::name`, `redis_cluster::name`.
#[macro_export]
macro_rules! every_store {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test] async fn $name() { $crate::common::with_store($crate::common::StoreKind::Memory, super::$name()).await })*
        }
        mod redis {
            $(#[tokio::test] async fn $name() { $crate::common::with_store($crate::common::StoreKind::Redis, super::$name()).await })*
        }
        mod redis_cluster {
            $(#[tokio::test] async fn $name() { $crate::common::with_store($crate::common::StoreKind::Cluster, super::$name()).await })*
        }
    };
}

/// A running server. Dropping it without `stop` aborts the server task.
pub struct TestServer {
    pub addr: SocketAddr,
    pub store: AnyStore,
    pub metrics: presenced::metrics::Metrics,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), presenced::server::Error>>>,
}

impl TestServer {
    /// A server with the default configuration.
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    /// A server whose configuration `tweak` adjusts.
    pub async fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::defaults();
        config.connections.shutdown_grace = Duration::from_secs(3);
        use_test_store(&mut config);
        tweak(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = App::new(config).await.unwrap();
        let store = app.store().clone();
        let metrics = app.metrics().clone();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(app.serve(listener, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            store,
            metrics,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Live sessions in all, exactly, now (a shared store's `stats` are
    /// as of its last sweep).
    pub async fn sessions(&self) -> usize {
        self.totals().await.0
    }

    /// Live sessions and rooms in all, exactly, now.
    pub async fn totals(&self) -> (usize, usize) {
        use presenced::presence::Store as _;
        match self.store.redis() {
            Some(redis) => {
                let (s, r) = redis.totals().await.unwrap();
                (s as usize, r as usize)
            }
            None => {
                let stats = self.store.stats();
                (stats.sessions, stats.rooms)
            }
        }
    }

    /// One sample of `/metrics` (`name{labels}` as written), 0 if absent.
    pub fn metric(&self, key: &str) -> f64 {
        self.metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A gRPC client on a new connection.
    pub async fn client(&self) -> Client {
        PresenceServiceClient::connect(self.url()).await.unwrap()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Triggers a graceful shutdown and waits for it.
    pub async fn stop(mut self) -> Result<(), presenced::server::Error> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A TCP port free on 127.0.0.1, for tests that run the real binary (which
/// must be told its port). It is taken from 20000–31999, below Linux's
/// ephemeral range (32768–60999): a port from `bind(0)` can be handed to some
/// client socket (ours, or a concurrent test's) before the child binds it,
/// which made the child fail to start. Ports are unique within this process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id() % 400) * 30;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + ((start + n) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn heartbeat(room: &str, user: &str, session: &str, secs: i64) -> pb::HeartbeatRequest {
    pb::HeartbeatRequest {
        room_id: room.into(),
        user_id: user.into(),
        session_id: session.into(),
        interval: Some(prost_types::Duration {
            seconds: secs,
            nanos: 0,
        }),
    }
}

/// Heartbeats and returns the tokens.
pub async fn join(
    client: &mut Client,
    room: &str,
    user: &str,
    session: &str,
) -> pb::HeartbeatResponse {
    client
        .heartbeat(heartbeat(room, user, session, 10))
        .await
        .unwrap()
        .into_inner()
}

/// `(user, online)` pairs of a snapshot, in order.
pub fn users(snapshot: &pb::RoomSnapshot) -> Vec<(String, bool)> {
    snapshot
        .users
        .iter()
        .map(|u| (u.user_id.clone(), u.online))
        .collect()
}

pub fn pairs(list: &[(&str, bool)]) -> Vec<(String, bool)> {
    list.iter().map(|(u, o)| (u.to_string(), *o)).collect()
}

/// Waits for the child without blocking the runtime (which still drives
/// this test's client connections, so they can close when told to).
pub async fn exited(child: &mut std::process::Child) -> std::process::ExitStatus {
    for _ in 0..600 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("presenced did not exit within 15 s");
}

/// Polls `check` until it holds or `timeout` passes.
#[macro_export]
macro_rules! assert_eventually {
    ($check:expr, $timeout:expr, $($msg:tt)+) => {{
        let deadline = tokio::time::Instant::now() + $timeout;
        loop {
            if $check {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                panic!($($msg)+);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }};
}
