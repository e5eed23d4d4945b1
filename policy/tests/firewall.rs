//! `[firewall]`: validation and `Policy::firewall` verdicts.

use komugate_policy::*;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

const BASE: &str = r#"
version = 1
[[group]]
name = "students"
[[group]]
name = "staff"
[[site]]
name = "school"
cidrs = ["10.1.0.0/16"]
"#;

const FW: &str = r#"
[firewall]
default = "deny"

[[firewall.rule]]
name = "no-ssh-students"
groups = ["students"]
ports = [22]
action = "deny"

[[firewall.rule]]
name = "lan"
cidrs = ["10.0.0.0/8", "192.168.1.1"]
ports = ["20-25", 3389]
protocol = "tcp"
action = "allow"
log = false

[[firewall.rule]]
name = "ntp-host"
hosts = [".ntp.example"]
ports = [123]
action = "allow"

[[firewall.rule]]
name = "school-hours-rdp"
location = "school"
ports = [3390]
time = "08:00-17:00"
days = "mon-fri"
action = "allow"
"#;

struct F {
    groups: Vec<String>,
    client: &'static str,
    host: &'static str,
    dest: Option<&'static str>,
    port: u16,
    protocol: Protocol,
    time: SystemTime,
}

impl Default for F {
    fn default() -> Self {
        F {
            groups: vec![],
            client: "10.1.2.3",
            host: "example.test",
            dest: None,
            port: 22,
            protocol: Protocol::Tcp,
            time: jst(0, 10, 0),
        }
    }
}

fn fw(p: &Policy, f: F) -> FirewallVerdict {
    p.firewall(&FirewallRequest {
        device: None,
        cert_groups: &f.groups,
        client_ip: f.client.parse().unwrap(),
        location: None,
        host: f.host,
        dest_ip: f.dest.map(|d| d.parse::<IpAddr>().unwrap()),
        port: f.port,
        protocol: f.protocol,
        time: f.time,
    })
}

#[test]
fn no_section_means_no_firewall() {
    let p = load(BASE);
    assert!(!p.has_firewall());
    let v = fw(
        &p,
        F {
            port: 6667,
            ..Default::default()
        },
    );
    assert!(v.allow);
    assert_eq!(v.rule, "firewall-off");
}

#[test]
fn first_match_wins_default_deny_web_ports_allowed() {
    let p = load(&format!("{BASE}{FW}"));
    assert!(p.has_firewall());
    assert!(p.is_web_port(443) && p.is_web_port(8080) && !p.is_web_port(22));
    // CIDR + port allow.
    let v = fw(
        &p,
        F {
            dest: Some("10.9.9.9"),
            ..Default::default()
        },
    );
    assert_eq!((v.allow, v.rule.as_str(), v.log), (true, "lan", false));
    assert!(v.rule_origin.unwrap().contains("p.toml:"));
    // Single address as a /32; address literal as host.
    let v = fw(
        &p,
        F {
            host: "192.168.1.1",
            port: 3389,
            ..Default::default()
        },
    );
    assert_eq!((v.allow, v.rule.as_str()), (true, "lan"));
    // Group deny comes first.
    let v = fw(
        &p,
        F {
            groups: vec!["students".into()],
            dest: Some("10.9.9.9"),
            ..Default::default()
        },
    );
    assert_eq!((v.allow, v.rule.as_str()), (false, "no-ssh-students"));
    // Outside the CIDRs: default deny (logged by default).
    let v = fw(
        &p,
        F {
            dest: Some("8.8.8.8"),
            ..Default::default()
        },
    );
    assert_eq!(
        (v.allow, v.rule.as_str(), v.log),
        (false, "firewall-default", true)
    );
    // No resolved address: CIDR rules cannot match.
    let v = fw(&p, F::default());
    assert_eq!(v.rule, "firewall-default");
    // IPv4-mapped IPv6 destination matches IPv4 CIDRs.
    let v = fw(
        &p,
        F {
            dest: Some("::ffff:10.0.0.1"),
            ..Default::default()
        },
    );
    assert_eq!(v.rule, "lan");
    // Host pattern.
    let v = fw(
        &p,
        F {
            host: "a.ntp.example",
            port: 123,
            ..Default::default()
        },
    );
    assert_eq!((v.allow, v.rule.as_str()), (true, "ntp-host"));
    let v = fw(
        &p,
        F {
            host: "ntp.example.org",
            port: 123,
            ..Default::default()
        },
    );
    assert!(!v.allow);
    // Web ports without a rule are left to the web policy.
    let v = fw(
        &p,
        F {
            dest: Some("8.8.8.8"),
            port: 443,
            ..Default::default()
        },
    );
    assert_eq!((v.allow, v.rule.as_str()), (true, "firewall-web"));
}

