//! Threat-intelligence lists: known-bad IP addresses / CIDRs and domains.
//!
//! One entry per line; `#` starts a comment. Accepted forms: `203.0.113.5`,
//! `198.51.100.0/24`, `2001:db8::/32`, `evil.example` (matches the domain
//! and every subdomain), `*.evil.example`, `||evil.example^` (adblock),
//! `0.0.0.0 evil.example` (hosts file), `http://evil.example/path` (the
//! host is used). Other lines are counted as invalid and reported with
//! their line number; they never stop the gateway.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

/// A listed destination that was hit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ThreatHit {
    /// The list's name (file name without extension).
    pub list: String,
    /// The list entry that matched (`203.0.113.0/24`, `evil.example`).
    pub entry: String,
}

#[derive(Debug, Clone, Default)]
pub struct ListReport {
    pub name: String,
    pub ips: usize,
    pub domains: usize,
    /// `(line number, line)` of lines that are not an address or domain.
    pub invalid: Vec<(usize, String)>,
}

#[derive(Debug, Default)]
pub struct ThreatIntel {
    lists: Vec<String>,
    /// Sorted, non-overlapping `(start, end, list, entry)` ranges.
    v4: Vec<(u32, u32, u16, u32)>,
    v6: Vec<(u128, u128, u16, u32)>,
    entries: Vec<String>,
    domains: HashMap<String, (u16, u32)>,
}

impl ThreatIntel {
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty() && self.domains.is_empty()
    }

    pub fn has_domains(&self) -> bool {
        !self.domains.is_empty()
    }

    /// Loads every list; a missing or unreadable file is an error.
    pub fn load(paths: &[impl AsRef<Path>]) -> anyhow::Result<(ThreatIntel, Vec<ListReport>)> {
        let mut builder = Builder::default();
        let mut reports = Vec::new();
        for path in paths {
            let path = path.as_ref();
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read threat-intel list {}: {e} (check [threat_intel] lists)",
                    path.display()
                )
            })?;
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string());
            reports.push(builder.add_list(&name, &text));
        }
        Ok((builder.build(), reports))
    }

    /// From in-memory lists `(name, text)` (tests, benches).
    pub fn from_texts(lists: &[(&str, &str)]) -> ThreatIntel {
        let mut builder = Builder::default();
        for (name, text) in lists {
            builder.add_list(name, text);
        }
        builder.build()
    }

    pub fn check_ip(&self, ip: IpAddr) -> Option<ThreatHit> {
        let ip = ip.to_canonical();
        let found = match ip {
            IpAddr::V4(v4) => lookup(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => lookup(&self.v6, u128::from(v6)),
        }?;
        Some(self.hit(found.0, found.1))
    }

    /// The host itself or any parent domain listed. IP literals are checked
    /// as addresses.
    pub fn check_host(&self, host: &str) -> Option<ThreatHit> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.check_ip(ip);
        }
        if self.domains.is_empty() {
            return None;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let mut rest = host.as_str();
        loop {
            if let Some(&(list, entry)) = self.domains.get(rest) {
                return Some(self.hit(list, entry));
            }
            match rest.find('.') {
                Some(i) => rest = &rest[i + 1..],
                None => return None,
            }
        }
    }

    fn hit(&self, list: u16, entry: u32) -> ThreatHit {
        ThreatHit {
            list: self.lists.get(list as usize).cloned().unwrap_or_default(),
            entry: self
                .entries
                .get(entry as usize)
                .cloned()
                .unwrap_or_default(),
        }
    }
}

fn lookup<T: Copy + Ord>(ranges: &[(T, T, u16, u32)], ip: T) -> Option<(u16, u32)> {
    let idx = ranges.partition_point(|r| r.0 <= ip);
    let r = ranges.get(idx.checked_sub(1)?)?;
    (ip <= r.1).then_some((r.2, r.3))
}

#[derive(Default)]
struct Builder {
    lists: Vec<String>,
    entries: Vec<String>,
    v4: Vec<(u32, u32, u16, u32)>,
    v6: Vec<(u128, u128, u16, u32)>,
    domains: HashMap<String, (u16, u32)>,
}

enum Entry {
    Net(IpNet),
    Domain(String),
}

fn parse_entry(line: &str) -> Option<Entry> {
    let mut tokens = line.split_whitespace();
    let first = tokens.next()?;
    if let Some(second) = tokens.next() {
        // hosts file: "0.0.0.0 evil.example"
        if first.parse::<IpAddr>().is_ok() {
            return domain(second).map(Entry::Domain);
        }
        return None;
    }
    if let Ok(net) = first.parse::<IpNet>() {
        return Some(Entry::Net(net.trunc()));
    }
    if let Ok(ip) = first.parse::<IpAddr>() {
        return Some(Entry::Net(IpNet::from(ip)));
    }
    let host = if let Some(rest) = first
        .strip_prefix("http://")
        .or_else(|| first.strip_prefix("https://"))
    {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        if let Some(v6) = authority
            .strip_prefix('[')
            .and_then(|a| a.split(']').next())
        {
            v6.to_string()
        } else {
            authority.split(':').next().unwrap_or("").to_string()
        }
    } else {
        first
            .trim_start_matches("||")
            .trim_end_matches('^')
            .trim_start_matches("*.")
            .trim_start_matches('.')
            .to_string()
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(Entry::Net(IpNet::from(ip)));
    }
    domain(&host).map(Entry::Domain)
}

