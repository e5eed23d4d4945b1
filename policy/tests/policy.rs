//! Validation errors, rule conditions, per-group policies, registry parsing.

use komugate_policy::*;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("komugate-policy-{tag}-{}", std::process::id()));
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

fn load(text: &str) -> Policy {
    Policy::from_str(text, Path::new("/nonexistent/p.toml")).unwrap_or_else(|e| panic!("{e}"))
}

/// Monday 2024-04-01 (+09:00) at hh:mm, plus `day` days.
fn jst(day: u64, hh: u64, mm: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_711_897_200 + day * 86_400 + hh * 3600 + mm * 60)
}

struct R {
    device: Option<&'static str>,
    groups: Vec<String>,
    ip: &'static str,
    scheme: Scheme,
    method: &'static str,
    host: &'static str,
    port: u16,
    path: &'static str,
    time: SystemTime,
    location: Option<Location>,
}

fn r(host: &'static str) -> R {
    R {
        device: None,
        groups: vec![],
        ip: "127.0.10.1",
        scheme: Scheme::Https,
        method: "GET",
        host,
        port: 443,
        path: "/",
        time: jst(0, 10, 0),
        location: None,
    }
}

impl R {
    fn eval(&self, p: &Policy) -> Decision {
        p.evaluate(&Request {
            device: self.device,
            cert_groups: &self.groups,
            client_ip: self.ip.parse::<IpAddr>().unwrap(),
            location: self.location.clone(),
            scheme: self.scheme,
            method: self.method,
            host: self.host,
            port: self.port,
            path: self.path,
            time: self.time,
        })
    }
    fn rule(&self, p: &Policy) -> String {
        self.eval(p).rule
    }
}

const BASE: &str = r#"
[[site]]
name = "school"
cidrs = ["127.0.10.0/24"]
[[site]]
name = "office"
cidrs = ["127.0.20.0/24", "2001:db8:20::/48"]
[[site]]
name = "hospital"
assertion = true
[[group]]
name = "teachers"
[[group]]
name = "admins"
[[app]]
name = "c4th"
hosts = [".c4th.example"]
[[egress]]
name = "fixed"
source = "127.0.0.2"
hosts = ["*.c4th.example"]
"#;

