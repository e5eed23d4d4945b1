//! The compiled rule set: one Aho-Corasick automaton per inspection point
//! and buffer over each rule's fast pattern, then per-rule verification
//! (content positions and modifiers, pcre) of the candidates.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use crate::rule::{
    parse_rule, Action, Buffer, Cond, Content, FlowDir, Proto, Rule, Skip, BUFFER_COUNT,
};

/// A rule that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpsMatch {
    pub sid: u32,
    pub rev: u32,
    pub msg: Arc<str>,
    pub action: Action,
    pub classtype: Option<Arc<str>>,
}

/// Direction of tunnel bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client (laptop) to upstream.
    ToServer,
    /// Upstream to client.
    ToClient,
}

/// Where in the data path a rule is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Phase {
    HttpRequest = 0,
    HttpRequestBody,
    HttpResponseBody,
    TlsSni,
    Dns,
    Stream,
}
const PHASES: usize = 6;

/// The fast patterns of one (phase, buffer): the distinct patterns, each
/// pattern's index, and the rules that use each pattern.
type FastPatterns = (Vec<Vec<u8>>, HashMap<Vec<u8>, usize>, Vec<Vec<u32>>);

/// The HTTP request buffers, built once per request.
#[derive(Debug, Clone, Default)]
pub struct HttpRequestBuffers {
    pub method: Vec<u8>,
    /// Path and query as sent (origin form).
    pub uri: Vec<u8>,
    /// Host without port, lowercase.
    pub host: Vec<u8>,
    pub user_agent: Option<Vec<u8>>,
    /// Every header as `Name: value\r\n`, in order.
    pub headers: Vec<u8>,
    /// Destination port (rule header ports are checked against it).
    pub port: u16,
}

impl HttpRequestBuffers {
    pub fn new(
        method: &http::Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        host: &str,
        port: u16,
    ) -> HttpRequestBuffers {
        let mut raw = Vec::with_capacity(512);
        for (name, value) in headers {
            // Names in their usual wire form (`User-Agent`): HTTP/1.1 clients
            // send them so, and rules are written against that.
            let mut upper = true;
            for b in name.as_str().bytes() {
                raw.push(if upper { b.to_ascii_uppercase() } else { b });
                upper = b == b'-';
            }
            raw.extend_from_slice(b": ");
            raw.extend_from_slice(value.as_bytes());
            raw.extend_from_slice(b"\r\n");
        }
        HttpRequestBuffers {
            method: method.as_str().as_bytes().to_vec(),
            uri: uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
                .as_bytes()
                .to_vec(),
            host: host.to_ascii_lowercase().into_bytes(),
            user_agent: headers
                .get(http::header::USER_AGENT)
                .map(|v| v.as_bytes().to_vec()),
            headers: raw,
            port,
        }
    }
}

/// State of a streamed body scan (request or response): the first `cap`
/// bytes are kept and rescanned as chunks arrive; each sid fires once.
#[derive(Debug, Clone)]
pub struct BodyScan {
    buf: Vec<u8>,
    cap: usize,
    reported: HashSet<u32>,
}

impl BodyScan {
    pub fn new(cap: usize) -> BodyScan {
        BodyScan {
            buf: Vec::new(),
            cap,
            reported: HashSet::new(),
        }
    }
    /// True once `cap` bytes were seen (later chunks are not inspected).
    pub fn is_full(&self) -> bool {
        self.buf.len() >= self.cap
    }
}

/// Skipped rules, by reason.
#[derive(Debug, Clone, Default)]
pub struct SkipStat {
    pub count: usize,
    /// The first few `file:line: sid N: detail` of this reason.
    pub examples: Vec<String>,
}

/// What loading rules files found.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub files: Vec<PathBuf>,
    /// Rule lines seen (comments and blank lines not counted).
    pub rules: usize,
    pub loaded: usize,
    pub skipped: BTreeMap<String, SkipStat>,
    /// Loaded rules per inspection point.
    pub by_inspection_point: BTreeMap<&'static str, usize>,
}

impl LoadReport {
    pub fn skipped_total(&self) -> usize {
        self.skipped.values().map(|s| s.count).sum()
    }