#[test]
fn location_and_time() {
    let p = load(&format!("{BASE}{FW}"));
    let at = |client: &'static str, time: SystemTime| {
        fw(
            &p,
            F {
                client,
                port: 3390,
                time,
                ..Default::default()
            },
        )
    };
    assert_eq!(at("10.1.0.5", jst(0, 9, 0)).rule, "school-hours-rdp");
    assert!(!at("203.0.113.5", jst(0, 9, 0)).allow, "off-site");
    assert!(!at("10.1.0.5", jst(0, 18, 0)).allow, "after hours");
    assert!(!at("10.1.0.5", jst(5, 9, 0)).allow, "Saturday");
    // An asserted site counts like the address.
    let v = p.firewall(&FirewallRequest {
        device: None,
        cert_groups: &[],
        client_ip: "203.0.113.5".parse().unwrap(),
        location: Some(Location::Site("school".into())),
        host: "x",
        dest_ip: None,
        port: 3390,
        protocol: Protocol::Tcp,
        time: jst(0, 9, 0),
    });
    assert!(v.allow);
}

#[test]
fn custom_web_ports_and_default_allow() {
    let p = load(&format!(
        "{BASE}\n[firewall]\nweb_ports = [443, \"9000-9010\"]\ndefault = \"allow\"\nlog = false\n"
    ));
    assert!(p.is_web_port(9005) && !p.is_web_port(80));
    let v = fw(
        &p,
        F {
            port: 5000,
            ..Default::default()
        },
    );
    assert_eq!(
        (v.allow, v.rule.as_str(), v.log),
        (true, "firewall-default", false)
    );
}

#[test]
fn validation_errors() {
    let bad = r#"
[firewall]
defualt = "deny"
web_ports = [0]

[[firewall.rule]]
name = "a"
cidrs = ["10.0.0.0/33", "nope"]
groups = ["studnets"]
location = "schol"
protocol = "icmp"
ports = ["9-1"]
action = "permit"
colour = "red"

[[firewall.rule]]
name = "b"
protocol = "tcpp"

[[firewall.rule]]
name = "b"
action = "allow"
categories = ["adult"]
"#;
    let e = errors(&format!("{BASE}{bad}"));
    let all = e.join("\n");
    let has = |s: &str| assert!(e.iter().any(|x| x.contains(s)), "missing `{s}` in:\n{all}");
    has("unknown key `defualt` in [firewall]");
    has("did you mean `default`");
    has("invalid port 0");
    has("invalid CIDR `10.0.0.0/33`");
    has("invalid CIDR `nope`");
    has("unknown group `studnets`");
    has("did you mean `students`");
    has("unknown site `schol`");
    has("protocol `icmp`");
    has("only TCP and UDP flows");
    has("invalid action `permit`");
    has("unknown key `colour` in firewall rule `a`");
    has("invalid protocol `tcpp`");
    has("missing `action` in firewall rule `b`");
    has("duplicate firewall rule name `b`");
    has("unknown key `categories` in firewall rule `b`");
    // file:line:column positions.
    assert!(
        e.iter().all(|x| x.starts_with("/nonexistent/p.toml:")),
        "{all}"
    );
    let invalid_range = e.iter().any(|x| x.contains("9-1"));
    assert!(invalid_range || all.contains("range"), "{all}");

    assert!(errors(&format!("{BASE}\n[firewall]\nrule = 3\n"))
        .iter()
        .any(|x| x.contains("[[firewall.rule]]")));
    assert!(errors(&format!("firewall = 1\n{BASE}"))
        .iter()
        .any(|x| x.contains("`firewall` must be a table")));
}

