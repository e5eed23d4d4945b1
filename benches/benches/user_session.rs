//! What knowing the user costs:
//!
//! - per request: the gateway verifies an ID token once at sign-in and then
//!   only looks the device's session up (`komugate::users::Sessions::current`);
//!   for comparison, a full ID-token verification (EdDSA signature, claims)
//!   as done at sign-in and renewal (criterion);
//! - once: sign-in to the first allowed request, end to end with the real
//!   parts of tests/user_signin.rs: `komugate client`'s browser sign-in at
//!   oidc-provider (its login and consent pages walked by an HTTP client, so
//!   no human time), the token presented on the mTLS link, then requests
//!   through the client's proxy until the teachers-only origin answers 200.
//!   Skipped (with a note) when node or oidc-provider is not installed.
//!
//! `cargo bench -p komugate-benches --bench user_session`; record results
//! in benches/RESULTS.md under `## User sign-in`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, Criterion};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use komugate::oidc::b64url;
use komugate::oidc::verify::{verify_with, Expect};
use komugate::users::{Session, Sessions};

const DEVICES: usize = 20_000;

fn bench(c: &mut Criterion) {
    let registry = prometheus::Registry::new();
    let sessions =
        Sessions::new(&komugate::config::Config::embedded_default(), &registry).expect("sessions");
    for i in 0..DEVICES {
        sessions.insert_for_test(
            &format!("PC-T-{i:05}"),
            Session {
                user: format!("user{i}@board.example.jp"),
                groups: vec!["teachers".into(), format!("school-{}", i % 17)],
                expires_at: u64::MAX,
                signed_in_at: 0,
                ..Default::default()
            },
        );
    }
    c.bench_function("session_lookup_per_request (20k devices signed in)", |b| {
        b.iter(|| black_box(sessions.current(black_box("PC-T-12345"))))
    });
    c.bench_function("session_lookup_no_user", |b| {
        b.iter(|| black_box(sessions.current(black_box("PC-X-00001"))))
    });

    // A full verification, as at sign-in.
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    use ring::signature::KeyPair;
    let keys: JwkSet = serde_json::from_value(serde_json::json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "kid": "e1", "x": b64url(pair.public_key().as_ref())
    }]}))
    .unwrap();
    let now = komugate::oidc::unix_now();
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some("e1".into());
    let token = jsonwebtoken::encode(
        &h,
        &serde_json::json!({
            "iss": "https://login.example.jp/t/v2.0", "aud": "komugate-client", "sub": "u1",
            "iat": now, "exp": now + 3600, "nonce": "n", "preferred_username": "hanako",
            "groups": ["teachers"],
        }),
        &EncodingKey::from_ed_der(pkcs8.as_ref()),
    )
    .unwrap();
    let expect = Expect {
        issuer: "https://login.example.jp/t/v2.0",
        audience: "komugate-client",
        nonce: Some("n"),
        skew_secs: 60,
        max_age_secs: None,
        now,
    };
    assert!(verify_with(&token, &keys, &expect).is_ok());
    c.bench_function("id_token_full_verification (EdDSA)", |b| {
        b.iter(|| black_box(verify_with(black_box(&token), &keys, &expect).is_ok()))
    });
}

const SIGN_INS: usize = 8;