    /// The `komugate ips check` summary.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for f in &self.files {
            out += &format!("file: {}\n", f.display());
        }
        out += &format!(
            "rules: {}  loaded: {}  skipped: {}\n",
            self.rules,
            self.loaded,
            self.skipped_total()
        );
        if !self.by_inspection_point.is_empty() {
            out += "loaded by inspection point:\n";
            for (k, v) in &self.by_inspection_point {
                out += &format!("  {v:>7}  {k}\n");
            }
        }
        if !self.skipped.is_empty() {
            out += "skipped by reason:\n";
            let mut reasons: Vec<_> = self.skipped.iter().collect();
            reasons.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
            for (reason, stat) in reasons {
                out += &format!("  {:>7}  {reason}\n", stat.count);
                for e in &stat.examples {
                    out += &format!("             e.g. {e}\n");
                }
            }
        }
        out
    }

    fn skip(&mut self, skip: &Skip, location: String) {
        let stat = self.skipped.entry(skip.reason.clone()).or_default();
        stat.count += 1;
        if stat.examples.len() < 3 {
            stat.examples.push(if skip.detail.is_empty() {
                location
            } else {
                format!("{location}: {}", skip.detail)
            });
        }
    }
}

struct CompiledRule {
    meta: IpsMatch,
    dir: FlowDir,
    ports: crate::rule::PortSpec,
    /// Conditions grouped by buffer (rule order kept inside a group).
    groups: Vec<(Buffer, Vec<Cond>)>,
}

struct Prefilter {
    buffer: Buffer,
    automaton: AhoCorasick,
    /// Pattern id -> rules whose fast pattern it is.
    rules: Vec<Vec<u32>>,
}

#[derive(Default)]
struct PhaseIndex {
    prefilters: Vec<Prefilter>,
    /// Rules without a positive content: verified on every scan.
    always: Vec<u32>,
    count: usize,
}

/// The compiled IPS rule set. Immutable; cheap to share behind an `Arc`.
pub struct IpsEngine {
    rules: Vec<CompiledRule>,
    phases: [PhaseIndex; PHASES],
}

impl Default for IpsEngine {
    fn default() -> Self {
        IpsEngine::empty()
    }
}

/// Verification steps allowed per rule and scan (bounds backtracking).
const STEP_BUDGET: u32 = 20_000;

