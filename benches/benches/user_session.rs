//! What knowing the user costs per request: the gateway verifies an ID
//! token once at sign-in and then only looks the device's session up
//! (`komugate::users::Sessions::current`); for comparison, a full ID-token
//! verification (EdDSA signature, claims) as done at sign-in. Record results
//! in benches/RESULTS.md under `## User sign-in`.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
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

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
