//! Parser for the Suricata rule subset komugate supports.
//!
//! A rule is `action proto src sport dir dst dport (options)`. Supported:
//! actions `alert`, `drop` (`reject*` is treated as `drop`); protocols
//! `tcp`, `http`, `tls`, `dns`; `content` (hex `|..|` sections, `!`
//! negation) with `nocase`, `depth`, `offset`, `distance`, `within`,
//! `startswith`, `endswith`, `fast_pattern`; `pcre`; sticky buffers
//! `http.uri`, `http.host`, `http.method`, `http.user_agent`,
//! `http.header`, `http.request_body`, `http.response_body`, `tls.sni`,
//! `dns.query` (and their legacy `http_uri;`-style content modifiers);
//! `msg`, `sid`, `rev`, `classtype`, `flow` direction. Anything else makes
//! the rule [`Skip`]ped with a reason, never a panic.

use std::fmt;

use crate::pcre;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Alert,
    Drop,
}

impl Action {
    pub fn label(self) -> &'static str {
        match self {
            Action::Alert => "alert",
            Action::Drop => "drop",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Http,
    Tls,
    Dns,
}

/// The buffer a content or pcre inspects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Buffer {
    /// The payload itself: the first bytes of a raw tunnel (tcp/http/tls
    /// rules) or the DNS message (dns rules).
    Raw = 0,
    HttpUri,
    HttpHost,
    HttpMethod,
    HttpUserAgent,
    HttpHeader,
    HttpRequestBody,
    HttpResponseBody,
    TlsSni,
    DnsQuery,
}

pub const BUFFER_COUNT: usize = 10;

impl Buffer {
    pub const ALL: [Buffer; BUFFER_COUNT] = [
        Buffer::Raw,
        Buffer::HttpUri,
        Buffer::HttpHost,
        Buffer::HttpMethod,
        Buffer::HttpUserAgent,
        Buffer::HttpHeader,
        Buffer::HttpRequestBody,
        Buffer::HttpResponseBody,
        Buffer::TlsSni,
        Buffer::DnsQuery,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Buffer::Raw => "payload",
            Buffer::HttpUri => "http.uri",
            Buffer::HttpHost => "http.host",
            Buffer::HttpMethod => "http.method",
            Buffer::HttpUserAgent => "http.user_agent",
            Buffer::HttpHeader => "http.header",
            Buffer::HttpRequestBody => "http.request_body",
            Buffer::HttpResponseBody => "http.response_body",
            Buffer::TlsSni => "tls.sni",
            Buffer::DnsQuery => "dns.query",
        }
    }

    /// Sticky buffer keywords (Suricata 5+ names, plus the legacy sticky
    /// `tls_sni` / `dns_query`, and raw variants that komugate does not
    /// normalise anyway).
    fn sticky(keyword: &str) -> Option<Buffer> {
        Some(match keyword {
            "http.uri" | "http.uri.raw" => Buffer::HttpUri,
            "http.host" | "http.host.raw" => Buffer::HttpHost,
            "http.method" => Buffer::HttpMethod,
            "http.user_agent" => Buffer::HttpUserAgent,
            "http.header" | "http.header.raw" => Buffer::HttpHeader,
            "http.request_body" => Buffer::HttpRequestBody,
            "http.response_body" => Buffer::HttpResponseBody,
            "tls.sni" | "tls_sni" => Buffer::TlsSni,
            "dns.query" | "dns_query" => Buffer::DnsQuery,
            "pkt_data" => Buffer::Raw,
            _ => return None,
        })
    }

    /// Legacy content modifiers (`content:"x"; http_uri;`).
    fn legacy_modifier(keyword: &str) -> Option<Buffer> {
        Some(match keyword {
            "http_uri" | "http_raw_uri" => Buffer::HttpUri,
            "http_host" | "http_raw_host" => Buffer::HttpHost,
            "http_method" => Buffer::HttpMethod,
            "http_user_agent" => Buffer::HttpUserAgent,
            "http_header" | "http_raw_header" => Buffer::HttpHeader,
            "http_client_body" => Buffer::HttpRequestBody,
            "http_server_body" => Buffer::HttpResponseBody,
            _ => return None,
        })
    }
}

