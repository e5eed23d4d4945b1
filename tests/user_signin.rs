//! Users signed in on devices: `komugate client` signs the user in at a
//! real OpenID provider (npm `oidc-provider` over HTTPS on 127.0.0.2, its
//! own login and consent pages walked by an HTTP client) with the
//! authorization code + PKCE through a loopback redirect, or the device
//! code; the ID token goes to the gateway on the device's mTLS link. Policy
//! rules match `users` and `user_groups`; a device without a user gets the
//! device-only rules. A token replayed on another device, forged, for
//! another audience or issuer, or expired is refused and counted; expiry
//! and sign-out end the user's access at the next request; the client
//! renews the token silently with its refresh token; the provider's
//! back-channel logout and `komugate client --sign-out` end the sign-in
//! for good. Tokens the provider would not issue (`nbf` ahead, logout
//! tokens replayed or forged) are signed with the provider's own key.
//! `none` / HMAC algorithms are unit tests in proxy/src/oidc/verify.rs.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use komugate::client::signin::{self, Opener, ProviderInfo, UserToken};
use komugate::client::{ClientConfig, RunningClient};
use komugate::config::UserOidcConfig;
use komugate::console::accounts::Role;
use komugate_tests::console::{write_accounts, ConsoleClient};
use komugate_tests::gw::TestGateway;
use komugate_tests::oidc_provider::{free_port, IdpClient, OidcProvider, ProviderSetup};
use komugate_tests::upstream::HttpUpstream;
use komugate_tests::within;

const APP: &str = "komugate-client";
const ADMIN_TOKEN: &str = "test-admin-token";
const OPERATOR_PW: &str = "operator-password-1";

/// The provider's setup; back-channel logout tokens go to the gateway's
/// admin listener on `admin_port`.
fn setup(admin_port: u16) -> ProviderSetup {
    ProviderSetup {
        client_id: "komugate-console".into(),
        client_secret: "a-client-secret-for-tests-only-0123".into(),
        redirect_uri: "http://127.0.0.1:1/console/oidc/callback".into(),
        accounts: serde_json::json!({
            "hanako": {"name": "山田 花子", "preferred_username": "hanako@board.test",
                       "groups": ["teachers"]},
            "jiro": {"name": "鈴木 次郎", "preferred_username": "jiro@board.test",
                     "groups": ["staff"]},
            "shorty": {"preferred_username": "shorty@board.test", "groups": ["teachers"]},
            "kana": {"preferred_username": "kana@board.test", "groups": ["teachers"]},
        }),
        native_clients: vec![APP.into(), "another-app".into()],
        id_token_ttl: serde_json::json!({"shorty": 4, "kana": 6}),
        jwk_file: None,
        backchannel_logout_uri: Some(format!(
            "http://127.0.0.1:{admin_port}{}",
            komugate::users::logout::PATH
        )),
    }
}

/// The gateway, its provider and three origins: teachers' records (by
/// user group), hanako's page (by user), an open page.
struct World {
    provider: OidcProvider,
    admin_port: u16,
    jwk_file: Option<std::path::PathBuf>,
    _keys: tempfile::TempDir,
    gw: TestGateway,
    records: HttpUpstream,
    hanako_page: HttpUpstream,
    open: HttpUpstream,
    c4th: HttpUpstream,
}

