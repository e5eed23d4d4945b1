//! A real OpenID provider for the console's sign-in tests: the npm package
//! `oidc-provider` (8.x, installed by `.ci/run` into the node cache) run by
//! `oidc_provider.mjs`, with its own login and consent pages.
//!
//! It speaks HTTPS on 127.0.0.2 with a certificate from a test CA (made
//! with komugate's own `pki init`): komugate requires https for a real
//! issuer, so the tests go through the TLS path a board's Entra ID uses
//! (the CA given to komugate as `[admin.oidc] ca_file`, to the browser
//! through its NSS db). 127.0.0.2 is another site than the console on
//! 127.0.0.1, as the provider is in production: the browser applies its
//! cross-site cookie rules to the callback.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::net::TcpStream;

use komugate::config::OidcConfig;

pub const HOST: &str = "127.0.0.2";

/// A free loopback port for the admin listener: the redirect URI names it
/// before the gateway starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The client registered at the provider and the people it knows.
#[derive(Clone, Default)]
pub struct ProviderSetup {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uri: String,
    /// `{ "login name": { "name": …, "groups": […] } }`
    pub accounts: serde_json::Value,
    /// Public native clients (no secret; redirect to
    /// `http://127.0.0.1/callback` on any port; code and device-code
    /// grants), like the app `komugate client` signs in as.
    pub native_clients: Vec<String>,
    /// ID-token lifetime in seconds by login name (default one hour).
    pub id_token_ttl: serde_json::Value,
    /// Sign with the key in this JWK file (created by the first provider
    /// started with it, with its PKCS#1 DER form in `<file>.der`): two
    /// issuers, one key.
    pub jwk_file: Option<PathBuf>,
    /// The native clients' back-channel logout URL (OpenID Connect
    /// Back-Channel Logout 1.0), if any.
    pub backchannel_logout_uri: Option<String>,
}

pub struct OidcProvider {
    pub issuer: String,
    /// The id of the signing key in use (a new one after [`OidcProvider::rotate_keys`]).
    pub kid: String,
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

/// Where `oidc-provider` is installed: `$KOMUGATE_OIDC_NODE_PATH`, else
/// the cache `.ci/run` installs it into.
pub fn node_modules() -> PathBuf {
    if let Some(p) = std::env::var_os("KOMUGATE_OIDC_NODE_PATH") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        });
    cache.join("komugate-ci/node/node_modules")
}

impl OidcProvider {
    pub async fn start(setup: &ProviderSetup) -> OidcProvider {
        let dir = tempfile::tempdir().expect("provider dir");
        komugate::pki::init(&dir.path().join("pki"), &[HOST.to_string()], false)
            .expect("provider certificate");
        let (child, issuer, kid) = spawn(dir.path(), setup, 0);
        let port = issuer
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        OidcProvider {
            issuer,
            kid,
            port,
            child,
            dir,
        }
    }