/// Which side of a connection a rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowDir {
    /// Client to server (laptop to upstream).
    ToServer,
    /// Server to client.
    ToClient,
    Both,
}

/// A port set from a rule header. Variables (`$HTTP_PORTS`) match any port:
/// komugate has no variable table, and it sees the real destination port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSpec {
    any: bool,
    include: Vec<(u16, u16)>,
    exclude: Vec<(u16, u16)>,
}

impl PortSpec {
    pub fn any() -> PortSpec {
        PortSpec {
            any: true,
            ..Default::default()
        }
    }

    pub fn is_any(&self) -> bool {
        self.any && self.exclude.is_empty()
    }

    pub fn matches(&self, port: u16) -> bool {
        let inside = |r: &(u16, u16)| r.0 <= port && port <= r.1;
        (self.any || self.include.iter().any(inside)) && !self.exclude.iter().any(inside)
    }

    fn parse(s: &str) -> Result<PortSpec, String> {
        let mut spec = PortSpec::default();
        spec.add(s.trim(), false)?;
        if spec.include.is_empty() && !spec.any {
            // Only negations (`!80`): everything else.
            spec.any = true;
        }
        Ok(spec)
    }

    fn add(&mut self, s: &str, negated: bool) -> Result<(), String> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix('!') {
            return self.add(rest, !negated);
        }
        if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            for item in split_top_level(inner, ',') {
                self.add(item, negated)?;
            }
            return Ok(());
        }
        if s == "any" || s.starts_with('$') {
            if !negated {
                self.any = true;
            }
            return Ok(());
        }
        let range = match s.split_once(':') {
            Some((a, b)) => (
                if a.trim().is_empty() {
                    0
                } else {
                    parse_port(a)?
                },
                if b.trim().is_empty() {
                    65535
                } else {
                    parse_port(b)?
                },
            ),
            None => {
                let p = parse_port(s)?;
                (p, p)
            }
        };
        if negated {
            self.exclude.push(range);
        } else {
            self.include.push(range);
        }
        Ok(())
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    s.trim()
        .parse::<u16>()
        .map_err(|_| format!("invalid port {:?}", s.trim()))
}

/// Splits at `sep` outside brackets.
fn split_top_level(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            c if c == sep && depth == 0 => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

#[derive(Debug, Clone)]
pub struct Content {
    pub pattern: Vec<u8>,
    /// ASCII-lowercased pattern (prefilter and `nocase` search).
    pub lower: Vec<u8>,
    pub nocase: bool,
    pub negated: bool,
    pub offset: Option<u32>,
    pub depth: Option<u32>,
    pub distance: Option<i32>,
    pub within: Option<u32>,
    pub startswith: bool,
    pub endswith: bool,
    pub fast_pattern: bool,
}

impl Content {
    pub fn is_relative(&self) -> bool {
        self.distance.is_some() || self.within.is_some()
    }
}

#[derive(Debug, Clone)]
pub struct Pcre {
    pub regex: regex::bytes::Regex,
    pub source: String,
    pub negated: bool,
    pub relative: bool,
}

#[derive(Debug, Clone)]
pub enum Cond {
    Content(Content),
    Pcre(Pcre),
}

/// One parsed rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub action: Action,
    pub proto: Proto,
    pub dir: FlowDir,
    /// Destination (server) ports for to-server rules, source ports for
    /// to-client rules.
    pub server_ports: PortSpec,
    pub msg: String,
    pub sid: u32,
    pub rev: u32,
    pub classtype: Option<String>,
    /// Conditions in rule order, each with the buffer it inspects.
    pub conds: Vec<(Buffer, Cond)>,
}

/// Why a rule was not loaded. `reason()` is the counted key (stable,
/// short); `detail` says more for the one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub reason: String,
    pub detail: String,
}

impl Skip {
    pub fn new(reason: impl Into<String>, detail: impl Into<String>) -> Skip {
        Skip {
            reason: reason.into(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.reason, self.detail)
        }
    }
}