impl World {
    async fn start() -> World {
        let keys = tempfile::tempdir().unwrap();
        let jwk_file = Some(keys.path().join("jwk.json"));
        let admin_port = free_port();
        let provider = OidcProvider::start(&ProviderSetup {
            jwk_file: jwk_file.clone(),
            ..setup(admin_port)
        })
        .await;
        let records = HttpUpstream::start("127.0.0.1").await;
        let hanako_page = HttpUpstream::start("127.0.0.1").await;
        let open = HttpUpstream::start("127.0.0.1").await;
        let c4th = HttpUpstream::start("127.0.0.1").await;
        let policy = format!(
            r#"
[[rule]]
name = "records for teachers"
ports = [{records}]
user_groups = ["teachers"]
action = "allow"

[[rule]]
name = "records need a teacher"
ports = [{records}]
action = "block"
message = "先生としてサインインしてください"

[[rule]]
name = "hanako's page"
ports = [{hanako}]
users = ["Hanako@board.test"]
action = "allow"

[[rule]]
name = "not hanako"
ports = [{hanako}]
action = "block"

[[rule]]
name = "C4th with posture"
ports = [{c4th}]
posture = {{ disk_encryption = true, os_updated_within_days = 30 }}
action = "allow"

[[rule]]
name = "C4th otherwise"
ports = [{c4th}]
action = "block"
"#,
            records = records.addr.port(),
            hanako = hanako_page.addr.port(),
            c4th = c4th.addr.port(),
        );
        let issuer = provider.issuer.clone();
        let ca = provider.ca_file();
        let gw = TestGateway::start(|c, _| {
            c.listen.admin = format!("127.0.0.1:{admin_port}");
            c.admin.token = ADMIN_TOKEN.into();
            write_accounts(c, &[("op1", Role::Operator, OPERATOR_PW)]);
            std::fs::write(c.data.dir.join("policy.toml"), &policy).unwrap();
            c.policy.file = "policy.toml".into();
            c.users.oidc = Some(UserOidcConfig {
                issuer,
                client_id: APP.into(),
                scopes: vec!["openid".into(), "profile".into(), "offline_access".into()],
                groups_claim: "groups".into(),
                user_claims: vec!["preferred_username".into(), "sub".into()],
                ca_file: Some(ca),
                clock_skew_secs: 0,
                jwks_min_refetch_secs: 1,
            });
        })
        .await;
        World {
            provider,
            admin_port,
            jwk_file,
            _keys: keys,
            gw,
            records,
            hanako_page,
            open,
            c4th,
        }
    }

    fn client_config(&self, id: &str) -> ClientConfig {
        let d = self.gw.tls().device(id, &[]);
        let dir = self.gw.dir.path();
        let cert = dir.join(format!("{id}.pem"));
        let key = dir.join(format!("{id}.key"));
        std::fs::write(&cert, &d.cert_pem).unwrap();
        std::fs::write(&key, &d.key_pem).unwrap();
        ClientConfig {
            server: self.gw.mtls().to_string(),
            server_name: "localhost".into(),
            cert,
            key,
            ca: self.gw.pki.join("inspect-ca.pem"),
            http: "127.0.0.1:0".into(),
            socks: String::new(),
            backoff_min_ms: 50,
            backoff_max_ms: 500,
            sign_in: "browser".into(),
            oidc_ca: self.provider.ca_file(),
            posture: false,
            ..ClientConfig::default()
        }
    }

    async fn client(&self, cfg: &ClientConfig) -> RunningClient {
        komugate_tests::gw::start_client(cfg.clone()).await
    }

    fn refused(&self, reason: &str) -> f64 {
        self.gw.metric(
            "komugate_oidc_refused_total",
            &[("use", "user"), ("reason", reason)],
        )
    }

    fn logout_refused(&self, reason: &str) -> f64 {
        self.gw.metric(
            "komugate_oidc_refused_total",
            &[("use", "logout"), ("reason", reason)],
        )
    }

    fn sessions_ended(&self, reason: &str) -> f64 {
        self.gw
            .metric("komugate_user_sessions_ended_total", &[("reason", reason)])
    }

    /// A token the provider would not issue, signed with its own key.
    fn sign(&self, claims: &serde_json::Value) -> String {
        let file = self.jwk_file.as_ref().unwrap();
        let der = std::fs::read(file.with_extension("json.der")).expect("the provider's key");
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        h.kid = Some(self.provider.kid.clone());
        jsonwebtoken::encode(&h, claims, &jsonwebtoken::EncodingKey::from_rsa_der(&der)).unwrap()
    }

    /// POSTs a logout token to the gateway as the provider does: status, body.
    async fn post_logout(&self, token: &str) -> (u16, String) {
        let url = format!(
            "http://127.0.0.1:{}{}",
            self.admin_port,
            komugate::users::logout::PATH
        );
        curl(&["--data-urlencode", &format!("logout_token={token}"), &url]).await
    }
}

/// What the client showed the person: the URL, and a code to type.
type Shown = Arc<Mutex<Option<(String, Option<String>)>>>;

/// An opener that hands the URL (and code) to the test.
fn capturing_opener() -> (Opener, Shown) {
    let shown: Shown = Default::default();
    let s = shown.clone();
    let opener: Opener = Arc::new(move |url: &str, code: Option<&str>| {
        *s.lock().unwrap() = Some((url.to_string(), code.map(str::to_string)));
    });
    (opener, shown)
}