    /// The CA (PEM) the provider's certificate chains to.
    pub fn ca_file(&self) -> PathBuf {
        komugate::pki::PkiPaths::new(self.dir.path().join("pki")).inspect_ca_cert()
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.ca_file()).expect("provider CA")
    }

    /// `[admin.oidc]` for a console using this provider as `setup`'s
    /// client, the secret in `secret_file`; groups komugate-admins,
    /// komugate-operators and komugate-viewers map to the roles; keys may
    /// be fetched again every second.
    pub fn console_config(&self, setup: &ProviderSetup, secret_file: &str) -> OidcConfig {
        OidcConfig {
            issuer: self.issuer.clone(),
            client_id: setup.client_id.clone(),
            client_secret_file: secret_file.into(),
            redirect_uri: setup.redirect_uri.clone(),
            scopes: vec!["openid".into(), "profile".into(), "email".into()],
            groups_claim: "groups".into(),
            name_claims: vec!["name".into(), "preferred_username".into()],
            roles: [
                ("komugate-admins", "admin"),
                ("komugate-operators", "operator"),
                ("komugate-viewers", "viewer"),
            ]
            .into_iter()
            .map(|(g, r)| (g.to_string(), r.to_string()))
            .collect(),
            ca_file: Some(self.ca_file()),
            clock_skew_secs: 60,
            jwks_min_refetch_secs: 1,
            label: "Entra ID".into(),
        }
    }

    /// Restarts the provider on the same address with a new signing key
    /// (the old one no longer published): a key rotation.
    pub fn rotate_keys(&mut self, setup: &ProviderSetup) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, issuer, kid) = spawn(self.dir.path(), setup, self.port);
        assert_eq!(issuer, self.issuer, "same issuer after the restart");
        assert_ne!(kid, self.kid, "a new key");
        self.child = child;
        self.kid = kid;
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &Path, setup: &ProviderSetup, port: u16) -> (Child, String, String) {
    let modules = node_modules();
    assert!(
        modules.join("oidc-provider/package.json").exists(),
        "oidc-provider is not installed at {}: run .ci/run once, or `npm install --prefix DIR oidc-provider@8.8.1` and set KOMUGATE_OIDC_NODE_PATH=DIR/node_modules",
        modules.display()
    );
    let pki = komugate::pki::PkiPaths::new(dir.join("pki"));
    let config = serde_json::json!({
        "host": HOST,
        "port": port,
        "cert_file": pki.server_cert(),
        "key_file": pki.server_key(),
        "client_id": setup.client_id,
        "client_secret": setup.client_secret,
        "redirect_uri": setup.redirect_uri,
        "accounts": setup.accounts,
        "native_clients": setup.native_clients,
        "id_token_ttl": setup.id_token_ttl,
        "jwk_file": setup.jwk_file,
        "backchannel_logout_uri": setup.backchannel_logout_uri,
    });
    let config_file = dir.join("provider.json");
    std::fs::write(&config_file, config.to_string()).expect("provider config");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/oidc_provider.mjs");
    let mut child = Command::new("node")
        .arg(&script)
        .arg(&modules)
        .arg(&config_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node is missing: apt-get install nodejs (.ci/run does)");
    let stdout = child.stdout.take().expect("stdout");
    // The first line says where it listens; a restart on a port just freed
    // may need a moment.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(|l| l.ok()).unwrap_or_default();
        let _ = tx.send(first);
        // Keep reading so the provider never blocks on a full pipe.
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("oidc-provider did not start within 30 s");
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("ISSUER"), Some(issuer), Some("KID"), Some(kid)) => {
            (child, issuer.to_string(), kid.to_string())
        }
        _ => panic!("oidc-provider did not start: {line:?}"),
    }
}

/// A response read whole.
pub struct Reply {
    pub status: StatusCode,
    pub location: Option<String>,
    pub body: String,
}

/// The provider's side of a browser: HTTPS trusting the provider's CA, a
/// cookie jar.
pub struct IdpClient {
    tls: Arc<rustls::ClientConfig>,
    cookies: BTreeMap<String, String>,
    pub origin: String,
}

impl IdpClient {
    pub fn new(provider: &OidcProvider) -> IdpClient {
        let ca = CertificateDer::from_pem_file(provider.ca_file()).unwrap();
        IdpClient {
            tls: crate::gw::client_config(ca, None, &[b"http/1.1"]),
            cookies: BTreeMap::new(),
            origin: provider.issuer.clone(),
        }
    }