#[test]
fn validation_errors_have_positions_and_suggestions() {
    let text = format!(
        "{BASE}{}",
        r#"
[defaults]
acton = "block"
[[site]]
name = "bad"
cidrs = ["10.0.0.0/33", "10.1.0.1/16", "not-an-ip"]
[[egress]]
name = "e2"
source = "1.2.3"
[[rule]]
name = "r1"
category = "gamblin"
group = "teacher"
location = ["schol", "offsite"]
app = "c4h"
egress = "fixd"
action = "block"
[[rule]]
name = "r2"
time = "25:00-06:00"
days = ["mon", "funday"]
action = "allow"
colour = "red"
[[rule]]
name = "r1"
host = "*.example.com/x"
port = [0, "90-80"]
scheme = "ftp"
path = "nope"
action = "maybe"
[[rule]]
name = "no action"
casb = { tenant_restriction = true, uploads = "block" }
[[rule]]
name = "no action"
host = "x.example"
"#
    );
    let e = errors(&text);
    let expected = [
        "/nonexistent/p.toml:24:1: unknown key `acton` in [defaults]; did you mean `action`?",
        "/nonexistent/p.toml:27:10: invalid CIDR `10.0.0.0/33` in site `bad` (e.g. \"203.0.113.16/29\")",
        "/nonexistent/p.toml:27:25: CIDR `10.1.0.1/16` has host bits set (did you mean `10.1.0.0/16`?)",
        "/nonexistent/p.toml:27:40: invalid CIDR `not-an-ip` in site `bad` (e.g. \"203.0.113.16/29\")",
        "/nonexistent/p.toml:30:10: invalid IP address `1.2.3` for `source` in egress pool `e2`",
        "/nonexistent/p.toml:33:12: unknown category `gamblin`",
        "/nonexistent/p.toml:34:9: unknown group `teacher`; did you mean `teachers`?",
        "/nonexistent/p.toml:35:13: unknown site `schol` (locations are site names, `any-site` or `offsite`); did you mean `school`?",
        "/nonexistent/p.toml:36:7: unknown app `c4h`; did you mean `c4th`?",
        "/nonexistent/p.toml:37:10: unknown egress pool `fixd`; did you mean `fixed`?",
        "/nonexistent/p.toml:41:8: invalid time window `25:00-06:00`: bad start time (use \"HH:MM-HH:MM\", e.g. \"08:00-17:00\" or overnight \"22:00-06:00\")",
        "/nonexistent/p.toml:42:16: invalid weekday `funday` (use mon, tue, wed, thu, fri, sat, sun or a range like \"mon-fri\")",
        "/nonexistent/p.toml:44:1: unknown key `colour` in rule `r2`",
        "/nonexistent/p.toml:46:8: duplicate rule name `r1` (first defined at /nonexistent/p.toml:32)",
        "/nonexistent/p.toml:47:8: invalid host pattern `*.example.com/x` (use `example.com`, `*.example.com` or `.example.com`)",
        "/nonexistent/p.toml:48:9: invalid port 0 (1-65535)",
        "/nonexistent/p.toml:48:12: invalid port range `90-80` (use e.g. 443 or \"8000-8080\")",
        "/nonexistent/p.toml:49:10: invalid scheme `ftp` (use http, https or connect); did you mean `http`?",
        "/nonexistent/p.toml:50:8: path prefix `nope` must start with `/`",
        "/nonexistent/p.toml:51:10: invalid action `maybe` in rule `r1` (use \"allow\" or \"block\")",
        // A rule with `casb` and no `action` is a CASB-only rule.
        "/nonexistent/p.toml:54:37: unknown key `uploads` in `casb` of rule `no action`; did you mean `upload`?",
        "/nonexistent/p.toml:55:1: missing `action` in rule `no action` (\"allow\" or \"block\")",
        "/nonexistent/p.toml:56:8: duplicate rule name `no action` (first defined at /nonexistent/p.toml:53)",
    ];
    assert_eq!(e, expected, "\n{}", e.join("\n"));
}

