//! PROXY protocol (HAProxy, versions 2 binary and 1 text) on the proxy
//! listeners, for running behind a TCP load balancer that does not keep the
//! client address (`[listen] proxy_protocol_from`).
//!
//! Only connections whose TCP peer is in `proxy_protocol_from` are read for
//! a header, and for them the header is required: the address it carries
//! becomes the client address (site CIDRs, `plain_clients`, access log).
//! From any other peer nothing is parsed, so a client cannot forge its
//! address by sending a header itself: its bytes go to TLS/HTTP as usual and
//! fail there.
//!
//! The reader never consumes more than the header (v2: 16 bytes plus the
//! announced length; v1: up to the CRLF), so TLS or HTTP starts exactly
//! after it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte signature that starts a version 2 header.
pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Longest v1 line including CRLF (spec: 107).
pub const V1_MAX: usize = 107;
/// Largest v2 payload accepted (addresses + TLVs). The spec allows 65535;
/// load balancers send a few hundred bytes at most.
pub const V2_MAX_PAYLOAD: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// A connection the load balancer opened itself (health check) or one
    /// whose addresses it does not know (v2 LOCAL, v1 UNKNOWN, AF_UNSPEC or
    /// AF_UNIX): the TCP peer stays the client address.
    Local,
    /// A proxied TCP connection from `source` to `destination`.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
}

impl ProxyHeader {
    /// The client address to use: the carried source, or `peer` for `Local`.
    pub fn client(&self, peer: SocketAddr) -> SocketAddr {
        match self {
            ProxyHeader::Proxied { source, .. } => *source,
            ProxyHeader::Local => peer,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyProtocolError {
    #[error("no PROXY protocol header (expected one from this load balancer address)")]
    Missing,
    #[error("unsupported PROXY protocol version {0}")]
    Version(u8),
    #[error("unknown PROXY protocol v2 command {0}")]
    Command(u8),
    #[error(
        "PROXY protocol v2 payload of {0} bytes is too large or too short for its address family"
    )]
    Length(usize),
    #[error("malformed PROXY protocol v1 line: {0}")]
    V1(String),
    #[error("connection closed inside the PROXY protocol header")]
    Eof,
    #[error("PROXY protocol header not received in time")]
    Timeout,
    #[error("I/O error reading the PROXY protocol header: {0}")]
    Io(String),
}

/// Parses a complete v2 header: `head` is the fixed 16 bytes, `payload` the
/// `len` bytes that follow.
pub fn parse_v2(head: &[u8; 16], payload: &[u8]) -> Result<ProxyHeader, ProxyProtocolError> {
    if head[..12] != V2_SIGNATURE {
        return Err(ProxyProtocolError::Missing);
    }
    let version = head[12] >> 4;
    if version != 2 {
        return Err(ProxyProtocolError::Version(version));
    }
    let command = head[12] & 0x0F;
    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
    if payload.len() != len {
        return Err(ProxyProtocolError::Length(payload.len()));
    }
    match command {
        0x0 => return Ok(ProxyHeader::Local),
        0x1 => {}
        c => return Err(ProxyProtocolError::Command(c)),
    }
    let family = head[13] >> 4;
    let transport = head[13] & 0x0F;
    // Only TCP (STREAM) carries a usable client address for us.
    if transport != 0x1 {
        return Ok(ProxyHeader::Local);
    }
    match family {
        0x1 => {
            if len < 12 {
                return Err(ProxyProtocolError::Length(len));
            }
            let p = payload;
            let src = Ipv4Addr::new(p[0], p[1], p[2], p[3]);
            let dst = Ipv4Addr::new(p[4], p[5], p[6], p[7]);
            let sport = u16::from_be_bytes([p[8], p[9]]);
            let dport = u16::from_be_bytes([p[10], p[11]]);
            Ok(ProxyHeader::Proxied {
                source: SocketAddr::new(IpAddr::V4(src), sport),
                destination: SocketAddr::new(IpAddr::V4(dst), dport),
            })
        }
        0x2 => {
            if len < 36 {
                return Err(ProxyProtocolError::Length(len));
            }
            let p = payload;
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&p[0..16]);
            d.copy_from_slice(&p[16..32]);
            let sport = u16::from_be_bytes([p[32], p[33]]);
            let dport = u16::from_be_bytes([p[34], p[35]]);
            let src = Ipv6Addr::from(s);
            // An IPv4-mapped source is reported as IPv4 so CIDR checks match.
            let src_ip = IpAddr::V6(src).to_canonical();
            Ok(ProxyHeader::Proxied {
                source: SocketAddr::new(src_ip, sport),
                destination: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(d)), dport),
            })
        }
        // AF_UNSPEC or AF_UNIX: no IP address to use.
        _ => Ok(ProxyHeader::Local),
    }
}