async fn shown_url(shown: &Mutex<Option<(String, Option<String>)>>) -> (String, Option<String>) {
    komugate_tests::eventually(Duration::from_secs(10), || {
        let v = shown.lock().unwrap().clone();
        async move { v }
    })
    .await
    .expect("the sign-in URL was shown")
}

/// The person's side of a browser sign-in: through the provider as
/// `login`, then the browser follows the redirect to the loopback listener.
/// The browser (its provider session cookies) is returned.
async fn person_signs_in(provider: &OidcProvider, shown: Shown, login: &str) -> IdpClient {
    let (url, _) = shown_url(&shown).await;
    let mut idp = IdpClient::new(provider);
    let callback = idp.walk(&url, login, "http://127.0.0.1:", None).await;
    let (status, body) = curl(&["--noproxy", "*", &callback]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("サインインしました"), "{body}");
    idp
}

/// `komugate client`'s browser sign-in as `login`: the gateway's answer.
async fn browser_sign_in(
    w: &World,
    c: &RunningClient,
    cfg: &ClientConfig,
    login: &str,
) -> anyhow::Result<serde_json::Value> {
    browser_sign_in_keeping(w, c, cfg, login).await.0
}

/// [`browser_sign_in`], with the person's browser at the provider.
async fn browser_sign_in_keeping(
    w: &World,
    c: &RunningClient,
    cfg: &ClientConfig,
    login: &str,
) -> (anyhow::Result<serde_json::Value>, IdpClient) {
    let (opener, shown) = capturing_opener();
    tokio::join!(
        signin::sign_in(&c.link, cfg, &opener),
        person_signs_in(&w.provider, shown, login)
    )
}

/// A token from `provider` for `client_id` through the browser flow,
/// bound to `device` (not presented anywhere).
async fn token_from(
    provider: &OidcProvider,
    client_id: &str,
    device: &str,
    login: &str,
) -> UserToken {
    let http = komugate::oidc::http::HttpClient::new(
        Some(provider.ca_pem().as_bytes()),
        Duration::from_secs(10),
    )
    .unwrap();
    let info = ProviderInfo {
        issuer: provider.issuer.clone(),
        client_id: client_id.into(),
        scopes: vec!["openid".into(), "profile".into()],
    };
    let (opener, shown) = capturing_opener();
    let (t, _) = tokio::join!(
        signin::browser_sign_in(&http, &info, device, &opener),
        person_signs_in(provider, shown, login)
    );
    t.expect("a token from the provider")
}

