//! PAC files generated from the policy, so the browser, `komugate client`
//! and the gateway agree on what goes `DIRECT`.
//!
//! The DIRECT list is `[pac] direct` plus the requester's site's
//! `pac_direct` (and loopback always). Entries are host patterns
//! (`*.school.local` = subdomains, `.school.local` = domain and subdomains,
//! `school.local` = exactly), IP addresses and CIDRs. IPv4 CIDRs are
//! matched only against IP-literal hosts, with plain arithmetic: the file
//! never calls `dnsResolve`/`isInNet`, so evaluating it costs no DNS lookup
//! and it runs in any JavaScript engine.
//!
//! The gateway serves it at `GET /proxy.pac` on the mTLS listener
//! (origin-form) and on the admin listener, choosing the site by the
//! requester's location; `komugate client` serves its own at
//! `http://127.0.0.1:3128/proxy.pac`, same lists, with its local proxy as
//! the proxy.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::beacon::{SiteAssertions, SiteDirectory};

/// The PAC text: `direct` entries go DIRECT, everything else to `proxy`
/// (a PAC proxy string such as `HTTPS gw.example.jp:8443` or
/// `PROXY 127.0.0.1:3128`). `label` is shown in a comment (site name).
/// Entries that are unsafe in a JavaScript string are skipped (the policy
/// validation refuses them already).
pub fn generate(direct: &[String], proxy: &str, label: &str) -> String {
    let mut hosts = Vec::new();
    let mut nets4 = Vec::new();
    let mut ips6 = Vec::new();
    for d in direct
        .iter()
        .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
    {
        if let Ok(ip) = d.parse::<IpAddr>() {
            match ip {
                IpAddr::V4(v4) => nets4.push((u32::from(v4), 32u8)),
                IpAddr::V6(v6) => ips6.push(v6.to_string()),
            }
        } else if let Ok(net) = d.parse::<IpNet>() {
            match net.trunc() {
                IpNet::V4(n) => nets4.push((u32::from(n.network()), n.prefix_len())),
                IpNet::V6(n) if n.prefix_len() == 128 => ips6.push(n.network().to_string()),
                IpNet::V6(n) => tracing::debug!("PAC: IPv6 network {n} is not matched in PAC files (IPv6 literals only by /128)"),
            }
        } else if !d.is_empty()
            && d.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '*' | '_'))
        {
            let (kind, name) = if let Some(rest) = d.strip_prefix("*.") {
                ("sub", rest)
            } else if let Some(rest) = d.strip_prefix('.') {
                ("dom", rest)
            } else {
                ("exact", d.as_str())
            };
            if !name.contains('*') {
                hosts.push(format!("[\"{kind}\", \"{name}\"]"));
            }
        }
    }
    let nets: Vec<String> = nets4
        .iter()
        .map(|(n, p)| format!("[{n}, {}]", 2f64.powi(32 - *p as i32) as u64))
        .collect();
    let ips6: Vec<String> = ips6.iter().map(|s| format!("\"{s}\"")).collect();
    let label: String = label
        .chars()
        .filter(|c| !c.is_control() && *c != '*' && *c != '/')
        .collect();
    let proxy: String = proxy
        .chars()
        .filter(|c| {
            c.is_ascii_alphanumeric() || matches!(c, ' ' | '.' | ':' | '-' | '[' | ']' | ';')
        })
        .collect();
    format!(
        r#"// komugate PAC file, generated from the policy ({label}).
// DIRECT: loopback and the listed in-school servers; everything else: {proxy}
var KOMUGATE_PROXY = "{proxy}";
var KOMUGATE_DIRECT_HOSTS = [{hosts}];
// [network, block size] for IPv4 networks (no bit operations: they are signed 32-bit in JS)
var KOMUGATE_DIRECT_NETS4 = [{nets}];
var KOMUGATE_DIRECT_IPS6 = [{ips6}];

function komugateIp4(h) {{
  var p = h.split(".");
  if (p.length != 4) return -1;
  var n = 0;
  for (var i = 0; i < 4; i++) {{
    if (!/^[0-9]{{1,3}}$/.test(p[i])) return -1;
    var v = parseInt(p[i], 10);
    if (v > 255) return -1;
    n = n * 256 + v;
  }}
  return n;
}}

function komugateIsDirect(host) {{
  host = host.toLowerCase();
  if (host.charAt(0) == "[") host = host.substring(1, host.length - 1);
  if (host.charAt(host.length - 1) == ".") host = host.substring(0, host.length - 1);
  if (host == "localhost" || host == "::1") return true;
  var ip = komugateIp4(host);
  if (ip >= 0) {{
    if (Math.floor(ip / 16777216) == 127) return true;
    for (var i = 0; i < KOMUGATE_DIRECT_NETS4.length; i++) {{
      var net = KOMUGATE_DIRECT_NETS4[i];
      if (Math.floor(ip / net[1]) == Math.floor(net[0] / net[1])) return true;
    }}
    return false;
  }}
  for (var k = 0; k < KOMUGATE_DIRECT_IPS6.length; k++) {{
    if (host == KOMUGATE_DIRECT_IPS6[k]) return true;
  }}
  for (var j = 0; j < KOMUGATE_DIRECT_HOSTS.length; j++) {{
    var kind = KOMUGATE_DIRECT_HOSTS[j][0], d = KOMUGATE_DIRECT_HOSTS[j][1];
    var sub = host.length > d.length && host.substring(host.length - d.length - 1) == "." + d;
    if (kind == "exact" && host == d) return true;
    if (kind == "sub" && sub) return true;
    if (kind == "dom" && (host == d || sub)) return true;
  }}
  return false;
}}

function FindProxyForURL(url, host) {{
  return komugateIsDirect(host) ? "DIRECT" : KOMUGATE_PROXY;
}}
"#,
        hosts = hosts.join(", "),
        nets = nets.join(", "),
        ips6 = ips6.join(", "),
    )
}