    pub async fn send(&mut self, url: &str, form: Option<&[(&str, &str)]>) -> Reply {
        let path = url.strip_prefix(&self.origin).unwrap_or(url);
        assert!(path.starts_with('/'), "a provider URL: {url}");
        let mut req = match form {
            None => Request::get(path).body(Full::new(Bytes::new())).unwrap(),
            Some(f) => {
                let body = f
                    .iter()
                    .map(|(k, v)| format!("{}={}", komugate::oidc::pct(k), komugate::oidc::pct(v)))
                    .collect::<Vec<_>>()
                    .join("&");
                Request::post(path)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap()
            }
        };
        let authority = self.origin.trim_start_matches("https://").to_string();
        req.headers_mut().insert("host", authority.parse().unwrap());
        if !self.cookies.is_empty() {
            let c = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            req.headers_mut().insert("cookie", c.parse().unwrap());
        }
        let tcp = TcpStream::connect(&authority)
            .await
            .expect("connect to the provider");
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(ServerName::try_from(HOST).unwrap(), tcp)
            .await
            .expect("TLS with the provider");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let resp = sender.send_request(req).await.unwrap();
        for line in resp.headers().get_all("set-cookie") {
            let line = line.to_str().unwrap_or("");
            if let Some((k, v)) = line.split(';').next().unwrap_or("").split_once('=') {
                self.cookies.insert(k.trim().to_string(), v.to_string());
            }
        }
        let status = resp.status();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(|l| {
                if l.starts_with('/') {
                    format!("{}{l}", self.origin)
                } else {
                    l.to_string()
                }
            });
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            location,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
    /// Ends this browser's session at the provider (RP-initiated logout,
    /// confirmed "yes, sign me out"): the provider then sends back-channel
    /// logout tokens to the session's clients.
    pub async fn end_session(&mut self, id_token: &str) {
        let url = format!(
            "{}/session/end?id_token_hint={}",
            self.origin,
            komugate::oidc::pct(id_token)
        );
        let page = self.send(&url, None).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let attr = |name: &str| {
            page.body
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or_else(|| panic!("no {name} on the logout page: {}", page.body))
                .to_string()
        };
        let (action, xsrf) = (attr("action"), attr("value"));
        let r = self
            .send(&action, Some(&[("xsrf", &xsrf), ("logout", "yes")]))
            .await;
        assert!(
            r.status.is_redirection() || r.status == 200,
            "logout confirmation: {} {}",
            r.status,
            r.body
        );
    }

    /// Follows `url` through the provider's pages like a browser: redirects,
    /// the login form (as `login`, any password), the consent form, the
    /// device-code forms (`user_code`), every hidden field posted back. Stops
    /// at the first URL starting with `until` (returned), or at a page
    /// without a form (the device flow's success page: its URL returned).
    pub async fn walk(
        &mut self,
        start: &str,
        login: &str,
        until: &str,
        user_code: Option<&str>,
    ) -> String {
        let mut url = start.to_string();
        for _ in 0..16 {
            if url.starts_with(until) {
                return url;
            }
            let page = self.send(&url, None).await;
            if page.status.is_redirection() {
                url = page.location.unwrap();
                continue;
            }
            assert_eq!(page.status, 200, "{url}: {}", page.body);
            let mut body = page.body;
            loop {
                let Some(form) = body
                    .split("<form")
                    .nth(1)
                    .map(|f| f.split("</form>").next().unwrap_or("").to_string())
                else {
                    return url;
                };
                let action = form
                    .split("action=\"")
                    .nth(1)
                    .and_then(|s| s.split('"').next())
                    .unwrap_or_else(|| panic!("a form action on {url}: {form}"))
                    .to_string();
                let mut fields: Vec<(String, String)> = Vec::new();
                for input in form.split("<input").skip(1) {
                    let attr = |name: &str| {
                        input
                            .split(&format!("{name}=\""))
                            .nth(1)
                            .and_then(|s| s.split('"').next())
                            .map(str::to_string)
                    };
                    let Some(name) = attr("name") else { continue };
                    let hidden = input.contains("type=\"hidden\"");
                    match (name.as_str(), hidden) {
                        (_, true) => fields.push((name, attr("value").unwrap_or_default())),
                        ("login", false) => fields.push((name, login.to_string())),
                        ("password", false) => fields.push((name, "any".into())),
                        ("user_code", false) => fields.push((
                            name,
                            user_code
                                .expect("a user code for the device flow")
                                .to_string(),
                        )),
                        _ => {}
                    }
                }
                let form: Vec<(&str, &str)> = fields
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let r = self.send(&action, Some(&form)).await;
                if r.status.is_redirection() {
                    url = r.location.unwrap();
                    break;
                }
                assert_eq!(r.status, 200, "{action}: {}", r.body);
                body = r.body;
            }
        }
        panic!("the provider did not reach {until} from {start}");
    }
}