#[test]
fn category_suggestion_and_missing_files() {
    let dir = tempdir("cats");
    std::fs::write(dir.join("gambling.txt"), "casino.example\n").unwrap();
    std::fs::write(
        dir.join("allow.txt"),
        "good.example\nbad entry with spaces\n",
    )
    .unwrap();
    let text = r#"[[categories.source]]
format = "plain"
category = "gambling"
path = "gambling.txt"
[[categories.source]]
format = "plain"
category = "x"
path = "missing.txt"
[[categories.source]]
format = "squidguard"
path = "nodir"
[[categories.source]]
format = "plian"
path = "gambling.txt"
[categories]
allow_files = ["allow.txt"]
deny = ["ok.example", "white space.example"]
[registry]
path = "registry.csv"
[[rule]]
name = "r"
category = "gamblin"
action = "block"
"#;
    let p = dir.join("policy.toml");
    let e: Vec<String> = match Policy::from_str(text, &p) {
        Ok(_) => panic!("should fail"),
        Err(e) => e.iter().map(|d| d.to_string()).collect(),
    };
    let f = p.display().to_string();
    let d = dir.display().to_string();
    let want = [
        format!("{f}:8:8: cannot read `missing.txt` ({d}/missing.txt): no such file"),
        format!("{f}:11:8: cannot read directory `nodir` ({d}/nodir): No such file or directory (os error 2)"),
        format!("{f}:13:10: unknown list format `plian` (use squidguard, hosts, plain, adblock, auto, domainlist or urllist); did you mean `plain`?"),
        format!("{f}:14:1: [categories] must come before [[categories.source]] entries are closed"),
    ];
    // Only check the stable core: the missing file, bad format, category suggestion, list errors.
    assert!(e.contains(&want[0]), "{e:#?}");
    assert!(e.contains(&want[1]), "{e:#?}");
    assert!(e.contains(&want[2]), "{e:#?}");
    assert!(e.contains(&format!("{f}:19:8: cannot read `registry.csv` ({d}/registry.csv): No such file or directory (os error 2)")), "{e:#?}");
    assert!(
        e.contains(&format!(
            "{f}:22:12: unknown category `gamblin`; did you mean `gambling`?"
        )),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with(&format!("{d}/allow.txt:2:1: "))),
        "{e:#?}"
    );
    assert!(
        e.iter().any(|m| m.starts_with(&format!(
            "{f}:17:23: invalid list entry `white space.example`"
        ))),
        "{e:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn toml_syntax_error_has_position() {
    let e = errors("[[site]]\nname = \"a\nx = 1\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("/nonexistent/p.toml:2:"), "{e:?}");
    assert!(e[0].contains("TOML syntax error"), "{e:?}");
}

#[test]
fn unreachable_rules() {
    let text = format!(
        "{BASE}{}",
        r#"
[[rule]]
name = "c4th offsite"
app = "c4th"
location = "offsite"
action = "block"
[[rule]]
name = "c4th offsite again"
when = { location = "offsite", app = "c4th" }
action = "allow"
[[rule]]
name = "c4th offsite teachers"
app = "c4th"
location = "offsite"
group = "teachers"
action = "allow"
[[rule]]
name = "everything"
action = "allow"
[[rule]]
name = "after everything"
host = "x.example"
action = "block"
"#
    );
    let e = errors(&text);
    assert_eq!(
        e,
        vec![
            "/nonexistent/p.toml:29:8: rule `c4th offsite again` is unreachable: rule `c4th offsite` (/nonexistent/p.toml:24) matches everything it matches and comes first",
            "/nonexistent/p.toml:33:8: rule `c4th offsite teachers` is unreachable: rule `c4th offsite` (/nonexistent/p.toml:24) matches everything it matches and comes first",
            "/nonexistent/p.toml:42:8: rule `after everything` is unreachable: rule `everything` (/nonexistent/p.toml:39) has no conditions and always matches and comes first",
        ]
    );
}

#[test]
fn policy_structure_errors() {
    let text = format!(
        "{BASE}{}",
        r#"
[[ruleset]]
name = "base"
[[ruleset.rule]]
name = "a"
host = "a.example"
action = "block"
[[policy]]
name = "all"
rulesets = ["base"]
[[policy]]
name = "teachers"
groups = ["teachers"]
rulesets = ["bse", "base", "base"]
"#
    );
    let e = errors(&text);
    assert_eq!(
        e,
        vec![
            "/nonexistent/p.toml:33:8: policy `teachers` is never selected: policy `all` has no `groups` and applies to everyone before it",
            "/nonexistent/p.toml:35:13: unknown ruleset `bse`; did you mean `base`?",
            "/nonexistent/p.toml:35:28: ruleset `base` listed twice in policy `teachers`",
        ]
    );
}

#[test]
fn each_condition() {
    let text = format!(
        "{BASE}{}",
        r#"
[[rule]]
name = "group"
group = "admins"
host = "g.example"
action = "block"
[[rule]]
name = "device"
device = ["PC-9"]
host = "g.example"
action = "block"
[[rule]]
name = "site"
location = "office"
host = "g.example"
action = "block"
[[rule]]
name = "any-site"
location = "any-site"
host = "s.example"
action = "block"
[[rule]]
name = "port"
ports = [8080, "9000-9100"]
action = "block"
[[rule]]
name = "scheme"
scheme = "http"
host = "h.example"
action = "block"
[[rule]]
name = "method"
methods = ["post", "PUT"]
host = "m.example"
action = "block"
[[rule]]
name = "path"
paths = ["/admin", "/private/"]
host = "p.example"
action = "block"
[[rule]]
name = "exact host"
host = "exact.example"
action = "block"
[[rule]]
name = "subdomains"
host = "*.sub.example"
action = "block"
[[rule]]
name = "domain and subdomains"
host = ".both.example"
action = "block"
[[rule]]
name = "app"
app = "c4th"
action = "block"
tunnel = "bypass"
casb = { tenant_restriction = true, upload = "block" }
firewall = { ips = true }
"#
    );
    let p = load(&text);
    let admins = vec!["admins".to_string()];
    assert_eq!(
        R {
            groups: admins.clone(),
            ..r("g.example")
        }
        .rule(&p),
        "group"
    );
    assert_eq!(
        R {
            groups: vec!["teachers".into()],
            ..r("g.example")
        }
        .rule(&p),
        "default"
    );
    assert_eq!(
        R {
            device: Some("PC-9"),
            ..r("g.example")
        }
        .rule(&p),
        "device"
    );
    assert_eq!(
        R {
            ip: "127.0.20.5",
            ..r("g.example")
        }
        .rule(&p),
        "site"
    );
    assert_eq!(
        R {
            ip: "2001:db8:20::5",
            ..r("g.example")
        }
        .rule(&p),
        "site"
    );
    assert_eq!(
        R {
            ip: "::ffff:127.0.20.5",
            ..r("g.example")
        }
        .rule(&p),
        "site"
    );
    assert_eq!(
        R {
            ip: "127.0.10.5",
            ..r("g.example")
        }
        .rule(&p),
        "default"
    );
    assert_eq!(r("s.example").rule(&p), "any-site");
    assert_eq!(
        R {
            ip: "127.0.30.1",
            ..r("s.example")
        }
        .rule(&p),
        "default"
    );
    assert_eq!(
        R {
            location: Some(Location::Site("hospital".into())),
            ip: "127.0.30.1",
            ..r("s.example")
        }
        .rule(&p),
        "any-site"
    );
    assert_eq!(
        R {
            location: Some(Location::Offsite),
            ..r("s.example")
        }
        .rule(&p),
        "default"
    );
    assert_eq!(
        R {
            port: 8080,
            ..r("x.example")
        }
        .rule(&p),
        "port"
    );
    assert_eq!(
        R {
            port: 9100,
            ..r("x.example")
        }
        .rule(&p),
        "port"
    );
    assert_eq!(
        R {
            port: 9101,
            ..r("x.example")
        }
        .rule(&p),
        "default"
    );
    assert_eq!(
        R {
            scheme: Scheme::Http,
            port: 80,
            ..r("h.example")
        }
        .rule(&p),
        "scheme"
    );
    assert_eq!(
        R {
            scheme: Scheme::Connect,
            path: "",
            ..r("h.example")
        }
        .rule(&p),
        "default"
    );
    assert_eq!(
        R {
            method: "POST",
            ..r("m.example")
        }
        .rule(&p),
        "method"
    );
    assert_eq!(
        R {
            method: "put",
            ..r("m.example")
        }
        .rule(&p),
        "method"
    );
    assert_eq!(r("m.example").rule(&p), "default");
    assert_eq!(
        R {
            path: "/admin/users?x=1",
            ..r("p.example")
        }
        .rule(&p),
        "path"
    );
    assert_eq!(
        R {
            path: "/private",
            ..r("p.example")
        }
        .rule(&p),
        "default"
    );
    assert_eq!(r("EXACT.example.").rule(&p), "exact host");
    assert_eq!(r("www.exact.example").rule(&p), "default");
    assert_eq!(r("a.sub.example").rule(&p), "subdomains");
    assert_eq!(r("sub.example").rule(&p), "default");
    assert_eq!(r("both.example").rule(&p), "domain and subdomains");
    assert_eq!(r("x.y.both.example").rule(&p), "domain and subdomains");
    assert_eq!(r("notboth.example").rule(&p), "default");
    let d = r("www.c4th.example").eval(&p);
    assert_eq!(d.rule, "app");
    assert_eq!(d.tunnel, Some(TunnelMode::Bypass));
    assert_eq!(
        d.casb,
        Some(CasbHook {
            tenant_restriction: Some(true),
            upload: Some(Action::Block),
            download: None,
            dlp: None
        })
    );
    assert_eq!(d.firewall, Some(FirewallHook { ips: Some(true) }));
    assert_eq!(
        d.egress,
        Some(Egress {
            pool: "fixed".into(),
            source: Some("127.0.0.2".parse().unwrap()),
            seen_as: None
        })
    );
    assert_eq!(r("c4th.example").eval(&p).egress, None); // `*.` = subdomains only
}

#[test]
fn first_match_wins_and_rule_egress_override() {
    let text = format!(
        "{BASE}{}",
        r#"
[[rule]]
name = "first"
host = ".a.example"
action = "allow"
egress = "fixed"
[[rule]]
name = "second"
host = "www.a.example"
action = "block"
message = "no"
"#
    );
    let p = load(&text);
    let d = r("www.a.example").eval(&p);
    assert_eq!((d.rule.as_str(), d.action), ("first", Action::Allow));
    assert_eq!(d.egress.unwrap().source.unwrap().to_string(), "127.0.0.2");
}

/// On Kubernetes the pod cannot bind the city's public address: a pool
/// with only `seen_as` binds nothing (the NAT translates) and still names
/// the route; a pool with neither is an error at its table.
#[test]
fn egress_pools_translated_by_the_network() {
    let text = format!(
        "{}{}",
        BASE.replace("source = \"127.0.0.2\"", "seen_as = \"198.51.100.7\""),
        "[[rule]]\nname = \"c4th\"\napp = \"c4th\"\naction = \"allow\"\n"
    );
    let p = load(&text);
    let d = r("www.c4th.example").eval(&p);
    let e = d.egress.expect("the pool still decides the route");
    assert_eq!((e.pool.as_str(), e.source), ("fixed", None));
    assert_eq!(e.seen_as, Some("198.51.100.7".parse().unwrap()));
    assert_eq!(p.egress_pools()[0].seen_as, e.seen_as);

    let text = BASE.replace("source = \"127.0.0.2\"\n", "");
    let e = errors(&text);
    assert!(
        e.iter().any(|l| l.contains(
            "egress pool `fixed` needs `source` (an address on this host to bind) or `seen_as`"
        )),
        "{e:?}"
    );
}

#[test]
fn time_windows_weekdays_and_overnight() {
    let text = format!(
        "{BASE}{}",
        r#"
timezone = "+09:00"
[[rule]]
name = "school hours"
host = "yt.example"
time = "08:00-17:00"
days = ["mon-fri"]
action = "block"
[[rule]]
name = "overnight"
host = "night.example"
time = "22:00-06:00"
days = "fri"
action = "block"
[[rule]]
name = "weekend"
host = "we.example"
days = ["sat", "sun"]
action = "block"
"#
    )
    .replacen("timezone = \"+09:00\"\n", "", 1);
    let text = format!("timezone = \"+09:00\"\n{text}");
    let p = load(&text);
    let at = |host: &'static str, day, h, m| {
        R {
            time: jst(day, h, m),
            ..r(host)
        }
        .rule(&p)
    };
    assert_eq!(at("yt.example", 0, 8, 0), "school hours");
    assert_eq!(at("yt.example", 0, 16, 59), "school hours");
    assert_eq!(at("yt.example", 0, 17, 0), "default");
    assert_eq!(at("yt.example", 0, 7, 59), "default");
    assert_eq!(at("yt.example", 5, 10, 0), "default"); // Saturday
    assert_eq!(at("night.example", 4, 23, 0), "overnight"); // Friday night
    assert_eq!(at("night.example", 5, 5, 59), "overnight"); // Saturday early morning
    assert_eq!(at("night.example", 5, 6, 0), "default");
    assert_eq!(at("night.example", 4, 5, 0), "default"); // Friday early = Thursday's night
    assert_eq!(at("night.example", 5, 23, 0), "default"); // Saturday night
    assert_eq!(at("we.example", 6, 12, 0), "weekend");
    assert_eq!(at("we.example", 7, 12, 0), "default"); // next Monday
}

