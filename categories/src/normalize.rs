//! Host / URL normalisation shared by the importers and the lookup path.

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest host name we accept (DNS limit).
pub(crate) const MAX_HOST: usize = 253;

/// Normalises a host as the matcher does: trims, lowercases, strips a port and
/// one trailing dot, converts IDN to punycode (UTS #46 via the `idna` crate),
/// and canonicalises IP literals (IPv6 with or without brackets, printed without
/// brackets in RFC 5952 form). Underscores are accepted (they occur in real
/// lists). Returns `Err(reason)` for anything else that is not a host name.
pub fn normalize_host(host: &str) -> Result<String, String> {
    let h = host.trim();
    if h.is_empty() {
        return Err("empty host".into());
    }
    // Bracketed IPv6, optionally with a port.
    if let Some(rest) = h.strip_prefix('[') {
        let end = rest.find(']').ok_or("unterminated '[' in host")?;
        let after = &rest[end + 1..];
        if !(after.is_empty() || (after.starts_with(':') && is_port(&after[1..]))) {
            return Err(format!("junk after IPv6 literal: {after:?}"));
        }
        return rest[..end]
            .parse::<Ipv6Addr>()
            .map(|a| a.to_string())
            .map_err(|_| format!("invalid IPv6 address {:?}", &rest[..end]));
    }
    let colons = h.bytes().filter(|&b| b == b':').count();
    if colons > 1 {
        return h
            .parse::<Ipv6Addr>()
            .map(|a| a.to_string())
            .map_err(|_| format!("invalid IPv6 address {h:?}"));
    }
    let h = match h.rfind(':') {
        Some(i) if is_port(&h[i + 1..]) => &h[..i],
        Some(_) => return Err("invalid port".into()),
        None => h,
    };
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.is_empty() {
        return Err("empty host".into());
    }
    if let Ok(ip) = h.parse::<Ipv4Addr>() {
        return Ok(ip.to_string());
    }
    let ascii = if h.is_ascii() {
        h.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(h).map_err(|e| format!("invalid IDN host: {e}"))?
    };
    validate_ascii_host(ascii.as_bytes())?;
    Ok(ascii)
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Checks a lowercased ASCII host: labels of 1..=63 chars out of `a-z0-9-_`.
pub(crate) fn validate_ascii_host(h: &[u8]) -> Result<(), String> {
    if h.len() > MAX_HOST {
        return Err(format!("host longer than {MAX_HOST} bytes"));
    }
    for label in h.split(|&b| b == b'.') {
        if label.is_empty() {
            return Err("empty label".into());
        }
        if label.len() > 63 {
            return Err("label longer than 63 bytes".into());
        }
        if let Some(&b) = label
            .iter()
            .find(|&&b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'))
        {
            return Err(format!("invalid character {:?} in host", b as char));
        }
    }
    Ok(())
}

/// True if `h` (normalised) is an IP literal.
pub(crate) fn is_ip(h: &[u8]) -> bool {
    if h.contains(&b':') {
        return true; // only IPv6 literals contain ':' after normalisation
    }
    h.iter().all(|b| b.is_ascii_digit() || *b == b'.')
        && std::str::from_utf8(h).is_ok_and(|s| s.parse::<Ipv4Addr>().is_ok())
}

/// Strips one leading `www`/`web`/`ftp` label, optionally followed by digits
/// (`www.`, `www2.`, `ftp1.`, `web.`), as squidGuard does for url entries and
/// requests. IP literals and hosts that would become empty are left alone.
pub(crate) fn strip_www(h: &[u8]) -> &[u8] {
    if h.len() < 4 {
        return h;
    }
    let pre = &h[..3];
    if pre != b"www" && pre != b"web" && pre != b"ftp" {
        return h;
    }
    let mut i = 3;
    while i < h.len() && h[i].is_ascii_digit() {
        i += 1;
    }
    if i + 1 < h.len() && h[i] == b'.' {
        &h[i + 1..]
    } else {
        h
    }
}

/// Fast, allocation-free normalisation for the lookup path. Writes the
/// lowercased host (no port, no trailing dot) into `buf` and returns its
/// length, or `None` when the slow path ([`normalize_host`]) is needed
/// (non-ASCII, IPv6, or anything odd).
#[inline]
pub(crate) fn fast_host(host: &str, buf: &mut [u8; 256]) -> Option<usize> {
    let b = host.as_bytes();
    let mut end = b.len();
    // Port: find the last ':'; any other ':' means IPv6 -> slow path.
    if let Some(i) = b.iter().rposition(|&c| c == b':') {
        if b[..i].contains(&b':') || b.first() == Some(&b'[') {
            return None;
        }
        end = i;
    }
    if end > 0 && b[end - 1] == b'.' {
        end -= 1;
    }
    if end == 0 || end > MAX_HOST {
        return None;
    }
    for (d, &c) in buf.iter_mut().zip(&b[..end]) {
        if c >= 0x80 || c <= b' ' {
            return None;
        }
        *d = c.to_ascii_lowercase();
    }
    Some(end)
}

/// The one path normalisation of the matcher, applied to url entries at
/// import and to every request path at lookup, so that two spellings of the
/// same resource compare equal (RFC 3986 §6.2.2 and §6.2.3, plus what an
/// origin server does with the path before it routes it).
///
/// Input: path with optional query (`/a/b?q`, may be empty or lack the
/// leading `/`); a fragment is dropped. Output: ASCII, lowercased, starting
/// with `/`.
///
/// In the **path**:
/// * `%XX` escapes of printable ASCII (`!`..`~`) are decoded, except `%2F`
///   (`/`), `%3F` (`?`), `%23` (`#`) and `%25` (`%`). RFC 3986 §6.2.2.2 only
///   calls the unreserved set (`A-Z a-z 0-9 - . _ ~`) safe to decode; the
///   matcher decodes the reserved sub-delimiters too (`%3B`, `%3D`, `%40`…)
///   because origin servers decode the path before they map it to a file or
///   a route, so `/%64ating` and `/dating` reach the same page (squidGuard
///   decodes as well). `/`, `?`, `#` and `%` stay encoded: decoding them would
///   change where a segment, the path or an escape ends.
/// * Space, control bytes and non-ASCII bytes are (or stay) escaped, so a
///   raw UTF-8 entry (`/café`) equals the encoded request (`/caf%C3%A9`).
///   A `%` not followed by two hex digits is taken literally (`%25`).
/// * Repeated slashes are collapsed (`//a///b` → `/a/b`), then dot segments
///   are removed (RFC 3986 §5.2.4: `/a/./b/../c` → `/a/c`).
///
/// In the **query** only unreserved characters are decoded (`=`, `&`, `+`
/// keep their meaning there) and non-ASCII / space / control bytes escaped.
///
/// Finally everything is lowercased (paths are compared case-insensitively,
/// as squidGuard does), which also folds the case of the remaining escapes.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    let path = path.split('#').next().unwrap_or("");
    if is_normal_path(path.as_bytes()) {
        return Cow::Borrowed(path);
    }
    let (p, q) = match path.find('?') {
        Some(i) => (&path[..i], Some(&path[i + 1..])),
        None => (path, None),
    };
    let mut decoded = Vec::with_capacity(p.len() + 1);
    if !p.starts_with('/') {
        decoded.push(b'/');
    }
    canonical_escapes(p.as_bytes(), &mut decoded, decode_in_path);
    let mut out = remove_dot_segments(&collapse_slashes(&decoded));
    if let Some(q) = q {
        out.push(b'?');
        canonical_escapes(q.as_bytes(), &mut out, is_unreserved);
    }
    out.make_ascii_lowercase();
    // Only ASCII is ever written above.
    Cow::Owned(String::from_utf8(out).unwrap_or_default())
}

/// True when `normalize_path` would return `p` unchanged (the common case on
/// the lookup path: no allocation).
fn is_normal_path(p: &[u8]) -> bool {
    if p.first() != Some(&b'/') {
        return false;
    }
    let end = p.iter().position(|&b| b == b'?').unwrap_or(p.len());
    if p.iter()
        .any(|&b| b == b'%' || b.is_ascii_uppercase() || !(b'!'..=b'~').contains(&b))
    {
        return false;
    }
    let path = &p[..end];
    for seg in path[1..].split(|&b| b == b'/') {
        if seg == b"." || seg == b".." {
            return false;
        }
    }
    !path.windows(2).any(|w| w == b"//")
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn decode_in_path(b: u8) -> bool {
    (b'!'..=b'~').contains(&b) && !matches!(b, b'/' | b'?' | b'#' | b'%')
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escape(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
}

/// Copies `src` to `out` with every escape whose byte `decode` accepts
/// decoded, every other escape kept, and bytes that cannot appear raw in a
/// URL (space, controls, non-ASCII, a stray `%`) escaped.
fn canonical_escapes(src: &[u8], out: &mut Vec<u8>, decode: fn(u8) -> bool) {
    let mut i = 0;
    while i < src.len() {
        let b = src[i];
        if b == b'%' {
            let hi = src.get(i + 1).copied().and_then(hex_val);
            let lo = src.get(i + 2).copied().and_then(hex_val);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                let v = hi << 4 | lo;
                if decode(v) {
                    out.push(v);
                } else {
                    push_escape(out, v);
                }
                i += 3;
                continue;
            }
            push_escape(out, b'%');
        } else if (b'!'..=b'~').contains(&b) {
            out.push(b);
        } else {
            push_escape(out, b);
        }
        i += 1;
    }
}

fn collapse_slashes(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.len());
    for &b in p {
        if b == b'/' && out.last() == Some(&b'/') {
            continue;
        }
        out.push(b);
    }
    out
}

/// RFC 3986 §5.2.4 on a path that starts with `/` and has no empty segments.
fn remove_dot_segments(p: &[u8]) -> Vec<u8> {
    let mut segs: Vec<&[u8]> = Vec::new();
    let parts: Vec<&[u8]> = p[1..].split(|&b| b == b'/').collect();
    let n = parts.len();
    let mut trailing_slash = false;
    for (i, seg) in parts.into_iter().enumerate() {
        let last = i + 1 == n;
        match seg {
            b"." => trailing_slash = last,
            b".." => {
                segs.pop();
                trailing_slash = last;
            }
            _ => {
                segs.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut out = Vec::with_capacity(p.len());
    for s in &segs {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if trailing_slash || out.is_empty() {
        out.push(b'/');
    }
    out
}

/// Splits a URL (`scheme://userinfo@host:port/path?q#f`, or `host/path`)
/// into (host incl. port, path incl. query, without fragment).
pub(crate) fn split_url(url: &str) -> (&str, &str) {
    let u = url.trim();
    let b = u.as_bytes();
    // Scheme: letters/digits/+-. followed by "://".
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if c == b':' {
            if b[i + 1..].starts_with(b"//") {
                start = i + 3;
            }
            break;
        }
        if !(c.is_ascii_alphanumeric() || c == b'+' || c == b'-' || c == b'.') {
            break;
        }
    }
    let rest = &b[start..];
    let end = rest
        .iter()
        .position(|&c| c == b'/' || c == b'?' || c == b'#')
        .unwrap_or(rest.len());
    let authority = &u[start..start + end];
    let mut path = &u[start + end..];
    let host = match authority.rfind('@') {
        Some(i) => &authority[i + 1..],
        None => authority,
    };
    if let Some(i) = path.find('#') {
        path = &path[..i];
    }
    (host, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            normalize_host("WWW.Example.COM.").unwrap(),
            "www.example.com"
        );
        assert_eq!(normalize_host("example.com:8080").unwrap(), "example.com");
        assert_eq!(normalize_host("example.com.:443").unwrap(), "example.com");
        assert_eq!(normalize_host("bücher.de").unwrap(), "xn--bcher-kva.de");
        assert_eq!(
            normalize_host("xn--bcher-kva.de").unwrap(),
            "xn--bcher-kva.de"
        );
        assert_eq!(
            normalize_host("under_score.example").unwrap(),
            "under_score.example"
        );
        assert_eq!(normalize_host("[2001:DB8::1]:443").unwrap(), "2001:db8::1");
        assert_eq!(normalize_host("2001:db8:0:0::1").unwrap(), "2001:db8::1");
        assert_eq!(normalize_host("10.0.0.1:80").unwrap(), "10.0.0.1");
        assert!(normalize_host("").is_err());
        assert!(normalize_host("a..b").is_err());
        assert!(normalize_host("bad host").is_err());
        assert!(normalize_host("a/b").is_err());
        assert!(normalize_host("example.com:http").is_err());
        assert!(normalize_host(&"a".repeat(64)).is_err());
    }

    #[test]
    fn www() {
        assert_eq!(strip_www(b"www.example.com"), b"example.com");
        assert_eq!(strip_www(b"ftp2.example.com"), b"example.com");
        assert_eq!(strip_www(b"web.example.com"), b"example.com");
        assert_eq!(strip_www(b"www123.a"), b"a");
        assert_eq!(strip_www(b"wwwx.example.com"), b"wwwx.example.com");
        assert_eq!(strip_www(b"www"), b"www");
        assert_eq!(strip_www(b"www."), b"www.");
        assert_eq!(strip_www(b"example.com"), b"example.com");
    }

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://u:p@Host:81/a/b?q=1#frag"),
            ("Host:81", "/a/b?q=1")
        );
        assert_eq!(split_url("https://h"), ("h", ""));
        assert_eq!(split_url("h/x"), ("h", "/x"));
        assert_eq!(split_url("h?x"), ("h", "?x"));
        assert_eq!(split_url("http://[::1]:8080/p"), ("[::1]:8080", "/p"));
        assert_eq!(split_url("example.com:8080/p"), ("example.com:8080", "/p"));
        assert_eq!(split_url("HTTPS://a.b"), ("a.b", ""));
    }

    #[test]
    fn paths() {
        let n = |p: &str| normalize_path(p).into_owned();
        assert_eq!(n("/vkdating"), "/vkdating");
        assert_eq!(n("/%76kdating"), "/vkdating");
        assert_eq!(n("//dating/"), "/dating/");
        assert_eq!(n("/a///b//c"), "/a/b/c");
        assert_eq!(n("/a/./b/../c"), "/a/c");
        assert_eq!(n("/a/%2e%2E/b"), "/b");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a/b/."), "/a/b/");
        assert_eq!(n("/../a"), "/a");
        assert_eq!(n(""), "/");
        assert_eq!(n("a/b"), "/a/b");
        assert_eq!(n("/A%2fB"), "/a%2fb");
        assert_eq!(n("/a%2Fb"), "/a%2fb");
        assert_eq!(n("/%25%3f%23"), "/%25%3f%23");
        assert_eq!(n("/%3d%40%3B"), "/=@;");
        assert_eq!(n("/caf%c3%a9"), "/caf%c3%a9");
        assert_eq!(n("/café"), "/caf%c3%a9");
        assert_eq!(n("/a b"), "/a%20b");
        assert_eq!(n("/100%"), "/100%25");
        assert_eq!(n("/p?q=%41%3D//./"), "/p?q=a%3d//./");
        assert_eq!(n("/p#frag"), "/p");
        assert_eq!(n("/P?Q"), "/p?q");
        assert!(matches!(normalize_path("/a/b.html?x=1"), Cow::Borrowed(_)));
    }
}