/// UDP flows (CONNECT-UDP): DNS and QUIC refused by default, other ports
/// per the rules; a rule for any protocol does not open DNS or QUIC.
#[test]
fn udp_defaults_and_rules() {
    let udp = |p: &Policy, port: u16, dest: Option<&'static str>| {
        fw(
            p,
            F {
                port,
                dest,
                protocol: Protocol::Udp,
                ..Default::default()
            },
        )
    };
    // Without a [firewall]: DNS and QUIC refused, the rest allowed like TCP.
    let p = load(BASE);
    assert_eq!(udp(&p, 53, None).rule, UDP_DNS_RULE);
    assert!(!udp(&p, 53, None).allow);
    assert_eq!(udp(&p, 853, None).rule, UDP_DNS_RULE);
    assert_eq!(udp(&p, 443, None).rule, UDP_QUIC_RULE);
    assert!(!udp(&p, 443, None).allow);
    assert!(udp(&p, 3478, None).allow);
    assert!(
        fw(
            &p,
            F {
                port: 53,
                ..Default::default()
            }
        )
        .allow,
        "TCP 53 is not refused"
    );

    let rules = r#"
[firewall]
default = "deny"
web_ports = [443, 8443]

[[firewall.rule]]
name = "media-any"
ports = ["3478-3481", 443, 53]
action = "allow"

[[firewall.rule]]
name = "tcp-only-9000"
ports = [9000]
protocol = "tcp"
action = "allow"

[[firewall.rule]]
name = "school-dns"
cidrs = ["10.0.0.53"]
ports = [53]
protocol = "udp"
action = "allow"

[[firewall.rule]]
name = "no-udp-lan"
cidrs = ["10.0.0.0/8"]
protocol = "udp"
action = "deny"
"#;
    let p = load(&format!("{BASE}{rules}"));
    assert_eq!(udp(&p, 3479, None).rule, "media-any");
    assert!(udp(&p, 3479, None).allow);
    // A rule for any protocol matches, but does not open QUIC or DNS.
    assert_eq!(udp(&p, 443, None).rule, UDP_QUIC_RULE);
    assert_eq!(udp(&p, 53, Some("8.8.8.8")).rule, UDP_DNS_RULE);
    // ... while TCP to 443 is that rule's.
    assert_eq!(
        fw(
            &p,
            F {
                port: 443,
                ..Default::default()
            }
        )
        .rule,
        "media-any"
    );
    // An explicit UDP rule does open DNS to the school's resolver.
    let v = udp(&p, 53, Some("10.0.0.53"));
    assert!(v.allow && v.rule == "school-dns", "{v:?}");
    // A TCP rule does not match UDP; the default decides.
    assert_eq!(udp(&p, 9000, None).rule, "firewall-default");
    assert!(
        fw(
            &p,
            F {
                port: 9000,
                ..Default::default()
            }
        )
        .allow
    );
    // A UDP deny rule does not touch TCP.
    assert_eq!(udp(&p, 5000, Some("10.1.1.1")).rule, "no-udp-lan");
    assert_eq!(
        fw(
            &p,
            F {
                port: 5000,
                dest: Some("10.1.1.1"),
                ..Default::default()
            }
        )
        .rule,
        "firewall-default"
    );
    // A UDP flow to the other web port is QUIC too; 80 is not a web port here.
    assert_eq!(udp(&p, 8443, None).rule, UDP_QUIC_RULE);
    assert_eq!(udp(&p, 80, None).rule, "firewall-default");
}

#[test]
fn protocol_values_and_positions() {
    let text = format!(
        "{BASE}\n[firewall]\n\n[[firewall.rule]]\nname = \"x\"\nprotocol = \"upd\"\naction = \"allow\"\n"
    );
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("invalid protocol `upd`"), "{e:?}");
    assert!(e[0].contains("did you mean `udp`"), "{e:?}");
    // file:line:column of the value.
    let line = 1 + text
        .lines()
        .position(|l| l.starts_with("protocol"))
        .unwrap();
    assert!(
        e[0].starts_with(&format!("/nonexistent/p.toml:{line}:12:")),
        "{e:?}"
    );
    for ok in ["tcp", "udp", "any", "UDP"] {
        let text = format!(
            "{BASE}\n[firewall]\n\n[[firewall.rule]]\nname = \"x\"\nprotocol = \"{ok}\"\naction = \"allow\"\n"
        );
        assert!(errors(&text).is_empty(), "{ok}");
    }
}