/// The networks a PAC file made by [`generate`] sends `DIRECT` (its IPv4
/// networks and IPv6 addresses), read back from the text: `komugate
/// client --tun` routes them around the TUN device, so full-device mode
/// and the browser's PAC keep the same split. Host names in the list have
/// no route and are carried through the gateway in full-device mode.
pub fn direct_networks(pac: &str) -> Vec<IpNet> {
    let list = |var: &str| -> Option<String> {
        let head = format!("\nvar {var} = [");
        let start = pac.find(&head)? + head.len();
        let end = start + pac[start..].find("];")?;
        Some(pac[start..end].to_string())
    };
    let mut nets = Vec::new();
    if let Some(v4) = list("KOMUGATE_DIRECT_NETS4") {
        for pair in v4.split(']') {
            let mut nums = pair
                .trim_start_matches([',', ' ', '['])
                .split(',')
                .map(|x| x.trim().parse::<u64>());
            if let (Some(Ok(net)), Some(Ok(size))) = (nums.next(), nums.next()) {
                let prefix = 32 - size.max(1).ilog2().min(32);
                if let (Ok(net), true) = (u32::try_from(net), size.is_power_of_two()) {
                    if let Ok(n) = ipnet::Ipv4Net::new(net.into(), prefix as u8) {
                        nets.push(IpNet::V4(n));
                    }
                }
            }
        }
    }
    if let Some(v6) = list("KOMUGATE_DIRECT_IPS6") {
        for ip in v6.split(',').filter_map(|x| {
            x.trim()
                .trim_matches('"')
                .parse::<std::net::Ipv6Addr>()
                .ok()
        }) {
            nets.push(IpNet::from(IpAddr::V6(ip)));
        }
    }
    nets
}

/// The DIRECT list for a requester at `site` (or off-site).
pub fn direct_list(dir: &SiteDirectory, site: Option<&str>) -> Vec<String> {
    let mut list = dir.pac_direct.clone();
    if let Some(s) = site.and_then(|s| dir.site(s)) {
        list.extend(s.pac_direct.iter().cloned());
    }
    list
}

/// The gateway's PAC proxy string: `[pac] proxy`, else `HTTPS host:port`
/// with the host the requester used to reach the gateway.
pub fn gateway_proxy(dir: &SiteDirectory, host: Option<&str>, port: Option<u16>) -> String {
    if let Some(p) = &dir.pac_proxy {
        return p.clone();
    }
    let host = host
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'))
        })
        .unwrap_or("localhost");
    format!("HTTPS {host}:{}", port.filter(|p| *p != 0).unwrap_or(8443))
}