impl IpsEngine {
    pub fn empty() -> IpsEngine {
        IpsEngine {
            rules: Vec::new(),
            phases: Default::default(),
        }
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    pub fn has_stream_rules(&self) -> bool {
        self.phases[Phase::Stream as usize].count > 0
    }
    pub fn has_sni_rules(&self) -> bool {
        self.phases[Phase::TlsSni as usize].count > 0
    }
    pub fn has_http_request_rules(&self) -> bool {
        self.phases[Phase::HttpRequest as usize].count > 0
    }
    pub fn has_request_body_rules(&self) -> bool {
        self.phases[Phase::HttpRequestBody as usize].count > 0
    }
    pub fn has_response_body_rules(&self) -> bool {
        self.phases[Phase::HttpResponseBody as usize].count > 0
    }
    pub fn has_dns_rules(&self) -> bool {
        self.phases[Phase::Dns as usize].count > 0
    }

    /// Loads rules files. Unreadable files are errors; unsupported rules
    /// are skipped and counted in the report.
    pub fn load(paths: &[impl AsRef<Path>]) -> anyhow::Result<(IpsEngine, LoadReport)> {
        let mut texts = Vec::new();
        for p in paths {
            let p = p.as_ref();
            let bytes = std::fs::read(p).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read IPS rules file {}: {e} (check [ips] rules)",
                    p.display()
                )
            })?;
            texts.push((
                p.to_path_buf(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
        let refs: Vec<(&Path, &str)> = texts
            .iter()
            .map(|(p, t)| (p.as_path(), t.as_str()))
            .collect();
        IpsEngine::from_texts(&refs)
    }

    /// Compiles rules from in-memory files `(name, text)`.
    pub fn from_texts(files: &[(&Path, &str)]) -> anyhow::Result<(IpsEngine, LoadReport)> {
        let mut report = LoadReport::default();
        let mut rules = Vec::new();
        let mut sids: HashMap<u32, String> = HashMap::new();
        for (path, text) in files {
            report.files.push(path.to_path_buf());
            for (line_no, line) in logical_lines(text) {
                report.rules += 1;
                let location = format!("{}:{line_no}", path.display());
                let parsed = parse_rule(&line).and_then(|r| phase_of(&r).map(|p| (r, p)));
                match parsed {
                    Ok((rule, phase)) => {
                        if let Some(first) = sids.get(&rule.sid) {
                            report.skip(
                                &Skip::new(
                                    "duplicate sid",
                                    format!("sid {} already defined at {first}", rule.sid),
                                ),
                                location,
                            );
                            continue;
                        }
                        sids.insert(rule.sid, location);
                        rules.push((rule, phase));
                    }
                    Err(skip) => {
                        let sid = sid_of(&line)
                            .map(|s| format!(" sid {s}"))
                            .unwrap_or_default();
                        report.skip(&skip, format!("{location}{sid}"));
                    }
                }
            }
        }
        let engine = IpsEngine::compile(rules)?;
        report.loaded = engine.rules.len();
        for (name, phase) in [
            ("http request", Phase::HttpRequest),
            ("http request body", Phase::HttpRequestBody),
            ("http response body", Phase::HttpResponseBody),
            ("tls sni", Phase::TlsSni),
            ("dns", Phase::Dns),
            ("stream (first bytes of tunnels)", Phase::Stream),
        ] {
            let n = engine.phases[phase as usize].count;
            if n > 0 {
                report.by_inspection_point.insert(name, n);
            }
        }
        Ok((engine, report))
    }

    fn compile(rules: Vec<(Rule, Phase)>) -> anyhow::Result<IpsEngine> {
        let mut compiled = Vec::with_capacity(rules.len());
        let mut patterns: BTreeMap<(Phase, Buffer), FastPatterns> = BTreeMap::new();
        let mut phases: [PhaseIndex; PHASES] = Default::default();
        for (rule, phase) in rules {
            let idx = compiled.len() as u32;
            // Fast pattern: the one marked, else the longest positive content.
            let fast = rule
                .conds
                .iter()
                .filter_map(|(b, c)| match c {
                    Cond::Content(c) if !c.negated => Some((*b, c)),
                    _ => None,
                })
                .max_by_key(|(_, c)| (c.fast_pattern, c.pattern.len()));
            match fast {
                Some((buffer, content)) => {
                    let entry = patterns.entry((phase, buffer)).or_default();
                    let pid = match entry.1.get(&content.lower) {
                        Some(&pid) => pid,
                        None => {
                            let pid = entry.0.len();
                            entry.0.push(content.lower.clone());
                            entry.1.insert(content.lower.clone(), pid);
                            entry.2.push(Vec::new());
                            pid
                        }
                    };
                    entry.2[pid].push(idx);
                }
                None => phases[phase as usize].always.push(idx),
            }
            phases[phase as usize].count += 1;
            let mut groups: Vec<(Buffer, Vec<Cond>)> = Vec::new();
            for (buffer, cond) in rule.conds {
                match groups.iter_mut().find(|(b, _)| *b == buffer) {
                    Some((_, list)) => list.push(cond),
                    None => groups.push((buffer, vec![cond])),
                }
            }
            compiled.push(CompiledRule {
                meta: IpsMatch {
                    sid: rule.sid,
                    rev: rule.rev,
                    msg: Arc::from(rule.msg.as_str()),
                    action: rule.action,
                    classtype: rule.classtype.as_deref().map(Arc::from),
                },
                dir: rule.dir,
                ports: rule.server_ports,
                groups,
            });
        }
        for ((phase, buffer), (pats, _, rules)) in patterns {
            let automaton = AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::Standard)
                .build(&pats)
                .map_err(|e| {
                    anyhow::anyhow!("cannot build the IPS automaton for {}: {e}", buffer.name())
                })?;
            phases[phase as usize].prefilters.push(Prefilter {
                buffer,
                automaton,
                rules,
            });
        }
        Ok(IpsEngine {
            rules: compiled,
            phases,
        })
    }

    fn scan(
        &self,
        phase: Phase,
        bufs: &[Option<&[u8]>; BUFFER_COUNT],
        dir: Option<Direction>,
        port: Option<u16>,
    ) -> Vec<IpsMatch> {
        let index = &self.phases[phase as usize];
        if index.count == 0 {
            return Vec::new();
        }
        let mut candidates: Vec<u32> = index.always.clone();
        for pf in &index.prefilters {
            let Some(buf) = bufs[pf.buffer as usize] else {
                continue;
            };
            let mut seen = vec![false; pf.rules.len()];
            for m in pf.automaton.find_overlapping_iter(buf) {
                let pid = m.pattern().as_usize();
                if !seen[pid] {
                    seen[pid] = true;
                    candidates.extend_from_slice(&pf.rules[pid]);
                }
            }
        }
        if candidates.is_empty() {
            return Vec::new();
        }
        candidates.sort_unstable();
        candidates.dedup();
        let mut lower: [Option<Vec<u8>>; BUFFER_COUNT] = Default::default();
        let mut out = Vec::new();
        for idx in candidates {
            let rule = &self.rules[idx as usize];
            if let Some(d) = dir {
                let ok = match rule.dir {
                    FlowDir::Both => true,
                    FlowDir::ToServer => d == Direction::ToServer,
                    FlowDir::ToClient => d == Direction::ToClient,
                };
                if !ok {
                    continue;
                }
            }
            if let Some(p) = port {
                if !rule.ports.matches(p) {
                    continue;
                }
            }
            let all = rule.groups.iter().all(|(buffer, conds)| {
                let Some(buf) = bufs[*buffer as usize] else {
                    return false;
                };
                let mut budget = STEP_BUDGET;
                let lower = &mut lower[*buffer as usize];
                chain(conds, 0, buf, lower, 0, &mut budget)
            });
            if all {
                out.push(rule.meta.clone());
            }
        }
        out
    }

    fn request_bufs(req: &HttpRequestBuffers) -> [Option<&[u8]>; BUFFER_COUNT] {
        let mut bufs: [Option<&[u8]>; BUFFER_COUNT] = [None; BUFFER_COUNT];
        bufs[Buffer::HttpMethod as usize] = Some(&req.method);
        bufs[Buffer::HttpUri as usize] = Some(&req.uri);
        bufs[Buffer::HttpHost as usize] = Some(&req.host);
        bufs[Buffer::HttpUserAgent as usize] = req.user_agent.as_deref();
        bufs[Buffer::HttpHeader as usize] = Some(&req.headers);
        bufs
    }

    /// Request line and headers (no body rules).
    pub fn scan_http_request(&self, req: &HttpRequestBuffers) -> Vec<IpsMatch> {
        self.scan(
            Phase::HttpRequest,
            &Self::request_bufs(req),
            None,
            Some(req.port),
        )
    }

    /// Feeds one request body chunk; returns rules that newly matched.
    pub fn scan_http_request_body_chunk(
        &self,
        req: &HttpRequestBuffers,
        state: &mut BodyScan,
        chunk: &[u8],
    ) -> Vec<IpsMatch> {
        self.scan_body(
            Phase::HttpRequestBody,
            Buffer::HttpRequestBody,
            req,
            state,
            chunk,
        )
    }

    /// Feeds one response body chunk (request buffers give the context);
    /// returns rules that newly matched.
    pub fn scan_http_response_body_chunk(
        &self,
        req: &HttpRequestBuffers,
        state: &mut BodyScan,
        chunk: &[u8],
    ) -> Vec<IpsMatch> {
        self.scan_body(
            Phase::HttpResponseBody,
            Buffer::HttpResponseBody,
            req,
            state,
            chunk,
        )
    }

    fn scan_body(
        &self,
        phase: Phase,
        buffer: Buffer,
        req: &HttpRequestBuffers,
        state: &mut BodyScan,
        chunk: &[u8],
    ) -> Vec<IpsMatch> {
        if self.phases[phase as usize].count == 0 || state.is_full() || chunk.is_empty() {
            return Vec::new();
        }
        let room = state.cap - state.buf.len();
        state.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let mut bufs = Self::request_bufs(req);
        bufs[buffer as usize] = Some(&state.buf);
        let mut found = self.scan(phase, &bufs, None, Some(req.port));
        found.retain(|m| state.reported.insert(m.sid));
        found
    }

    /// The server name of a TLS ClientHello.
    pub fn scan_tls_sni(&self, sni: &str, port: u16) -> Vec<IpsMatch> {
        let mut bufs: [Option<&[u8]>; BUFFER_COUNT] = [None; BUFFER_COUNT];
        bufs[Buffer::TlsSni as usize] = Some(sni.as_bytes());
        self.scan(Phase::TlsSni, &bufs, None, Some(port))
    }

    /// A DNS query name (`dns.query`), and optionally the whole DNS message
    /// for payload rules of `alert dns`.
    pub fn scan_dns_query(&self, name: &str, message: Option<&[u8]>) -> Vec<IpsMatch> {
        let mut bufs: [Option<&[u8]>; BUFFER_COUNT] = [None; BUFFER_COUNT];
        bufs[Buffer::DnsQuery as usize] = Some(name.as_bytes());
        bufs[Buffer::Raw as usize] = message;
        self.scan(Phase::Dns, &bufs, None, None)
    }

    /// The first bytes of one direction of a raw tunnel to `server_port`.
    pub fn scan_stream_prefix(
        &self,
        direction: Direction,
        server_port: u16,
        bytes: &[u8],
    ) -> Vec<IpsMatch> {
        let mut bufs: [Option<&[u8]>; BUFFER_COUNT] = [None; BUFFER_COUNT];
        bufs[Buffer::Raw as usize] = Some(bytes);
        self.scan(Phase::Stream, &bufs, Some(direction), Some(server_port))
    }
}

/// Where a rule is evaluated, from the buffers it uses.
fn phase_of(rule: &Rule) -> Result<Phase, Skip> {
    let mut used = [false; BUFFER_COUNT];
    for (b, _) in &rule.conds {
        used[*b as usize] = true;
    }
    let uses = |b: Buffer| used[b as usize];
    let request = [
        Buffer::HttpUri,
        Buffer::HttpHost,
        Buffer::HttpMethod,
        Buffer::HttpUserAgent,
        Buffer::HttpHeader,
    ];
    let only = |allowed: &[Buffer]| Buffer::ALL.iter().all(|b| !uses(*b) || allowed.contains(b));
    let mixed = || Skip::new("mixes buffers of different inspection points", "");
    if uses(Buffer::HttpResponseBody) {
        let mut allowed = request.to_vec();
        allowed.push(Buffer::HttpResponseBody);
        return if only(&allowed) {
            Ok(Phase::HttpResponseBody)
        } else {
            Err(mixed())
        };
    }
    if request.iter().any(|b| uses(*b)) || uses(Buffer::HttpRequestBody) {
        let mut allowed = request.to_vec();
        allowed.push(Buffer::HttpRequestBody);
        if !only(&allowed) {
            return Err(mixed());
        }
        if rule.dir == FlowDir::ToClient {
            return Err(Skip::new(
                "http response headers are not inspected",
                "request buffers in a to_client rule",
            ));
        }
        return Ok(if uses(Buffer::HttpRequestBody) {
            Phase::HttpRequestBody
        } else {
            Phase::HttpRequest
        });
    }
    if uses(Buffer::TlsSni) {
        return if only(&[Buffer::TlsSni]) {
            Ok(Phase::TlsSni)
        } else {
            Err(mixed())
        };
    }
    if uses(Buffer::DnsQuery) || rule.proto == Proto::Dns {
        return if only(&[Buffer::DnsQuery, Buffer::Raw]) {
            Ok(Phase::Dns)
        } else {
            Err(mixed())
        };
    }
    Ok(Phase::Stream)
}

/// Rule lines with their (first) line number: comments and blank lines
/// dropped, `\` continuations joined.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if current.is_empty() {
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            start = i + 1;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                out.push((start, std::mem::take(&mut current)));
            }
        }
    }
    if !current.is_empty() {
        out.push((start, current));
    }
    out
}

