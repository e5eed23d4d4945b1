//! The device, registry and certificate pages in a real browser (headless
//! chromium over WebDriver) against a gateway on loopback: the device list
//! and search, a personnel move, a registry CSV saved by Japanese Excel
//! (CP932) imported through its preview (added, moved, removed), bad files
//! refused with a Japanese message and nothing applied (a malformed row, mixed
//! encodings, a 50 MB file), the export as CP932, a `.pfx` issued with its
//! one-time password and read by OpenSSL, a real mTLS connection with it,
//! the lost laptop revoked (its next connection refused after the one
//! reload) and refused a new `.pfx`, the CRL at its URL naming it.
//! Screenshots in `$KOMUGATE_SCREENSHOT_DIR` (default target/tmp/screenshots).

use std::path::Path;
use std::process::Command;

use fantoccini::Locator;
use komugate::console::accounts::Role;
use komugate_tests::browser::{
    click, downloaded, fill, password_sign_in, wait_text, Browser, BrowserOptions,
};
use komugate_tests::console::write_accounts;
use komugate_tests::gw::{client_config, tls_connect, TestGateway};
use komugate_tests::raw::RawConn;
use komugate_tests::upstream::HttpUpstream;

const ADMIN_PW: &str = "admin-password-for-devices";

const POLICY: &str = r#"
version = 1
timezone = "+09:00"

[defaults]
action = "allow"

[registry]
path = "registry.csv"

[[group]]
name = "教職員"
aliases = ["teachers"]

[[group]]
name = "テレワーク"
aliases = ["telework"]

[[site]]
name = "豊科南小学校"
cidrs = ["127.0.0.1/32"]
"#;

fn registry_path(gw: &TestGateway) -> std::path::PathBuf {
    gw.dir.path().join("registry.csv")
}

/// Uploads `file` through the form `form_css` (its file input) and submits it.
async fn upload(b: &Browser, form_css: &str, file: &Path) {
    b.client
        .find(Locator::Css(&format!("{form_css} input[type=file]")))
        .await
        .unwrap()
        .send_keys(file.to_str().unwrap())
        .await
        .unwrap();
    click(b, &format!("{form_css} button[type=submit]")).await;
}

fn openssl(args: &[&str]) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed (.ci/run installs it)")
}

