//! Site assertions: how a device at a site without a fixed IP (the hospital
//! classroom) is recognised as being at that site.
//!
//! - `komugate pki beacon-key` makes an Ed25519 key pair; the public key goes
//!   into the policy (`[[site]] beacon_key = "..."`), the private key stays
//!   on the site's own server.
//! - `komugate beacon --site NAME --key FILE --listen ADDR` runs there and
//!   answers `GET /assertion?device=ID` with a signed, short-lived token
//!   binding (site, device id, issue time, random nonce). It is only
//!   reachable on the site's LAN, so holding a fresh token means "was on
//!   that LAN within the last few minutes".
//! - `komugate client` fetches a token and sends it on its gateway
//!   connection in the [`ASSERTION_HEADER`] header.
//! - The gateway ([`SiteAssertions`]) checks the signature against the
//!   site's key, that the token names the device of the client certificate,
//!   freshness (at most [`MAX_AGE_SECS`] old, at most
//!   [`MAX_FUTURE_SKEW_SECS`] in the future), and binds the nonce to the
//!   first connection that presented it (the same token on another
//!   connection is a replay). A valid token makes that connection's location
//!   the site; anything else is rejected, counted and logged, and the
//!   location stays what the address says (normally `offsite`).
//!
//! Token format: `ksa1.<base64url(JSON payload)>.<base64url(signature)>`,
//! the signature is Ed25519 over `"komugate-site-assertion-v1\n" ||
//! <base64url(JSON payload)>`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use http::HeaderMap;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::device_auth::DeviceIdentity;

/// Request header carrying the assertion from `komugate client` to the
/// gateway. `proxy-` prefixed: it is for the proxy only and is stripped
/// (with the other `proxy-*` headers) before anything is forwarded.
pub const ASSERTION_HEADER: &str = "proxy-komugate-site-assertion";
/// An assertion older than this is expired.
pub const MAX_AGE_SECS: u64 = 300;
/// Clock skew tolerated for assertions issued "in the future".
pub const MAX_FUTURE_SKEW_SECS: u64 = 30;
const TOKEN_PREFIX: &str = "ksa1";
const SIGNING_CONTEXT: &[u8] = b"komugate-site-assertion-v1\n";
/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_LEN: usize = 2048;

/// PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410); the 32-byte seed follows.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// What a beacon signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assertion {
    pub site: String,
    pub device: String,
    /// Issue time, seconds since the Unix epoch.
    pub iat: u64,
    /// 128 random bits, hex.
    pub nonce: String,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    use ring::rand::SecureRandom;
    let mut buf = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| anyhow!("the system random number generator failed"))?;
    Ok(buf)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A beacon's signing key.
pub struct BeaconKey(SigningKey);

impl std::fmt::Debug for BeaconKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BeaconKey(public {})", self.public_base64())
    }
}

impl BeaconKey {
    pub fn generate() -> Result<BeaconKey> {
        Ok(BeaconKey(SigningKey::from_bytes(&random_bytes::<32>()?)))
    }

