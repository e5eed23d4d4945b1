//! A small TLS ClientHello parser that finds the server name (SNI) in the
//! first bytes a client sends through a tunnel. It copes with a ClientHello
//! split across several TLS records and never panics on garbage.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SniResult {
    /// Not a TLS handshake.
    NotTls,
    /// A ClientHello, not complete yet: feed more bytes.
    NeedMore,
    /// A complete ClientHello without a (host name) server_name extension.
    NoSni,
    /// The host name, lowercased, without a trailing dot.
    Sni(String),
}

/// Parses the start of a client byte stream.
pub fn parse_client_hello(data: &[u8]) -> SniResult {
    // Gather handshake bytes from consecutive handshake records.
    let mut handshake = Vec::new();
    let mut pos = 0;
    loop {
        if data.len() < pos + 5 {
            if pos == 0 && !data.is_empty() && data[0] != 0x16 {
                return SniResult::NotTls;
            }
            return if pos == 0 {
                SniResult::NeedMore
            } else {
                parse_handshake(&handshake, true)
            };
        }
        let (ctype, major, len) = (
            data[pos],
            data[pos + 1],
            u16::from_be_bytes([data[pos + 3], data[pos + 4]]) as usize,
        );
        if ctype != 0x16 || major != 3 || len == 0 || len > 16384 + 2048 {
            return if pos == 0 {
                SniResult::NotTls
            } else {
                parse_handshake(&handshake, false)
            };
        }
        let end = pos + 5 + len;
        let available = &data[pos + 5..end.min(data.len())];
        handshake.extend_from_slice(available);
        if end > data.len() {
            return parse_handshake(&handshake, true);
        }
        match parse_handshake(&handshake, true) {
            SniResult::NeedMore => pos = end,
            done => return done,
        }
    }
}

/// `more`: whether more bytes may still arrive.
fn parse_handshake(h: &[u8], more: bool) -> SniResult {
    let incomplete = if more {
        SniResult::NeedMore
    } else {
        SniResult::NotTls
    };
    if h.is_empty() {
        return incomplete;
    }
    if h[0] != 0x01 {
        return SniResult::NotTls;
    }
    if h.len() < 4 {
        return incomplete;
    }
    let len = (h[1] as usize) << 16 | (h[2] as usize) << 8 | h[3] as usize;
    if len > 1 << 17 {
        return SniResult::NotTls;
    }
    if h.len() < 4 + len {
        return incomplete;
    }
    let body = &h[4..4 + len];
    match client_hello_sni(body) {
        Some(Some(name)) => SniResult::Sni(name),
        Some(None) => SniResult::NoSni,
        None => SniResult::NotTls,
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.data.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(out)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }
}

/// `None`: malformed; `Some(None)`: no SNI.
fn client_hello_sni(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader { data: body, pos: 0 };
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    let sid = r.u8()?;
    r.take(sid)?;
    let suites = r.u16()?;
    r.take(suites)?;
    let comp = r.u8()?;
    r.take(comp)?;
    if r.pos == body.len() {
        return Some(None); // no extensions at all
    }
    let ext_len = r.u16()?;
    let mut exts = Reader {
        data: r.take(ext_len)?,
        pos: 0,
    };
    while exts.pos < exts.data.len() {
        let ty = exts.u16()?;
        let len = exts.u16()?;
        let data = exts.take(len)?;
        if ty == 0 {
            let mut s = Reader { data, pos: 0 };
            let list_len = s.u16()?;
            let mut list = Reader {
                data: s.take(list_len)?,
                pos: 0,
            };
            while list.pos < list.data.len() {
                let name_type = list.u8()?;
                let name_len = list.u16()?;
                let name = list.take(name_len)?;
                if name_type == 0 {
                    let name = std::str::from_utf8(name).ok()?;
                    return Some(Some(name.trim_end_matches('.').to_ascii_lowercase()));
                }
            }
            return Some(None);
        }
    }
    Some(None)
}

/// A minimal but well-formed ClientHello record carrying `sni`: test input
/// for this parser and for the tunnel inspection built on it.
pub fn client_hello(sni: Option<&str>) -> Vec<u8> {
    let mut exts = Vec::new();
    if let Some(name) = sni {
        let n = name.as_bytes();
        let mut sn = Vec::new();
        sn.extend_from_slice(&((n.len() + 3) as u16).to_be_bytes());
        sn.push(0);
        sn.extend_from_slice(&(n.len() as u16).to_be_bytes());
        sn.extend_from_slice(n);
        exts.extend_from_slice(&0u16.to_be_bytes());
        exts.extend_from_slice(&(sn.len() as u16).to_be_bytes());
        exts.extend_from_slice(&sn);
    }
    // supported_versions (TLS 1.3), an unrelated extension before/after.
    exts.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]);
    body.extend_from_slice(&[0x01, 0x00]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sni() {
        let ch = client_hello(Some("Www.Example.COM."));
        assert_eq!(
            parse_client_hello(&ch),
            SniResult::Sni("www.example.com".into())
        );
        assert_eq!(parse_client_hello(&client_hello(None)), SniResult::NoSni);
    }

    #[test]
    fn partial_and_garbage() {
        let ch = client_hello(Some("a.example"));
        for cut in 0..ch.len() {
            assert_eq!(
                parse_client_hello(&ch[..cut]),
                SniResult::NeedMore,
                "cut at {cut}"
            );
        }
        assert_eq!(parse_client_hello(b"GET / HTTP/1.1\r\n"), SniResult::NotTls);
        assert_eq!(
            parse_client_hello(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00"),
            SniResult::NotTls
        );
        // Random bytes never panic.
        let mut x = 0x12345678u32;
        for _ in 0..2000 {
            let mut buf = ch.clone();
            for b in buf.iter_mut().skip(5) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if x % 7 == 0 {
                    *b = x as u8;
                }
            }
            let _ = parse_client_hello(&buf);
        }
    }

    #[test]
    fn client_hello_split_over_two_records() {
        let ch = client_hello(Some("split.example"));
        let hs = &ch[5..];
        let (a, b) = hs.split_at(20);
        let mut two = vec![0x16, 0x03, 0x01];
        two.extend_from_slice(&(a.len() as u16).to_be_bytes());
        two.extend_from_slice(a);
        two.extend_from_slice(&[0x16, 0x03, 0x01]);
        two.extend_from_slice(&(b.len() as u16).to_be_bytes());
        two.extend_from_slice(b);
        assert_eq!(parse_client_hello(&two[..30]), SniResult::NeedMore);
        assert_eq!(
            parse_client_hello(&two),
            SniResult::Sni("split.example".into())
        );
    }
}