/// One GET through the mTLS listener with `cert`; `None` when the
/// gateway refuses the certificate.
async fn mtls_get(gw: &TestGateway, cert: &komugate::pki::IssuedCert, url: &str) -> Option<u16> {
    let config = client_config(gw.tls().server_ca(), Some(cert), &[b"http/1.1"]);
    let tls = tls_connect(gw.mtls(), config).await.ok()?;
    let mut conn = RawConn::new(tls);
    conn.send(
        format!("GET {url} HTTP/1.1\r\nHost: plain.test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    conn.read_response(false).await.ok().map(|r| r.status)
}

#[tokio::test]
async fn devices_registry_and_certificates_in_a_real_browser() {
    let upstream = HttpUpstream::start("127.0.0.1").await;
    let gw = TestGateway::start(|c, _| {
        let dir = c.data.dir.clone();
        std::fs::write(
            dir.join("registry.csv"),
            "device_id,user,groups\nT-1,田中 花子,教職員;テレワーク\nT-2,鈴木 一郎,教職員\n",
        )
        .unwrap();
        std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
        c.policy.file = dir.join("policy.toml").display().to_string();
        std::fs::write(dir.join("pki/revoked-serials.txt"), "").unwrap();
        c.tls.revoked_serials = "pki/revoked-serials.txt".into();
        write_accounts(c, &[("admin1", Role::Admin, ADMIN_PW)]);
    })
    .await;
    let base = format!("http://{}", gw.admin());
    let files = tempfile::tempdir().unwrap();
    let downloads = tempfile::tempdir().unwrap();
    let b = Browser::start(&BrowserOptions {
        download_dir: Some(downloads.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    password_sign_in(&b, &base, "admin1", ADMIN_PW, None).await;

    // The list, then a search.
    b.client
        .goto(&format!("{base}/console/devices"))
        .await
        .unwrap();
    let text = wait_text(&b, "device list", |_, t| t.contains("T-2")).await;
    assert!(
        text.contains("田中 花子") && text.contains("教職員; テレワーク"),
        "{text}"
    );
    b.shot("console-devices").await;
    fill(&b, "input[name=q]", "鈴木").await;
    click(&b, "form[action='/console/devices'] button").await;
    let text = wait_text(&b, "search", |u, _| u.contains("q=")).await;
    assert!(text.contains("T-2") && !text.contains("T-1"), "{text}");

    // A personnel move: T-1 leaves テレワーク.
    b.client
        .goto(&format!("{base}/console/devices"))
        .await
        .unwrap();
    fill(&b, "#move input[name=target]", "T-1").await;
    fill(&b, "#move input[name=groups]", "教職員").await;
    click(&b, "#move button").await;
    let text = wait_text(&b, "move", |_, t| t.contains("1 台のグループを変更")).await;
    assert!(!text.contains("教職員; テレワーク"), "{text}");
    b.shot("console-devices-moved").await;
    assert_eq!(
        gw.running
            .as_ref()
            .unwrap()
            .gateway
            .current()
            .runtime
            .policy
            .device("T-1"),
        Some(("田中 花子", vec!["教職員"]))
    );

    // The registry as Japanese Excel saves it (CP932): T-1 back into
    // テレワーク, T-3 added, T-2 removed; previewed, then applied.
    let csv = files.path().join("台帳.csv");
    std::fs::write(
        &csv,
        komugate_policy::encode_csv(
            "device_id,user,groups\r\nT-1,田中 花子,教職員;テレワーク\r\nT-3,髙橋 ①,teachers\r\n",
            komugate_policy::CsvEncoding::Cp932,
        )
        .unwrap(),
    )
    .unwrap();
    upload(&b, "#import", &csv).await;
    let text = wait_text(&b, "preview", |_, t| t.contains("cp932")).await;
    let section = |id: &str| {
        let id = id.to_string();
        let b = &b;
        async move {
            b.client
                .find(Locator::Css(&format!("#{id}")))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    assert!(section("added").await.contains("T-3"), "{text}");
    assert!(section("added").await.contains("髙橋 ①"), "{text}");
    assert!(section("moved").await.contains("T-1"), "{text}");
    assert!(section("removed").await.contains("T-2"), "{text}");
    b.shot("console-registry-preview").await;
    let before_apply = std::fs::read(registry_path(&gw)).unwrap();
    click(&b, "#apply button").await;
    wait_text(&b, "applied", |_, t| t.contains("端末台帳を反映し")).await;
    b.shot("console-registry-applied").await;
    assert_ne!(std::fs::read(registry_path(&gw)).unwrap(), before_apply);
    let policy = gw
        .running
        .as_ref()
        .unwrap()
        .gateway
        .current()
        .runtime
        .policy
        .clone();
    assert_eq!(policy.device("T-3"), Some(("髙橋 ①", vec!["教職員"])));
    assert_eq!(policy.device("T-2"), None);

    // Bad files: a Japanese message, nothing applied.
    let applied = std::fs::read(registry_path(&gw)).unwrap();
    let generation = gw.running.as_ref().unwrap().gateway.current().number();
    let bad = files.path().join("bad.csv");
    std::fs::write(&bad, "device_id,user,groups\nT-1,a,教職員\nT-9,b,事務局\n").unwrap();
    b.client
        .goto(&format!("{base}/console/devices"))
        .await
        .unwrap();
    upload(&b, "#import", &bad).await;
    let text = wait_text(&b, "malformed row", |_, t| {
        t.contains("何も反映していません")
    })
    .await;
    assert!(
        text.contains("3 行目") && text.contains("ポリシーにないグループ「事務局」"),
        "{text}"
    );
    b.shot("console-registry-bad-row").await;
    let mut mixed = "device_id,user,groups\nT-1,田中,教職員\n"
        .as_bytes()
        .to_vec();
    mixed.extend(
        komugate_policy::encode_csv("T-5,鈴木,教職員\n", komugate_policy::CsvEncoding::Cp932)
            .unwrap(),
    );
    std::fs::write(&bad, mixed).unwrap();
    b.client
        .goto(&format!("{base}/console/devices"))
        .await
        .unwrap();
    upload(&b, "#import", &bad).await;
    let text = wait_text(&b, "mixed encodings", |_, t| t.contains("文字コードが混在")).await;
    assert!(text.contains("2 行目") && text.contains("3 行目"), "{text}");
    b.shot("console-registry-mixed").await;
    let big = files.path().join("big.csv");
    {
        let mut f = std::fs::File::create(&big).unwrap();
        let line = "T-0000,someone,教職員\n".repeat(1000);
        use std::io::Write;
        f.write_all(b"device_id,user,groups\n").unwrap();
        while f.metadata().unwrap().len() < 50 * 1024 * 1024 {
            f.write_all(line.as_bytes()).unwrap();
        }
    }
    b.client
        .goto(&format!("{base}/console/devices"))
        .await
        .unwrap();
    upload(&b, "#import", &big).await;
    let text = wait_text(&b, "50 MB", |_, t| t.contains("大きすぎます")).await;
    assert!(
        text.contains("50.0 MB") && text.contains("5.0 MB"),
        "{text}"
    );
    b.shot("console-registry-too-large").await;
    assert_eq!(
        std::fs::read(registry_path(&gw)).unwrap(),
        applied,
        "nothing applied"
    );
    assert_eq!(
        gw.running.as_ref().unwrap().gateway.current().number(),
        generation
    );

    // The export for Excel (CP932), read back.
    b.client
        .goto(&format!("{base}/console/devices"))
        .await
        .unwrap();
    click(&b, "a[href*='encoding=cp932']").await;
    let exported = downloaded(downloads.path(), "csv").await;
    let (text, encoding) = komugate_policy::decode_csv(&std::fs::read(&exported).unwrap()).unwrap();
    assert_eq!(encoding, komugate_policy::CsvEncoding::Cp932);
    assert!(text.contains("T-3,髙橋 ①,教職員\r\n"), "{text}");

    // A .pfx for T-3: the password shown once, the file downloaded once.
    b.client
        .goto(&format!("{base}/console/certs"))
        .await
        .unwrap();
    fill(&b, "#issue input[name=device]", "T-3").await;
    click(&b, "#issue button").await;
    wait_text(&b, "issued", |_, t| t.contains("証明書を発行しました")).await;
    let password = b
        .client
        .find(Locator::Css("#password"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(password.len(), 16, "{password}");
    b.shot("console-cert-issued").await;
    click(&b, "#download").await;
    let pfx = downloaded(downloads.path(), "pfx").await;
    let pfx = pfx.to_str().unwrap();
    let out = openssl(&[
        "pkcs12",
        "-in",
        pfx,
        "-passin",
        &format!("pass:{password}"),
        "-noenc",
        "-clcerts",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = String::from_utf8_lossy(&out.stdout).into_owned();
    let cert_pem = pem[pem.find("-----BEGIN CERTIFICATE-----").unwrap()..].to_string();
    let key_pem = pem[pem.find("-----BEGIN PRIVATE KEY-----").unwrap()..].to_string();
    let cert = komugate::pki::IssuedCert {
        cert_pem: cert_pem[..cert_pem.find("-----END CERTIFICATE-----").unwrap() + 25].to_string(),
        key_pem: key_pem[..key_pem.find("-----END PRIVATE KEY-----").unwrap() + 25].to_string(),
    };
    // The same download again: gone.
    let token_page = format!("{base}/console/certs/download?token=x");
    b.client.goto(&token_page).await.unwrap();
    wait_text(&b, "download gone", |_, t| t.contains("使用済みか")).await;

    // The laptop works, then is lost: revoked from the list, refused at once.
    let url = format!("http://plain.test:{}/after-issue", upstream.addr.port());
    assert_eq!(mtls_get(&gw, &cert, &url).await, Some(200));
    b.client
        .goto(&format!("{base}/console/certs"))
        .await
        .unwrap();
    let serial = b
        .client
        .find(Locator::Css("#all td code"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    fill(&b, "form.revoke input[name=reason]", "電車で紛失").await;
    click(&b, "form.revoke button").await;
    wait_text(&b, "revoked", |_, t| {
        t.contains("失効させ、再読み込みしました")
    })
    .await;
    b.shot("console-cert-revoked").await;
    assert_eq!(
        mtls_get(&gw, &cert, &url).await,
        None,
        "a revoked certificate is refused"
    );
    // A new .pfx for the lost laptop's id: refused in Japanese.
    fill(&b, "#issue input[name=device]", "T-3").await;
    click(&b, "#issue button").await;
    let text = wait_text(&b, "revoked device", |_, t| t.contains("失効済みです")).await;
    assert!(text.contains(&serial), "{text}");
    b.shot("console-cert-revoked-refused").await;

    // The CRL at its URL names the serial.
    let crl = admin_get(gw.admin(), "/pki/device-ca.crl").await;
    let crl_file = files.path().join("device-ca.crl");
    std::fs::write(&crl_file, crl).unwrap();
    let out = openssl(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        crl_file.to_str().unwrap(),
        "-noout",
        "-text",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_uppercase();
    assert!(
        out.status.success() && text.contains(&serial.to_uppercase()),
        "{text}"
    );

    b.stop().await;
    gw.shutdown().await;
}

/// The body of a GET to the admin listener.
async fn admin_get(admin: std::net::SocketAddr, path: &str) -> Vec<u8> {
    let resp = komugate_tests::raw::request(
        admin,
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.body
}