#[test]
fn per_group_policies_share_rulesets() {
    let text = format!(
        "{BASE}{}",
        r#"
[[ruleset]]
name = "common"
[[ruleset.rule]]
name = "malware"
host = ".bad.example"
action = "block"
[[ruleset]]
name = "admin-extras"
[[ruleset.rule]]
name = "admin console"
host = "console.example"
action = "allow"
[[ruleset]]
name = "lockdown"
[[ruleset.rule]]
name = "no console"
host = "console.example"
action = "block"
[[policy]]
name = "admins"
groups = ["admins"]
rulesets = ["common", "admin-extras", "lockdown"]
[[policy]]
name = "everyone"
rulesets = ["common", "lockdown"]
default = "allow"
"#
    );
    let p = load(&text);
    let admins = vec!["admins".to_string()];
    let d = R {
        groups: admins.clone(),
        ..r("console.example")
    }
    .eval(&p);
    assert_eq!(
        (d.rule.as_str(), d.policy.as_deref()),
        ("admin console", Some("admins"))
    );
    let d = r("console.example").eval(&p);
    assert_eq!(
        (d.rule.as_str(), d.policy.as_deref()),
        ("no console", Some("everyone"))
    );
    assert_eq!(
        R {
            groups: admins,
            ..r("x.bad.example")
        }
        .rule(&p),
        "malware"
    );
    assert_eq!(r("x.bad.example").rule(&p), "malware");
}

