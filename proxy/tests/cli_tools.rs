//! The administrators' command-line tools, run as the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn komugate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_komugate"))
        .args(args)
        .output()
        .expect("run komugate")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn categories_lookup_and_compiled_snapshot_agree() {
    let lists = repo().join("examples/lists/ut1");
    let listed = std::fs::read_to_string(lists.join("gambling/domains"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_string();
    let urls = [
        format!("http://{listed}/"),
        format!("https://www.{listed}:8443/x"),
        "http://komugate-not-listed.example/".to_string(),
    ];
    let mut args = vec!["categories", "lookup", "--lists", lists.to_str().unwrap()];
    args.extend(urls.iter().map(String::as_str));
    let out = komugate(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 3, "one line per URL: {lines:?}");
    assert_eq!(lines[0], format!("{}\tgambling", urls[0]));
    assert_eq!(
        lines[1],
        format!("{}\tgambling", urls[1]),
        "subdomains match"
    );
    assert_eq!(lines[2], format!("{}\t-", urls[2]));

    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("ut1.snap");
    let out = komugate(&[
        "categories",
        "compile",
        lists.to_str().unwrap(),
        "--out",
        snap.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut args = vec!["categories", "lookup", "--lists", snap.to_str().unwrap()];
    args.extend(urls.iter().map(String::as_str));
    let from_snapshot = komugate(&args);
    assert_eq!(stdout(&from_snapshot), stdout(&out_again(&lists, &urls)));
}

fn out_again(lists: &Path, urls: &[String]) -> Output {
    let mut args = vec!["categories", "lookup", "--lists", lists.to_str().unwrap()];
    args.extend(urls.iter().map(String::as_str));
    komugate(&args)
}

#[test]
fn unreadable_blocklist_lines_are_counted_and_the_rest_imported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("gambling")).unwrap();
    std::fs::write(
        dir.path().join("gambling/domains"),
        "good.example\nbad domain with spaces\n\u{0}\nother.example\n",
    )
    .unwrap();
    let out = komugate(&[
        "categories",
        "lookup",
        "--lists",
        dir.path().to_str().unwrap(),
        "http://other.example/",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "http://other.example/\tgambling");
    let err = stderr(&out);
    assert!(err.contains("invalid"), "{err}");
    assert!(
        err.contains("domains:2"),
        "file:line of the bad line: {err}"
    );
}

#[test]
fn policy_check_lists_every_error_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "version = 1\n[[site]]\nname = \"学校\"\ncidrs = [\"10.0.0.0/33\"]\n\n[[rule]]\nname = \"r\"\ncategoriez = [\"x\"]\naction = \"block\"\n",
    )
    .unwrap();
    let out = komugate(&["policy", "check", policy.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("policy.toml:4:"),
        "bad CIDR with line:column: {err}"
    );
    assert!(
        err.contains("policy.toml:8:1"),
        "unknown key with line:column: {err}"
    );
    assert!(
        err.contains("categories"),
        "suggests the near-miss name: {err}"
    );

    let ok = komugate(&[
        "policy",
        "check",
        repo().join("examples/policy.toml").to_str().unwrap(),
    ]);
    assert!(
        ok.status.success(),
        "the shipped example is valid: {}",
        stderr(&ok)
    );
}

#[test]
fn squidguard_import_round_trips_through_check_and_explain() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("db/gambling")).unwrap();
    std::fs::write(dir.path().join("db/gambling/domains"), "casino.example\n").unwrap();
    let conf = dir.path().join("squidGuard.conf");
    std::fs::write(
        &conf,
        format!(
            "dbhome {}\n\nsrc school {{\n    ip 10.1.0.0/16\n}}\n\ndest gambling {{\n    domainlist gambling/domains\n}}\n\nacl {{\n    school {{\n        pass !gambling all\n        redirect http://block.example/\n    }}\n    default {{\n        pass none\n    }}\n}}\n",
            dir.path().join("db").display()
        ),
    )
    .unwrap();
    let out_file = dir.path().join("imported.toml");
    let out = komugate(&[
        "policy",
        "import-squidguard",
        conf.to_str().unwrap(),
        "--out",
        out_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let check = komugate(&["policy", "check", out_file.to_str().unwrap()]);
    assert!(check.status.success(), "{}", stderr(&check));
    let explain = |from: &str, url: &str| {
        let o = komugate(&[
            "policy",
            "explain",
            out_file.to_str().unwrap(),
            "--from",
            from,
            "--url",
            url,
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["action"].as_str().unwrap().to_string()
    };
    assert_eq!(explain("10.1.2.3", "http://www.casino.example/"), "Block");
    assert_eq!(explain("10.1.2.3", "http://school.example/"), "Allow");
    assert_eq!(
        explain("192.0.2.1", "http://school.example/"),
        "Block",
        "default acl passes none"
    );
}

#[test]
fn export_ca_pem_and_der() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    assert!(komugate(&["pki", "init", "--dir", pki.to_str().unwrap()])
        .status
        .success());
    let pem = komugate(&[
        "pki",
        "export-ca",
        "--dir",
        pki.to_str().unwrap(),
        "--format",
        "pem",
    ]);
    assert!(pem.status.success());
    assert!(stdout(&pem).starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(
        pem.stdout,
        std::fs::read(pki.join("inspect-ca.pem")).unwrap()
    );
    let der = komugate(&[
        "pki",
        "export-ca",
        "--dir",
        pki.to_str().unwrap(),
        "--format",
        "der",
    ]);
    assert!(der.status.success());
    assert_eq!(der.stdout[0], 0x30, "DER SEQUENCE");
    let missing = komugate(&[
        "pki",
        "export-ca",
        "--dir",
        dir.path().join("nope").to_str().unwrap(),
    ]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("inspect-ca.pem"),
        "{}",
        stderr(&missing)
    );
}

/// The audit log's entries, parsed.
fn audit_events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
        .collect()
}

#[test]
fn ca_and_certificate_actions_and_log_searches_are_audited() {
    let dir = std::env::temp_dir().join(format!("komugate-cli-audit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pki = dir.join("pki");
    let audit = dir.join("audit.log");
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let ok = |o: Output| {
        assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
        o
    };

    ok(komugate(&["pki", "init", "--dir", &p(&pki)]));
    let events = audit_events(&audit);
    let whats: Vec<&str> = events.iter().map(|e| e["what"].as_str().unwrap()).collect();
    assert_eq!(
        whats,
        ["device-ca", "inspect-ca", "server-cert"],
        "{events:#?}"
    );
    assert!(events.iter().all(|e| e["type"] == "ca_change"
        && e["old_fingerprint"].is_null()
        && e["new_fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
        && e["detail"].as_str().unwrap().contains("komugate pki init")
        && e["detail"].as_str().unwrap().contains("uid")));
    let first_device_ca = events[0]["new_fingerprint"].clone();

    // --force replaces: old and new fingerprints.
    ok(komugate(&["pki", "init", "--dir", &p(&pki), "--force"]));
    let events = audit_events(&audit);
    assert_eq!(events.len(), 6, "{events:#?}");
    assert_eq!(events[3]["what"], "device-ca");
    assert_eq!(events[3]["old_fingerprint"], first_device_ca);
    assert_ne!(events[3]["new_fingerprint"], first_device_ca);
    assert!(events[3]["detail"].as_str().unwrap().contains("--force"));

    let laptop = dir.join("T-0001");
    ok(komugate(&[
        "pki",
        "issue-device",
        "--dir",
        &p(&pki),
        "--device",
        "T-0001",
        "--group",
        "teachers",
        "--out",
        &p(&laptop),
    ]));
    let events = audit_events(&audit);
    let issued = &events[6];
    assert_eq!(issued["what"], "device-cert");
    let detail = issued["detail"].as_str().unwrap();
    assert!(
        detail.contains("\"T-0001\"") && detail.contains("teachers") && detail.contains("serial"),
        "{detail}"
    );

    // Revocation: the serial goes into the list the gateway reads, audited.
    ok(komugate(&[
        "pki",
        "revoke",
        "--dir",
        &p(&pki),
        "--cert",
        &p(&laptop.with_extension("pem")),
        "--reason",
        "lost on the train",
    ]));
    let list = std::fs::read_to_string(pki.join("revoked-serials.txt")).unwrap();
    let der =
        rustls_pki_types::pem::PemObject::from_pem_file(laptop.with_extension("pem")).unwrap();
    let serial = komugate::device_auth::identity_from_cert(&der)
        .unwrap()
        .serial_hex;
    assert!(
        list.starts_with(&serial) && list.contains("lost on the train"),
        "{list}"
    );
    let events = audit_events(&audit);
    assert_eq!(events[7]["what"], "device-cert-revoked");
    assert!(events[7]["detail"].as_str().unwrap().contains(&serial));
    // Revoking again changes nothing and is not a second event.
    ok(komugate(&[
        "pki",
        "revoke",
        "--dir",
        &p(&pki),
        "--serial",
        &serial,
        "--reason",
        "again",
    ]));
    assert_eq!(audit_events(&audit).len(), 8);
    let o = komugate(&[
        "pki",
        "revoke",
        "--dir",
        &p(&pki),
        "--serial",
        "xyz",
        "--reason",
        "typo",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("xyz"),
        "{}",
        stderr(&o)
    );

    // A log search (an export of personal data) names who and what.
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let out = dir.join("report.csv");
    ok(komugate(&[
        "logs",
        "search",
        "--dir",
        &p(&logs),
        "--since",
        "-7d",
        "--device",
        "T-0001",
        "--out",
        &p(&out),
    ]));
    let events = audit_events(&audit);
    let search = &events[8];
    assert_eq!(search["type"], "log_search");
    assert_eq!(search["via"], "cli");
    assert_eq!(search["query"], "since=-7d device=T-0001");
    assert_eq!(search["format"], "csv");
    assert_eq!(search["out"], p(&out));
    assert!(search["actor"].as_str().unwrap().contains("uid"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o640
    );

    let v = komugate(&["audit", "verify", "--file", &p(&audit)]);
    assert!(
        v.status.success(),
        "audit chain intact: {}{}",
        stdout(&v),
        stderr(&v)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn policy_check_and_explain_speak_japanese_with_lang_ja() {
    let example = repo().join("examples/policy.toml");
    let example = example.to_str().unwrap();
    let ok = komugate(&["policy", "check", example, "--lang", "ja"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let text = stdout(&ok);
    assert!(text.contains("問題ありません"), "{text}");
    assert!(text.contains("ギャンブル (gambling)"), "{text}");
    let en = stdout(&komugate(&["policy", "check", example]));
    assert!(
        en.contains(": OK (generation") && !en.contains("問題ありません"),
        "English stays the default: {en}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("policy.toml");
    std::fs::write(
        &bad,
        "version = 1\n[[rule]]\nname = \"r\"\nactoin = \"block\"\n",
    )
    .unwrap();
    let out = komugate(&["policy", "check", bad.to_str().unwrap(), "--lang", "ja"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("policy.toml:4:1"), "positions stay: {err}");
    assert!(
        err.contains("エラーが") && err.contains("受け付けられませんでした"),
        "{err}"
    );

    let explain = |lang: &str| {
        let o = komugate(&[
            "policy",
            "explain",
            example,
            "--from",
            "203.0.113.3",
            "--url",
            "https://www.0-casino.info/",
            "--lang",
            lang,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let ja = explain("ja");
    for needle in [
        "判定:         ブロック",
        "カテゴリ:     ギャンブル (gambling)",
        "ルール:       UT1 有害カテゴリ",
    ] {
        assert!(ja.contains(needle), "{needle:?} in\n{ja}");
    }
    let en = explain("en");
    assert!(en.contains("action:     block"), "{en}");
    assert!(en.contains("categories: gambling\n"), "{en}");

    let wrong = komugate(&["policy", "check", example, "--lang", "fr"]);
    assert!(!wrong.status.success());
    assert!(stderr(&wrong).contains("ja"), "{}", stderr(&wrong));
}

/// `komugate doctor` on a configuration whose PKI is missing and whose
/// gateway is not running: exit status 1, each fault named (JSON for
/// scripts); after `pki init` the certificates pass. A configuration with
/// a typo is refused with its file and line.
#[test]
fn doctor_names_what_is_missing_and_passes_once_it_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = dir.path().join("komugate.toml");
    let text = stdout(&komugate(&["config", "default"])).replace(
        "admin = \"127.0.0.1:9090\"",
        &format!("admin = \"{closed}\""),
    );
    std::fs::write(&config, text).unwrap();
    let (config_arg, data_arg) = (config.to_str().unwrap(), data.to_str().unwrap());
    let run = || {
        let out = komugate(&[
            "doctor",
            "--config",
            config_arg,
            "--data",
            data_arg,
            "--format",
            "json",
            "--timeout",
            "3",
        ]);
        let report: serde_json::Value = serde_json::from_str(&stdout(&out))
            .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
        let status = |area: &str| -> Vec<String> {
            report["checks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["area"] == area)
                .map(|c| c["status"].as_str().unwrap().to_string())
                .collect()
        };
        (
            out.status.code(),
            status("config"),
            status("certificate"),
            status("gateway"),
        )
    };
    let (code, config_status, certs, gateway) = run();
    assert_eq!(code, Some(1));
    assert_eq!(config_status, ["ok"]);
    assert_eq!(certs, ["fail", "fail"], "no PKI yet");
    assert_eq!(gateway, ["fail"], "nothing listens on {closed}");

    let init = komugate(&["pki", "init", "--dir", data.join("pki").to_str().unwrap()]);
    assert!(init.status.success(), "{}", stderr(&init));
    let (_, _, certs, _) = run();
    assert_eq!(
        certs,
        ["ok", "ok", "ok"],
        "server, device CA, inspection CA"
    );

    // People read the text form: Japanese first, English beside.
    let out = komugate(&[
        "doctor",
        "--config",
        config_arg,
        "--data",
        data_arg,
        "--timeout",
        "3",
    ]);
    let text = stdout(&out);
    assert!(
        text.contains("[FAIL] 稼働中のゲートウェイ / running gateway"),
        "{text}"
    );
    assert!(text.contains("対処 / fix:"), "{text}");

    std::fs::write(&config, "[listen]\nplian = \"127.0.0.1:3128\"\n").unwrap();
    let out = komugate(&["doctor", "--config", config_arg]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(config_arg) && stderr(&out).contains("plian"),
        "{}",
        stderr(&out)
    );
}
