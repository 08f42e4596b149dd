//! TLS for the one port, with rustls: the certificate and key are reloaded
//! when their files change (no restart), and client certificates are
//! verified against a CA when one is configured (mTLS; optional or required).
//!
//! Handshakes run in their own tasks with a timeout, so a slow or silent
//! client never holds up the accept loop.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long a client gets to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the TLS material lives.
#[derive(Debug, Clone)]
pub struct Config {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
    /// CA certificates verifying client certificates, PEM.
    pub client_ca: Option<PathBuf>,
    /// Refuse clients without a verified certificate.
    pub client_auth_required: bool,
    /// TLS handshakes in progress at most; a connection past it is closed
    /// at once.
    pub max_handshakes: usize,
    /// How often the files are checked for changes.
    pub reload_interval: Duration,
}

/// Serves the certificate currently on disk.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>)>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .clone(),
        )
    }
}

impl Reloading {
    fn load(&self) -> Result<Arc<CertifiedKey>, String> {
        load_certified_key(&self.cert, &self.key, &self.provider)
    }

    /// Reloads when either file's modification time moved; keeps the old
    /// certificate when the new files do not load.
    fn reload_if_changed(&self) {
        let stamp = modified(&self.cert).max(modified(&self.key));
        if stamp == self.current.read().unwrap_or_else(|e| e.into_inner()).1 {
            return;
        }
        match self.load() {
            Ok(key) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = (key, stamp);
                info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                warn!(error = %e, "TLS files changed but do not load; keeping the previous certificate")
            }
        }
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {}: no certificate in the file",
            cert.display()
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    // A half-written deploy (new key, old certificate) must not be served.
    certified.keys_match().map_err(|e| {
        format!(
            "--tls-key {} does not match --tls-cert {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(Arc::new(certified))
}

/// A TLS acceptor whose certificate follows the files on disk.
pub struct Acceptor {
    acceptor: TlsAcceptor,
    resolver: Arc<Reloading>,
    reload_interval: Duration,
    max_handshakes: usize,
}

impl Acceptor {
    /// Loads the files; fails with a message naming the bad one.
    pub fn new(config: &Config) -> Result<Self, String> {
        let provider = Arc::new(ring::default_provider());
        let resolver = Arc::new(Reloading {
            cert: config.cert.clone(),
            key: config.key.clone(),
            provider: provider.clone(),
            current: RwLock::new((
                load_certified_key(&config.cert, &config.key, &provider)?,
                modified(&config.cert).max(modified(&config.key)),
            )),
        });
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let mut server = match &config.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(ca)
                    .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if config.client_auth_required {
                    verifier.build()
                } else {
                    verifier.allow_unauthenticated().build()
                }
                .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        }
        .with_cert_resolver(resolver.clone());
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            resolver,
            reload_interval: config.reload_interval,
            max_handshakes: config.max_handshakes.max(1),
        })
    }

    /// Accepts TCP connections on `listener` and yields finished TLS
    /// connections, until `cancel`. Also watches the files for changes.
    pub fn incoming(
        self,
        listener: TcpListener,
        cancel: CancellationToken,
    ) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = mpsc::channel(256);
        let resolver = self.resolver.clone();
        let reload_cancel = cancel.clone();
        let interval = self.reload_interval;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(interval) => resolver.reload_if_changed(),
                    () = reload_cancel.cancelled() => return,
                }
            }
        });
        let acceptor = self.acceptor;
        let handshakes = Arc::new(tokio::sync::Semaphore::new(self.max_handshakes));
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(conn) => conn,
                        Err(e) => {
                            // Out of file descriptors and the like: back off.
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    () = cancel.cancelled() => return,
                };
                // A flood of slow handshakes must not grow tasks without
                // bound: past the limit, a new connection is closed at once.
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    debug!(%peer, "too many TLS handshakes in progress; connection closed");
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}
