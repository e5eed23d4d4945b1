//! The link's device key inside a PKCS#11 token: SoftHSM 2 (Debian
//! `softhsm2`) as a real token, the key imported into it, `komugate client`
//! with `key_store = "pkcs11"`: the mTLS link and signed posture reports
//! work through the token; with the token gone, signing fails with a clear
//! error and is counted.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use komugate::client::config::Pkcs11Config;
use komugate::client::pkcs11::Pkcs11Key;
use komugate::client::ClientConfig;
use komugate_tests::gw::TestGateway;
use komugate_tests::within;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

fn softhsm(args: &[&str]) -> String {
    let out = Command::new("softhsm2-util")
        .args(args)
        .output()
        .expect("softhsm2-util runs (apt-get install softhsm2; .ci/run does)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "softhsm2-util {args:?}: {text}");
    text
}

/// A SoftHSM token "komugate" holding `key_pem` as "device"; the PIN file.
fn token_with_key(dir: &Path, key_pem: &str) -> Pkcs11Config {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    // The module reads it when loaded (in this process, by the client).
    std::env::set_var("SOFTHSM2_CONF", &conf);
    softhsm(&[
        "--init-token",
        "--free",
        "--label",
        "komugate",
        "--so-pin",
        "12345678",
        "--pin",
        "5678",
    ]);
    let key = dir.join("device.p8.pem");
    std::fs::write(&key, key_pem).unwrap();
    softhsm(&[
        "--import",
        key.to_str().unwrap(),
        "--token",
        "komugate",
        "--label",
        "device",
        "--id",
        "01",
        "--pin",
        "5678",
    ]);
    std::fs::remove_file(&key).unwrap();
    let pin = dir.join("pin");
    std::fs::write(&pin, "5678\n").unwrap();
    Pkcs11Config {
        module: MODULE.into(),
        token_label: "komugate".into(),
        key_label: "device".into(),
        pin_file: pin,
    }
}

#[tokio::test]
async fn the_link_key_stays_in_a_pkcs11_token() {
    let gw = TestGateway::start(|_, _| {}).await;
    within("PKCS#11 device key", async {
        let origin = komugate_tests::upstream::HttpUpstream::start("127.0.0.1").await;
        let d = gw.tls().device("PC-HSM", &[]);
        let dir = gw.dir.path();
        let cert = dir.join("PC-HSM.pem");
        std::fs::write(&cert, &d.cert_pem).unwrap();
        let pkcs11 = token_with_key(dir, &d.key_pem);
        let cfg = ClientConfig {
            server: gw.mtls().to_string(),
            server_name: "localhost".into(),
            cert,
            ca: gw.pki.join("inspect-ca.pem"),
            http: "127.0.0.1:0".into(),
            socks: String::new(),
            key_store: "pkcs11".into(),
            pkcs11: pkcs11.clone(),
            posture: false,
            ..ClientConfig::default()
        };
        // No key file anywhere: the link authenticates through the token.
        let c = komugate_tests::gw::start_client(cfg).await;
        let proxy = format!("http://{}", c.http.unwrap());
        let out = tokio::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-x",
                &proxy,
            ])
            .arg(format!("http://{}/", origin.addr))
            .output()
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "200",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Posture reports signed by the token verify at the gateway.
        c.link
            .send_posture()
            .await
            .expect("a report signed in the token");
        assert_eq!(
            gw.metric("komugate_posture_reports_total", &[("result", "ok")]),
            1.0
        );

        // A second handle on the same key, to watch its failure count.
        let key = Pkcs11Key::open_key(&pkcs11).unwrap();
        assert_eq!(key.failures(), 0);

        // The token is removed.
        softhsm(&["--delete-token", "--token", "komugate"]);
        let e = format!("{:#}", c.link.send_posture().await.unwrap_err());
        assert!(e.contains("cannot sign (token removed?)"), "{e}");
        let signer = rustls::sign::SigningKey::choose_scheme(
            &key,
            &[rustls::SignatureScheme::ECDSA_NISTP256_SHA256],
        )
        .expect("an ECDSA P-256 key");
        let err = signer.sign(b"x").unwrap_err().to_string();
        assert!(
            err.contains("komugate") && err.contains("token removed"),
            "{err}"
        );
        assert_eq!(key.failures(), 1, "counted");
        // The gateway is not disturbed: its posture for the device simply ages out.
        tokio::time::sleep(Duration::from_millis(10)).await;
    })
    .await;
}