    /// Parses a PKCS#8 PEM Ed25519 private key (as written by
    /// `komugate pki beacon-key` or `openssl genpkey -algorithm ed25519`).
    pub fn from_pem(text: &str, origin: &str) -> Result<BeaconKey> {
        let body: String = text
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        if body.is_empty() {
            bail!("{origin}: no \"-----BEGIN PRIVATE KEY-----\" block; make a beacon key with `komugate pki beacon-key --out PREFIX`");
        }
        let der = STANDARD
            .decode(body.trim())
            .map_err(|e| anyhow!("{origin}: the PEM block is not valid base64: {e}"))?;
        if der.len() != 48 || der[..16] != PKCS8_ED25519_PREFIX {
            bail!("{origin}: not an Ed25519 private key (PKCS#8); make one with `komugate pki beacon-key --out PREFIX`");
        }
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&der[16..]);
        Ok(BeaconKey(SigningKey::from_bytes(&seed)))
    }

    pub fn load(path: &Path) -> Result<BeaconKey> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the beacon key {}", path.display()))?;
        BeaconKey::from_pem(&text, &path.display().to_string())
    }

    pub fn to_pem(&self) -> String {
        let mut der = PKCS8_ED25519_PREFIX.to_vec();
        der.extend_from_slice(self.0.as_bytes());
        let b64 = STANDARD.encode(der);
        format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n")
    }

    /// The public key as it goes into the policy (`beacon_key = "..."`).
    pub fn public_base64(&self) -> String {
        STANDARD.encode(self.0.verifying_key().as_bytes())
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.0.verifying_key()
    }

    /// A fresh assertion for `device` at `site`, issued at `iat`.
    pub fn issue(&self, site: &str, device: &str, iat: u64) -> Result<String> {
        let a = Assertion {
            site: site.to_string(),
            device: device.to_string(),
            iat,
            nonce: hex(&random_bytes::<16>()?),
        };
        Ok(self.sign(&a))
    }

    /// Signs an assertion into a token (tests use this to forge old or odd ones).
    pub fn sign(&self, a: &Assertion) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(a).unwrap_or_default());
        let mut msg = SIGNING_CONTEXT.to_vec();
        msg.extend_from_slice(payload.as_bytes());
        let sig = self.0.sign(&msg);
        format!(
            "{TOKEN_PREFIX}.{payload}.{}",
            URL_SAFE_NO_PAD.encode(sig.to_bytes())
        )
    }
}

/// Writes `PREFIX.key` (PKCS#8 PEM, mode 0600) and `PREFIX.pub` (the base64
/// public key); returns their paths and the public key.
pub fn write_key_pair(prefix: &Path, force: bool) -> Result<(PathBuf, PathBuf, String)> {
    let key_path = prefix.with_extension("key");
    let pub_path = prefix.with_extension("pub");
    for p in [&key_path, &pub_path] {
        if p.exists() && !force {
            bail!("{} exists; pass --force to overwrite it (sites holding the old key stop being recognised)", p.display());
        }
    }
    if let Some(dir) = key_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let key = BeaconKey::generate()?;
    write_private(&key_path, key.to_pem().as_bytes())?;
    let public = key.public_base64();
    std::fs::write(&pub_path, format!("{public}\n"))
        .with_context(|| format!("cannot write {}", pub_path.display()))?;
    Ok((key_path, pub_path, public))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = f.set_permissions(std::fs::Permissions::from_mode(0o600));
    }
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Parses a base64 Ed25519 public key (32 bytes).
pub fn parse_public_key(b64: &str) -> Result<VerifyingKey> {
    let bytes = STANDARD
        .decode(b64.trim())
        .or_else(|_| STANDARD.decode(format!("{}=", b64.trim())))
        .map_err(|e| anyhow!("beacon public key {b64:?} is not base64: {e}"))?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| anyhow!("beacon public key {b64:?} is not 32 bytes"))?;
    VerifyingKey::from_bytes(&arr)
        .map_err(|e| anyhow!("beacon public key {b64:?} is not an Ed25519 point: {e}"))
}

/// Why an assertion was not accepted (the `reason` label of
/// `komugate_site_assertions_total`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AssertionError {
    #[error("malformed site assertion: {0}")]
    Malformed(String),
    #[error("site assertion names site {0:?}, which has no beacon_key in the policy")]
    UnknownSite(String),
    #[error("site assertion for site {0:?} has an invalid signature (forged, or signed with another key)")]
    BadSignature(String),
    #[error("site assertion expired: issued {age_secs} s ago (at most {MAX_AGE_SECS} s)")]
    Expired { age_secs: u64 },
    #[error("site assertion issued {ahead_secs} s in the future (clock skew over {MAX_FUTURE_SKEW_SECS} s)")]
    FromFuture { ahead_secs: u64 },
    #[error("site assertion is for device {asserted:?}, but the client certificate is device {actual:?}")]
    WrongDevice { asserted: String, actual: String },
    #[error("site assertion was already used on another connection (replay)")]
    Replayed,
    #[error("site assertion on a connection without a device certificate")]
    NoDevice,
}

