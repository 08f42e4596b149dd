//! Who is calling, and what they may do.
//!
//! - **Open** (no credential source configured): everyone may do everything;
//!   only allowed on loopback unless explicitly asked for.
//! - **Users** send `authorization: Bearer <JWT>`; the user id is a claim.
//!   They may heartbeat, update data and list rooms only as themselves.
//! - **Services** send `authorization: Bearer <service key>` (stored as
//!   SHA-256 hashes in the configuration) or a client certificate verified by
//!   the configured CA (mTLS). They may act for any user and call the
//!   trusted RPCs.
//!
//! Capability tokens (room, session) are checked in `grpc/`, not here: they
//! need no caller identity.

pub mod jwt;
pub mod quota;

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No credential was sent.
    #[error("missing credential: send `authorization: Bearer <JWT or service key>`")]
    Missing,
    /// A credential was sent and refused.
    #[error("{0}")]
    InvalidCredential(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    PermissionDenied(String),
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Authentication is off: acts for anyone, trusted.
    Open,
    /// An end user, by id.
    User(Arc<str>),
    /// A backend service, by name.
    Service(Arc<str>),
}

impl Principal {
    /// Checks that the caller may act as `user_id`.
    pub fn act_as(&self, user_id: &str) -> Result<(), Error> {
        match self {
            Principal::Open | Principal::Service(_) => Ok(()),
            Principal::User(me) if &**me == user_id => Ok(()),
            Principal::User(me) => Err(Error::PermissionDenied(format!(
                "authenticated as user {me:?}, which may not act as user {user_id:?}"
            ))),
        }
    }

    /// Checks that the caller may call a trusted RPC.
    pub fn trusted(&self, rpc: &str) -> Result<(), Error> {
        match self {
            Principal::Open | Principal::Service(_) => Ok(()),
            Principal::User(me) => Err(Error::PermissionDenied(format!(
                "{rpc} is for services; user {me:?} may not call it"
            ))),
        }
    }

    /// A key naming this caller in per-principal limits.
    pub fn key(&self) -> String {
        match self {
            Principal::Open => "open".into(),
            Principal::User(u) => format!("user:{u}"),
            Principal::Service(s) => format!("service:{s}"),
        }
    }
}

/// A service key: its name and the SHA-256 of the secret.
#[derive(Debug, Clone)]
pub struct ServiceKey {
    name: Arc<str>,
    sha256: [u8; 32],
}

impl std::str::FromStr for ServiceKey {
    type Err = String;

    /// Parses `NAME=SHA256HEX`.
    fn from_str(spec: &str) -> Result<Self, String> {
        let (name, hex) = spec
            .split_once('=')
            .ok_or_else(|| format!("{spec:?}: expected NAME=SHA256HEX"))?;
        if name.is_empty() {
            return Err(format!("{spec:?}: the name is empty"));
        }
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<_>>()
            .ok_or_else(|| format!("service key {name:?}: the hash is not hex"))?;
        let sha256 = bytes.try_into().map_err(|_| {
            format!("service key {name:?}: the hash must be 64 hex digits (SHA-256)")
        })?;
        Ok(Self {
            name: name.into(),
            sha256,
        })
    }
}

/// Turns credentials into a [`Principal`].
pub struct Authenticator {
    jwt: Option<Arc<jwt::Verifier>>,
    service_keys: Vec<ServiceKey>,
    /// Verified client certificates make their holder a service.
    mtls: bool,
}

impl Authenticator {
    /// An authenticator for the configured sources; none configured = open.
    pub fn new(jwt: Option<Arc<jwt::Verifier>>, service_keys: Vec<ServiceKey>, mtls: bool) -> Self {
        Self {
            jwt,
            service_keys,
            mtls,
        }
    }

    /// True when calls must carry a credential.
    pub fn enabled(&self) -> bool {
        self.jwt.is_some() || !self.service_keys.is_empty() || self.mtls
    }

    /// The caller behind an `authorization` header value and, for mTLS, the
    /// DER of a client certificate the TLS layer has already verified.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        client_cert: Option<&[u8]>,
    ) -> Result<Principal, Error> {
        if !self.enabled() {
            return Ok(Principal::Open);
        }
        if let (true, Some(der)) = (self.mtls, client_cert) {
            let fingerprint = Sha256::digest(der);
            let short: String = fingerprint[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            return Ok(Principal::Service(format!("mtls:{short}").into()));
        }
        let Some(value) = authorization else {
            return Err(Error::Missing);
        };
        let credential = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                Error::InvalidCredential("authorization must be `Bearer <credential>`".into())
            })?
            .trim();
        if credential.matches('.').count() == 2 {
            let jwt = self.jwt.as_ref().ok_or_else(|| {
                Error::InvalidCredential("JWTs are not accepted: no JWT keys are configured".into())
            })?;
            let user = jwt.verify(credential).await?;
            return Ok(Principal::User(user.into()));
        }
        let hash = Sha256::digest(credential.as_bytes());
        // Compare against every key, in constant time, without early exit.
        let mut found = None;
        for key in &self.service_keys {
            if bool::from(key.sha256.ct_eq(hash.as_slice())) {
                found = Some(key.name.clone());
            }
        }
        found
            .map(Principal::Service)
            .ok_or_else(|| Error::InvalidCredential("unknown service key".into()))
    }
}
