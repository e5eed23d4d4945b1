//! komugate's adblock import agrees with a reference adblock engine
//! (Ghostery's adblocker, npm `@ghostery/adblocker`, installed by .ci/run;
//! it knows uBlock's `$all`, which Brave's adblock-rust drops) on a real list
//! (tests/data/urlhaus-filter-online.txt, CC0): for every host named in the
//! list, its subdomains and look-alikes, `https://<host>/` is blocked by
//! both or by neither in at least 99.5 % of the cases.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use komugate_categories::*;

/// The node_modules with `@ghostery/adblocker`: $KOMUGATE_ADBLOCK_NODE_PATH,
/// or where .ci/run installs it.
fn reference_node_path() -> PathBuf {
    if let Some(p) = std::env::var_os("KOMUGATE_ADBLOCK_NODE_PATH") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        });
    cache.join("komugate-ci/node/node_modules")
}

/// Host-ish token of a rule: what follows `@@`, `||`, `|`, `://`, up to the
/// first `^ / $ | * :`.
fn host_of(rule: &str) -> Option<String> {
    let r = rule.trim();
    if r.is_empty() || r.starts_with('!') || r.starts_with('[') || r.contains("##") {
        return None;
    }
    let r = r.strip_prefix("@@").unwrap_or(r);
    let r = r
        .trim_start_matches('|')
        .trim_start_matches("://")
        .trim_start_matches('.');
    let end = r.find(['^', '/', '$', '|', '*', ':']).unwrap_or(r.len());
    let h = r[..end].trim_end_matches('.').to_ascii_lowercase();
    (h.contains('.')
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
    .then_some(h)
}

#[test]
fn agrees_with_a_reference_engine_on_a_real_list() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let list = data.join("urlhaus-filter-online.txt");
    let text = std::fs::read_to_string(&list).unwrap();

    let mut hosts = BTreeSet::new();
    for line in text.lines() {
        if let Some(h) = host_of(line) {
            hosts.insert(h);
        }
    }
    let mut urls = Vec::new();
    for h in &hosts {
        for u in [
            h.clone(),
            format!("www.{h}"),
            format!("a.b.{h}"),
            format!("x{h}"),
            format!("{h}.example"),
        ] {
            urls.push(format!("https://{u}/"));
        }
        if let Some((_, parent)) = h.split_once('.') {
            if parent.contains('.') {
                urls.push(format!("https://{parent}/"));
            }
        }
    }
    urls.sort();
    urls.dedup();
    assert!(urls.len() > 10_000, "{} URLs", urls.len());

    let mut b = MatcherBuilder::new();
    let report = b
        .add_list_file("malware", &list, ListFormat::Adblock)
        .unwrap();
    let m = b.build().unwrap();

    let dir = std::env::temp_dir().join(format!("komugate-abref-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let urls_path = dir.join("urls.txt");
    let out_path = dir.join("verdicts.txt");
    std::fs::write(&urls_path, urls.join("\n")).unwrap();
    let node_path = reference_node_path();
    assert!(
        node_path.join("@ghostery/adblocker").is_dir(),
        "the reference engine is not installed at {}: run .ci/run once, or `npm install --prefix DIR @ghostery/adblocker` and set KOMUGATE_ADBLOCK_NODE_PATH=DIR/node_modules",
        node_path.display()
    );
    let status = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/adblock_reference.cjs"))
        .args([&list, &urls_path, &out_path])
        .env("NODE_PATH", &node_path)
        .status()
        .expect("run node (the reference engine)");
    assert!(status.success(), "the reference engine failed");
    let verdicts = std::fs::read_to_string(&out_path).unwrap();
    let reference: Vec<bool> = verdicts.lines().map(|l| l == "1").collect();
    assert_eq!(reference.len(), urls.len());

    let mut agree = 0;
    let mut disagreements = Vec::new();
    for (u, &r) in urls.iter().zip(&reference) {
        let ours = !m.lookup_url(u).is_empty();
        if ours == r {
            agree += 1;
        } else if disagreements.len() < 20 {
            disagreements.push(format!("{u}: komugate {ours}, reference {r}"));
        }
    }
    let blocked = reference.iter().filter(|&&r| r).count();
    let ratio = agree as f64 / urls.len() as f64;
    println!(
        "adblock reference agreement: {agree}/{} URLs ({:.3} %), {blocked} blocked by the reference; import: {} entries, {} skipped, {} invalid",
        urls.len(),
        ratio * 100.0,
        report.entries(),
        report.skipped_lines,
        report.invalid_lines
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        blocked > 1000,
        "the reference blocked only {blocked}: wrong list or engine?"
    );
    assert!(
        ratio >= 0.995,
        "agreement {ratio:.4} < 0.995; first disagreements:\n{}",
        disagreements.join("\n")
    );
}