/// curl (5 s limit): HTTP status and body.
async fn curl(args: &[&str]) -> (u16, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .await
        .expect("curl runs (apt-get install curl)");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A request to `origin` through the client's local proxy.
async fn get(c: &RunningClient, origin: SocketAddr) -> (u16, String) {
    let proxy = format!("http://{}", c.http.unwrap());
    curl(&["-x", &proxy, &format!("http://{origin}/")]).await
}

fn present_err(r: anyhow::Result<serde_json::Value>) -> String {
    format!("{:#}", r.expect_err("refused"))
}

#[tokio::test]
async fn users_sign_in_bound_to_their_device() {
    let w = World::start().await;
    within("user sign-in on devices", async {
        let cfg_a = w.client_config("PC-A");
        let a = w.client(&cfg_a).await;

        // No user on the device: device-only rules.
        let (status, body) = get(&a, w.records.addr).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("先生としてサインインしてください"), "{body}");
        assert_eq!(get(&a, w.open.addr).await.0, 200);

        // Sign in through the browser: the teacher's rule applies.
        let started = Instant::now();
        let who = browser_sign_in(&w, &a, &cfg_a, "hanako").await.unwrap();
        assert_eq!(who["user"], "hanako@board.test");
        assert_eq!(who["groups"], serde_json::json!(["teachers"]));
        let (status, body) = get(&a, w.records.addr).await;
        assert_eq!(status, 200, "{body}");
        println!(
            "FIGURE sign-in (provider pages walked by the test) to the first allowed request: {} ms",
            started.elapsed().as_millis()
        );
        assert_eq!(get(&a, w.hanako_page.addr).await.0, 200, "users match without case");
        let rec = w
            .gw
            .access_record(|r| {
                r["device"] == "PC-A"
                    && r["decision"] == "allow"
                    && r["rule"] == "records for teachers"
            })
            .await;
        assert_eq!(rec["user"], "hanako@board.test", "{rec}");
        assert_eq!(rec["signed_in"], true, "{rec}");
        assert_eq!(rec["user_groups"], serde_json::json!(["teachers"]), "{rec}");
        assert_eq!(
            w.gw.metric("komugate_oidc_accepted_total", &[("use", "user")]),
            1.0
        );
        explain_agrees_with_the_record(&w, &rec).await;
        let token = a.link.user_token().expect("the client keeps the token");
        assert!(!token.binding_salt.is_empty(), "the provider echoed the nonce");

        // The same token on another device's link: refused, counted; that
        // device stays without a user.
        let cfg_b = w.client_config("PC-B");
        let b = w.client(&cfg_b).await;
        let e = present_err(b.link.present_token(token.clone()).await);
        assert!(e.contains("other_device") && e.contains("another device"), "{e}");
        let mut no_salt = token.clone();
        no_salt.binding_salt.clear();
        let e = present_err(b.link.present_token(no_salt).await);
        assert!(e.contains("other_device"), "{e}");
        assert_eq!(w.refused("other_device"), 2.0);
        assert_eq!(get(&b, w.records.addr).await.0, 403);

        // Forged: a claim changed after signing.
        let parts: Vec<&str> = token.id_token.split('.').collect();
        let mut claims: serde_json::Value = serde_json::from_slice(
            &base64_decode(parts[1]),
        )
        .unwrap();
        claims["groups"] = serde_json::json!(["teachers", "komugate-admins"]);
        let forged = UserToken {
            id_token: format!(
                "{}.{}.{}",
                parts[0],
                komugate::oidc::b64url(claims.to_string().as_bytes()),
                parts[2]
            ),
            ..token.clone()
        };
        let e = present_err(a.link.present_token(forged).await);
        assert!(e.contains("signature"), "{e}");
        // Garbage.
        let junk = UserToken {
            id_token: "not.a.token".into(),
            ..token.clone()
        };
        let e = present_err(a.link.present_token(junk).await);
        assert!(e.contains("malformed"), "{e}");

        // For another application (audience) of the same provider.
        let other_app = token_from(&w.provider, "another-app", "PC-A", "hanako").await;
        let e = present_err(a.link.present_token(other_app).await);
        assert!(e.contains("audience"), "{e}");

        // From another provider (issuer) with the same client id and even
        // the same signing key.
        let stranger = OidcProvider::start(&ProviderSetup {
            jwk_file: w.jwk_file.clone(),
            ..setup(w.admin_port)
        })
        .await;
        let foreign = token_from(&stranger, APP, "PC-A", "hanako").await;
        let e = present_err(a.link.present_token(foreign).await);
        assert!(e.contains("issuer"), "{e}");
        for reason in ["signature", "malformed", "audience", "issuer"] {
            assert_eq!(w.refused(reason), 1.0, "{reason}");
        }
        // None of this disturbed hanako's session on PC-A.
        assert_eq!(get(&a, w.records.addr).await.0, 200);

        // Sign-out ends the user's access at the next request.
        a.link.sign_out().await.unwrap();
        assert_eq!(get(&a, w.records.addr).await.0, 403);
        assert_eq!(
            w.gw.metric("komugate_user_sessions_ended_total", &[("reason", "sign_out")]),
            1.0
        );

        // Another user on the same (shared) device: jiro is no teacher.
        let who = browser_sign_in(&w, &a, &cfg_a, "jiro").await.unwrap();
        assert_eq!(who["user"], "jiro@board.test");
        assert_eq!(get(&a, w.records.addr).await.0, 403);
        assert_eq!(get(&a, w.hanako_page.addr).await.0, 403);

        // A token that expires (and cannot be renewed: no refresh token, as
        // from a provider that issues none): access ends at exp, the
        // token is refused after.
        let mut short = token_from(&w.provider, APP, "PC-A", "shorty").await;
        short.renewal = None;
        let who = a.link.present_token(short).await.unwrap();
        let exp = who["expires_at"].as_u64().unwrap();
        assert_eq!(get(&a, w.records.addr).await.0, 200);
        let short = a.link.user_token().unwrap();
        let wait = exp.saturating_sub(komugate::oidc::unix_now()) + 1;
        tokio::time::sleep(Duration::from_secs(wait)).await;
        assert_eq!(get(&a, w.records.addr).await.0, 403, "expired at exp");
        assert_eq!(
            w.gw.metric("komugate_user_sessions_ended_total", &[("reason", "expired")]),
            1.0
        );
        let e = present_err(a.link.present_token(short).await);
        assert!(e.contains("expired"), "{e}");
        assert_eq!(w.refused("expired"), 1.0);
    })
    .await;
}

