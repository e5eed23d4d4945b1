//! squidGuard import: the produced policy decides like squidGuard.

use komugate_policy::*;
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("komugate-policy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// Monday 2024-04-01 (+09:00) at hh:mm, shifted by `day` days.
fn jst(day: u64, hh: u64, mm: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_711_897_200 + day * 86_400 + hh * 3600 + mm * 60)
}

const CONF: &str = r#"
# squidGuard configuration of the old in-school proxy
dbhome DB
logdir /var/log/squidguard

time school-hours {
    weekly mtwhf 08:00-17:00
}

src teachers {
    ip 127.0.1.0/24
    ip 127.0.2.10-127.0.2.20
}
src pupils {
    ip 127.0.3.0/255.255.255.0
}
src guests {
    ip 127.0.4.0/24
}
src unused {
    ip 127.0.5.0/24
}

dest adult {
    domainlist adult/domains
    urllist adult/urls
    redirect http://block.example/adult
}
dest gambling {
    domainlist gambling/domains
}
dest games {
    domainlist games/domains
}
dest whitelist {
    domainlist white/domains
}

acl {
    teachers {
        pass !adult all
    }
    pupils within school-hours {
        pass whitelist !adult !gambling !games all
        redirect http://block.example/pupils
    } else {
        pass whitelist !adult !gambling all
    }
    guests {
        pass whitelist none
    }
    default {
        pass !adult !gambling all
        redirect http://block.example/default
    }
}
"#;

struct Lists {
    adult: HashSet<String>,
    adult_urls: Vec<String>,
    gambling: HashSet<String>,
    games: HashSet<String>,
    white: HashSet<String>,
}

fn in_domains(set: &HashSet<String>, host: &str) -> bool {
    let mut h = host;
    loop {
        if set.contains(h) {
            return true;
        }
        match h.find('.') {
            Some(i) => h = &h[i + 1..],
            None => return false,
        }
    }
}

/// A straightforward model of squidGuard's decision for this configuration.
fn squidguard(l: &Lists, ip: IpAddr, host: &str, path: &str, time: SystemTime) -> bool /* allowed */
{
    let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap().contains(&ip);
    let v4 = match ip {
        IpAddr::V4(v) => u32::from(v),
        _ => 0,
    };
    let src = if net("127.0.1.0/24")
        || (u32::from(std::net::Ipv4Addr::new(127, 0, 2, 10))
            ..=u32::from(std::net::Ipv4Addr::new(127, 0, 2, 20)))
            .contains(&v4)
    {
        "teachers"
    } else if net("127.0.3.0/24") {
        "pupils"
    } else if net("127.0.4.0/24") {
        "guests"
    } else if net("127.0.5.0/24") {
        "unused"
    } else {
        "none"
    };
    let secs = time.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 + 9 * 3600;
    let (wd, min) = (((secs / 86400) + 3) % 7, (secs % 86400) / 60);
    let school_hours = wd < 5 && (8 * 60..17 * 60).contains(&min);
    let url = format!("{host}{path}");
    let adult =
        in_domains(&l.adult, host) || l.adult_urls.iter().any(|u| url.starts_with(u.as_str()));
    let gambling = in_domains(&l.gambling, host);
    let games = in_domains(&l.games, host);
    let white = in_domains(&l.white, host);
    // pass lists, evaluated left to right; (matches, allow?) ; end of list = pass
    let eval = |terms: &[(bool, bool)]| terms.iter().find(|(m, _)| *m).is_none_or(|(_, a)| *a);
    match src {
        "teachers" => eval(&[(adult, false), (true, true)]),
        "pupils" if school_hours => eval(&[
            (white, true),
            (adult, false),
            (gambling, false),
            (games, false),
            (true, true),
        ]),
        "pupils" => eval(&[
            (white, true),
            (adult, false),
            (gambling, false),
            (true, true),
        ]),
        "guests" => eval(&[(white, true), (true, false)]),
        _ => eval(&[(adult, false), (gambling, false), (true, true)]),
    }
}

