//! End-user JWTs from the application's identity provider.
//!
//! Keys come from an HS256 secret file, PEM public key files (RSA → RS256,
//! P-256 → ES256, Ed25519 → EdDSA) and JWKS documents (a file, or a URL
//! refreshed on a schedule and when a token names an unknown `kid`). Each key
//! verifies exactly one algorithm, so a token signed with HS256 using an RSA
//! public key as the secret (algorithm confusion) finds no key; `alg: none`
//! is not an algorithm jsonwebtoken knows, so it never parses.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tracing::{info, warn};

use super::Error;

/// Where the JWT keys come from and what the tokens must say: the
/// `--jwt-*` and `--jwks-*` settings.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct JwtConfig {
    /// File holding the HS256 secret that signs end-user JWTs.
    #[arg(
        id = "jwt_hs256_secret_file",
        value_name = "JWT_HS256_SECRET_FILE",
        long = "jwt-hs256-secret-file",
        env = "PRESENCE_JWT_HS256_SECRET_FILE"
    )]
    pub hs256_secret_file: Option<String>,

    /// PEM public key files (RSA → RS256, P-256 → ES256, Ed25519 → EdDSA)
    /// verifying end-user JWTs, each `PATH` or `KID=PATH`; comma-separated or
    /// repeated.
    #[arg(
        id = "jwt_public_key_file",
        value_name = "JWT_PUBLIC_KEY_FILE",
        long = "jwt-public-key-file",
        env = "PRESENCE_JWT_PUBLIC_KEY_FILES",
        value_delimiter = ','
    )]
    pub public_key_files: Vec<String>,

    /// JWKS document (file) with keys verifying end-user JWTs.
    #[arg(
        id = "jwks_file",
        value_name = "JWKS_FILE",
        long = "jwks-file",
        env = "PRESENCE_JWKS_FILE"
    )]
    pub jwks_file: Option<String>,

    /// JWKS URL with keys verifying end-user JWTs; fetched at start, every
    /// --jwks-refresh, and when a token names an unknown key id.
    #[arg(
        id = "jwks_url",
        value_name = "JWKS_URL",
        long = "jwks-url",
        env = "PRESENCE_JWKS_URL"
    )]
    pub jwks_url: Option<String>,

    /// How often the JWKS URL is fetched again.
    #[arg(id = "jwks_refresh", value_name = "JWKS_REFRESH", long = "jwks-refresh", env = "PRESENCE_JWKS_REFRESH", default_value = "5m", value_parser = humantime::parse_duration)]
    pub jwks_refresh: Duration,

    /// Required `iss` of end-user JWTs.
    #[arg(
        id = "jwt_issuer",
        value_name = "JWT_ISSUER",
        long = "jwt-issuer",
        env = "PRESENCE_JWT_ISSUER",
        default_value = ""
    )]
    pub issuer: String,

    /// Required `aud` of end-user JWTs.
    #[arg(
        id = "jwt_audience",
        value_name = "JWT_AUDIENCE",
        long = "jwt-audience",
        env = "PRESENCE_JWT_AUDIENCE",
        default_value = ""
    )]
    pub audience: String,

    /// Clock skew allowed on a JWT's `exp` and `nbf`.
    #[arg(id = "jwt_leeway", value_name = "JWT_LEEWAY", long = "jwt-leeway", env = "PRESENCE_JWT_LEEWAY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub leeway: Duration,

    /// The JWT claim holding the user id.
    #[arg(
        id = "jwt_user_claim",
        value_name = "JWT_USER_CLAIM",
        long = "jwt-user-claim",
        env = "PRESENCE_JWT_USER_CLAIM",
        default_value = "sub"
    )]
    pub user_claim: String,
}

impl JwtConfig {
    /// True when any key source is configured.
    pub fn enabled(&self) -> bool {
        self.hs256_secret_file.is_some()
            || !self.public_key_files.is_empty()
            || self.jwks_file.is_some()
            || self.jwks_url.is_some()
    }
}

