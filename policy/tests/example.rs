//! The shipped example policy models the board's rules.

use komugate_policy::*;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn example() -> Policy {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.toml");
    match Policy::load(&p) {
        Ok(p) => p,
        Err(e) => panic!("example policy does not load:\n{e}"),
    }
}

/// Monday 2024-04-01 at `hh:mm` JST.
fn jst(hh: u64, mm: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_711_897_200 + hh * 3600 + mm * 60)
}

fn req<'a>(device: Option<&'a str>, ip: &str, url: &'a str) -> Request<'a> {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    Request {
        device,
        cert_groups: &[],
        client_ip: ip.parse::<IpAddr>().unwrap(),
        location: None,
        scheme: if scheme == "http" {
            Scheme::Http
        } else {
            Scheme::Https
        },
        method: "GET",
        host,
        port: if scheme == "http" { 80 } else { 443 },
        path: if path.is_empty() { "/" } else { path },
        time: jst(10, 0),
    }
}

const SCHOOL: &str = "203.0.113.3"; // 豊科南小学校
const HOME: &str = "192.0.2.77";

/// The board's 17 schools, exactly as the specification names them (10
/// elementary, 7 junior high), in the example's order.
const SEED_SCHOOLS: [&str; 17] = [
    "豊科南小学校",
    "豊科北小学校",
    "豊科東小学校",
    "穂高南小学校",
    "穂高北小学校",
    "穂高西小学校",
    "三郷小学校",
    "堀金小学校",
    "明南小学校",
    "明北小学校",
    "豊科南中学校",
    "豊科北中学校",
    "穂高東中学校",
    "穂高西中学校",
    "三郷中学校",
    "堀金中学校",
    "明科中学校",
];

#[test]
fn example_has_the_seeds_seventeen_schools_by_name() {
    let p = example();
    let schools: Vec<&str> = p
        .sites()
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| n.ends_with("小学校") || n.ends_with("中学校"))
        .collect();
    assert_eq!(schools, SEED_SCHOOLS);
    // Besides the schools: the hospital classroom (by assertion) and the board office.
    let others: Vec<&str> = p
        .sites()
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| !SEED_SCHOOLS.contains(n))
        .collect();
    assert_eq!(others, ["院内学級", "教育委員会事務局"]);
}

