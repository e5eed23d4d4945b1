//! Allow / deny list entries for some devices or locations only
//! (`devices`, `locations`): what an unblock request approved for one
//! device or one site writes. Domain entries, matched with their
//! subdomains, expiring with `until` like any entry; bad ones are
//! `policy check` errors at their place.

use komugate_policy::*;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DOC: &str = r#"timezone = "+09:00"
[[site]]
name = "A 小学校"
cidrs = ["10.1.0.0/16"]
[[site]]
name = "B 中学校"
cidrs = ["10.2.0.0/16"]
[[group]]
name = "teachers"
[[group]]
name = "students"
deny = [{ entry = "chat.example", locations = ["B 中学校"] }]
[categories]
allow = [
    { entry = "games.example", devices = ["PC-A"], until = "2026-03-31" },
    { entry = "video.example", locations = ["A 小学校"] },
    { entry = "both.example", devices = ["PC-A", "PC-B"], location = "offsite" },
]
[[rule]]
name = "closed"
action = "block"
"#;

/// 2026-03-31 12:00 JST plus `days`.
fn at(days: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_774_926_000_000) + Duration::from_secs(days * 86_400)
}

fn decide(
    p: &Policy,
    device: Option<&str>,
    groups: &[&str],
    ip: &str,
    host: &str,
    days: u64,
) -> String {
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    p.evaluate(&Request {
        device,
        cert_groups: &groups,
        client_ip: ip.parse().unwrap(),
        location: None,
        scheme: Scheme::Connect,
        method: "CONNECT",
        host,
        port: 443,
        path: "",
        time: at(days),
    })
    .rule
}

#[test]
fn entries_apply_to_their_devices_and_locations_only() {
    let p =
        Policy::from_str(DOC, Path::new("/nonexistent/p.toml")).unwrap_or_else(|e| panic!("{e}"));
    let a = "10.1.0.5";
    // One device, with its subdomains, through its `until` day.
    assert_eq!(
        decide(&p, Some("PC-A"), &[], a, "games.example", 0),
        "allow-list"
    );
    assert_eq!(
        decide(&p, Some("PC-A"), &[], a, "www.GAMES.example.", 0),
        "allow-list"
    );
    assert_eq!(
        decide(&p, Some("PC-A"), &[], a, "xgames.example", 0),
        "closed"
    );
    assert_eq!(
        decide(&p, Some("PC-B"), &[], a, "games.example", 0),
        "closed"
    );
    assert_eq!(decide(&p, None, &[], a, "games.example", 0), "closed");
    assert_eq!(
        decide(&p, Some("PC-A"), &[], a, "games.example", 1),
        "closed"
    );
    // One site: anyone there, nobody elsewhere.
    assert_eq!(decide(&p, None, &[], a, "video.example", 0), "allow-list");
    assert_eq!(
        decide(&p, Some("PC-B"), &[], a, "video.example", 0),
        "allow-list"
    );
    assert_eq!(
        decide(&p, None, &[], "10.2.0.5", "video.example", 0),
        "closed"
    );
    assert_eq!(
        decide(&p, None, &[], "192.0.2.1", "video.example", 0),
        "closed"
    );
    // Both conditions: these devices, off-site.
    assert_eq!(
        decide(&p, Some("PC-B"), &[], "192.0.2.1", "both.example", 0),
        "allow-list"
    );
    assert_eq!(
        decide(&p, Some("PC-B"), &[], a, "both.example", 0),
        "closed"
    );
    assert_eq!(
        decide(&p, Some("PC-C"), &[], "192.0.2.1", "both.example", 0),
        "closed"
    );
    // A group's deny entry for one site.
    let b = "10.2.0.9";
    assert_eq!(
        decide(&p, None, &["students"], b, "chat.example", 0),
        "deny-list:students"
    );
    assert_eq!(
        decide(&p, None, &["students"], a, "chat.example", 0),
        "closed"
    );
    assert_eq!(
        decide(&p, None, &["teachers"], b, "chat.example", 0),
        "closed"
    );
    // The dry run tells the device apart once an entry names it, and
    // the `until` day is a time class boundary.
    assert!(p.rules_use_devices());
    assert_ne!(p.time_class(at(0)), p.time_class(at(1)));
}

#[test]
fn hosts_an_entry_covers_have_their_own_host_key() {
    let p = Policy::from_str(DOC, Path::new("/nonexistent/p.toml")).unwrap();
    let key = |h: &str| p.host_key(Scheme::Connect, h, "");
    assert_eq!(key("a.example"), key("b.example"));
    assert_ne!(key("a.example"), key("games.example"));
    assert_eq!(key("games.example"), key("www.games.example"));
    assert_ne!(key("games.example"), key("video.example"));
}

fn errors(doc: &str) -> Vec<String> {
    match Policy::from_str(doc, Path::new("/nonexistent/p.toml")) {
        Ok(_) => panic!("accepted:\n{doc}"),
        Err(e) => e.iter().map(|d| d.to_string()).collect(),
    }
}

#[test]
fn bad_scoped_entries_are_errors_at_their_place() {
    let bad = DOC
        .replace("locations = [\"A 小学校\"]", "locations = [\"A 小学\"]")
        .replace("devices = [\"PC-A\"], until", "devices = [], until")
        .replace(
            "{ entry = \"both.example\", devices",
            "{ entry = \"both.example/path\", devices",
        )
        .replace(
            "deny = [{ entry = \"chat.example\", locations",
            "deny = [{ entry = \"chat.example\", sites",
        );
    let errs = errors(&bad);
    let has = |line: usize, text: &str| {
        errs.iter()
            .any(|e| e.starts_with(&format!("/nonexistent/p.toml:{line}:")) && e.contains(text))
    };
    assert!(
        has(
            12,
            "unknown key `sites` in an entry of `deny` in group `students`"
        ),
        "{errs:?}"
    );
    assert!(
        has(
            15,
            "`devices` in an entry of `allow` in [categories] is empty"
        ),
        "{errs:?}"
    );
    assert!(has(16, "unknown site `A 小学` (locations are site names, `any-site` or `offsite`); did you mean `A 小学校`?"), "{errs:?}");
    assert!(has(17, "invalid entry `both.example/path`"), "{errs:?}");
    assert!(has(17, "must be a domain such as example.com"), "{errs:?}");
}