impl AssertionError {
    pub fn label(&self) -> &'static str {
        match self {
            AssertionError::Malformed(_) => "malformed",
            AssertionError::UnknownSite(_) => "unknown_site",
            AssertionError::BadSignature(_) => "bad_signature",
            AssertionError::Expired { .. } => "expired",
            AssertionError::FromFuture { .. } => "from_future",
            AssertionError::WrongDevice { .. } => "wrong_device",
            AssertionError::Replayed => "replayed",
            AssertionError::NoDevice => "no_device",
        }
    }
}

/// Splits and decodes a token without checking the signature.
pub fn decode(token: &str) -> Result<Assertion, AssertionError> {
    let bad = |m: &str| AssertionError::Malformed(m.to_string());
    if token.len() > MAX_TOKEN_LEN {
        return Err(bad("too long"));
    }
    let mut parts = token.trim().split('.');
    let (Some(prefix), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("expected ksa1.<payload>.<signature>"));
    };
    if prefix != TOKEN_PREFIX {
        return Err(bad("unknown version prefix"));
    }
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| bad("payload is not base64url"))?;
    serde_json::from_slice(&json).map_err(|e| AssertionError::Malformed(format!("payload: {e}")))
}

/// Checks signature, device and freshness (not replay: see [`ReplayCache`]).
pub fn verify(
    token: &str,
    keys: &HashMap<String, VerifyingKey>,
    device: &str,
    now: u64,
) -> Result<Assertion, AssertionError> {
    let a = decode(token)?;
    let key = keys
        .get(&a.site)
        .ok_or_else(|| AssertionError::UnknownSite(a.site.clone()))?;
    let mut parts = token.trim().split('.');
    let (_, payload, sig) = (
        parts.next(),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .ok_or_else(|| {
            AssertionError::Malformed("signature is not 64 bytes of base64url".into())
        })?;
    let mut msg = SIGNING_CONTEXT.to_vec();
    msg.extend_from_slice(payload.as_bytes());
    key.verify_strict(&msg, &Signature::from_bytes(&sig))
        .map_err(|_| AssertionError::BadSignature(a.site.clone()))?;
    if a.iat > now + MAX_FUTURE_SKEW_SECS {
        return Err(AssertionError::FromFuture {
            ahead_secs: a.iat - now,
        });
    }
    if now.saturating_sub(a.iat) > MAX_AGE_SECS {
        return Err(AssertionError::Expired {
            age_secs: now - a.iat,
        });
    }
    if a.device != device {
        return Err(AssertionError::WrongDevice {
            asserted: a.device.clone(),
            actual: device.to_string(),
        });
    }
    if a.nonce.len() < 16 || a.nonce.len() > 64 {
        return Err(AssertionError::Malformed(
            "nonce must be 16..64 characters".into(),
        ));
    }
    Ok(a)
}

/// Nonces seen, each bound to the connection that first presented it,
/// kept until the assertion expires.
pub struct ReplayCache {
    seen: Mutex<HashMap<String, (String, u64)>>,
    max_entries: usize,
}

impl ReplayCache {
    pub fn new(max_entries: usize) -> ReplayCache {
        ReplayCache {
            seen: Mutex::new(HashMap::new()),
            max_entries,
        }
    }

    /// `true` if `nonce` is new (now bound to `binding`) or already bound to
    /// the same `binding`; `false` for a replay. Refuses (fails closed) when
    /// full of unexpired nonces.
    pub fn bind(&self, nonce: &str, binding: &str, expires_at: u64, now: u64) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((b, _)) = seen.get(nonce) {
            return b == binding;
        }
        if seen.len() >= self.max_entries {
            seen.retain(|_, (_, exp)| *exp >= now);
            if seen.len() >= self.max_entries {
                return false;
            }
        }
        seen.insert(nonce.to_string(), (binding.to_string(), expires_at));
        true
    }
}