#[test]
fn example_loads_and_locates() {
    let p = example();
    assert_eq!(p.sites().len(), 19);
    assert_eq!(
        p.locate(SCHOOL.parse().unwrap()),
        Location::Site("豊科南小学校".into())
    );
    assert_eq!(
        p.locate("203.0.113.130".parse().unwrap()),
        Location::Site("明科中学校".into())
    );
    assert_eq!(
        p.locate("198.51.100.20".parse().unwrap()),
        Location::Site("教育委員会事務局".into())
    );
    assert_eq!(p.locate(HOME.parse().unwrap()), Location::Offsite);
    assert_eq!(p.device_count(), 6);
    assert_eq!(p.device("PC-B-0002").unwrap().0, "ito, akira");
    assert!(p.source_files().iter().any(|f| f.ends_with("registry.csv")));
    assert!(p
        .source_files()
        .iter()
        .any(|f| f.ends_with("gambling/domains")));
    assert_eq!(p.generation_digest().len(), 16);
    assert_eq!(
        p.contact().email.as_deref(),
        Some("ict@azumino-school.ed.jp")
    );
    let s =
        check(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.toml")).unwrap();
    assert_eq!(s.policies.len(), 2);
}

#[test]
fn c4th_blocked_offsite_allowed_at_school_with_fixed_egress() {
    let p = example();
    let d = p.evaluate(&req(
        Some("PC-T-0001"),
        HOME,
        "https://www.c4th.example/login",
    ));
    assert!(d.is_blocked(), "{}", d.explain());
    assert_eq!(d.rule, "C4th 校外禁止");
    assert_eq!(d.app.as_deref(), Some("c4th"));
    let d = p.evaluate(&req(
        Some("PC-T-0001"),
        SCHOOL,
        "https://www.c4th.example/login",
    ));
    assert!(!d.is_blocked(), "{}", d.explain());
    assert_eq!(
        d.egress,
        Some(Egress {
            pool: "city-fixed-ip".into(),
            source: Some("198.51.100.7".parse().unwrap()),
            seen_as: None
        })
    );
    // telework staff are not excepted for C4th
    let d = p.evaluate(&req(Some("PC-T-0002"), HOME, "https://www.c4th.example/"));
    assert!(d.is_blocked());
    // the plain in-site listener: no device
    let d = p.evaluate(&req(None, SCHOOL, "https://c4th.example/"));
    assert!(!d.is_blocked());
    assert_eq!(d.egress.unwrap().pool, "city-fixed-ip");
    // nightly maintenance window, even at school
    let mut r = req(Some("PC-T-0001"), SCHOOL, "https://www.c4th.example/");
    r.time = jst(3, 0);
    assert_eq!(p.evaluate(&r).rule, "C4th 夜間メンテナンス");
}

#[test]
fn hyakumon_offsite_only_for_telework() {
    let p = example();
    let d = p.evaluate(&req(
        Some("PC-T-0001"),
        HOME,
        "https://hyakumon.example/q/1",
    ));
    assert!(d.is_blocked());
    assert_eq!(d.rule, "百問繚乱 校外禁止");
    let d = p.evaluate(&req(
        Some("PC-T-0002"),
        HOME,
        "https://hyakumon.example/q/1",
    ));
    assert!(!d.is_blocked(), "{}", d.explain());
    assert_eq!(d.rule, "百問繚乱 テレワーク");
    assert_eq!(d.policy.as_deref(), Some("テレワーク承認者"));
    assert_eq!(
        d.egress.as_ref().unwrap().source.unwrap().to_string(),
        "198.51.100.7"
    );
    let d = p.evaluate(&req(Some("PC-B-0001"), HOME, "https://hyakumon.example/"));
    assert!(!d.is_blocked());
    // The registry is authoritative: a telework group carried in the
    // certificate only counts for nothing, for a device missing from the
    // registry and for one whose row no longer has テレワーク.
    let groups = vec!["telework".to_string()];
    for device in ["PC-UNKNOWN", "PC-T-0001"] {
        let mut r = req(Some(device), HOME, "https://hyakumon.example/");
        r.cert_groups = &groups;
        let d = p.evaluate(&r);
        assert!(d.is_blocked(), "{device}: {}", d.explain());
        assert!(
            !d.groups.iter().any(|g| g == "テレワーク"),
            "{:?}",
            d.groups
        );
    }
    // at school, everyone
    assert!(!p
        .evaluate(&req(Some("PC-T-0001"), SCHOOL, "https://hyakumon.example/"))
        .is_blocked());
}

#[test]
fn ut1_excerpt_entries_blocked_for_everyone() {
    let p = example();
    for (url, cat) in [
        ("https://020sextoy.com/sk/item", "adult"),
        ("https://0-casino.info/", "gambling"),
        ("https://www.0-casino.info/", "gambling"),
        ("http://0-1-x.009418154.xyz/", "malware"),
        ("https://0000usdtvip.com/login", "phishing"),
    ] {
        for (dev, ip) in [
            (Some("PC-T-0001"), SCHOOL),
            (Some("PC-T-0002"), HOME),
            (None, SCHOOL),
            (Some("PC-A-0001"), HOME),
        ] {
            let d = p.evaluate(&req(dev, ip, url));
            assert!(d.is_blocked(), "{url} from {ip}: {}", d.explain());
            assert_eq!(d.rule, "UT1 有害カテゴリ");
            assert_eq!(d.categories, vec![cat.to_string()]);
        }
    }
    assert!(!p
        .evaluate(&req(None, SCHOOL, "https://020sextoy.com/other"))
        .is_blocked());
    assert!(!p
        .evaluate(&req(None, SCHOOL, "https://www.mext.go.jp/"))
        .is_blocked());
}

#[test]
fn lists_and_connect_ports() {
    let p = example();
    let d = p.evaluate(&req(Some("PC-B-0002"), SCHOOL, "https://games.example/"));
    assert_eq!(
        (d.is_blocked(), d.rule.as_str()),
        (true, "deny-list:事務局")
    );
    assert!(!p
        .evaluate(&req(Some("PC-T-0001"), SCHOOL, "https://games.example/"))
        .is_blocked());
    let d = p.evaluate(&req(None, SCHOOL, "https://www.pref.nagano.lg.jp/"));
    assert_eq!(d.rule, "allow-list");
    let mut r = req(None, SCHOOL, "https://example.org/");
    r.scheme = Scheme::Connect;
    r.port = 8080;
    r.path = "";
    assert_eq!(p.evaluate(&r).rule, "443 以外への CONNECT");
    r.port = 443;
    assert_eq!(p.evaluate(&r).rule, "default");
    // A non-web port is the firewall's: relayed, never inspected.
    r.port = 22;
    let d = p.evaluate(&r);
    assert_eq!((d.is_blocked(), d.rule.as_str()), (false, FIREWALL_DECIDES));
    assert_eq!(d.tunnel, Some(TunnelMode::Bypass));
    // The deny lists still refuse a listed host on any port.
    let mut r = req(Some("PC-B-0002"), SCHOOL, "https://games.example/");
    r.scheme = Scheme::Connect;
    r.port = 22;
    r.path = "";
    assert_eq!(p.evaluate(&r).rule, "deny-list:事務局");
}

/// The example turns on the cloud controls: inspection of the catalog's
/// cloud apps, tenant restriction and DLP everywhere, no uploads outside
/// the tenant, no off-site downloads or local-file uploads to the tenant.
#[test]
fn example_inspects_cloud_apps_with_casb_controls() {
    let p = example();
    let d = p.evaluate(&req(
        Some("PC-T-0001"),
        HOME,
        "https://azumino.sharepoint.com/sites/x",
    ));
    assert_eq!(d.rule, "クラウドサービスの検査");
    assert_eq!(d.tunnel, Some(TunnelMode::Inspect));
    assert_eq!(d.app_tenant, Some("own"));
    let casb = d.casb.expect("casb controls");
    assert_eq!(
        (casb.tenant_restriction, casb.dlp),
        (Some(true), Some(true))
    );
    assert_eq!(
        (casb.upload, casb.download),
        (Some(Action::Block), Some(Action::Block))
    );
    let d = p.evaluate(&req(
        Some("PC-T-0001"),
        SCHOOL,
        "https://azumino.sharepoint.com/sites/x",
    ));
    let casb = d.casb.expect("casb controls");
    assert_eq!(
        (casb.upload, casb.download),
        (None, None),
        "in school: allowed"
    );
    let d = p.evaluate(&req(Some("PC-T-0001"), SCHOOL, "https://www.dropbox.com/"));
    assert_eq!(d.casb.expect("casb").upload, Some(Action::Block));
    // School apps are not inspected (C4th is reached by the fixed egress address).
    let d = p.evaluate(&req(Some("PC-T-0001"), SCHOOL, "https://www.c4th.example/"));
    assert_eq!(d.tunnel, None);
}

/// `policy check` warns, at the rule, about a firewall rule an earlier one
/// shadows and a web rule that could only match non-web CONNECTs; the
/// example has neither.
#[test]
fn check_warns_about_rules_that_never_apply() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.toml");
    assert_eq!(check(&dir).unwrap().warnings, vec![]);
    let tmp = std::env::temp_dir().join(format!("komugate-fw-warn-{}.toml", std::process::id()));
    std::fs::write(
        &tmp,
        r#"version = 1
[[rule]]
name = "ssh-web"
scheme = "connect"
ports = [22, "2222-2223"]
action = "block"

[[rule]]
name = "connect-80"
scheme = "connect"
ports = ["22-80"]
action = "block"

[firewall]
[[firewall.rule]]
name = "lan"
cidrs = ["10.0.0.0/8"]
ports = [22, 3389]
action = "allow"

[[firewall.rule]]
name = "lan-ssh-teachers"
cidrs = ["10.1.0.0/16"]
ports = [22]
action = "deny"

[[firewall.rule]]
name = "other-ssh"
ports = [22]
action = "deny"
"#,
    )
    .unwrap();
    let s = check(&tmp).unwrap();
    std::fs::remove_file(&tmp).unwrap();
    let w: Vec<(usize, usize, &str)> = s
        .warnings
        .iter()
        .map(|d| (d.line, d.column, d.message.as_str()))
        .collect();
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!((w[0].0, w[0].1), (3, 8));
    assert!(w[0].2.starts_with("rule `ssh-web` never applies"), "{w:?}");
    assert_eq!((w[1].0, w[1].1), (22, 8));
    assert!(
        w[1].2.starts_with(
            "firewall rule `lan-ssh-teachers` can never be reached: firewall rule `lan` ("
        ),
        "{w:?}"
    );
    assert!(s
        .to_string()
        .contains(&format!("warning: {}", s.warnings[1])));
}