fn sid_of(line: &str) -> Option<u32> {
    let i = line.find("sid:")?;
    let rest = &line[i + 4..];
    let end = rest.find(';').unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// Case-insensitive search support: the buffer lowercased once per scan.
fn lowered<'a>(buf: &[u8], cache: &'a mut Option<Vec<u8>>) -> &'a [u8] {
    cache.get_or_insert_with(|| buf.to_ascii_lowercase())
}

/// Matches `conds[i..]` in `buf` with the previous match ending at `prev_end`,
/// backtracking over earlier occurrences.
fn chain(
    conds: &[Cond],
    i: usize,
    buf: &[u8],
    lower: &mut Option<Vec<u8>>,
    prev_end: usize,
    budget: &mut u32,
) -> bool {
    let Some(cond) = conds.get(i) else {
        return true;
    };
    if *budget == 0 {
        return false;
    }
    *budget -= 1;
    match cond {
        Cond::Content(c) => {
            let (start, limit) = window(c, buf.len(), prev_end);
            if start > limit || limit - start < c.pattern.len() {
                return c.negated && chain(conds, i + 1, buf, lower, prev_end, budget);
            }
            if c.negated {
                let found = find_in(c, buf, lower, start, limit, c.endswith).is_some();
                return !found && chain(conds, i + 1, buf, lower, prev_end, budget);
            }
            let mut from = start;
            while let Some(pos) = find_in(c, buf, lower, from, limit, c.endswith) {
                let end = pos + c.pattern.len();
                if chain(conds, i + 1, buf, lower, end, budget) {
                    return true;
                }
                if *budget == 0 {
                    return false;
                }
                *budget -= 1;
                from = pos + 1;
            }
            false
        }
        Cond::Pcre(p) => {
            let start = if p.relative {
                prev_end.min(buf.len())
            } else {
                0
            };
            // A relative pcre sees the buffer from the previous match on
            // (so `^` anchors there, as in Suricata).
            let hay = &buf[start..];
            if p.negated {
                return !p.regex.is_match(hay) && chain(conds, i + 1, buf, lower, prev_end, budget);
            }
            let mut from = 0;
            while from <= hay.len() {
                let Some(m) = p.regex.find_at(hay, from) else {
                    return false;
                };
                if chain(conds, i + 1, buf, lower, start + m.end(), budget) {
                    return true;
                }
                if *budget == 0 {
                    return false;
                }
                *budget -= 1;
                from = m.start() + 1;
            }
            false
        }
    }
}