/// One verification key and the one algorithm it verifies.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies JWTs and extracts the user id.
pub struct Verifier {
    config: JwtConfig,
    /// Keys from static sources (secret, PEM files, JWKS file).
    fixed: Vec<Key>,
    /// Keys from the JWKS URL, replaced on each fetch.
    fetched: RwLock<Vec<Key>>,
    /// When a token naming an unknown key id last caused a fetch: such
    /// fetches happen at most every `MIN_REFETCH`, so made-up key ids cannot
    /// turn the service into a load generator against the IdP.
    last_unknown_kid_fetch: RwLock<Option<Instant>>,
    client: Option<JwksClient>,
}

/// Fetches at most this often when tokens name unknown key ids.
const MIN_REFETCH: Duration = Duration::from_secs(10);

impl Verifier {
    /// Loads every configured static key; fetches the JWKS URL once.
    pub async fn new(config: JwtConfig) -> Result<Arc<Self>, String> {
        if config.issuer.is_empty() || config.audience.is_empty() {
            return Err(
                "JWT keys are configured: --jwt-issuer and --jwt-audience are required".into(),
            );
        }
        let mut fixed = Vec::new();
        if let Some(path) = &config.hs256_secret_file {
            let secret =
                std::fs::read(path).map_err(|e| format!("--jwt-hs256-secret-file {path}: {e}"))?;
            let secret = secret.trim_ascii();
            if secret.len() < 32 {
                return Err(format!(
                    "--jwt-hs256-secret-file {path}: the secret is {} bytes, at least 32 are required",
                    secret.len()
                ));
            }
            fixed.push(Key {
                kid: None,
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(secret),
            });
        }
        for spec in &config.public_key_files {
            let (kid, path) = match spec.split_once('=') {
                Some((kid, path)) => (Some(kid.to_owned()), path),
                None => (None, spec.as_str()),
            };
            let pem =
                std::fs::read(path).map_err(|e| format!("--jwt-public-key-file {path}: {e}"))?;
            let (alg, key) = pem_key(&pem).ok_or_else(|| {
                format!(
                    "--jwt-public-key-file {path}: not an RSA, P-256 or Ed25519 public key in PEM"
                )
            })?;
            fixed.push(Key { kid, alg, key });
        }
        if let Some(path) = &config.jwks_file {
            let text = std::fs::read(path).map_err(|e| format!("--jwks-file {path}: {e}"))?;
            fixed.extend(jwks_keys(&text).map_err(|e| format!("--jwks-file {path}: {e}"))?);
        }
        let client = config.jwks_url.as_ref().map(|_| JwksClient::new());
        let verifier = Arc::new(Self {
            config,
            fixed,
            fetched: RwLock::new(Vec::new()),
            last_unknown_kid_fetch: RwLock::new(None),
            client,
        });
        if verifier.client.is_some() {
            if let Err(e) = verifier.refresh().await {
                // Start anyway: the IdP may be down now and up later.
                warn!(error = %e, "could not fetch the JWKS URL at start; retrying on schedule");
            }
        }
        Ok(verifier)
    }

