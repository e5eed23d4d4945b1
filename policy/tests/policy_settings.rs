//! The per-policy settings the console edits: `[[policy]]` allow / deny
//! lists, `block_categories`, `ignore_categories`, and list entries with an
//! expiry date (`until`), in any allow / deny list.

use komugate_policy::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn policy_file() -> PathBuf {
    // Next to examples/lists/ut1 (adult, gambling, malware, phishing).
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.toml")
}

const DOC: &str = r#"
timezone = "+09:00"
[[group]]
name = "teachers"
[[group]]
name = "office"
[[categories.source]]
format = "squidguard"
path = "lists/ut1"
[[ruleset]]
name = "ut1"
[[ruleset.rule]]
name = "UT1"
categories = ["gambling", "malware"]
action = "block"
[[policy]]
name = "teachers-policy"
groups = ["teachers"]
rulesets = ["ut1"]
ignore_categories = ["gambling"]
allow = [{ entry = "temp.example", until = "2026-03-31", note = "request #4" }]
[[policy]]
name = "everyone"
rulesets = ["ut1"]
block_categories = ["phishing"]
deny = ["policy-deny.example"]
"#;

/// 2026-03-31 12:00 JST plus `days`.
fn at(days: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_774_926_000_000) + Duration::from_secs(days * 86_400)
}

fn decide(p: &Policy, groups: &[&str], host: &str, time: SystemTime) -> Decision {
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    p.evaluate(&Request {
        device: None,
        cert_groups: &groups,
        client_ip: "192.0.2.1".parse().unwrap(),
        location: None,
        scheme: Scheme::Connect,
        method: "CONNECT",
        host,
        port: 443,
        path: "",
        time,
    })
}

#[test]
fn per_policy_categories_and_lists() {
    let p = Policy::from_str(DOC, &policy_file()).unwrap_or_else(|e| panic!("{e}"));
    let casino = "0-casino.info";
    let phish = std::fs::read_to_string(policy_file().with_file_name("lists/ut1/phishing/domains"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    // gambling: ignored by the teachers' policy, blocked by the rule for everyone else.
    assert_eq!(
        decide(&p, &["teachers"], casino, at(0)).action,
        Action::Allow
    );
    let d = decide(&p, &["office"], casino, at(0));
    assert_eq!((d.action, d.rule.as_str()), (Action::Block, "UT1"));
    // malware is still blocked for teachers.
    assert_eq!(
        decide(&p, &["teachers"], "0-1-x.009418154.xyz", at(0)).action,
        Action::Block
    );
    // phishing: blocked by the everyone policy's block_categories only.
    let d = decide(&p, &["office"], &phish, at(0));
    assert_eq!(
        (d.action, d.rule.as_str()),
        (Action::Block, "category-block:everyone")
    );
    assert_eq!(
        decide(&p, &["teachers"], &phish, at(0)).action,
        Action::Allow
    );
    // The policy's own deny list.
    let d = decide(&p, &["office"], "www.policy-deny.example", at(0));
    assert_eq!(d.rule, "policy-deny-list:everyone");
    assert_eq!(
        decide(&p, &["teachers"], "policy-deny.example", at(0)).action,
        Action::Allow
    );
    // The expiring allow entry: through 2026-03-31 JST, teachers only.
    assert_eq!(
        decide(&p, &["teachers"], "temp.example", at(0)).rule,
        "allow-list"
    );
    assert_eq!(
        decide(&p, &["teachers"], "temp.example", at(1)).rule,
        "default"
    );
    assert_eq!(
        decide(&p, &["office"], "temp.example", at(0)).rule,
        "default"
    );
    // The console's view of the switches.
    let states = p.category_states("teachers-policy").unwrap();
    let gambling = states.iter().find(|s| s.category == "gambling").unwrap();
    assert!(gambling.ignored && !gambling.blocked());
    assert_eq!(gambling.blocking_rules, vec!["UT1".to_string()]);
    let states = p.category_states("everyone").unwrap();
    assert!(states
        .iter()
        .find(|s| s.category == "phishing")
        .unwrap()
        .blocked());
    assert!(!states
        .iter()
        .find(|s| s.category == "adult")
        .unwrap()
        .blocked());
    assert_eq!(p.policy_names(), vec!["teachers-policy", "everyone"]);
}

#[test]
fn bad_settings_are_errors_at_their_place() {
    let bad = DOC
        .replace(
            "block_categories = [\"phishing\"]",
            "block_categories = [\"phishng\"]",
        )
        .replace("until = \"2026-03-31\"", "until = \"2026-02-30\"");
    let errs: Vec<String> = match Policy::from_str(&bad, &policy_file()) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.iter().map(|d| d.to_string()).collect(),
    };
    assert!(
        errs.iter().any(|e| e.contains("unknown category `phishng` in `block_categories` of policy `everyone`; did you mean `phishing`?")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("`2026-02-30` is not a date")),
        "{errs:?}"
    );
    let both = DOC.replace(
        "ignore_categories = [\"gambling\"]",
        "ignore_categories = [\"gambling\"]\nblock_categories = [\"gambling\"]",
    );
    let errs = Policy::from_str(&both, &policy_file())
        .unwrap_err()
        .to_string();
    assert!(
        errs.contains("both `block_categories` and `ignore_categories`"),
        "{errs}"
    );
}

#[test]
fn expired_entries_are_warnings() {
    let dir = std::env::temp_dir().join(format!("komugate-expired-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("p.toml");
    std::fs::write(
        &f,
        "[categories]\nallow = [{ entry = \"old.example\", until = \"2020-01-31\" }]\n",
    )
    .unwrap();
    let s = check(&f).unwrap();
    assert!(
        s.warnings
            .iter()
            .any(|w| w.message.contains("expired after 2020-01-31")),
        "{:?}",
        s.warnings
    );
    let _ = std::fs::remove_dir_all(&dir);
}