/// A site as the gateway needs it for locating requesters and PAC files.
#[derive(Debug, Clone)]
pub struct SiteEntry {
    pub name: String,
    pub cidrs: Vec<IpNet>,
    pub pac_direct: Vec<String>,
}

/// Sites, their beacon keys and the PAC settings, from the policy.
#[derive(Debug, Clone, Default)]
pub struct SiteDirectory {
    pub sites: Vec<SiteEntry>,
    pub keys: HashMap<String, VerifyingKey>,
    /// `[pac] direct`.
    pub pac_direct: Vec<String>,
    /// `[pac] proxy`, e.g. `HTTPS gw.example.jp:8443`.
    pub pac_proxy: Option<String>,
}

impl SiteDirectory {
    pub fn from_policy(policy: &komugate_policy::Policy) -> SiteDirectory {
        let mut keys = HashMap::new();
        for s in policy.sites() {
            match s.beacon_key.map(|k| VerifyingKey::from_bytes(&k)) {
                Some(Ok(k)) => {
                    keys.insert(s.name.clone(), k);
                }
                Some(Err(e)) => tracing::warn!("site {}: beacon_key is not a valid Ed25519 key ({e}); its assertions will be refused", s.name),
                None if s.assertion => tracing::warn!("site {} has assertion = true but no beacon_key; its assertions will be refused", s.name),
                None => {}
            }
        }
        SiteDirectory {
            sites: policy
                .sites()
                .iter()
                .map(|s| SiteEntry {
                    name: s.name.clone(),
                    cidrs: s.cidrs.clone(),
                    pac_direct: s.pac_direct.clone(),
                })
                .collect(),
            keys,
            pac_direct: policy.pac().direct.clone(),
            pac_proxy: policy.pac().proxy.clone(),
        }
    }

    /// Loads a policy file and takes its sites.
    pub fn load(path: &Path) -> Result<SiteDirectory> {
        let policy = komugate_policy::Policy::load(path).map_err(|e| anyhow!("{e}"))?;
        Ok(SiteDirectory::from_policy(&policy))
    }

    /// The site whose CIDRs contain `ip` (first in policy order).
    pub fn site_by_ip(&self, ip: IpAddr) -> Option<&SiteEntry> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.sites
            .iter()
            .find(|s| s.cidrs.iter().any(|n| n.contains(&ip)))
    }

    pub fn site(&self, name: &str) -> Option<&SiteEntry> {
        self.sites.iter().find(|s| s.name == name)
    }
}

/// Result of the latest valid assertion on one connection.
#[derive(Debug, Clone)]
struct Asserted {
    device: String,
    site: String,
    expires_at: u64,
}

/// The gateway's site-assertion state: the replay cache, the
/// per-connection asserted sites, metrics. The site directory is part of
/// the reloadable generation and is passed in.
pub struct SiteAssertions {
    replay: ReplayCache,
    connections: Mutex<HashMap<SocketAddr, Asserted>>,
    results: prometheus::IntCounterVec,
}