/// A `200 application/x-ns-proxy-autoconfig` response.
pub fn response(body: String) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ns-proxy-autoconfig"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("max-age=300"),
    );
    r
}

/// Host and port the request was addressed to (`:authority` or `Host`).
fn request_authority<B>(req: &http::Request<B>) -> (Option<String>, Option<u16>) {
    let auth = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
    match auth.and_then(|a| a.parse::<http::uri::Authority>().ok()) {
        Some(a) => (Some(a.host().to_string()), a.port_u16()),
        None => (None, None),
    }
}

/// Is this a request for the gateway's own PAC file (not one to forward)?
/// Origin-form over HTTP/1.1, or `https` scheme over HTTP/2 (never forwarded).
pub fn is_pac_request<B>(req: &http::Request<B>) -> bool {
    req.method() == http::Method::GET
        && req.uri().path() == "/proxy.pac"
        && matches!(req.uri().scheme_str(), None | Some("https"))
}

/// `GET /proxy.pac` on the mTLS listener: the PAC for the requester's site
/// (asserted, or by address) or off-site.
pub fn gateway_response<B>(
    sites: &SiteAssertions,
    dir: &SiteDirectory,
    device: Option<&crate::device_auth::DeviceIdentity>,
    client: std::net::SocketAddr,
    req: &http::Request<B>,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let (host, port) = request_authority(req);
    located_response(sites, dir, device, client, host.as_deref(), port)
}

/// The peer address of an admin-listener request (request extension).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// `GET /proxy.pac` on the admin listener: by the requester's address;
/// `mtls_port` is the configured mTLS listener's.
pub fn admin_response<B>(
    sites: &SiteAssertions,
    dir: &SiteDirectory,
    mtls_port: Option<u16>,
    req: &http::Request<B>,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let client = req
        .extensions()
        .get::<Peer>()
        .map(|p| p.0)
        .unwrap_or_else(|| ([0, 0, 0, 0], 0).into());
    let (host, _) = request_authority(req);
    located_response(sites, dir, None, client, host.as_deref(), mtls_port)
}

fn located_response(
    sites: &SiteAssertions,
    dir: &SiteDirectory,
    device: Option<&crate::device_auth::DeviceIdentity>,
    client: std::net::SocketAddr,
    host: Option<&str>,
    port: Option<u16>,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let site = sites.site_of(dir, device, client);
    let label = site
        .clone()
        .map(|s| format!("site {s}"))
        .unwrap_or_else(|| "offsite".into());
    let mut r = response(generate(
        &direct_list(dir, site.as_deref()),
        &gateway_proxy(dir, host, port),
        &label,
    ));
    // Header values are ASCII: percent-encode the (Japanese) site name.
    let encoded: String = label
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b' ' || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    if let Ok(v) = http::HeaderValue::from_str(&encoded) {
        r.headers_mut().insert("komugate-pac-location", v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_networks_read_back_what_generate_wrote() {
        let text = generate(
            &[
                "10.0.0.0/8".into(),
                "192.168.1.20".into(),
                "*.school.local".into(),
                "2001:db8::5".into(),
            ],
            "PROXY 127.0.0.1:3128",
            "t",
        );
        let nets: Vec<String> = direct_networks(&text)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.168.1.20/32", "2001:db8::5/128"]);
        assert!(direct_networks("function FindProxyForURL() {}").is_empty());
    }

    #[test]
    fn generated_text_has_the_lists() {
        let pac = generate(
            &[
                "*.school.local".into(),
                "10.0.0.0/8".into(),
                "192.168.1.5".into(),
                "bad\"entry".into(),
                "fd00::1".into(),
            ],
            "HTTPS gw.example.jp:8443",
            "site 院内学級",
        );
        assert!(pac.contains(r#"["sub", "school.local"]"#), "{pac}");
        assert!(pac.contains("[167772160, 16777216]"), "{pac}");
        assert!(pac.contains("[3232235781, 1]"), "{pac}");
        assert!(pac.contains("\"fd00::1\""), "{pac}");
        assert!(!pac.contains("bad"), "{pac}");
        assert!(pac.contains("var KOMUGATE_PROXY = \"HTTPS gw.example.jp:8443\";"));
    }
}
