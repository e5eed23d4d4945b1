//! `[[site]]` (school sites: address ranges, beacon keys) and `[pac]`.

use std::collections::HashMap;
use std::net::IpAddr;

use toml_edit::TableLike;

use super::cx::Cx;
use crate::pattern::HostPattern;
use crate::{Pac, Site};

/// The sites, by name and by network (document order; first match wins).
pub(super) struct Sites {
    pub sites: Vec<Site>,
    pub index: HashMap<String, usize>,
    pub nets: Vec<(ipnet::IpNet, usize)>,
}

pub(super) fn section(cx: &mut Cx<'_>, root: &dyn TableLike) -> Sites {
    let mut sites: Vec<Site> = Vec::new();
    let mut site_index: HashMap<String, usize> = HashMap::new();
    let mut site_nets = Vec::new();
    let mut seen_nets: HashMap<ipnet::IpNet, String> = HashMap::new();
    for (t, tsp) in cx.tables(root, "site", "site") {
        let Some((name, nsp)) = cx.req_str(t, "name", "[[site]]", &tsp) else {
            continue;
        };
        let what = format!("site `{name}`");
        cx.keys(
            t,
            &what,
            &[
                "name",
                "cidrs",
                "assertion",
                "description",
                "beacon_key",
                "pac_direct",
            ],
        );
        let assertion = cx.bool(t, "assertion", &what).unwrap_or(false);
        let beacon_key = match cx.str(t, "beacon_key", &what) {
            Some((k, sp)) => match decode_key32(&k) {
                Some(key) => Some(key),
                None => {
                    cx.err(
                        &sp,
                        format!(
                            "`beacon_key` of {what} is not a base64 Ed25519 public key (32 bytes); \
                             paste the line printed by `komugate pki beacon-key`"
                        ),
                    );
                    None
                }
            },
            None => None,
        };
        let mut pac_direct = Vec::new();
        for (d, sp) in cx.strs(t, "pac_direct", &what).unwrap_or_default() {
            match check_pac_direct(&d) {
                Ok(()) => pac_direct.push(d),
                Err(e) => cx.err(&sp, format!("`pac_direct` of {what}: {e}")),
            }
        }
        let mut cidrs = Vec::new();
        for (c, sp) in cx.strs(t, "cidrs", &what).unwrap_or_default() {
            let parsed = c
                .parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(n) if n.trunc() != n => cx.err(
                    &sp,
                    format!(
                        "CIDR `{c}` has host bits set (did you mean `{}`?)",
                        n.trunc()
                    ),
                ),
                Ok(n) => {
                    if let Some(other) = seen_nets.get(&n) {
                        cx.err(&sp, format!("CIDR `{c}` is already used by site `{other}`"));
                    }
                    seen_nets.insert(n, name.clone());
                    cidrs.push(n);
                }
                Err(_) => cx.err(
                    &sp,
                    format!("invalid CIDR `{c}` in {what} (e.g. \"203.0.113.16/29\")"),
                ),
            }
        }
        if cidrs.is_empty() && !assertion && !t.contains_key("cidrs") {
            cx.err(
                &tsp,
                format!(
                    "{what} has no `cidrs`; give its address ranges or mark it `assertion = true`"
                ),
            );
        }
        if site_index.contains_key(&name) {
            cx.err(&nsp, format!("duplicate site name `{name}`"));
            continue;
        }
        let i = sites.len();
        site_index.insert(name.clone(), i);
        site_nets.extend(cidrs.iter().map(|n| (*n, i)));
        sites.push(Site {
            name,
            cidrs,
            assertion,
            beacon_key,
            pac_direct,
        });
    }
    Sites {
        sites,
        index: site_index,
        nets: site_nets,
    }
}

/// `[pac]`: extra `DIRECT` entries and the proxy line of generated PAC files.
pub(super) fn pac(cx: &mut Cx<'_>, root: &dyn TableLike) -> Pac {
    let mut pac = Pac::default();
    if let Some((t, _)) = cx.table(root, "pac") {
        cx.keys(t, "[pac]", &["direct", "proxy"]);
        for (d, sp) in cx.strs(t, "direct", "[pac]").unwrap_or_default() {
            match check_pac_direct(&d) {
                Ok(()) => pac.direct.push(d),
                Err(e) => cx.err(&sp, format!("`direct` in [pac]: {e}")),
            }
        }
        if let Some((p, sp)) = cx.str(t, "proxy", "[pac]") {
            match check_pac_proxy(&p) {
                Ok(()) => pac.proxy = Some(p),
                Err(e) => cx.err(&sp, format!("`proxy` in [pac]: {e}")),
            }
        }
    }
    pac
}

/// Standard base64 (padding optional) of exactly 32 bytes.
fn decode_key32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim().trim_end_matches('=');
    let mut bits: u32 = 0;
    let mut nbits = 0;
    let mut out = Vec::with_capacity(32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        bits = (bits << 6) | v as u32;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    out.try_into().ok()
}

/// A PAC `DIRECT` entry: an IP, a CIDR or a host pattern. Only characters
/// that are safe inside a generated JavaScript string literal.
fn check_pac_direct(d: &str) -> Result<(), String> {
    if d.parse::<ipnet::IpNet>().is_ok() || d.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if !d
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '*' | '_'))
    {
        return Err(format!(
            "`{d}` is not an IP, a CIDR or a host pattern like \"*.school.local\" (ASCII / punycode only)"
        ));
    }
    HostPattern::parse(d)
        .map(|_| ())
        .map_err(|e| format!("`{d}`: {e}"))
}

/// `HTTPS host:port` or `PROXY host:port`.
fn check_pac_proxy(p: &str) -> Result<(), String> {
    let bad = || format!("`{p}` is not like \"HTTPS gw.example.jp:8443\" or \"PROXY host:port\"");
    let (kind, hostport) = p.trim().split_once(' ').ok_or_else(bad)?;
    let (host, port) = hostport.trim().rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    if !matches!(kind, "HTTPS" | "PROXY") || !host_ok || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(())
}