#[tokio::test]
async fn device_code_sign_in_without_a_browser() {
    let w = World::start().await;
    within("device code sign-in", async {
        let mut cfg = w.client_config("PC-K");
        cfg.sign_in = "device".into();
        let c = w.client(&cfg).await;
        let (opener, shown) = capturing_opener();
        let person = async {
            let (url, code) = shown_url(&shown).await;
            let code = code.expect("a user code to type");
            let mut idp = IdpClient::new(&w.provider);
            // The person opens the verification page elsewhere.
            idp.walk(&url, "hanako", "http://never/", Some(&code)).await;
        };
        let (r, ()) = tokio::join!(signin::sign_in(&c.link, &cfg, &opener), person);
        let who = r.expect("signed in with the device code");
        assert_eq!(who["user"], "hanako@board.test");
        assert_eq!(get(&c, w.hanako_page.addr).await.0, 200);
        assert_eq!(get(&c, w.records.addr).await.0, 200);
    })
    .await;
}

/// `/admin/explain`, the console's explain form and the log record's link
/// to it replay the record's decision with the signed-in user; without the
/// user, the device-only rules decide.
async fn explain_agrees_with_the_record(w: &World, rec: &serde_json::Value) {
    let url = rec["target"].as_str().unwrap();
    let q = |user: &str| {
        let mut q = format!(
            "device=PC-A&from=127.0.0.1&url={}",
            komugate::oidc::pct(url)
        );
        if !user.is_empty() {
            q.push_str(&format!(
                "&user={}&user_groups=teachers",
                komugate::oidc::pct(user)
            ));
        }
        q
    };
    let admin = |query: String| async move {
        let addr = format!("http://127.0.0.1:{}/admin/explain?{query}", w.admin_port);
        let (status, body) =
            curl(&["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}"), &addr]).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    let v = admin(q("hanako@board.test")).await;
    assert_eq!(v["decision"]["rule"], rec["rule"], "{v}");
    assert_eq!(v["decision"]["signed_in"], true);
    let text = v["text"].as_str().unwrap();
    assert!(
        text.contains("hanako@board.test (signed in)") && text.contains("user groups: teachers"),
        "{text}"
    );
    let v = admin(q("")).await;
    assert_eq!(v["decision"]["rule"], "records need a teacher", "{v}");
    assert_eq!(v["decision"]["signed_in"], false);
    // A user without a device: refused with what to do.
    let addr = format!(
        "http://127.0.0.1:{}/admin/explain?user=x&from=127.0.0.1&url=http%3A%2F%2Fa.test%2F",
        w.admin_port
    );
    let (status, body) =
        curl(&["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}"), &addr]).await;
    assert_eq!(status, 400);
    assert!(body.contains("name the device too"), "{body}");

    // The console: the record's row links to explain with the user filled
    // in, and the page shows the user as signed in, with their groups.
    let admin_addr: SocketAddr = format!("127.0.0.1:{}", w.admin_port).parse().unwrap();
    let mut c = ConsoleClient::plain(admin_addr);
    assert_eq!(c.sign_in("op1", OPERATOR_PW).await.status, 303);
    let p = c
        .get("/console/logs?device=PC-A&user=hanako%40board.test")
        .await;
    assert_eq!(p.status, 200, "{}", p.text());
    let html = p.text();
    let link = html
        .split("href=\"")
        .map(|s| s.split('"').next().unwrap_or(""))
        .find(|h| h.starts_with("/console/explain?") && h.contains("user=hanako"))
        .unwrap_or_else(|| panic!("a link to explain with the user: {html}"))
        .replace("&amp;", "&");
    assert!(link.contains("user_groups=teachers"), "{link}");
    let p = c.get(&link).await;
    assert_eq!(p.status, 200, "{}", p.text());
    let page = p.visible();
    assert!(
        page.contains("判定: 許可")
            && page.contains("hanako@board.test（サインイン中）")
            && page.contains("利用者のグループ")
            && page.contains("records for teachers"),
        "{page}"
    );
    // The same form with the user field emptied: the device-only rules.
    let p = c.get(&format!("/console/explain?{}", q(""))).await;
    let page = p.visible();
    assert!(
        page.contains("判定: ブロック")
            && page.contains("サインインなし（端末だけのルール）")
            && page.contains("records need a teacher"),
        "{page}"
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

/// Posture facts as device management would write them.
fn write_facts(path: &std::path::Path, encrypted: bool, updated_days_ago: u64) {
    let facts = serde_json::json!({
        "disk_encryption": encrypted,
        "last_os_update": komugate::oidc::unix_now() - updated_days_ago * 86_400,
    });
    std::fs::write(path, facts.to_string()).unwrap();
}

/// A report signed with `key`, as the client sends it.
fn signed_report(key: &dyn rustls::sign::SigningKey, device: &str, time: u64) -> bytes::Bytes {
    let report = komugate::users::posture::Report {
        device: device.into(),
        time,
        nonce: komugate::oidc::b64url(&komugate::oidc::random::<18>()),
        facts: komugate_policy::Posture {
            os: "linux".into(),
            disk_encryption: true,
            last_os_update: time,
            ..Default::default()
        },
    };
    let signed = komugate::users::posture::sign(&report, key).unwrap();
    bytes::Bytes::from(serde_json::to_vec(&signed).unwrap())
}

fn pem_key(path: &std::path::Path) -> Arc<dyn rustls::sign::SigningKey> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::PrivateKeyDer::from_pem_file(path).unwrap();
    rustls::crypto::ring::sign::any_supported_type(&der).unwrap()
}