#[test]
fn imported_policy_decides_like_squidguard() {
    let dir = tempdir("sg");
    let db = dir.join("db");
    write(&db.join("adult/domains"), "porn.example\nxxx.example\n");
    write(&db.join("adult/urls"), "news.example/adult-section\n");
    write(&db.join("gambling/domains"), "casino.example\n");
    write(&db.join("games/domains"), "games.example\nplay.example\n");
    write(
        &db.join("white/domains"),
        "edu.casino.example\nschool.example\n",
    );
    let conf_path = dir.join("squidGuard.conf");
    let conf = CONF.replace("dbhome DB", &format!("dbhome {}", db.display()));
    write(&conf_path, &conf);

    let toml = import_squidguard(&conf, &conf_path).unwrap_or_else(|e| panic!("{e}"));
    let policy_path = dir.join("policy.toml");
    write(&policy_path, &toml);
    let summary = check(&policy_path).unwrap_or_else(|e| panic!("{e}\n---\n{toml}"));
    assert_eq!(summary.sites, 4);
    let policy = Policy::load(&policy_path).unwrap();

    let lists = Lists {
        adult: ["porn.example", "xxx.example"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        adult_urls: vec!["news.example/adult-section".into()],
        gambling: ["casino.example"].iter().map(|s| s.to_string()).collect(),
        games: ["games.example", "play.example"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        white: ["edu.casino.example", "school.example"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let ips = [
        "127.0.1.9",
        "127.0.2.15",
        "127.0.2.21",
        "127.0.3.4",
        "127.0.4.4",
        "127.0.5.5",
        "192.0.2.1",
    ];
    let urls = [
        ("porn.example", "/"),
        ("www.xxx.example", "/a"),
        ("news.example", "/adult-section/x"),
        ("news.example", "/politics"),
        ("casino.example", "/"),
        ("edu.casino.example", "/learn"),
        ("games.example", "/"),
        ("m.play.example", "/"),
        ("school.example", "/"),
        ("www.mext.go.jp", "/"),
    ];
    let times = [
        jst(0, 10, 0),
        jst(0, 18, 30),
        jst(5, 10, 0),
        jst(4, 7, 59),
        jst(4, 16, 59),
    ];
    let mut n = 0;
    for ip in ips {
        for (host, path) in urls {
            for t in times {
                let ip: IpAddr = ip.parse().unwrap();
                let want = squidguard(&lists, ip, host, path, t);
                let d = policy.evaluate(&Request {
                    device: None,
                    cert_groups: &[],
                    client_ip: ip,
                    location: None,
                    scheme: Scheme::Http,
                    method: "GET",
                    host,
                    port: 80,
                    path,
                    time: t,
                });
                assert_eq!(
                    !d.is_blocked(),
                    want,
                    "{ip} {host}{path} at {t:?}:\n{}\n---\n{toml}",
                    d.explain()
                );
                n += 1;
            }
        }
    }
    assert_eq!(n, 350);
    // spot checks against squidGuard semantics
    let d = |ip: &str, host: &str| {
        policy.evaluate(&Request {
            device: None,
            cert_groups: &[],
            client_ip: ip.parse().unwrap(),
            location: None,
            scheme: Scheme::Http,
            method: "GET",
            host,
            port: 80,
            path: "/",
            time: jst(0, 10, 0),
        })
    };
    assert!(d("127.0.3.4", "games.example").is_blocked());
    assert!(!d("127.0.1.9", "games.example").is_blocked());
    assert!(d("127.0.4.4", "www.mext.go.jp").is_blocked());
    assert!(!d("127.0.3.4", "edu.casino.example").is_blocked());
    let b = d("127.0.1.9", "porn.example");
    assert_eq!(
        b.message.as_deref(),
        Some("blocked (squidGuard redirect: http://block.example/adult)")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn import_reports_errors_with_positions() {
    let conf = "dest adult {\n    domainlist adult/domains\n}\nacl {\n    default {\n        pass !adlt all\n    }\n    nobody {\n        pass all\n    }\n}\nbogus line\n";
    let e = import_squidguard(conf, Path::new("/etc/squidGuard.conf")).unwrap_err();
    let msgs: Vec<String> = e.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        msgs,
        vec![
            "/etc/squidGuard.conf:6:14: unknown dest `adlt` in pass list; did you mean `adult`?",
            "/etc/squidGuard.conf:8:5: acl for unknown src `nobody`",
            "/etc/squidGuard.conf:12:1: unknown squidGuard keyword `bogus`",
        ]
    );
}