/// `[start, limit)`: where a content match must lie.
fn window(c: &Content, len: usize, prev_end: usize) -> (usize, usize) {
    if c.startswith {
        return (0, c.pattern.len().min(len));
    }
    if c.is_relative() {
        let base = prev_end as i64 + c.distance.unwrap_or(0) as i64;
        let start = base.max(0) as usize;
        let limit = match c.within {
            Some(w) => (base + w as i64).clamp(0, len as i64) as usize,
            None => len,
        };
        (start.min(len), limit)
    } else {
        let start = c.offset.unwrap_or(0) as usize;
        let limit = match c.depth {
            Some(d) => start.saturating_add(d as usize).min(len),
            None => len,
        };
        (start.min(len), limit)
    }
}

/// First occurrence of the content starting at or after `from` and ending
/// at or before `limit` (exactly at `limit` when `at_end`).
fn find_in(
    c: &Content,
    buf: &[u8],
    lower: &mut Option<Vec<u8>>,
    from: usize,
    limit: usize,
    at_end: bool,
) -> Option<usize> {
    let n = c.pattern.len();
    if from > limit || limit - from < n {
        return None;
    }
    if at_end {
        if limit != buf.len() {
            return None;
        }
        let pos = limit - n;
        if pos < from {
            return None;
        }
        let hay = &buf[pos..limit];
        let ok = if c.nocase {
            hay.eq_ignore_ascii_case(&c.pattern)
        } else {
            hay == c.pattern.as_slice()
        };
        return ok.then_some(pos);
    }
    if c.nocase {
        let hay = lowered(buf, lower);
        memchr::memmem::find(&hay[from..limit], &c.lower).map(|p| p + from)
    } else {
        memchr::memmem::find(&buf[from..limit], &c.pattern).map(|p| p + from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(rules: &str) -> (IpsEngine, LoadReport) {
        IpsEngine::from_texts(&[(Path::new("test.rules"), rules)]).unwrap()
    }
    fn sids(m: &[IpsMatch]) -> Vec<u32> {
        let mut v: Vec<u32> = m.iter().map(|m| m.sid).collect();
        v.sort();
        v
    }
    fn stream(e: &IpsEngine, bytes: &[u8]) -> Vec<u32> {
        sids(&e.scan_stream_prefix(Direction::ToServer, 9999, bytes))
    }
    fn tcp(opts: &str, sid: u32) -> String {
        format!("alert tcp any any -> any any ({opts} sid:{sid};)\n")
    }

    #[test]
    fn content_modifiers() {
        let rules = [
            tcp(r#"content:"abc";"#, 1),
            tcp(r#"content:"ABC"; nocase;"#, 2),
            tcp(r#"content:"abc"; depth:3;"#, 3),
            tcp(r#"content:"abc"; offset:2;"#, 4),
            tcp(r#"content:"abc"; content:"xyz"; distance:2;"#, 5),
            tcp(r#"content:"abc"; content:"xyz"; distance:0; within:3;"#, 6),
            tcp(r#"content:"abc"; content:!"nope";"#, 7),
            tcp(r#"content:"abc"; startswith;"#, 8),
            tcp(r#"content:"xyz"; endswith;"#, 9),
            tcp(r#"content:"abc"; content:"abc"; distance:0;"#, 10),
        ]
        .concat();
        let (e, report) = engine(&rules);
        assert_eq!(report.loaded, 10, "{}", report.summary());
        assert_eq!(stream(&e, b"abcxyz"), vec![1, 2, 3, 6, 7, 8, 9]);
        assert_eq!(stream(&e, b"ABCxyz"), vec![2, 9]);
        assert_eq!(stream(&e, b"..abc..xyz"), vec![1, 2, 4, 5, 7, 9]);
        assert_eq!(stream(&e, b"abc nope abc"), vec![1, 2, 3, 4, 8, 10]);
        assert_eq!(stream(&e, b"nothing"), Vec::<u32>::new());
    }

    #[test]
    fn relative_matching_backtracks() {
        // The first "id=" is not followed by digits within 2; the second is.
        let (e, _) = engine(&tcp(
            r#"content:"id="; content:"42"; distance:0; within:2;"#,
            1,
        ));
        assert_eq!(stream(&e, b"id=xx&id=42"), vec![1]);
        assert_eq!(stream(&e, b"id=x42"), Vec::<u32>::new());
        let (e, _) = engine(&tcp(r#"content:"a"; pcre:"/^b+c/R";"#, 2));
        assert_eq!(stream(&e, b"axxabbbc"), vec![2]);
        assert_eq!(stream(&e, b"axxa bbc"), Vec::<u32>::new());
    }

    #[test]
    fn pcre_only_and_negated_pcre() {
        let (e, _) = engine(
            &[
                tcp(r#"pcre:"/\d{4}-\d{4}/";"#, 1),
                tcp(r#"content:"user"; pcre:!"/admin/i";"#, 2),
            ]
            .concat(),
        );
        assert_eq!(stream(&e, b"card 1234-5678"), vec![1]);
        assert_eq!(stream(&e, b"user bob"), vec![2]);
        assert_eq!(stream(&e, b"user ADMIN"), Vec::<u32>::new());
    }

    #[test]
    fn direction_and_ports() {
        let rules = "alert tcp $HOME_NET any -> $EXTERNAL_NET 4444 (content:\"hello\"; sid:1;)\n\
                     alert tcp $EXTERNAL_NET 4444 -> $HOME_NET any (content:\"hello\"; sid:2;)\n\
                     alert tcp any any -> any any (content:\"hello\"; flow:to_client; sid:3;)\n";
        let (e, _) = engine(rules);
        assert_eq!(
            sids(&e.scan_stream_prefix(Direction::ToServer, 4444, b"hello")),
            vec![1]
        );
        assert_eq!(
            sids(&e.scan_stream_prefix(Direction::ToServer, 80, b"hello")),
            Vec::<u32>::new()
        );
        assert_eq!(
            sids(&e.scan_stream_prefix(Direction::ToClient, 4444, b"hello")),
            vec![2, 3]
        );
    }

    #[test]
    fn http_buffers() {
        let rules = r#"
alert http $HOME_NET any -> $EXTERNAL_NET any (msg:"uri"; flow:established,to_server; http.uri; content:"/gate.php"; startswith; sid:1;)
drop http $HOME_NET any -> $EXTERNAL_NET any (msg:"ua"; http.user_agent; content:"sqlmap"; nocase; sid:2;)
alert http any any -> any any (msg:"host"; http.host; content:"evil.example"; endswith; sid:3;)
alert http any any -> any any (msg:"method"; http.method; content:"PUT"; sid:4;)
alert http any any -> any any (msg:"header"; http.header; content:"X-Evil|3a 20|1"; sid:5;)
alert http any any -> any any (msg:"legacy"; content:"cmd="; http_uri; content:"POST"; http_method; sid:6;)
alert http any any -> any 8080 (msg:"port"; http.uri; content:"/"; sid:7;)
alert http any any -> any any (msg:"body"; http.request_body; content:"password="; sid:8;)
alert http any any -> any any (msg:"resp"; http.method; content:"GET"; http.response_body; content:"MZ"; startswith; sid:9;)
alert http any any -> any any (msg:"pcre U"; pcre:"/\.exe$/U"; sid:10;)
"#;
        let (e, report) = engine(rules);
        assert_eq!(report.loaded, 10, "{}", report.summary());
        let mut headers = http::HeaderMap::new();
        headers.insert("user-agent", "SQLMap/1.0".parse().unwrap());
        headers.insert("x-evil", "1".parse().unwrap());
        let req = HttpRequestBuffers::new(
            &http::Method::POST,
            &"http://www.evil.example/gate.php?cmd=x".parse().unwrap(),
            &headers,
            "www.evil.example",
            80,
        );
        assert_eq!(sids(&e.scan_http_request(&req)), vec![1, 2, 3, 5, 6]);
        let put = HttpRequestBuffers::new(
            &http::Method::PUT,
            &"/a.exe".parse().unwrap(),
            &http::HeaderMap::new(),
            "h",
            8080,
        );
        assert_eq!(sids(&e.scan_http_request(&put)), vec![4, 7, 10]);
        let mut state = BodyScan::new(64);
        assert!(e
            .scan_http_request_body_chunk(&req, &mut state, b"user=a&pass")
            .is_empty());
        assert_eq!(
            sids(&e.scan_http_request_body_chunk(&req, &mut state, b"word=secret")),
            vec![8]
        );
        // Reported once.
        assert!(e
            .scan_http_request_body_chunk(&req, &mut state, b"password=")
            .is_empty());
        // Beyond the cap nothing is inspected.
        let mut small = BodyScan::new(4);
        assert!(e
            .scan_http_request_body_chunk(&req, &mut small, b"password=")
            .is_empty());
        let get = HttpRequestBuffers::new(
            &http::Method::GET,
            &"/f".parse().unwrap(),
            &http::HeaderMap::new(),
            "h",
            80,
        );
        let mut rs = BodyScan::new(1024);
        assert_eq!(
            sids(&e.scan_http_response_body_chunk(&get, &mut rs, b"MZ\x90\x00")),
            vec![9]
        );
        let mut rs = BodyScan::new(1024);
        assert!(e
            .scan_http_response_body_chunk(&req, &mut rs, b"MZ")
            .is_empty());
    }

    #[test]
    fn sni_and_dns() {
        let rules = r#"
drop tls any any -> any any (msg:"sni"; tls.sni; content:"bad.example"; endswith; nocase; sid:1;)
alert tls any any -> any any (msg:"sni legacy"; tls_sni; content:"tracker"; sid:2;)
drop dns any any -> any any (msg:"dns"; dns.query; content:"evil"; nocase; sid:3;)
alert dns any any -> any any (msg:"dns payload"; content:"|00 10 00 01|"; sid:4;)
"#;
        let (e, report) = engine(rules);
        assert_eq!(report.loaded, 4, "{}", report.summary());
        assert_eq!(sids(&e.scan_tls_sni("www.bad.example", 443)), vec![1]);
        assert_eq!(sids(&e.scan_tls_sni("tracker.ok.example", 443)), vec![2]);
        assert!(e.scan_tls_sni("good.example", 443).is_empty());
        assert_eq!(sids(&e.scan_dns_query("x.EVIL.test", None)), vec![3]);
        assert_eq!(
            sids(&e.scan_dns_query("txt.test", Some(b"\x00\x01..\x00\x10\x00\x01"))),
            vec![4]
        );
        assert!(e
            .scan_stream_prefix(Direction::ToServer, 443, b"bad.example")
            .is_empty());
    }

    #[test]
    fn report_counts_skips_by_reason() {
        let rules = r#"
# a comment
# alert tcp any any -> any any (content:"disabled"; sid:99;)
alert tcp any any -> any any (content:"ok"; sid:1;)
alert udp any any -> any any (content:"x"; sid:2;)
alert udp any any -> any any (content:"x"; sid:3;)
alert tcp any any -> any any (content:"x"; byte_jump:4,0; sid:4;)
alert tcp any any -> any any (content:"dup"; sid:1;)
alert http any any -> any any (http.uri; content:"a"; tls.sni; content:"b"; sid:5;)
alert http any any -> any any (flow:to_client; http.header; content:"Server"; sid:6;)
alert tcp any any -> any any (content:"multi"; \
    sid:7;)
alert tcp any any -> any any (content:"x"
"#;
        let (e, report) = engine(rules);
        assert_eq!(e.rule_count(), 2);
        assert_eq!(report.rules, 9);
        assert_eq!(report.loaded, 2);
        assert_eq!(report.skipped["unsupported protocol udp"].count, 2);
        assert_eq!(report.skipped["unsupported keyword byte_jump"].count, 1);
        assert_eq!(report.skipped["duplicate sid"].count, 1);
        assert_eq!(
            report.skipped["mixes buffers of different inspection points"].count,
            1
        );
        assert_eq!(
            report.skipped["http response headers are not inspected"].count,
            1
        );
        assert_eq!(report.skipped["syntax error"].count, 1);
        let s = report.summary();
        assert!(s.contains("skipped: 7"), "{s}");
        assert!(s.contains("test.rules:5 sid 2"), "{s}");
        assert_eq!(stream(&e, b"multi"), vec![7]);
    }

    #[test]
    fn pathological_input_is_bounded() {
        let (e, _) = engine(&tcp(
            r#"content:"a"; content:"a"; distance:0; content:"a"; distance:0; content:"b"; distance:0;"#,
            1,
        ));
        let data = vec![b'a'; 8192];
        let started = std::time::Instant::now();
        assert!(stream(&e, &data).is_empty());
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}