#[tokio::test]
async fn posture_reports_gate_rules() {
    let w = World::start().await;
    within("posture", async {
        let mut cfg = w.client_config("PC-P");
        let facts = w.gw.dir.path().join("facts.json");
        write_facts(&facts, true, 3);
        cfg.posture = true;
        cfg.posture_interval_secs = 1;
        cfg.posture_file = facts.clone();
        let c = w.client(&cfg).await;
        let ok = || {
            w.gw.metric("komugate_posture_reports_total", &[("result", "ok")])
        };
        let reports_after = |n: f64| {
            komugate_tests::eventually(Duration::from_secs(5), move || {
                let v = ok();
                async move { (v >= n).then_some(()) }
            })
        };
        reports_after(1.0)
            .await
            .expect("a posture report at link setup");
        assert_eq!(get(&c, w.c4th.addr).await.0, 200);

        // BitLocker off: the next report takes the rule away, the block
        // page says why in Japanese.
        write_facts(&facts, false, 3);
        let seen = ok();
        reports_after(seen + 2.0)
            .await
            .expect("reports keep coming");
        let (status, body) = get(&c, w.c4th.addr).await;
        assert_eq!(status, 403, "{body}");
        assert!(
            body.contains("ディスク暗号化") && body.contains("C4th with posture"),
            "{body}"
        );
        // Updated 45 days ago.
        write_facts(&facts, true, 45);
        let seen = ok();
        reports_after(seen + 2.0)
            .await
            .expect("reports keep coming");
        let (status, body) = get(&c, w.c4th.addr).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("45 日前"), "{body}");

        // Forged, old and replayed reports: refused with the reason, counted.
        let post = |body: bytes::Bytes| {
            let link = c.link.clone();
            async move {
                let resp = link
                    .gateway_request(
                        http::Method::POST,
                        "/.komugate/posture",
                        Some("application/json"),
                        body,
                    )
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let b = komugate::client::link::collect_limited(resp.into_body(), 65536)
                    .await
                    .unwrap();
                (status, String::from_utf8_lossy(&b).into_owned())
            }
        };
        let now = komugate::oidc::unix_now();
        let own = pem_key(&cfg.key);
        let other_cfg = w.client_config("PC-Q");
        let other = pem_key(&other_cfg.key);
        let (s, b) = post(signed_report(other.as_ref(), "PC-P", now)).await;
        assert_eq!(s, 403);
        assert!(b.contains("bad_signature"), "{b}");
        let (_, b) = post(signed_report(own.as_ref(), "PC-P", now - 3600)).await;
        assert!(b.contains("too_old"), "{b}");
        let (_, b) = post(signed_report(own.as_ref(), "PC-P", now + 3600)).await;
        assert!(b.contains("from_future"), "{b}");
        let (_, b) = post(signed_report(own.as_ref(), "PC-Q", now)).await;
        assert!(b.contains("wrong_device"), "{b}");
        let once = signed_report(own.as_ref(), "PC-P", now);
        assert_eq!(post(once.clone()).await.0, 200);
        let (_, b) = post(once).await;
        assert!(b.contains("replayed"), "{b}");
        for reason in [
            "bad_signature",
            "too_old",
            "from_future",
            "wrong_device",
            "replayed",
        ] {
            assert_eq!(
                w.gw.metric("komugate_posture_reports_total", &[("result", reason)]),
                1.0,
                "{reason}"
            );
        }
        // Back in posture: the rule applies again at the next report.
        write_facts(&facts, true, 1);
        let seen = ok();
        reports_after(seen + 2.0)
            .await
            .expect("reports keep coming");
        assert_eq!(get(&c, w.c4th.addr).await.0, 200);
    })
    .await;
}

