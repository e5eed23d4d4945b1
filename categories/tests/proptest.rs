//! The compiled matcher agrees with a naive reference matcher.

use komugate_categories::*;
use proptest::prelude::*;

/// Plain reference implementation of the documented semantics.
struct Naive {
    domains: Vec<(String, CategoryId)>,
    urls: Vec<(String, CategoryId)>, // "host/path", www-stripped host, lowercase
    exceptions: Vec<(String, CategoryId)>,
}

fn strip_www(h: &str) -> &str {
    for p in ["www", "web", "ftp"] {
        if let Some(rest) = h.strip_prefix(p) {
            let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
            if let Some(r) = rest.strip_prefix('.') {
                if !r.is_empty() {
                    return r;
                }
            }
        }
    }
    h
}

impl Naive {
    fn lookup(&self, host: &str, path: &str) -> CategorySet {
        let host = host.to_ascii_lowercase();
        let host = host.trim_end_matches('.');
        let covers = |d: &str| host == d || host.ends_with(&format!(".{d}"));
        let mut s = CategorySet::empty();
        for (d, c) in &self.domains {
            if covers(d) {
                s.insert(*c);
            }
        }
        // Path normalisation has its own tests (unit tests and reencode.rs).
        let key = format!("{}{}", strip_www(host), normalize_path(path));
        for (u, c) in &self.urls {
            if key.starts_with(u.as_str()) {
                s.insert(*c);
            }
        }
        for (d, c) in &self.exceptions {
            if covers(d) {
                s.remove(*c);
            }
        }
        s
    }
}

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("ab".to_string()),
        Just("ba".to_string()),
        Just("www".to_string()),
        Just("ftp2".to_string()),
        Just("web".to_string()),
        Just("x-y".to_string()),
        "[a-c]{1,3}",
    ]
}

fn host() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..5).prop_map(|v| v.join("."))
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("/"),
            Just("a"),
            Just("A"),
            Just("b"),
            Just("?"),
            Just("=")
        ],
        0..6,
    )
    .prop_map(|v| v.concat())
}

#[derive(Debug, Clone)]
enum Entry {
    Domain(String),
    Url(String, String),
    Exception(String),
}

fn entry() -> impl Strategy<Value = (Entry, CategoryId)> {
    let e = prop_oneof![
        4 => host().prop_map(Entry::Domain),
        3 => (host(), path()).prop_map(|(h, p)| Entry::Url(h, p)),
        1 => host().prop_map(Entry::Exception),
    ];
    (e, 0..5u16)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn agrees_with_naive(entries in prop::collection::vec(entry(), 0..40),
                         queries in prop::collection::vec((host(), path(), any::<bool>(), any::<bool>()), 1..40)) {
        let mut b = MatcherBuilder::new();
        for c in 0..5 {
            b.add_domain(&format!("c{c}"), "init.invalid").unwrap();
        }
        let mut naive = Naive { domains: vec![("init.invalid".into(), 0)], urls: vec![], exceptions: vec![] };
        for c in 1..5 { naive.domains.push(("init.invalid".into(), c)); }
        for (e, c) in &entries {
            let cat = format!("c{c}");
            match e {
                Entry::Domain(d) => {
                    b.add_domain(&cat, d).unwrap();
                    naive.domains.push((d.clone(), *c));
                }
                Entry::Url(h, p) => {
                    let p = if p.starts_with('/') { p.clone() } else { format!("/{p}") };
                    b.add_url(&cat, &format!("{h}{p}")).unwrap();
                    // the "?" would start a query: the entry is host + everything after it.
                    naive.urls.push((format!("{}{}", strip_www(h), normalize_path(&p)), *c));
                }
                Entry::Exception(d) => {
                    b.add_exception(&cat, d).unwrap();
                    naive.exceptions.push((d.clone(), *c));
                }
            }
        }
        let m = b.build().unwrap();
        let mut buf = Vec::new();
        m.write_snapshot(&mut buf).unwrap();
        let snap_path = std::env::temp_dir().join(format!("komugate-prop-{}.snap", std::process::id()));
        std::fs::write(&snap_path, &buf).unwrap();
        let m2 = Matcher::read_snapshot(&snap_path).unwrap();
        for (h, p, upper, port) in &queries {
            let mut qh = if *upper { h.to_ascii_uppercase() } else { h.clone() };
            let expected = naive.lookup(&qh, p);
            if *port { qh.push_str(":8080"); }
            prop_assert_eq!(m.lookup(&qh, p), expected, "host {} path {}", qh, p);
            prop_assert_eq!(m2.lookup(&qh, p), expected, "snapshot: host {} path {}", qh, p);
            let url = format!("http://{qh}{}{p}", if p.starts_with('/') || p.starts_with('?') { "" } else { "/" });
            let p2 = if p.starts_with('/') || p.starts_with('?') { p.clone() } else { format!("/{p}") };
            prop_assert_eq!(m.lookup_url(&url), naive.lookup(h, &p2), "url {}", url);
        }
    }
}
