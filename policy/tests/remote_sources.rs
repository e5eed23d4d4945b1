//! `[[categories.source]]` with `url`: validation and `Policy::remote_sources`.

use komugate_policy::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "komugate-policy-remote-{tag}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn errors(text: &str) -> Vec<String> {
    match Policy::from_str(text, Path::new("/nonexistent/p.toml")) {
        Ok(_) => vec![],
        Err(e) => e.iter().map(|d| d.to_string()).collect(),
    }
}

#[test]
fn missing_path_is_an_empty_source_with_declared_categories() {
    let dir = tempdir("missing");
    let text = r#"
[categories]
[[categories.source]]
format = "squidguard"
path = "lists/ut1"
only = ["adult", "gambling"]
url = "https://dsi.ut-capitole.fr/blacklists/download/blacklists.tar.gz"
refresh = "6h"
max_shrink = 0.3

[[rule]]
name = "no adult"
category = "adult"
action = "block"
"#;
    let file = dir.join("p.toml");
    let p = Policy::from_str(text, &file).unwrap_or_else(|e| panic!("{e}"));
    let r = p.remote_sources();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].path, dir.join("lists/ut1"));
    assert!(!r[0].present);
    assert_eq!(r[0].refresh, Duration::from_secs(6 * 3600));
    assert_eq!(r[0].max_shrink, 0.3);
    assert_eq!(r[0].max_invalid_ratio, REMOTE_DEFAULT_MAX_INVALID_RATIO);
    assert_eq!(r[0].max_bytes, REMOTE_DEFAULT_MAX_BYTES);
    assert_eq!(
        r[0].only.as_deref(),
        Some(&["adult".to_string(), "gambling".to_string()][..])
    );
    assert!(p.import_report().sources[0].first_errors[0].contains("does not exist yet"));
}

#[test]
fn present_source_counts_entries() {
    let dir = tempdir("present");
    std::fs::write(dir.join("bad.txt"), "evil.example\nworse.example\n").unwrap();
    let text = r#"
[categories]
[[categories.source]]
format = "plain"
category = "malware"
path = "bad.txt"
url = "http://lists.example/bad.txt"
sha256 = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
max_bytes = 1000
"#;
    let p = Policy::from_str(text, &dir.join("p.toml")).unwrap_or_else(|e| panic!("{e}"));
    let r = &p.remote_sources()[0];
    assert!(r.present);
    assert_eq!(r.entries, 2);
    assert_eq!(r.max_bytes, 1000);
    assert_eq!(r.refresh, REMOTE_DEFAULT_REFRESH);
    assert_eq!(
        r.sha256.as_deref(),
        Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    );
    assert_eq!(r.category.as_deref(), Some("malware"));
}

#[test]
fn no_url_no_remote() {
    let dir = tempdir("local");
    std::fs::write(dir.join("bad.txt"), "evil.example\n").unwrap();
    let text = "[categories]\n[[categories.source]]\nformat = \"plain\"\ncategory = \"x\"\npath = \"bad.txt\"\n";
    let p = Policy::from_str(text, &dir.join("p.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(p.remote_sources().is_empty());
}

#[test]
fn validation_errors_have_positions() {
    let base = "[categories]\n[[categories.source]]\nformat = \"plain\"\ncategory = \"x\"\npath = \"missing.txt\"\n";
    let cases: &[(&str, &str, &str)] = &[
        ("url = \"ftp://x/y\"\n", "6:7:", "not an http:// or https:// URL"),
        ("url = \"http://\"\n", "6:7:", "no usable host"),
        ("url = \"http://a/b\"\nrefresh = \"1m\"\n", "7:11:", "too short"),
        ("url = \"http://a/b\"\nrefresh = \"soon\"\n", "7:11:", "not a duration"),
        ("url = \"http://a/b\"\nsha256 = \"abc\"\n", "7:10:", "64 hex digits"),
        ("url = \"http://a/b\"\nmax_bytes = -1\n", "7:13:", "positive integer"),
        ("url = \"http://a/b\"\nmax_shrink = 1.5\n", "7:14:", "from 0 to 1"),
        ("url = \"http://a/b\"\nmax_invalid_ratio = \"x\"\n", "7:21:", "from 0 to 1"),
        ("refresh = \"6h\"\n", "6:1:", "only used with `url`"),
        ("url = \"http://a/b\"\nrefreh = \"6h\"\n", "7:1:", "did you mean `refresh`"),
        (
            "url = \"http://a/b\"\nsha256 = \"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"\nsha256_url = \"http://a/b.sha256\"\n",
            "8:14:",
            "either `sha256` or `sha256_url`",
        ),
    ];
    for (extra, pos, msg) in cases {
        let errs = errors(&format!("{base}{extra}"));
        assert!(
            errs.iter().any(|e| e.contains(pos) && e.contains(msg)),
            "{extra:?}: want {pos} {msg:?} in {errs:#?}"
        );
    }
}