#[test]
fn explain_example() {
    let p = example();
    let d = p.evaluate(&req(
        Some("PC-T-0001"),
        HOME,
        "https://www.c4th.example/login",
    ));
    let text = d.explain();
    for needle in [
        "request:    GET https://www.c4th.example/login from 192.0.2.77",
        "location:   offsite",
        "user:       tanaka.hanako",
        "groups:     教職員",
        "app:        c4th",
        "policy:     全職員",
        "rule:       C4th 校外禁止 (",
        "action:     block",
        "egress:     city-fixed-ip (source 198.51.100.7)",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["action"], "Block");
    assert_eq!(json["rule"], "C4th 校外禁止");
    assert_eq!(json["location"], "Offsite");
    assert_eq!(json["egress"]["source"], "198.51.100.7");
}

#[test]
fn hospital_classroom_by_assertion() {
    let p = example();
    let mut r = req(Some("PC-H-0001"), HOME, "https://www.c4th.example/");
    r.location = Some(Location::Site("院内学級".into()));
    let d = p.evaluate(&r);
    assert!(!d.is_blocked(), "{}", d.explain());
    assert_eq!(d.location, Location::Site("院内学級".into()));
}

/// The full UT1 sample (skipped when absent).
#[test]
fn full_ut1_sample() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/blocklists/ut1");
    if !root.join("gambling/domains").exists() {
        eprintln!("skipping: {} not found", root.display());
        return;
    }
    let text = format!(
        r#"
[[site]]
name = "school"
cidrs = ["127.0.10.0/24"]
[[categories.source]]
format = "squidguard"
path = "{}"
only = ["adult", "gambling", "malware", "phishing"]
[[rule]]
name = "ut1"
categories = ["adult", "gambling", "malware", "phishing"]
action = "block"
"#,
        root.display()
    );
    let p = Policy::from_str(
        &text,
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("full.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        p.import_report().domains > 400_000,
        "{:?}",
        p.import_report().domains
    );
    let read_last = |rel: &str| -> String {
        let t = std::fs::read_to_string(root.join(rel)).unwrap();
        t.lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap()
            .trim()
            .to_string()
    };
    for (rel, cat) in [
        ("gambling/domains", "gambling"),
        ("malware/domains", "malware"),
        ("phishing/domains", "phishing"),
    ] {
        let host = read_last(rel);
        let d = p.evaluate(&req(None, "127.0.10.5", &format!("https://{host}/")));
        assert!(d.is_blocked(), "{host}: {}", d.explain());
        assert!(d.categories.contains(&cat.to_string()));
    }
    let u = read_last("adult/urls");
    let d = p.evaluate(&req(None, "127.0.10.5", &format!("https://{u}")));
    assert!(d.is_blocked(), "{u}: {}", d.explain());
    assert!(!p
        .evaluate(&req(None, "127.0.10.5", "https://www.mext.go.jp/"))
        .is_blocked());
}

