//! The RFC 9298 default URI template,
//! `/.well-known/masque/udp/{target_host}/{target_port}/`: building the
//! request path for a target and reading the target back out of one.
//!
//! `{target_host}` is a host name or an IP literal; template expansion
//! (RFC 6570, simple string) percent-encodes every byte outside the
//! unreserved set, so an IPv6 literal has its colons as `%3A` and no
//! brackets (`2001%3Adb8%3A%3A1`).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// The fixed start of the default template.
pub const PREFIX: &str = "/.well-known/masque/udp/";

/// Longest host name accepted (DNS limit, RFC 1035).
const MAX_HOST_LEN: usize = 253;

/// The target of a CONNECT-UDP request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UdpTarget {
    pub host: Host,
    pub port: u16,
}

/// A target host: a name to resolve, or an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name, lower-cased, without a trailing dot.
    Name(String),
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl fmt::Display for UdpTarget {
    /// `host:port`, with brackets around an IPv6 address (`[::1]:53`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// Why a path is not a CONNECT-UDP target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path does not start with {PREFIX}")]
    NotMasque,
    #[error("path is not {PREFIX}<host>/<port>/")]
    Shape,
    #[error("bad percent-encoding in the target host")]
    PercentEncoding,
    #[error("target host is empty")]
    EmptyHost,
    #[error("target host {0:?} is neither a host name nor an IP address")]
    BadHost(String),
    #[error("target port {0:?} is not a number from 1 to 65535")]
    BadPort(String),
}

/// The request path for `host` (a name, an IPv4 address, or an IPv6
/// address with or without brackets) and `port`.
///
/// ```
/// assert_eq!(masque::udp_path("example.com", 443), "/.well-known/masque/udp/example.com/443/");
/// assert_eq!(masque::udp_path("[2001:db8::1]", 53), "/.well-known/masque/udp/2001%3Adb8%3A%3A1/53/");
/// ```
pub fn udp_path(host: &str, port: u16) -> String {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let mut path = String::with_capacity(PREFIX.len() + host.len() * 3 + 8);
    path.push_str(PREFIX);
    for b in host.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            path.push(b as char);
        } else {
            path.push('%');
            path.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            path.push(char::from(b"0123456789ABCDEF"[usize::from(b & 0xf)]));
        }
    }
    path.push('/');
    path.push_str(&port.to_string());
    path.push('/');
    path
}

/// The path for a target, as [`udp_path`].
pub fn target_path(target: &UdpTarget) -> String {
    udp_path(&target.host.to_string(), target.port)
}

/// Reads the target out of a request path (the `:path` pseudo-header).
/// The trailing slash is optional; a query string is not allowed.
pub fn parse_udp_path(path: &str) -> Result<UdpTarget, PathError> {
    let rest = path.strip_prefix(PREFIX).ok_or(PathError::NotMasque)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = rest.split_once('/').ok_or(PathError::Shape)?;
    if port.contains('/') || port.contains('?') || host.contains('?') {
        return Err(PathError::Shape);
    }
    let port = match port.parse::<u16>() {
        Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => p,
        _ => return Err(PathError::BadPort(port.to_string())),
    };
    let host = percent_decode(host)?;
    if host.is_empty() {
        return Err(PathError::EmptyHost);
    }
    Ok(UdpTarget {
        host: parse_host(&host)?,
        port,
    })
}

fn percent_decode(s: &str) -> Result<String, PathError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::PercentEncoding)?;
            let hex = std::str::from_utf8(hex).map_err(|_| PathError::PercentEncoding)?;
            let b = u8::from_str_radix(hex, 16).map_err(|_| PathError::PercentEncoding)?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PathError::PercentEncoding)
}

fn parse_host(host: &str) -> Result<Host, PathError> {
    let bad = || PathError::BadHost(host.to_string());
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(Host::Ip(ip));
    }
    if bare.contains(':') {
        // Looks like IPv6 but is not; zone IDs (fe80::1%eth0) are not targets.
        return Err(bad());
    }
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > MAX_HOST_LEN || !name.split('.').all(label_ok) {
        return Err(bad());
    }
    // All-numeric dotted names that are not valid IPv4 (e.g. 1.2.3.256)
    // would be read as addresses by some resolvers: refuse them.
    if name
        .split('.')
        .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    Ok(Host::Name(name))
}