/// Keywords that do not change what matches (documentation, scoring,
/// alert rate limiting): accepted and ignored.
const IGNORED_KEYWORDS: &[&str] = &[
    "reference",
    "metadata",
    "priority",
    "gid",
    "target",
    "threshold",
    "rawbytes",
    "tag",
];

/// Parses one rule line (continuations already joined, comments removed).
pub fn parse_rule(line: &str) -> Result<Rule, Skip> {
    let line = line.trim();
    let open = line
        .find('(')
        .ok_or_else(|| Skip::new("syntax error", "no '(' starting the options"))?;
    let close = line
        .rfind(')')
        .ok_or_else(|| Skip::new("syntax error", "no ')' ending the options"))?;
    if close < open {
        return Err(Skip::new("syntax error", "')' before '('"));
    }
    if !line[close + 1..].trim().is_empty() {
        return Err(Skip::new("syntax error", "text after the closing ')'"));
    }
    let header: Vec<&str> = line[..open].split_whitespace().collect();
    if header.len() != 7 {
        return Err(Skip::new(
            "syntax error",
            format!(
                "header needs 7 fields (action proto src sport -> dst dport), found {}",
                header.len()
            ),
        ));
    }
    let action = match header[0] {
        "alert" => Action::Alert,
        "drop" | "reject" | "rejectsrc" | "rejectdst" | "rejectboth" => Action::Drop,
        other => return Err(Skip::new(format!("unsupported action {other}"), "")),
    };
    let proto = match header[1] {
        "tcp" | "tcp-pkt" | "tcp-stream" => Proto::Tcp,
        "http" | "http1" | "http2" => Proto::Http,
        "tls" => Proto::Tls,
        "dns" => Proto::Dns,
        other => return Err(Skip::new(format!("unsupported protocol {other}"), "")),
    };
    let (src, sport, arrow, dst, dport) = (header[2], header[3], header[4], header[5], header[6]);
    let mut dir = match arrow {
        "->" => {
            let home = |s: &str| s.trim_start_matches('[').starts_with("$HOME_NET");
            let external =
                |s: &str| s.trim_start_matches('[').starts_with("$EXTERNAL_NET") || s == "any";
            if home(src) && external(dst) {
                FlowDir::ToServer
            } else if external(src) && home(dst) && src != "any" {
                FlowDir::ToClient
            } else {
                FlowDir::Both
            }
        }
        "<>" => FlowDir::Both,
        other => {
            return Err(Skip::new(
                "syntax error",
                format!("direction must be -> or <>, found {other:?}"),
            ))
        }
    };
    let sport = PortSpec::parse(sport)
        .map_err(|e| Skip::new("syntax error", format!("source port: {e}")))?;
    let dport = PortSpec::parse(dport)
        .map_err(|e| Skip::new("syntax error", format!("destination port: {e}")))?;

    let mut msg = String::new();
    let mut sid = None;
    let mut rev = 1;
    let mut classtype = None;
    let mut conds: Vec<(Buffer, Cond)> = Vec::new();
    let mut sticky = Buffer::Raw;
    let mut flow_dir = None;

    for opt in split_options(&line[open + 1..close])? {
        let (key, value) = match opt.find(':') {
            Some(i) => (opt[..i].trim(), Some(opt[i + 1..].trim())),
            None => (opt.trim(), None),
        };
        if key.is_empty() {
            continue;
        }
        let need = |what: &str| {
            value.ok_or_else(|| Skip::new("syntax error", format!("{what} needs a value")))
        };
        match key {
            "msg" => msg = unquote(need("msg")?)?,
            "sid" => {
                sid = Some(
                    need("sid")?
                        .parse::<u32>()
                        .map_err(|_| Skip::new("syntax error", "sid is not a number"))?,
                )
            }
            "rev" => {
                rev = need("rev")?
                    .parse::<u32>()
                    .map_err(|_| Skip::new("syntax error", "rev is not a number"))?
            }
            "classtype" => classtype = Some(need("classtype")?.to_string()),
            "flow" => {
                for part in need("flow")?.split(',') {
                    match part.trim() {
                        "to_server" | "from_client" => flow_dir = Some(FlowDir::ToServer),
                        "to_client" | "from_server" => flow_dir = Some(FlowDir::ToClient),
                        "established" | "not_established" | "stateless" | "no_stream"
                        | "only_stream" => {}
                        other => {
                            return Err(Skip::new(format!("unsupported flow option {other}"), ""))
                        }
                    }
                }
            }
            "content" => {
                let v = need("content")?;
                let (negated, v) = match v.strip_prefix('!') {
                    Some(rest) => (true, rest.trim()),
                    None => (false, v),
                };
                let pattern = parse_content(v)?;
                if pattern.is_empty() {
                    return Err(Skip::new("syntax error", "empty content"));
                }
                let lower = pattern.to_ascii_lowercase();
                conds.push((
                    sticky,
                    Cond::Content(Content {
                        pattern,
                        lower,
                        nocase: false,
                        negated,
                        offset: None,
                        depth: None,
                        distance: None,
                        within: None,
                        startswith: false,
                        endswith: false,
                        fast_pattern: false,
                    }),
                ));
            }
            "nocase" | "depth" | "offset" | "distance" | "within" | "startswith" | "endswith"
            | "fast_pattern" => {
                let content = conds
                    .iter_mut()
                    .rev()
                    .find_map(|(_, c)| {
                        if let Cond::Content(c) = c {
                            Some(c)
                        } else {
                            None
                        }
                    })
                    .ok_or_else(|| {
                        Skip::new("syntax error", format!("{key} without a preceding content"))
                    })?;
                let num = |v: Option<&str>| -> Result<i64, Skip> {
                    let v =
                        v.ok_or_else(|| Skip::new("syntax error", format!("{key} needs a value")))?;
                    v.trim().parse::<i64>().map_err(|_| {
                        if v.trim()
                            .chars()
                            .next()
                            .is_some_and(|c| c.is_ascii_alphabetic())
                        {
                            Skip::new(format!("unsupported {key} variable"), v.trim().to_string())
                        } else {
                            Skip::new("syntax error", format!("{key}: {v:?} is not a number"))
                        }
                    })
                };
                let unsigned = |n: i64| -> Result<u32, Skip> {
                    u32::try_from(n).map_err(|_| {
                        Skip::new(
                            "syntax error",
                            format!("{key} must be between 0 and 4294967295"),
                        )
                    })
                };
                match key {
                    "nocase" => content.nocase = true,
                    "depth" => content.depth = Some(unsigned(num(value)?)?),
                    "offset" => content.offset = Some(unsigned(num(value)?)?),
                    "distance" => {
                        content.distance = Some(
                            i32::try_from(num(value)?)
                                .map_err(|_| Skip::new("syntax error", "distance out of range"))?,
                        )
                    }
                    "within" => content.within = Some(unsigned(num(value)?)?),
                    "startswith" => content.startswith = true,
                    "endswith" => content.endswith = true,
                    _ => content.fast_pattern = true,
                }
                if content.depth == Some(0) || content.within == Some(0) {
                    return Err(Skip::new(
                        "syntax error",
                        format!("{key} of 0 can never match"),
                    ));
                }
            }
            "pcre" => {
                let v = need("pcre")?;
                let (negated, v) = match v.strip_prefix('!') {
                    Some(rest) => (true, rest.trim()),
                    None => (false, v),
                };
                let inner = v
                    .strip_prefix('"')
                    .and_then(|r| r.strip_suffix('"'))
                    .ok_or_else(|| Skip::new("syntax error", "pcre value must be quoted"))?;
                let translated = pcre::translate(inner)?;
                let buffer = translated.buffer.unwrap_or(sticky);
                conds.push((
                    buffer,
                    Cond::Pcre(Pcre {
                        regex: translated.regex,
                        source: inner.to_string(),
                        negated,
                        relative: translated.relative,
                    }),
                ));
            }
            "file_data" | "file.data" => {
                sticky = if flow_dir == Some(FlowDir::ToServer) {
                    Buffer::HttpRequestBody
                } else {
                    Buffer::HttpResponseBody
                };
            }
            k if Buffer::sticky(k).is_some() && value.is_none() => {
                sticky = Buffer::sticky(k).unwrap_or(Buffer::Raw)
            }
            k if Buffer::legacy_modifier(k).is_some() && value.is_none() => {
                let buffer = Buffer::legacy_modifier(k).unwrap_or(Buffer::Raw);
                match conds
                    .iter_mut()
                    .rev()
                    .find(|(_, c)| matches!(c, Cond::Content(_)))
                {
                    Some((b, _)) => *b = buffer,
                    None => {
                        return Err(Skip::new(
                            "syntax error",
                            format!("{k} without a preceding content"),
                        ))
                    }
                }
            }
            k if IGNORED_KEYWORDS.contains(&k) => {}
            "flowbits" | "xbits" => {
                return Err(Skip::new(
                    format!("unsupported keyword {key}"),
                    "flow state is not tracked",
                ))
            }
            other => return Err(Skip::new(format!("unsupported keyword {other}"), "")),
        }
    }
    let sid = sid.ok_or_else(|| Skip::new("missing sid", ""))?;
    if conds.is_empty() {
        return Err(Skip::new(
            "no content or pcre",
            "a rule must inspect some bytes",
        ));
    }
    if let Some(d) = flow_dir {
        dir = d;
    }
    let server_ports = match dir {
        FlowDir::ToServer => dport,
        FlowDir::ToClient => sport,
        // Either side may be the server: require the port spec that is
        // not `any` (or both any).
        FlowDir::Both => {
            if dport.is_any() {
                sport
            } else {
                dport
            }
        }
    };
    Ok(Rule {
        action,
        proto,
        dir,
        server_ports,
        msg,
        sid,
        rev,
        classtype,
        conds,
    })
}

