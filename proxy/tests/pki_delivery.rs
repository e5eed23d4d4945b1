//! Device certificates handed out as PKCS#12: `komugate pki issue-bulk`
//! (a zip of DEVICE.pfx under one password printed once, read back by
//! OpenSSL the way Windows' import reads it), `pki list` (expiry, revoked)
//! and a revoked device refused a new certificate; the real binary.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};

fn komugate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_komugate"))
        .args(args)
        .output()
        .expect("run komugate")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `openssl pkcs12 -info` on `pfx` with `password`: its output, or the error.
fn openssl_info(pfx: &Path, password: &str) -> Result<String, String> {
    let out = Command::new("openssl")
        .args(["pkcs12", "-info", "-noenc", "-in", p(pfx), "-passin"])
        .arg(format!("pass:{password}"))
        .output()
        .expect("openssl is installed (.ci/run installs it)");
    if out.status.success() {
        Ok(text(&out.stdout) + &text(&out.stderr))
    } else {
        Err(text(&out.stderr))
    }
}

#[test]
fn bulk_issue_list_and_revoked_device_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let out = komugate(&["pki", "init", "--dir", p(&pki)]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // The registry CSV itself, as Japanese Excel saves it (CP932), with a
    // Japanese user name: the device_id column is what counts.
    let csv = dir.path().join("devices.csv");
    let sjis = komugate_policy::encode_csv(
        "device_id,user,groups\r\nPC-T-0001,田中 花子,教職員\r\nPC-T-0002,鈴木 一郎,教職員;テレワーク\r\n",
        komugate_policy::CsvEncoding::Cp932,
    )
    .unwrap();
    std::fs::write(&csv, &sjis).unwrap();
    let zip_path = dir.path().join("certs.zip");
    let out = komugate(&[
        "pki",
        "issue-bulk",
        "--dir",
        p(&pki),
        p(&csv),
        "--out",
        p(&zip_path),
        "--days",
        "20",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    let password = printed
        .lines()
        .find_map(|l| l.split("(shown once, not stored): ").nth(1))
        .unwrap_or_else(|| panic!("no password in {printed}"))
        .trim()
        .to_string();
    assert_eq!(password.len(), 16);

    let mut zip = zip::ZipArchive::new(std::fs::File::open(&zip_path).unwrap()).unwrap();
    let mut names: Vec<String> = zip.file_names().map(str::to_string).collect();
    names.sort();
    assert_eq!(names, ["PC-T-0001.pfx", "PC-T-0002.pfx"]);
    let mut pfx = Vec::new();
    zip.by_name("PC-T-0002.pfx")
        .unwrap()
        .read_to_end(&mut pfx)
        .unwrap();
    let pfx_path = dir.path().join("PC-T-0002.pfx");
    std::fs::write(&pfx_path, &pfx).unwrap();
    // OpenSSL reads it with the password: PBES2 / AES-256 / SHA-256 MAC,
    // the key and both certificates (the device's and the device CA).
    let info = openssl_info(&pfx_path, &password).unwrap();
    assert!(info.contains("MAC: sha256"), "{info}");
    assert!(
        info.contains("PBES2") && info.contains("AES-256-CBC"),
        "{info}"
    );
    assert!(
        info.contains("subject=O = komugate, CN = PC-T-0002"),
        "{info}"
    );
    assert!(info.contains("CN = komugate device CA"), "{info}");
    assert!(info.contains("BEGIN PRIVATE KEY"), "{info}");
    assert!(info.contains("friendlyName: PC-T-0002"), "{info}");
    // and not without it
    assert!(openssl_info(&pfx_path, "wrong-password").is_err());

    // pki list: both, valid; expiring within 30 days (they last 20).
    let out = komugate(&["pki", "list", "--dir", p(&pki), "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1]["device"], "PC-T-0002");
    assert_eq!(listed[1]["revoked"], false);
    let serial = listed[1]["serial"].as_str().unwrap().to_string();
    let out = komugate(&["pki", "list", "--dir", p(&pki), "--expiring-within", "10"]);
    assert_eq!(
        text(&out.stdout).lines().count(),
        1,
        "header only: {}",
        text(&out.stdout)
    );
    let out = komugate(&["pki", "list", "--dir", p(&pki), "--expiring-within", "30"]);
    assert_eq!(
        text(&out.stdout).lines().count(),
        3,
        "{}",
        text(&out.stdout)
    );

    // The laptop is lost: revoke it, and the list says so.
    let out = komugate(&[
        "pki",
        "revoke",
        "--dir",
        p(&pki),
        "--serial",
        &serial,
        "--reason",
        "lost on the train",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = komugate(&["pki", "list", "--dir", p(&pki)]);
    let listing = text(&out.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("PC-T-0002\t") && l.ends_with("\trevoked")),
        "{listing}"
    );
    // A new certificate for the revoked device: refused, nothing written.
    let again = dir.path().join("again.zip");
    let out = komugate(&[
        "pki",
        "issue-bulk",
        "--dir",
        p(&pki),
        p(&csv),
        "--out",
        p(&again),
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("PC-T-0002 has a revoked certificate") && err.contains(&serial),
        "{err}"
    );
    assert!(!again.exists());
    let out = komugate(&["pki", "list", "--dir", p(&pki), "--format", "json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "nothing issued");

    // A malformed row names its line; nothing is issued.
    std::fs::write(&csv, "device_id,user\nPC-9,a\nPC 10,b\n").unwrap();
    let out = komugate(&[
        "pki",
        "issue-bulk",
        "--dir",
        p(&pki),
        p(&csv),
        "--out",
        p(&again),
    ]);
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("line 3:"), "{err}");
    assert!(!again.exists());
}