impl SiteAssertions {
    pub fn new(registry: &prometheus::Registry) -> SiteAssertions {
        let results = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "komugate_site_assertions_total",
                "Site assertions checked, by result (ok or why refused)",
            ),
            &["result"],
        )
        .expect("metric");
        if let Err(e) = registry.register(Box::new(results.clone())) {
            tracing::warn!("cannot register komugate_site_assertions_total: {e}");
        }
        SiteAssertions {
            replay: ReplayCache::new(1_000_000),
            connections: Mutex::new(HashMap::new()),
            results,
        }
    }

    /// Checks the assertion header of a request, if any, and records the
    /// asserted site for the connection. Refusals are logged and counted.
    pub fn observe(
        &self,
        directory: &SiteDirectory,
        device: Option<&DeviceIdentity>,
        client: SocketAddr,
        headers: &HeaderMap,
    ) {
        let Some(value) = headers.get(ASSERTION_HEADER) else {
            return;
        };
        let token = value.to_str().unwrap_or("");
        let now = unix_now();
        let device_id = device.map(|d| d.device_id.as_str());
        let result = self.check(directory, token, device_id, client, now);
        match result {
            Ok(a) => {
                self.results.with_label_values(&["ok"]).inc();
                let mut conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
                let expires_at = a.iat + MAX_AGE_SECS;
                let fresh = conns
                    .get(&client)
                    .map(|c| c.site != a.site || c.device != a.device)
                    .unwrap_or(true);
                if fresh {
                    tracing::info!(device = %a.device, site = %a.site, %client, "site assertion accepted: device is at site {}", a.site);
                }
                if conns.len() > 100_000 {
                    conns.retain(|_, c| c.expires_at >= now);
                }
                conns.insert(
                    client,
                    Asserted {
                        device: a.device,
                        site: a.site,
                        expires_at,
                    },
                );
            }
            Err(e) => {
                self.results.with_label_values(&[e.label()]).inc();
                tracing::warn!(device = device_id.unwrap_or("-"), %client, reason = e.label(), "site assertion refused: {e}; location stays by address");
                // A refused assertion also withdraws an earlier one on this connection.
                self.connections
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&client);
            }
        }
    }

    fn check(
        &self,
        directory: &SiteDirectory,
        token: &str,
        device: Option<&str>,
        client: SocketAddr,
        now: u64,
    ) -> Result<Assertion, AssertionError> {
        let device = device.ok_or(AssertionError::NoDevice)?;
        let a = verify(token, &directory.keys, device, now)?;
        if !self.replay.bind(
            &a.nonce,
            &format!("{device}@{client}"),
            a.iat + MAX_AGE_SECS + MAX_FUTURE_SKEW_SECS,
            now,
        ) {
            return Err(AssertionError::Replayed);
        }
        Ok(a)
    }

    /// The site established by a valid, unexpired assertion on this
    /// connection (device `device` from `client`), if any.
    pub fn asserted_site(
        &self,
        device: Option<&DeviceIdentity>,
        client: SocketAddr,
    ) -> Option<String> {
        let device = device?;
        let now = unix_now();
        let conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        conns
            .get(&client)
            .filter(|c| c.device == device.device_id && c.expires_at >= now)
            .map(|c| c.site.clone())
    }

    /// The location the decision point sees: `Some(Site)` for an asserted
    /// site, `None` = locate by address (the policy does that).
    pub fn location(
        &self,
        device: Option<&DeviceIdentity>,
        client: SocketAddr,
    ) -> Option<komugate_policy::Location> {
        self.asserted_site(device, client)
            .map(komugate_policy::Location::Site)
    }

    /// Asserted site, else the site whose CIDRs contain the client address.
    pub fn site_of(
        &self,
        directory: &SiteDirectory,
        device: Option<&DeviceIdentity>,
        client: SocketAddr,
    ) -> Option<String> {
        self.asserted_site(device, client)
            .or_else(|| directory.site_by_ip(client.ip()).map(|s| s.name.clone()))
    }
}

// ---------------------------------------------------------------- beacon server

/// Serves `GET /assertion?device=ID` (a fresh token, `text/plain`) and
/// `GET /healthz` until `shutdown` is cancelled.
pub async fn serve_beacon(
    listener: tokio::net::TcpListener,
    site: String,
    key: Arc<BeaconKey>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let site = Arc::new(site);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => { tracing::warn!("beacon accept: {e}"); tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
        };
        let (site, key) = (site.clone(), key.clone());
        tokio::spawn(async move {
            let limits = crate::listen::http::ServerLimits::local(Duration::from_secs(5));
            let handler = move |req: http::Request<hyper::body::Incoming>| {
                let flagged = crate::listen::framing_guard::flagged(&req);
                let resp = beacon_response(&site, &key, req.method(), req.uri(), peer, flagged);
                async move { Ok::<_, std::convert::Infallible>(resp) }
            };
            let _ = crate::listen::http::serve(limits, stream, false, None, handler).await;
        });
    }
}