/// The board's non-web firewall: SSH/RDP to in-school servers only for
/// teachers at a site; every other non-web port closed; web ports left to
/// the web rules.
#[test]
fn example_firewall_keeps_non_web_ports_closed() {
    let p = example();
    let fw = |device: Option<&str>, from: &str, dest: &str, port: u16, at: SystemTime| {
        p.firewall(&FirewallRequest {
            device,
            cert_groups: &[],
            client_ip: from.parse().unwrap(),
            location: None,
            host: dest,
            dest_ip: dest.parse().ok(),
            port,
            protocol: komugate_policy::Protocol::Tcp,
            time: at,
        })
    };
    // PC-T-0001 is a teacher (registry.csv).
    let ssh = fw(Some("PC-T-0001"), SCHOOL, "10.1.2.3", 22, jst(10, 0));
    assert!(ssh.allow, "{ssh:?}");
    assert_eq!(ssh.rule, "校内サーバー (SSH/RDP) は教職員のみ");
    assert!(
        !fw(Some("PC-T-0001"), HOME, "10.1.2.3", 22, jst(10, 0)).allow,
        "not from home"
    );
    let smtp25 = fw(Some("PC-T-0001"), SCHOOL, "192.0.2.25", 25, jst(10, 0));
    assert!(!smtp25.allow);
    assert_eq!(smtp25.rule, "firewall-default");
    let rdp_night = fw(Some("PC-T-0001"), HOME, "192.0.2.30", 3389, jst(23, 0));
    assert!(!rdp_night.allow);
    assert_eq!(rdp_night.rule, "夜間の校外 RDP 禁止");
    assert!(
        fw(Some("PC-T-0001"), HOME, "192.0.2.30", 443, jst(10, 0)).allow,
        "web ports are left to the web rules"
    );
}