#[test]
fn allow_list_wins_over_category_block_and_deny_list_wins_over_all() {
    let dir = tempdir("lists");
    std::fs::write(
        dir.join("gambling.txt"),
        "casino.example\nlottery.example\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("allow.txt"),
        "# school trip\nlottery.example/results\n",
    )
    .unwrap();
    let text = r#"
[categories]
allow = ["edu.casino.example"]
allow_files = ["allow.txt"]
deny = ["evil.example"]
[[categories.source]]
format = "plain"
category = "gambling"
path = "gambling.txt"
[[group]]
name = "staff"
allow = ["casino.example"]
deny = ["games.example"]
[[rule]]
name = "gambling"
category = "gambling"
action = "block"
[[rule]]
name = "all ok"
action = "allow"
"#;
    let p = Policy::from_str(text, &dir.join("p.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r("www.casino.example").rule(&p), "gambling");
    let d = r("edu.casino.example").eval(&p);
    assert_eq!((d.rule.as_str(), d.action), ("allow-list", Action::Allow));
    assert_eq!(d.categories, vec!["gambling"]);
    assert_eq!(
        R {
            path: "/results/2024",
            ..r("lottery.example")
        }
        .rule(&p),
        "allow-list"
    );
    assert_eq!(r("lottery.example").rule(&p), "gambling");
    let staff = vec!["staff".to_string()];
    assert_eq!(
        R {
            groups: staff.clone(),
            ..r("casino.example")
        }
        .rule(&p),
        "allow-list"
    );
    assert_eq!(
        R {
            groups: staff.clone(),
            ..r("games.example")
        }
        .rule(&p),
        "deny-list:staff"
    );
    assert_eq!(r("games.example").rule(&p), "all ok");
    assert_eq!(r("a.evil.example").eval(&p).action, Action::Block);
    assert_eq!(r("a.evil.example").rule(&p), "deny-list");
    assert!(p.source_files().iter().any(|f| f.ends_with("allow.txt")));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn registry_csv_bom_quotes_and_bad_lines() {
    let dir = tempdir("reg");
    let csv = "\u{feff}device_id,user,groups\r\nPC-1,\"sato, ken\",teachers;admins\r\nPC-2,suzuki,\r\n\"PC-3\",\"a \"\"quoted\"\" name\",teacher\r\nPC-4,x\r\nPC-1,dup,teachers\r\nPC-5,\"open,teachers\r\n,nobody,teachers\r\n";
    std::fs::write(dir.join("registry.csv"), csv).unwrap();
    let text = format!("[registry]\npath = \"registry.csv\"\n{BASE}");
    let e: Vec<String> = match Policy::from_str(&text, &dir.join("p.toml")) {
        Ok(_) => panic!("should fail"),
        Err(e) => e.iter().map(|d| d.to_string()).collect(),
    };
    let f = dir.join("registry.csv").display().to_string();
    assert_eq!(
        e,
        vec![
            format!(
                "{f}:4:28: unknown group `teacher` for device `PC-3`; did you mean `teachers`?"
            ),
            format!("{f}:5:1: expected 3 fields (device_id,user,groups), found 2"),
            format!("{f}:6:1: duplicate device `PC-1` (first defined on line 2)"),
            format!("{f}:7:6: unterminated quoted field"),
            format!("{f}:8:1: empty device_id"),
        ]
    );
    // the good file loads, with the BOM and quotes handled
    let good = "\u{feff}device_id,user,groups\nPC-1,\"sato, ken\",teachers;admins\nPC-2,suzuki,\n";
    std::fs::write(dir.join("registry.csv"), good).unwrap();
    let p = Policy::from_str(&text, &dir.join("p.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        p.device("PC-1"),
        Some(("sato, ken", vec!["teachers", "admins"]))
    );
    assert_eq!(p.device("PC-2"), Some(("suzuki", vec![])));
    let d = R {
        device: Some("PC-1"),
        ..r("x.example")
    }
    .eval(&p);
    assert_eq!(d.user.as_deref(), Some("sato, ken"));
    assert_eq!(d.groups, vec!["teachers", "admins"]);
    // The registry is authoritative: groups in the certificate add nothing.
    let d = R {
        device: Some("PC-2"),
        groups: vec!["teachers".into()],
        ..r("x.example")
    }
    .eval(&p);
    assert!(d.groups.is_empty(), "{:?}", d.groups);
    // The same registry saved by Japanese Excel (CP932) loads the same.
    let sjis = "device_id,user,groups\r\nPC-1,佐藤 健,teachers;admins\r\n";
    std::fs::write(
        dir.join("registry.csv"),
        komugate_policy::encode_csv(sjis, komugate_policy::CsvEncoding::Cp932).unwrap(),
    )
    .unwrap();
    let p = Policy::from_str(&text, &dir.join("p.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        p.device("PC-1"),
        Some(("佐藤 健", vec!["teachers", "admins"]))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn explain_text_and_json() {
    let p = load(&format!(
        "{BASE}{}",
        "[[rule]]\nname = \"c4th\"\napp = \"c4th\"\nlocation = \"offsite\"\naction = \"block\"\nmessage = \"校内のみ\"\n"
    ));
    let d = R {
        ip: "192.0.2.1",
        path: "/login?x=1",
        ..r("www.c4th.example")
    }
    .eval(&p);
    let text = d.explain();
    assert_eq!(
        text,
        "request:    GET https://www.c4th.example/login?x=1 from 192.0.2.1\n\
         location:   offsite\n\
         device:     (none)\n\
         user:       (unknown)\n\
         groups:     (none)\n\
         categories: (none)\n\
         app:        c4th\n\
         rule:       c4th (/nonexistent/p.toml:23)\n\
         action:     block\n\
         message:    校内のみ\n\
         egress:     fixed (source 127.0.0.2)\n"
    );
    let j = serde_json::to_value(&d).unwrap();
    assert_eq!(j["message"], "校内のみ");
    assert_eq!(j["app"], "c4th");
    let d = R {
        ip: "127.0.10.9",
        ..r("www.c4th.example")
    }
    .eval(&p);
    assert!(d.explain().contains("location:   site school\n"));
    assert_eq!(
        serde_json::to_value(&d).unwrap()["location"]["Site"],
        "school"
    );
}