/// The claims of a token.
fn claims_of(token: &str) -> serde_json::Value {
    serde_json::from_slice(&base64_decode(token.split('.').nth(1).unwrap())).unwrap()
}

#[tokio::test]
async fn a_token_not_yet_valid_is_refused_at_the_gateway() {
    let w = World::start().await;
    within("nbf ahead", async {
        let cfg = w.client_config("PC-N");
        let c = w.client(&cfg).await;
        // As the provider would sign it, bound to PC-N, but valid only in
        // ten minutes (a provider whose clock runs ahead).
        let now = komugate::oidc::unix_now();
        let salt = "salt-for-nbf";
        let token = UserToken {
            id_token: w.sign(&serde_json::json!({
                "iss": w.provider.issuer, "aud": APP, "sub": "hanako",
                "preferred_username": "hanako@board.test", "groups": ["teachers"],
                "iat": now, "nbf": now + 600, "exp": now + 3600,
                "nonce": komugate::users::binding_nonce("PC-N", salt),
            })),
            binding_salt: salt.into(),
            expires_at: now + 3600,
            ..Default::default()
        };
        let e = present_err(c.link.present_token(token.clone()).await);
        assert!(
            e.contains("not_yet_valid") && e.contains("not valid for another"),
            "{e}"
        );
        assert_eq!(w.refused("not_yet_valid"), 1.0);
        assert_eq!(get(&c, w.records.addr).await.0, 403, "no session started");
        // The same claims valid now: accepted (so only nbf was at fault).
        let mut ok = claims_of(&token.id_token);
        ok["nbf"] = serde_json::json!(now);
        let who = c
            .link
            .present_token(UserToken {
                id_token: w.sign(&ok),
                ..token
            })
            .await
            .unwrap();
        assert_eq!(who["user"], "hanako@board.test");
        assert_eq!(get(&c, w.records.addr).await.0, 200);
    })
    .await;
}