fn beacon_response(
    site: &str,
    key: &BeaconKey,
    method: &http::Method,
    uri: &http::Uri,
    peer: SocketAddr,
    smuggling: bool,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let reply = |status: u16, body: String| {
        let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
        *r.status_mut() =
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        r
    };
    if smuggling {
        return reply(
            400,
            "both Content-Length and Transfer-Encoding: refused\n".into(),
        );
    }
    if method != http::Method::GET {
        return reply(405, "only GET\n".into());
    }
    match uri.path() {
        "/healthz" => reply(200, format!("komugate beacon for site {site}\n")),
        "/assertion" => {
            let device = uri
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("device="))
                .map(percent_decode);
            let device =
                match device {
                    Some(Ok(d)) if crate::pki::validate_name("device id", &d).is_ok() => d,
                    _ => return reply(
                        400,
                        "usage: GET /assertion?device=DEVICE-ID (ASCII letters, digits, - _ . @)\n"
                            .into(),
                    ),
                };
            match key.issue(site, &device, unix_now()) {
                Ok(token) => {
                    tracing::info!(%device, %peer, "beacon: issued a site assertion");
                    reply(200, format!("{token}\n"))
                }
                Err(e) => reply(500, format!("{e}\n")),
            }
        }
        _ => reply(404, "try GET /assertion?device=ID\n".into()),
    }
}

/// Decodes `%XX` escapes (and `+` as space) of a query value.
pub fn percent_decode(s: &str) -> Result<String, ()> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).map_err(|_| ())?;
                out.push(u8::from_str_radix(h, 16).map_err(|_| ())?);
                i += 3;
            }
            b'%' => return Err(()),
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

/// `komugate beacon` arguments.
#[derive(Debug, clap::Args)]
pub struct BeaconArgs {
    /// The site's name exactly as in the policy's `[[site]] name`.
    #[arg(long)]
    pub site: String,
    /// The site's private key (`komugate pki beacon-key --out PREFIX` wrote PREFIX.key).
    #[arg(long)]
    pub key: PathBuf,
    /// Address to listen on; reachable from the site's LAN only.
    #[arg(long, default_value = "0.0.0.0:8740")]
    pub listen: String,
}

/// `komugate pki beacon-key` arguments.
#[derive(Debug, clap::Args)]
pub struct BeaconKeyArgs {
    /// Output prefix: writes PREFIX.key (private, 0600) and PREFIX.pub.
    #[arg(long)]
    pub out: PathBuf,
    /// The site's name, to print the policy snippet.
    #[arg(long)]
    pub site: Option<String>,
    /// Overwrite an existing key pair.
    #[arg(long)]
    pub force: bool,
}

pub fn run_beacon_cli(a: BeaconArgs) -> Result<()> {
    run_beacon(&a.site, &a.key, &a.listen)
}

pub fn run_beacon_key_cli(a: BeaconKeyArgs) -> Result<()> {
    let (key, public_path, public) = write_key_pair(&a.out, a.force)?;
    println!(
        "beacon key pair: {} (private, keep it on the site's server) and {}",
        key.display(),
        public_path.display()
    );
    println!("add the public key to the site in the policy:\n");
    println!(
        "[[site]]\nname = {:?}\nassertion = true\nbeacon_key = \"{public}\"",
        a.site.as_deref().unwrap_or("SITE NAME")
    );
    Ok(())
}