impl From<Ipv6Addr> for Host {
    fn from(ip: Ipv6Addr) -> Self {
        Host::Ip(IpAddr::V6(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn target(host: Host, port: u16) -> UdpTarget {
        UdpTarget { host, port }
    }

    #[test]
    fn builds_the_rfc_examples() {
        // RFC 9298 section 2 / 3.4 examples.
        assert_eq!(
            udp_path("192.0.2.6", 443),
            "/.well-known/masque/udp/192.0.2.6/443/"
        );
        assert_eq!(
            udp_path("2001:db8::42", 443),
            "/.well-known/masque/udp/2001%3Adb8%3A%3A42/443/"
        );
        assert_eq!(
            udp_path("[2001:db8::42]", 443),
            "/.well-known/masque/udp/2001%3Adb8%3A%3A42/443/"
        );
    }

    #[test]
    fn parses_names_and_addresses() {
        assert_eq!(
            parse_udp_path("/.well-known/masque/udp/Example.COM./53/"),
            Ok(target(Host::Name("example.com".into()), 53))
        );
        assert_eq!(
            parse_udp_path("/.well-known/masque/udp/192.0.2.6/443"),
            Ok(target(Host::Ip(Ipv4Addr::new(192, 0, 2, 6).into()), 443))
        );
        assert_eq!(
            parse_udp_path("/.well-known/masque/udp/2001%3adb8%3A%3A42/65535/"),
            Ok(target(
                "2001:db8::42".parse::<Ipv6Addr>().unwrap().into(),
                65535
            ))
        );
        // Bracketed literal, encoded too.
        assert_eq!(
            parse_udp_path("/.well-known/masque/udp/%5B%3A%3A1%5D/7/"),
            Ok(target(Host::Ip("::1".parse().unwrap()), 7))
        );
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        use PathError::*;
        let p = |s: &str| parse_udp_path(s).unwrap_err();
        assert_eq!(p("/"), NotMasque);
        assert_eq!(p("/.well-known/masque/ip/1.2.3.4/53/"), NotMasque);
        assert_eq!(p("/.well-known/masque/udp/1.2.3.4/"), Shape);
        assert_eq!(p("/.well-known/masque/udp/1.2.3.4/53/x/"), Shape);
        assert_eq!(p("/.well-known/masque/udp/1.2.3.4/53/?a=b"), Shape);
        assert_eq!(p("/.well-known/masque/udp/1.2.3.4/0/"), BadPort("0".into()));
        assert_eq!(
            p("/.well-known/masque/udp/1.2.3.4/65536/"),
            BadPort("65536".into())
        );
        assert_eq!(
            p("/.well-known/masque/udp/1.2.3.4/+53/"),
            BadPort("+53".into())
        );
        assert_eq!(
            p("/.well-known/masque/udp/1.2.3.4/-1/"),
            BadPort("-1".into())
        );
        assert_eq!(p("/.well-known/masque/udp//53/"), EmptyHost);
        assert_eq!(p("/.well-known/masque/udp/a%2/53/"), PercentEncoding);
        assert_eq!(p("/.well-known/masque/udp/a%zz/53/"), PercentEncoding);
        assert_eq!(p("/.well-known/masque/udp/%FF/53/"), PercentEncoding);
        assert!(matches!(p("/.well-known/masque/udp/a%2Fb/53/"), BadHost(_)));
        assert!(matches!(p("/.well-known/masque/udp/a%20b/53/"), BadHost(_)));
        assert!(matches!(
            p("/.well-known/masque/udp/-a.com/53/"),
            BadHost(_)
        ));
        assert!(matches!(
            p("/.well-known/masque/udp/1.2.3.256/53/"),
            BadHost(_)
        ));
        assert!(matches!(
            p("/.well-known/masque/udp/fe80%3A%3A1%25eth0/53/"),
            BadHost(_)
        ));
        assert!(matches!(p("/.well-known/masque/udp/a..b/53/"), BadHost(_)));
        let long = format!("/.well-known/masque/udp/{}.com/53/", "a".repeat(254));
        assert!(matches!(p(&long), BadHost(_)));
    }

    #[test]
    fn round_trips() {
        let hosts = [
            Host::Name("a.example".into()),
            Host::Name("x-1.y_2.example".into()),
            Host::Ip("127.0.0.1".parse().unwrap()),
            Host::Ip("::".parse().unwrap()),
            Host::Ip("::ffff:192.0.2.1".parse().unwrap()),
            Host::Ip("2001:db8:1:2:3:4:5:6".parse().unwrap()),
        ];
        for host in hosts {
            for port in [1, 53, 443, 8443, 65535] {
                let t = target(host.clone(), port);
                assert_eq!(parse_udp_path(&target_path(&t)), Ok(t.clone()), "{t}");
            }
        }
        assert_eq!(
            target(Host::Ip("::1".parse().unwrap()), 53).to_string(),
            "[::1]:53"
        );
    }
}