#[tokio::test]
async fn renewal_keeps_the_user_and_logout_or_sign_out_ends_it() {
    let w = World::start().await;
    // Longer than `within`'s 10 s: it waits out two token lifetimes (6 s).
    let limit = Duration::from_secs(60);
    let done = tokio::time::timeout(limit, async {
        let cfg = w.client_config("PC-R");
        let c = w.client(&cfg).await;

        // kana's ID tokens live 6 s; the client renews them with the
        // refresh token before they expire, so her access never lapses.
        let (who, mut browser) = browser_sign_in_keeping(&w, &c, &cfg, "kana").await;
        let who = who.unwrap();
        assert_eq!(who["user"], "kana@board.test");
        let first = c.link.user_token().unwrap();
        assert!(
            first.renewal.is_some(),
            "a refresh token came with the code"
        );
        let until = Instant::now()
            + Duration::from_secs(first.expires_at.saturating_sub(komugate::oidc::unix_now()) + 4);
        while Instant::now() < until {
            let (status, body) = get(&c, w.records.addr).await;
            assert_eq!(status, 200, "not interrupted: {body}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let renewed = c.link.user_token().unwrap();
        assert_ne!(renewed.id_token, first.id_token);
        assert!(renewed.expires_at > first.expires_at);
        assert_eq!(
            claims_of(&renewed.id_token)["nonce"],
            claims_of(&first.id_token)["nonce"]
        );
        assert!(w.sessions_ended("renewed") >= 1.0);
        assert_eq!(w.sessions_ended("replaced"), 0.0);

        // She signs out at the provider: it posts a logout token to the
        // gateway, which ends her session on every connection at once.
        let started = Instant::now();
        browser.end_session(&renewed.id_token).await;
        komugate_tests::eventually(Duration::from_secs(60), || async {
            (get(&c, w.records.addr).await.0 == 403).then_some(())
        })
        .await
        .expect("device-only rules within a minute of the logout");
        println!(
            "FIGURE back-channel logout to the device-only rules: {} ms",
            started.elapsed().as_millis()
        );
        assert_eq!(
            w.gw.metric("komugate_oidc_accepted_total", &[("use", "logout")]),
            1.0
        );
        assert_eq!(w.sessions_ended("logout"), 1.0);
        // Neither the client's copy of the token nor a renewal brings her
        // back (the provider ended the refresh token with the session).
        let e = present_err(c.link.present_token(renewed.clone()).await);
        assert!(e.contains("signed_out"), "{e}");
        tokio::time::sleep(Duration::from_secs(
            renewed
                .expires_at
                .saturating_sub(komugate::oidc::unix_now())
                + 1,
        ))
        .await;
        assert_eq!(get(&c, w.records.addr).await.0, 403);
        assert!(c.link.user_token().is_none(), "the client forgot the token");

        // Bad logout tokens: refused with 400, counted, nothing ended.
        let now = komugate::oidc::unix_now();
        let logout = |jti: &str| {
            serde_json::json!({
                "iss": w.provider.issuer, "aud": APP, "sub": "nobody", "iat": now,
                "jti": jti, "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
            })
        };
        let (status, body) = w.post_logout("junk").await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("invalid_request"), "{body}");
        // An ID token is no logout token.
        let (status, body) = w.post_logout(&renewed.id_token).await;
        assert_eq!(status, 400);
        assert!(body.contains("not a back-channel logout token"), "{body}");
        // For another app; too old.
        let mut other = logout("j-aud");
        other["aud"] = serde_json::json!("another-app");
        assert_eq!(w.post_logout(&w.sign(&other)).await.0, 400);
        let mut old = logout("j-old");
        old["iat"] = serde_json::json!(now - 3600);
        assert_eq!(w.post_logout(&w.sign(&old)).await.0, 400);
        // Forged: the claims changed after signing.
        let good = w.sign(&logout("j-1"));
        let parts: Vec<&str> = good.split('.').collect();
        let mut forged_claims = logout("j-1");
        forged_claims["sub"] = serde_json::json!("kana");
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            komugate::oidc::b64url(forged_claims.to_string().as_bytes()),
            parts[2]
        );
        assert_eq!(w.post_logout(&forged).await.0, 400);
        // A good one is taken once; the same again is a replay.
        assert_eq!(w.post_logout(&good).await.0, 200);
        let (status, body) = w.post_logout(&good).await;
        assert_eq!(status, 400);
        assert!(body.contains("received before"), "{body}");
        for reason in [
            "malformed",
            "not_logout_token",
            "audience",
            "too_old",
            "signature",
            "replayed",
        ] {
            assert_eq!(w.logout_refused(reason), 1.0, "{reason}");
        }
        assert_eq!(w.sessions_ended("logout"), 1.0, "nothing else ended");

        // Signed in again (a new sign-in), then `komugate client
        // --sign-out` from another process on the device: her access ends,
        // and the running client's token and renewals are refused after.
        let who = browser_sign_in(&w, &c, &cfg, "kana").await.unwrap();
        assert_eq!(who["user"], "kana@board.test");
        assert_eq!(get(&c, w.records.addr).await.0, 200);
        let held = c.link.user_token().unwrap();
        let (device, had) = komugate::client::sign_out_once(cfg.clone()).await.unwrap();
        assert_eq!((device.as_str(), had), ("PC-R", true));
        assert_eq!(get(&c, w.records.addr).await.0, 403);
        assert_eq!(w.sessions_ended("sign_out"), 1.0);
        // Past the renewal time of the held token: still out.
        tokio::time::sleep(Duration::from_secs(
            held.expires_at.saturating_sub(komugate::oidc::unix_now()) + 1,
        ))
        .await;
        assert_eq!(get(&c, w.records.addr).await.0, 403);
        assert!(w.refused("signed_out") >= 1.0, "the renewal was refused");
        assert!(c.link.user_token().is_none());
        let (_, had) = komugate::client::sign_out_once(cfg.clone()).await.unwrap();
        assert!(!had, "nobody signed in any more");
    })
    .await;
    assert!(
        done.is_ok(),
        "renewal, logout and sign-out did not finish within {limit:?}"
    );
}