/// `komugate beacon`: runs the beacon until SIGTERM / Ctrl-C.
pub fn run_beacon(site: &str, key_path: &Path, listen: &str) -> Result<()> {
    if site.trim().is_empty() {
        bail!("--site must name the site as in the policy's [[site]] name");
    }
    let key = Arc::new(BeaconKey::load(key_path)?);
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| anyhow!("--listen {listen:?} is not an address like 0.0.0.0:8740"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} (--listen); is another process using the port?")
        })?;
        println!(
            "komugate beacon for site {site:?} on http://{}/assertion?device=ID",
            listener.local_addr()?
        );
        println!(
            "  public key (policy [[site]] beacon_key): {}",
            key.public_base64()
        );
        let shutdown = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(serve_beacon(
            listener,
            site.to_string(),
            key,
            shutdown.clone(),
        ));
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
        let _ = server.await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(site: &str, k: &BeaconKey) -> HashMap<String, VerifyingKey> {
        HashMap::from([(site.to_string(), k.verifying_key())])
    }

    #[test]
    fn pem_round_trip_and_public_key() {
        let k = BeaconKey::generate().unwrap();
        let k2 = BeaconKey::from_pem(&k.to_pem(), "x").unwrap();
        assert_eq!(k.public_base64(), k2.public_base64());
        assert_eq!(
            parse_public_key(&k.public_base64()).unwrap(),
            k.verifying_key()
        );
        assert!(BeaconKey::from_pem("garbage", "f.key")
            .unwrap_err()
            .to_string()
            .contains("f.key"));
    }

    #[test]
    fn valid_forged_expired_future_other_device() {
        let k = BeaconKey::generate().unwrap();
        let other = BeaconKey::generate().unwrap();
        let now = 1_800_000_000;
        let ks = keys("hospital", &k);
        let t = k.issue("hospital", "PC-1", now - 10).unwrap();
        assert_eq!(verify(&t, &ks, "PC-1", now).unwrap().site, "hospital");
        let forged = other.issue("hospital", "PC-1", now).unwrap();
        assert_eq!(
            verify(&forged, &ks, "PC-1", now).unwrap_err().label(),
            "bad_signature"
        );
        // Payload swapped under a valid signature.
        let t2 = k.issue("hospital", "PC-2", now).unwrap();
        let spliced = format!(
            "{}.{}",
            t2.rsplit_once('.').unwrap().0,
            t.rsplit_once('.').unwrap().1
        );
        assert_eq!(
            verify(&spliced, &ks, "PC-2", now).unwrap_err().label(),
            "bad_signature"
        );
        let old = k.issue("hospital", "PC-1", now - MAX_AGE_SECS - 1).unwrap();
        assert_eq!(
            verify(&old, &ks, "PC-1", now).unwrap_err().label(),
            "expired"
        );
        let future = k.issue("hospital", "PC-1", now + 120).unwrap();
        assert_eq!(
            verify(&future, &ks, "PC-1", now).unwrap_err().label(),
            "from_future"
        );
        assert_eq!(
            verify(&t, &ks, "PC-9", now).unwrap_err().label(),
            "wrong_device"
        );
        let elsewhere = k.issue("school", "PC-1", now).unwrap();
        assert_eq!(
            verify(&elsewhere, &ks, "PC-1", now).unwrap_err().label(),
            "unknown_site"
        );
        for junk in [
            "",
            "ksa1",
            "ksa1.a.b",
            "ksa2.e30.AA",
            "ksa1.!!.AA",
            &"x".repeat(5000),
        ] {
            assert_eq!(
                verify(junk, &ks, "PC-1", now).unwrap_err().label(),
                "malformed",
                "{junk}"
            );
        }
    }

    #[test]
    fn replay_cache_binds_nonce_to_first_connection() {
        let c = ReplayCache::new(2);
        assert!(c.bind("n1", "PC-1@a", 100, 0));
        assert!(c.bind("n1", "PC-1@a", 100, 1));
        assert!(!c.bind("n1", "PC-1@b", 100, 1));
        assert!(c.bind("n2", "x", 5, 1));
        assert!(
            !c.bind("n3", "x", 100, 2),
            "full of live nonces: fail closed"
        );
        assert!(c.bind("n3", "x", 100, 10), "expired n2 pruned");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("PC-1%40x").unwrap(), "PC-1@x");
        assert!(percent_decode("%4").is_err());
        assert!(percent_decode("%zz").is_err());
    }
}
