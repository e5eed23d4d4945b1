//! Rules on the signed-in user (`users`, `user_groups`, `signed_in`) and
//! the device's posture (`posture = {...}`), their errors, and what the
//! decision says of them (user, groups, why the posture failed).

use komugate_policy::*;
use std::path::Path;
use std::time::SystemTime;

const POLICY: &str = r#"
[[rule]]
name = "records for teachers"
host = "records.test"
user_groups = ["teachers"]
action = "allow"

[[rule]]
name = "hanako only"
host = "hanako.test"
users = ["Hanako@Board.test"]
action = "allow"

[[rule]]
name = "c4th with posture"
host = "c4th.test"
posture = { disk_encryption = true, os_updated_within_days = 30, min_client_version = "0.1" }
action = "allow"

[[rule]]
name = "updates without a user"
signed_in = false
host = "update.test"
action = "allow"

[[rule]]
name = "nothing else without a user"
signed_in = false
action = "block"

[defaults]
action = "block"
"#;

fn policy() -> Policy {
    Policy::from_str(POLICY, Path::new("/nonexistent/p.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn decide(p: &Policy, host: &str, s: &Subject<'_>) -> Decision {
    p.evaluate_as(
        &Request {
            device: Some("PC-1"),
            cert_groups: &[],
            client_ip: "192.0.2.1".parse().unwrap(),
            location: None,
            scheme: Scheme::Https,
            method: "GET",
            host,
            port: 443,
            path: "/",
            time: SystemTime::now(),
        },
        s,
    )
}

const NOW: u64 = 1_800_000_000;

fn posture(encrypted: bool, updated_days_ago: u64) -> Posture {
    Posture {
        os: "windows".into(),
        os_version: "10.0.22631".into(),
        disk_encryption: encrypted,
        firewall: true,
        client_version: "0.1.0".into(),
        last_os_update: NOW - updated_days_ago * 86_400,
    }
}

#[test]
fn user_and_group_rules_need_a_signed_in_user() {
    let p = policy();
    let teachers = vec!["teachers".to_string()];
    let hanako = Subject {
        user: Some("hanako@board.test"),
        user_groups: &teachers,
        now: NOW,
        ..Default::default()
    };
    let d = decide(&p, "records.test", &hanako);
    assert_eq!(d.rule, "records for teachers");
    assert!(!d.is_blocked());
    assert!(d.signed_in);
    assert_eq!(d.user.as_deref(), Some("hanako@board.test"));
    assert_eq!(d.user_groups, teachers);
    assert!(d.explain().contains("hanako@board.test (signed in)"));
    assert!(d.explain().contains("user groups: teachers"));
    assert_eq!(decide(&p, "hanako.test", &hanako).rule, "hanako only");

    let staff = vec!["staff".to_string()];
    let jiro = Subject {
        user: Some("jiro@board.test"),
        user_groups: &staff,
        now: NOW,
        ..Default::default()
    };
    assert_eq!(decide(&p, "records.test", &jiro).rule, "default");
    assert_eq!(decide(&p, "hanako.test", &jiro).rule, "default");
    assert_eq!(decide(&p, "update.test", &jiro).rule, "default");

    // Nobody signed in: the device-only rules. Groups alone do not count.
    let nobody = Subject {
        user_groups: &teachers,
        now: NOW,
        ..Default::default()
    };
    let d = decide(&p, "records.test", &nobody);
    assert_eq!(d.rule, "nothing else without a user");
    assert!(!d.signed_in);
    assert_eq!(
        decide(&p, "update.test", &nobody).rule,
        "updates without a user"
    );
}

#[test]
fn posture_rules_say_why_they_did_not_apply() {
    let p = policy();
    let user = Some("hanako@board.test");
    let good = posture(true, 3);
    let s = |posture| Subject {
        user,
        posture,
        now: NOW,
        ..Default::default()
    };
    let d = decide(&p, "c4th.test", &s(Some(&good)));
    assert_eq!(d.rule, "c4th with posture");
    assert!(d.posture_failure.is_none());

    let stale = posture(true, 45);
    let d = decide(&p, "c4th.test", &s(Some(&stale)));
    assert!(d.is_blocked());
    let why = d.posture_failure.expect("the posture failure");
    assert_eq!(why.rule, "c4th with posture");
    assert!(
        why.ja.contains("45 日前") && why.ja.contains("30 日以内"),
        "{}",
        why.ja
    );

    let plain = posture(false, 1);
    let why = decide(&p, "c4th.test", &s(Some(&plain)))
        .posture_failure
        .unwrap();
    assert!(why.ja.contains("ディスク暗号化"), "{}", why.ja);
    assert!(why.en.contains("disk encryption"), "{}", why.en);

    let why = decide(&p, "c4th.test", &s(None)).posture_failure.unwrap();
    assert!(why.ja.contains("報告されていません"), "{}", why.ja);
    // Explain in Japanese says it too.
    let d = decide(&p, "c4th.test", &s(Some(&plain)));
    assert!(wording::JA.explain(&d).contains("ディスク暗号化"));
}

#[test]
fn subject_conditions_are_checked() {
    let errs = |text: &str| match Policy::from_str(text, Path::new("/nonexistent/p.toml")) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };
    let e =
        errs("[[rule]]\nname = \"x\"\nsigned_in = false\nusers = [\"a\"]\naction = \"allow\"\n");
    assert!(e.contains("never match"), "{e}");
    let e = errs("[[rule]]\nname = \"x\"\nposture = { bitlocker = true }\naction = \"allow\"\n");
    assert!(e.contains("bitlocker"), "{e}");
    let e = errs(
        "[[rule]]\nname = \"x\"\nposture = { os_updated_within_days = 0 }\naction = \"allow\"\n",
    );
    assert!(e.contains("os_updated_within_days"), "{e}");
    let e = errs(
        "[[rule]]\nname = \"x\"\nposture = { min_os_version = \"ten\" }\naction = \"allow\"\n",
    );
    assert!(e.contains("dotted version"), "{e}");
    let e = errs("[[rule]]\nname = \"x\"\nuser_groups = []\naction = \"allow\"\n");
    assert!(e.contains("empty"), "{e}");
    // A rule for one user does not shadow the same rule for everyone.
    let ok = errs("[[rule]]\nname = \"a\"\nhost = \"x.test\"\nusers = [\"u\"]\naction = \"allow\"\n[[rule]]\nname = \"b\"\nhost = \"x.test\"\naction = \"block\"\n");
    assert_eq!(ok, "");
}