/// Parses a complete v1 line (including the trailing CRLF).
pub fn parse_v1(line: &[u8]) -> Result<ProxyHeader, ProxyProtocolError> {
    let bad = |why: &str| ProxyProtocolError::V1(why.to_string());
    let text = std::str::from_utf8(line).map_err(|_| bad("not ASCII"))?;
    let text = text.strip_suffix("\r\n").ok_or_else(|| bad("no CRLF"))?;
    let mut parts = text.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(ProxyProtocolError::Missing);
    }
    let proto = parts.next().ok_or_else(|| bad("no protocol"))?;
    if proto == "UNKNOWN" {
        return Ok(ProxyHeader::Local);
    }
    let fields: Vec<&str> = parts.collect();
    if fields.len() != 4 {
        return Err(bad("expected 4 fields after the protocol"));
    }
    let src: IpAddr = fields[0].parse().map_err(|_| bad("bad source address"))?;
    let dst: IpAddr = fields[1]
        .parse()
        .map_err(|_| bad("bad destination address"))?;
    let port = |s: &str| -> Result<u16, ProxyProtocolError> {
        if s.is_empty() || (s.len() > 1 && s.starts_with('0')) {
            return Err(bad("bad port"));
        }
        s.parse::<u16>().map_err(|_| bad("bad port"))
    };
    let (sport, dport) = (port(fields[2])?, port(fields[3])?);
    match (proto, src, dst) {
        ("TCP4", IpAddr::V4(_), IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_), IpAddr::V6(_)) => {
            Ok(ProxyHeader::Proxied {
                source: SocketAddr::new(src, sport),
                destination: SocketAddr::new(dst, dport),
            })
        }
        _ => Err(bad("protocol and address family disagree")),
    }
}

/// Reads one PROXY header (v2, or v1) from the start of `stream`, within
/// `timeout`. Consumes exactly the header bytes.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<ProxyHeader, ProxyProtocolError> {
    match tokio::time::timeout(timeout, read_header_inner(stream)).await {
        Ok(r) => r,
        Err(_) => Err(ProxyProtocolError::Timeout),
    }
}

async fn read_exact<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
) -> Result<(), ProxyProtocolError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ProxyProtocolError::Eof),
        Err(e) => Err(ProxyProtocolError::Io(e.to_string())),
    }
}

async fn read_header_inner<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<ProxyHeader, ProxyProtocolError> {
    // 8 bytes tell v2 ("\r\n\r\n\0\r\nQ") from v1 ("PROXY ") and are shorter
    // than the shortest v1 line ("PROXY UNKNOWN\r\n", 15 bytes).
    let mut start = [0u8; 8];
    read_exact(stream, &mut start).await?;
    if start == V2_SIGNATURE[..8] {
        let mut head = [0u8; 16];
        head[..8].copy_from_slice(&start);
        read_exact(stream, &mut head[8..]).await?;
        if head[..12] != V2_SIGNATURE {
            return Err(ProxyProtocolError::Missing);
        }
        let len = u16::from_be_bytes([head[14], head[15]]) as usize;
        if len > V2_MAX_PAYLOAD {
            return Err(ProxyProtocolError::Length(len));
        }
        let mut payload = vec![0u8; len];
        read_exact(stream, &mut payload).await?;
        return parse_v2(&head, &payload);
    }
    if &start[..6] == b"PROXY " {
        let mut line = start.to_vec();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            if line.len() >= V1_MAX {
                return Err(ProxyProtocolError::V1("longer than 107 bytes".into()));
            }
            read_exact(stream, &mut byte).await?;
            line.push(byte[0]);
        }
        return parse_v1(&line);
    }
    Err(ProxyProtocolError::Missing)
}