fn domain(s: &str) -> Option<String> {
    let d = s.trim_end_matches('.').to_ascii_lowercase();
    let valid = !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    // Single labels (`localhost`) are usually typos; an all-digit last label
    // is a mistyped address (`300.1.1.1`), not a domain.
    let numeric_tld = d
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    (valid && d.contains('.') && !numeric_tld).then_some(d)
}

impl Builder {
    fn add_list(&mut self, name: &str, text: &str) -> ListReport {
        let list = self.lists.len() as u16;
        self.lists.push(name.to_string());
        let mut report = ListReport {
            name: name.to_string(),
            ..Default::default()
        };
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            match parse_entry(line) {
                Some(Entry::Net(net)) => {
                    let entry = self.entries.len() as u32;
                    self.entries.push(net.to_string());
                    match net {
                        IpNet::V4(n) => self.v4.push((
                            u32::from(n.network()),
                            u32::from(n.broadcast()),
                            list,
                            entry,
                        )),
                        IpNet::V6(n) => self.v6.push((
                            u128::from(n.network()),
                            u128::from(n.broadcast()),
                            list,
                            entry,
                        )),
                    }
                    report.ips += 1;
                }
                Some(Entry::Domain(d)) => {
                    let entry = self.entries.len() as u32;
                    self.entries.push(d.clone());
                    self.domains.entry(d).or_insert((list, entry));
                    report.domains += 1;
                }
                None => {
                    if report.invalid.len() < 1000 {
                        report
                            .invalid
                            .push((n + 1, raw.chars().take(120).collect()));
                    }
                }
            }
        }
        report
    }

    fn build(self) -> ThreatIntel {
        ThreatIntel {
            lists: self.lists,
            v4: merge(self.v4),
            v6: merge(self.v6),
            entries: self.entries,
            domains: self.domains,
        }
    }
}

/// Sorts and merges overlapping ranges (the first entry names a merged range).
fn merge<T: Copy + Ord>(mut ranges: Vec<(T, T, u16, u32)>) -> Vec<(T, T, u16, u32)> {
    ranges.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut out: Vec<(T, T, u16, u32)> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.0 <= last.1 => {
                if r.1 > last.1 {
                    last.1 = r.1;
                }
            }
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_cidrs_and_domains() {
        let ti = ThreatIntel::from_texts(&[
            ("feodo", "# Feodo tracker\n203.0.113.5\n198.51.100.0/24 # c2\n198.51.100.128/25\n2001:db8:bad::/48\n"),
            ("domains", "evil.example\n*.c2.example\n||ads.example^\n0.0.0.0 hosts.example\nhttps://phish.example:8443/login\nnot a domain line\nlocalhost\n"),
        ]);
        assert_eq!(
            ti.check_ip("203.0.113.5".parse().unwrap()).unwrap(),
            ThreatHit {
                list: "feodo".into(),
                entry: "203.0.113.5/32".into()
            }
        );
        assert!(ti.check_ip("203.0.113.6".parse().unwrap()).is_none());
        assert_eq!(
            ti.check_ip("198.51.100.200".parse().unwrap())
                .unwrap()
                .entry,
            "198.51.100.0/24"
        );
        assert!(ti.check_ip("198.51.101.0".parse().unwrap()).is_none());
        assert!(ti.check_ip("::ffff:203.0.113.5".parse().unwrap()).is_some());
        assert!(ti.check_ip("2001:db8:bad:1::1".parse().unwrap()).is_some());
        assert!(ti.check_ip("2001:db8:bae::1".parse().unwrap()).is_none());
        assert_eq!(ti.check_host("EVIL.example.").unwrap().list, "domains");
        assert!(ti.check_host("a.b.evil.example").is_some());
        assert!(ti.check_host("notevil.example").is_none());
        assert!(ti.check_host("x.c2.example").is_some());
        assert!(ti.check_host("ads.example").is_some());
        assert!(ti.check_host("hosts.example").is_some());
        assert!(ti.check_host("phish.example").is_some());
        assert!(ti.check_host("203.0.113.5").is_some());
        assert!(ti.check_host("[2001:db8:bad::1]").is_some());
        assert!(ti.check_host("example").is_none());
    }

    #[test]
    fn invalid_lines_are_reported() {
        let dir = std::env::temp_dir().join(format!("komugate-ti-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.txt");
        std::fs::write(&p, "1.2.3.4\nnot a domain\n300.1.1.1\n").unwrap();
        let (ti, reports) = ThreatIntel::load(&[&p]).unwrap();
        assert!(!ti.is_empty());
        assert_eq!(reports[0].ips, 1);
        assert_eq!(
            reports[0]
                .invalid
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>(),
            vec![2, 3]
        );
        let err = ThreatIntel::load(&[dir.join("missing.txt")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing.txt") && err.contains("[threat_intel]"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