/// Times `SIGN_INS` sign-ins to the first allowed request; prints them.
fn sign_in_to_first_allowed_request() {
    use komugate_tests::oidc_provider::{node_modules, IdpClient, OidcProvider, ProviderSetup};
    if !node_modules().join("oidc-provider/package.json").exists() {
        println!(
            "sign-in figure skipped: oidc-provider is not installed at {} (run .ci/run once)",
            node_modules().display()
        );
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        const APP: &str = "komugate-client";
        // The provider always has one confidential client (the console's);
        // the app signs in as a native client beside it.
        let provider = OidcProvider::start(&ProviderSetup {
            client_id: "komugate-console".into(),
            client_secret: "a-client-secret-for-benches-only-01".into(),
            redirect_uri: "http://127.0.0.1:1/console/oidc/callback".into(),
            accounts: serde_json::json!({
                "hanako": {"preferred_username": "hanako@board.test", "groups": ["teachers"]},
            }),
            native_clients: vec![APP.into()],
            ..Default::default()
        })
        .await;
        let origin = komugate_tests::upstream::HttpUpstream::start("127.0.0.1").await;
        let policy = format!(
            "[[rule]]\nname = \"teachers\"\nports = [{p}]\nuser_groups = [\"teachers\"]\naction = \"allow\"\n\n[[rule]]\nname = \"sign in first\"\nports = [{p}]\naction = \"block\"\n",
            p = origin.addr.port()
        );
        let (issuer, ca) = (provider.issuer.clone(), provider.ca_file());
        let gw = komugate_tests::gw::TestGateway::start(|c, _| {
            std::fs::write(c.data.dir.join("policy.toml"), &policy).unwrap();
            c.policy.file = "policy.toml".into();
            c.users.oidc = Some(komugate::config::UserOidcConfig {
                issuer,
                client_id: APP.into(),
                scopes: vec!["openid".into(), "profile".into()],
                groups_claim: "groups".into(),
                user_claims: vec!["preferred_username".into()],
                ca_file: Some(ca),
                clock_skew_secs: 60,
                jwks_min_refetch_secs: 1,
            });
        })
        .await;
        let d = gw.tls().device("PC-BENCH", &[]);
        let dir = gw.dir.path();
        std::fs::write(dir.join("d.pem"), &d.cert_pem).unwrap();
        std::fs::write(dir.join("d.key"), &d.key_pem).unwrap();
        let cfg = komugate::client::ClientConfig {
            server: gw.mtls().to_string(),
            server_name: "localhost".into(),
            cert: dir.join("d.pem"),
            key: dir.join("d.key"),
            ca: gw.pki.join("inspect-ca.pem"),
            http: "127.0.0.1:0".into(),
            socks: String::new(),
            sign_in: "browser".into(),
            oidc_ca: provider.ca_file(),
            posture: false,
            ..Default::default()
        };
        let client = komugate_tests::gw::start_client(cfg.clone()).await;
        let proxy = format!("http://{}", client.http.unwrap());
        let target = format!("http://{}/", origin.addr);
        let status = |proxy: String, target: String| async move {
            let out = tokio::process::Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-x", &proxy, &target])
                .output()
                .await
                .expect("curl");
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        let mut ms = Vec::new();
        for _ in 0..SIGN_INS {
            assert_eq!(status(proxy.clone(), target.clone()).await, "403");
            let shown: Arc<Mutex<Option<String>>> = Default::default();
            let s = shown.clone();
            let opener: komugate::client::signin::Opener =
                Arc::new(move |url: &str, _: Option<&str>| *s.lock().unwrap() = Some(url.into()));
            let person = async {
                let url = loop {
                    if let Some(u) = shown.lock().unwrap().clone() {
                        break u;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                };
                let mut idp = IdpClient::new(&provider);
                let callback = idp.walk(&url, "hanako", "http://127.0.0.1:", None).await;
                let out = tokio::process::Command::new("curl")
                    .args(["-s", "--noproxy", "*", &callback])
                    .output()
                    .await
                    .expect("curl");
                assert!(out.status.success());
            };
            let started = Instant::now();
            let (who, ()) = tokio::join!(
                komugate::client::signin::sign_in(&client.link, &cfg, &opener),
                person
            );
            who.expect("signed in");
            while status(proxy.clone(), target.clone()).await != "200" {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            ms.push(started.elapsed().as_secs_f64() * 1000.0);
            client.link.sign_out().await.expect("sign-out");
        }
        ms.sort_by(f64::total_cmp);
        println!(
            "sign-in to the first allowed request ({SIGN_INS} sign-ins, provider pages walked by an HTTP client): median {:.0} ms, min {:.0} ms, max {:.0} ms",
            ms[ms.len() / 2],
            ms[0],
            ms[ms.len() - 1]
        );
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = bench
}

fn main() {
    sign_in_to_first_allowed_request();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