/// Splits the option text at `;` outside double quotes (backslash escapes
/// `\;` and `\"` are kept for the value parsers).
fn split_options(s: &str) -> Result<Vec<&str>, Skip> {
    let mut out = Vec::new();
    let mut in_quotes = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '"' => in_quotes = !in_quotes,
            ';' if !in_quotes => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_quotes {
        return Err(Skip::new("syntax error", "unterminated quoted value"));
    }
    let rest = s[start..].trim();
    if !rest.is_empty() {
        out.push(rest);
    }
    Ok(out)
}

/// Removes surrounding quotes and the `\"`, `\;`, `\\` escapes.
fn unquote(v: &str) -> Result<String, Skip> {
    let inner = v
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(v);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n) => out.push(n),
                None => return Err(Skip::new("syntax error", "value ends with a backslash")),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// A content string: `"text|0D 0A|more"`, with `\"`, `\;`, `\\`, `\:`
/// escapes outside hex sections.
pub fn parse_content(v: &str) -> Result<Vec<u8>, Skip> {
    let inner = v
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .ok_or_else(|| Skip::new("syntax error", "content value must be quoted"))?;
    let bytes = inner.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let mut in_hex = false;
    let mut hex_digit: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        if in_hex {
            match b {
                b'|' => {
                    if hex_digit.is_some() {
                        return Err(Skip::new(
                            "syntax error",
                            "odd number of hex digits in content",
                        ));
                    }
                    in_hex = false;
                }
                b' ' | b'\t' => {}
                _ => {
                    let d = (b as char).to_digit(16).ok_or_else(|| {
                        Skip::new(
                            "syntax error",
                            format!("invalid hex digit {:?} in content", b as char),
                        )
                    })? as u8;
                    match hex_digit.take() {
                        Some(h) => out.push(h << 4 | d),
                        None => hex_digit = Some(d),
                    }
                }
            }
        } else {
            match b {
                b'|' => in_hex = true,
                b'\\' => {
                    i += 1;
                    match bytes.get(i) {
                        Some(&n) => out.push(n),
                        None => {
                            return Err(Skip::new("syntax error", "content ends with a backslash"))
                        }
                    }
                }
                _ => out.push(b),
            }
        }
        i += 1;
    }
    if in_hex {
        return Err(Skip::new(
            "syntax error",
            "unterminated |hex| section in content",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(opts: &str) -> Result<Rule, Skip> {
        parse_rule(&format!(
            "alert http $HOME_NET any -> $EXTERNAL_NET any ({opts})"
        ))
    }

    fn contents(r: &Rule) -> Vec<(Buffer, &Content)> {
        r.conds
            .iter()
            .filter_map(|(b, c)| {
                if let Cond::Content(c) = c {
                    Some((*b, c))
                } else {
                    None
                }
            })
            .collect()
    }

    #[test]
    fn header_and_meta() {
        let r = parse_rule(
            r#"drop tcp $HOME_NET any -> $EXTERNAL_NET [4444,5555:5560] (msg:"ET TROJAN test \"x\"\; y"; flow:established,to_server; content:"abc"; classtype:trojan-activity; sid:2000001; rev:3; metadata:created_at 2020;)"#,
        )
        .unwrap();
        assert_eq!(r.action, Action::Drop);
        assert_eq!(r.proto, Proto::Tcp);
        assert_eq!(r.dir, FlowDir::ToServer);
        assert_eq!(r.msg, "ET TROJAN test \"x\"; y");
        assert_eq!((r.sid, r.rev), (2000001, 3));
        assert_eq!(r.classtype.as_deref(), Some("trojan-activity"));
        assert!(
            r.server_ports.matches(4444)
                && r.server_ports.matches(5558)
                && !r.server_ports.matches(80)
        );
    }

    #[test]
    fn ports() {
        let p = PortSpec::parse("!80").unwrap();
        assert!(!p.matches(80) && p.matches(81));
        let p = PortSpec::parse("[1024:,!8080]").unwrap();
        assert!(p.matches(1024) && !p.matches(8080) && !p.matches(80));
        let p = PortSpec::parse("$HTTP_PORTS").unwrap();
        assert!(p.matches(1));
        assert!(PortSpec::parse("x").is_err());
    }

    #[test]
    fn direction_from_addresses_and_flow() {
        let r =
            parse_rule(r#"alert tcp $EXTERNAL_NET 4444 -> $HOME_NET any (content:"x"; sid:1;)"#)
                .unwrap();
        assert_eq!(r.dir, FlowDir::ToClient);
        assert!(r.server_ports.matches(4444) && !r.server_ports.matches(80));
        let r = parse_rule(r#"alert tcp any any -> any any (content:"x"; flow:to_client; sid:1;)"#)
            .unwrap();
        assert_eq!(r.dir, FlowDir::ToClient);
        let r = parse_rule(r#"alert tcp any any <> any 23 (content:"x"; sid:1;)"#).unwrap();
        assert_eq!(r.dir, FlowDir::Both);
        assert!(r.server_ports.matches(23) && !r.server_ports.matches(22));
    }

    #[test]
    fn content_hex_escapes_and_modifiers() {
        let r = rule(r#"content:"GET|20 2f|a\;b\"c\\"; nocase; depth:10; offset:2; content:!"zz"; distance:-1; within:5; fast_pattern; sid:7;"#).unwrap();
        let c = contents(&r);
        assert_eq!(c[0].1.pattern, b"GET /a;b\"c\\");
        assert!(c[0].1.nocase && !c[0].1.negated);
        assert_eq!((c[0].1.depth, c[0].1.offset), (Some(10), Some(2)));
        assert!(c[1].1.negated && c[1].1.fast_pattern);
        assert_eq!((c[1].1.distance, c[1].1.within), (Some(-1), Some(5)));
        assert!(c[1].1.is_relative() && !c[0].1.is_relative());
    }

    #[test]
    fn sticky_buffers_and_legacy_modifiers() {
        let r = rule(r#"http.method; content:"POST"; http.uri; content:"/gate.php"; content:"id="; distance:0; http.user_agent; content:"curl"; startswith; http.host; content:"evil"; http.header; content:"X-A"; http.request_body; content:"pw"; http.response_body; content:"ok"; endswith; sid:8;"#).unwrap();
        let bufs: Vec<Buffer> = contents(&r).iter().map(|(b, _)| *b).collect();
        assert_eq!(
            bufs,
            vec![
                Buffer::HttpMethod,
                Buffer::HttpUri,
                Buffer::HttpUri,
                Buffer::HttpUserAgent,
                Buffer::HttpHost,
                Buffer::HttpHeader,
                Buffer::HttpRequestBody,
                Buffer::HttpResponseBody
            ]
        );
        let r = rule(r#"content:"/x"; http_uri; content:"POST"; http_method; content:"raw"; content:"b"; http_client_body; content:"h"; http_header; sid:9;"#).unwrap();
        let bufs: Vec<Buffer> = contents(&r).iter().map(|(b, _)| *b).collect();
        assert_eq!(
            bufs,
            vec![
                Buffer::HttpUri,
                Buffer::HttpMethod,
                Buffer::Raw,
                Buffer::HttpRequestBody,
                Buffer::HttpHeader
            ]
        );
        let r = parse_rule(
            r#"alert tls any any -> any any (tls.sni; content:"bad.example"; endswith; sid:10;)"#,
        )
        .unwrap();
        assert_eq!(contents(&r)[0].0, Buffer::TlsSni);
        let r = parse_rule(
            r#"alert dns any any -> any any (dns_query; content:"evil"; nocase; sid:11;)"#,
        )
        .unwrap();
        assert_eq!(contents(&r)[0].0, Buffer::DnsQuery);
        let r = rule(r#"flow:to_client; file_data; content:"MZ"; sid:12;"#).unwrap();
        assert_eq!(contents(&r)[0].0, Buffer::HttpResponseBody);
    }

    #[test]
    fn pcre_buffer_flags() {
        let r = rule(r#"pcre:"/^\/gate\.php\?id=\d+/Ui"; sid:13;"#).unwrap();
        let (b, c) = &r.conds[0];
        assert_eq!(*b, Buffer::HttpUri);
        let Cond::Pcre(p) = c else { panic!() };
        assert!(p.regex.is_match(b"/GATE.php?id=12"));
    }

    #[test]
    fn skipped_reasons() {
        let reason = |line: &str| parse_rule(line).unwrap_err().reason;
        assert_eq!(
            reason(r#"alert udp any any -> any 53 (content:"x"; sid:1;)"#),
            "unsupported protocol udp"
        );
        assert_eq!(
            reason(r#"pass tcp any any -> any any (content:"x"; sid:1;)"#),
            "unsupported action pass"
        );
        assert_eq!(
            reason(r#"alert tcp any any -> any any (content:"x"; byte_test:1,>,2,0; sid:1;)"#),
            "unsupported keyword byte_test"
        );
        assert_eq!(
            reason(r#"alert tcp any any -> any any (content:"x"; flowbits:set,a; sid:1;)"#),
            "unsupported keyword flowbits"
        );
        assert_eq!(
            reason(r#"alert tcp any any -> any any (content:"x";)"#),
            "missing sid"
        );
        assert_eq!(
            reason(r#"alert tcp any any -> any any (dsize:>10; sid:1;)"#),
            "unsupported keyword dsize"
        );
        assert_eq!(
            reason(r#"alert tcp any any -> any any (msg:"x"; sid:1;)"#),
            "no content or pcre"
        );
        assert_eq!(
            reason(r#"alert tcp any any -> any any (content:"|4"; sid:1;)"#),
            "syntax error"
        );
        assert_eq!(
            reason(r#"alert tcp any any -> any any (content:"x"; sid:1;"#),
            "syntax error"
        );
        assert_eq!(
            reason(r#"alert tcp any any any any (content:"x"; sid:1;)"#),
            "syntax error"
        );
        assert_eq!(
            reason(r#"alert tcp any any -> any any (nocase; sid:1;)"#),
            "syntax error"
        );
        assert_eq!(
            reason(
                r#"alert tcp any any -> any any (content:"x"; http.cookie; content:"y"; sid:1;)"#
            ),
            "unsupported keyword http.cookie"
        );
        assert_eq!(
            reason(r#"alert tcp any any -> any any (content:"x"; distance:foo; sid:1;)"#),
            "unsupported distance variable"
        );
        assert_eq!(
            reason(r#"alert tcp any any -> any any (pcre:"/(?=a)b/"; sid:1;)"#),
            "pcre lookaround"
        );
        assert_eq!(
            reason(r#"alert tcp any any -> any any (content:"x"; flow:only_frag; sid:1;)"#),
            "unsupported flow option only_frag"
        );
    }
}