/// Encodes a v2 PROXY header for a TCP connection (tests, load generator).
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21); // version 2, PROXY
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        _ => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(source).octets());
            out.extend_from_slice(&v6(destination).octets());
            out.extend_from_slice(&source.port().to_be_bytes());
            out.extend_from_slice(&destination.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    async fn read_all(bytes: &[u8]) -> (Result<ProxyHeader, ProxyProtocolError>, Vec<u8>) {
        let mut cursor = std::io::Cursor::new(bytes.to_vec());
        let r = read_header(&mut cursor, Duration::from_secs(1)).await;
        let pos = cursor.position() as usize;
        (r, bytes[pos..].to_vec())
    }

    #[tokio::test]
    async fn v2_ipv4_round_trip_and_rest_untouched() {
        let mut bytes = encode_v2(sa("203.0.113.7:51000"), sa("198.51.100.1:8443"));
        bytes.extend_from_slice(b"\x16\x03\x01rest");
        let (r, rest) = read_all(&bytes).await;
        assert_eq!(
            r,
            Ok(ProxyHeader::Proxied {
                source: sa("203.0.113.7:51000"),
                destination: sa("198.51.100.1:8443")
            })
        );
        assert_eq!(rest, b"\x16\x03\x01rest");
    }

    #[tokio::test]
    async fn v2_ipv6_and_mapped() {
        let (r, _) = read_all(&encode_v2(
            sa("[2001:db8::5]:4000"),
            sa("[2001:db8::1]:443"),
        ))
        .await;
        assert_eq!(
            r.unwrap().client(sa("10.0.0.1:1")),
            sa("[2001:db8::5]:4000")
        );
        // IPv4-mapped source comes out as IPv4.
        let (r, _) = read_all(&encode_v2(sa("10.9.8.7:1234"), sa("[2001:db8::1]:443"))).await;
        assert_eq!(r.unwrap().client(sa("10.0.0.1:1")), sa("10.9.8.7:1234"));
    }

    #[tokio::test]
    async fn v2_local_and_tlvs() {
        // LOCAL (health check): the peer stays the client.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        let (r, rest) = read_all(&[local.as_slice(), b"GET"].concat()).await;
        assert_eq!(r, Ok(ProxyHeader::Local));
        assert_eq!(rest, b"GET");
        assert_eq!(
            ProxyHeader::Local.client(sa("10.0.0.1:9")),
            sa("10.0.0.1:9")
        );
        // PROXY TCP4 with a TLV (e.g. AWS VPC endpoint id) after the addresses.
        let mut h = encode_v2(sa("192.0.2.1:1"), sa("192.0.2.2:2"));
        let tlv = [0xEA, 0x00, 0x03, b'a', b'b', b'c'];
        let len = 12 + tlv.len() as u16;
        h[14..16].copy_from_slice(&len.to_be_bytes());
        h.extend_from_slice(&tlv);
        h.extend_from_slice(b"X");
        let (r, rest) = read_all(&h).await;
        assert_eq!(r.unwrap().client(sa("10.0.0.1:9")), sa("192.0.2.1:1"));
        assert_eq!(rest, b"X");
    }

    #[tokio::test]
    async fn v2_malformed() {
        let good = encode_v2(sa("192.0.2.1:1"), sa("192.0.2.2:2"));
        // Version 3.
        let mut h = good.clone();
        h[12] = 0x31;
        assert_eq!(read_all(&h).await.0, Err(ProxyProtocolError::Version(3)));
        // Unknown command.
        let mut h = good.clone();
        h[12] = 0x2F;
        assert_eq!(read_all(&h).await.0, Err(ProxyProtocolError::Command(0xF)));
        // INET with a payload too short for two addresses.
        let mut h = good[..16].to_vec();
        h[14..16].copy_from_slice(&4u16.to_be_bytes());
        h.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(read_all(&h).await.0, Err(ProxyProtocolError::Length(4)));
        // Absurd length.
        let mut h = good[..16].to_vec();
        h[14..16].copy_from_slice(&60000u16.to_be_bytes());
        assert_eq!(read_all(&h).await.0, Err(ProxyProtocolError::Length(60000)));
        // Truncated.
        assert_eq!(read_all(&good[..20]).await.0, Err(ProxyProtocolError::Eof));
        // Broken signature after the first 8 bytes.
        let mut h = good.clone();
        h[9] = b'X';
        assert_eq!(read_all(&h).await.0, Err(ProxyProtocolError::Missing));
        // No header at all: a TLS ClientHello or an HTTP request.
        assert_eq!(
            read_all(b"GET / HTTP/1.1\r\n\r\n").await.0,
            Err(ProxyProtocolError::Missing)
        );
        assert_eq!(
            read_all(&[0x16, 3, 1, 0, 200, 1, 0, 0, 196]).await.0,
            Err(ProxyProtocolError::Missing)
        );
    }

    #[tokio::test]
    async fn v1_text() {
        let (r, rest) = read_all(b"PROXY TCP4 203.0.113.9 198.51.100.1 40000 3128\r\nGET /").await;
        assert_eq!(
            r,
            Ok(ProxyHeader::Proxied {
                source: sa("203.0.113.9:40000"),
                destination: sa("198.51.100.1:3128")
            })
        );
        assert_eq!(rest, b"GET /");
        let (r, _) = read_all(b"PROXY TCP6 2001:db8::9 2001:db8::1 40000 443\r\n").await;
        assert_eq!(
            r.unwrap().client(sa("10.0.0.1:9")),
            sa("[2001:db8::9]:40000")
        );
        assert_eq!(
            read_all(b"PROXY UNKNOWN\r\n").await.0,
            Ok(ProxyHeader::Local)
        );
        for bad in [
            &b"PROXY TCP4 203.0.113.9 198.51.100.1 40000\r\n"[..],
            b"PROXY TCP4 2001:db8::9 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        ] {
            assert!(
                matches!(
                    read_all(bad).await.0,
                    Err(ProxyProtocolError::V1(_) | ProxyProtocolError::Eof)
                ),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(
            read_all(&long).await.0,
            Err(ProxyProtocolError::V1(_))
        ));
    }

    #[tokio::test]
    async fn slow_sender_times_out() {
        let (mut client, mut server) = tokio::io::duplex(64);
        use tokio::io::AsyncWriteExt;
        client.write_all(&V2_SIGNATURE[..10]).await.unwrap();
        let r = read_header(&mut server, Duration::from_millis(50)).await;
        assert_eq!(r, Err(ProxyProtocolError::Timeout));
    }
}