    /// Refreshes the JWKS URL every `jwks_refresh` until the process ends.
    pub fn spawn_refresh(self: &Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        if self.client.is_none() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(this.config.jwks_refresh) => {}
                    () = cancel.cancelled() => return,
                }
                if let Err(e) = this.refresh().await {
                    warn!(error = %e, "JWKS refresh failed; keeping the previous keys");
                }
            }
        });
    }

    async fn refresh(&self) -> Result<(), String> {
        let (Some(client), Some(url)) = (&self.client, &self.config.jwks_url) else {
            return Ok(());
        };
        let body = client.get(url).await?;
        let keys = jwks_keys(&body)?;
        info!(keys = keys.len(), "JWKS fetched");
        *self.fetched.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(())
    }

    /// The user id a valid token names.
    pub async fn verify(&self, token: &str) -> Result<String, Error> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| Error::InvalidCredential(format!("malformed JWT: {e}")))?;
        let mut candidates = self.candidates(header.kid.as_deref(), header.alg);
        let named = |keys: &[Key]| keys.iter().any(|k| k.kid.is_some() && k.kid == header.kid);
        if header.kid.is_some() && !named(&candidates) && self.may_refetch() {
            *self
                .last_unknown_kid_fetch
                .write()
                .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            if let Err(e) = self.refresh().await {
                warn!(error = %e, "JWKS refresh for an unknown key id failed");
            }
            candidates = self.candidates(header.kid.as_deref(), header.alg);
        }
        if candidates.is_empty() {
            return Err(Error::InvalidCredential(match header.kid {
                Some(kid) => format!("JWT: no {:?} key with id {kid:?}", header.alg),
                None => format!("JWT: no {:?} key is configured", header.alg),
            }));
        }
        let mut last = None;
        for key in candidates {
            match self.decode(token, &key) {
                Ok(user) => return Ok(user),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one candidate"))
    }

    fn may_refetch(&self) -> bool {
        self.client.is_some()
            && self
                .last_unknown_kid_fetch
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .is_none_or(|at| at.elapsed() >= MIN_REFETCH)
    }

    fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<Key> {
        let fetched = self.fetched.read().unwrap_or_else(|e| e.into_inner());
        self.fixed
            .iter()
            .chain(fetched.iter())
            .filter(|k| k.alg == alg)
            .filter(|k| match (kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => true, // an unnamed key may verify any kid
                (None, _) => true,
            })
            .cloned()
            .collect()
    }

    fn decode(&self, token: &str, key: &Key) -> Result<String, Error> {
        let mut validation = Validation::new(key.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<HashMap<String, serde_json::Value>>(
            token,
            &key.key,
            &validation,
        )
        .map_err(|e| Error::InvalidCredential(format!("JWT refused: {e}")))?;
        match data.claims.get(&self.config.user_claim) {
            Some(serde_json::Value::String(user)) if !user.is_empty() => Ok(user.clone()),
            _ => Err(Error::InvalidCredential(format!(
                "JWT has no string claim {:?} naming the user",
                self.config.user_claim
            ))),
        }
    }
}

/// A PEM public key and the algorithm its type implies.
fn pem_key(pem: &[u8]) -> Option<(Algorithm, DecodingKey)> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Some((Algorithm::RS256, key));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Some((Algorithm::ES256, key));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Some((Algorithm::EdDSA, key));
    }
    None
}

/// The usable keys of a JWKS document. A key names its algorithm (`alg`) or
/// gets the one its type implies; symmetric (`oct`) keys are refused: a
/// public document must not hold a shared secret.
fn jwks_keys(text: &[u8]) -> Result<Vec<Key>, String> {
    let set: JwkSet =
        serde_json::from_slice(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let Some(alg) = jwk_alg(jwk) else {
            warn!(kid = ?jwk.common.key_id, "skipping a JWK of an unsupported type or algorithm");
            continue;
        };
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| format!("bad JWK {:?}: {e}", jwk.common.key_id))?;
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    Ok(keys)
}

fn jwk_alg(jwk: &Jwk) -> Option<Algorithm> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    let named = match jwk.common.key_algorithm {
        None => return Some(implied),
        Some(KeyAlgorithm::RS256) => Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => Algorithm::ES256,
        Some(KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
        Some(_) => return None,
    };
    (named == implied).then_some(named)
}

/// A small HTTP(S) client for JWKS documents.
struct JwksClient {
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Empty<bytes::Bytes>,
    >,
}

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;

impl JwksClient {
    fn new() -> Self {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        Self {
            client: hyper_util::client::legacy::Client::builder(
                hyper_util::rt::TokioExecutor::new(),
            )
            .build(https),
        }
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        use http_body_util::BodyExt;
        let uri: http::Uri = url.parse().map_err(|e| format!("--jwks-url {url}: {e}"))?;
        let fetch = async {
            let resp = self.client.get(uri).await.map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("HTTP {}", resp.status()));
            }
            let body = http_body_util::Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            Ok(body.to_bytes().to_vec())
        };
        tokio::time::timeout(Duration::from_secs(10), fetch)
            .await
            .map_err(|_| "timed out after 10 s".to_string())?
            .map_err(|e| format!("GET {url}: {e}"))
    }
}
