//! Import an existing squidGuard configuration into a komugate policy.
//!
//! Mapping:
//! * `dest NAME { domainlist F; urllist F }` → a category NAME built from
//!   `[[categories.source]] format = "domainlist" | "urllist"` (paths are made
//!   absolute, relative to `dbhome`). `expressionlist`, `log` are not imported
//!   (noted in the output).
//! * `src NAME { ip ... }` → `[[site]] name = NAME` (CIDRs, netmasks and
//!   `a-b` ranges); `src NAME { user ... }` → `[[group]] name = NAME` (the users
//!   must be put in the registry; noted). Sites are kept in `src` order, which
//!   is also squidGuard's first-match order.
//! * `time NAME { weekly DAYS HH:MM-HH:MM }` → rule `days` / `time`.
//! * `acl { SRC [within|outside TIME] { pass ...; redirect URL } [else {..}] default {..} }`
//!   → ordered rules: each pass term becomes a rule for that location
//!   (`!dest` = block, `dest` = allow, `all`/`any` = allow, `none` = block);
//!   a source's acl always ends in a terminating rule, since squidGuard never
//!   falls back to `default` for a source that has an acl. The default acl
//!   becomes location-free rules and `[defaults] action`.
//!   A pass list with no `all`/`none` passes what it does not match (squidGuard's
//!   behaviour). `redirect` becomes the rules' block `message`.

use crate::diag::{Diagnostic, PolicyErrors};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
struct Tok {
    text: String,
    line: usize,
    col: usize,
}

fn tokenize(text: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("");
        let mut cur = String::new();
        let mut start = 0;
        for (ci, ch) in line.chars().enumerate() {
            if ch.is_whitespace() || ch == '{' || ch == '}' {
                if !cur.is_empty() {
                    out.push(Tok {
                        text: std::mem::take(&mut cur),
                        line: n + 1,
                        col: start + 1,
                    });
                }
                if ch == '{' || ch == '}' {
                    out.push(Tok {
                        text: ch.to_string(),
                        line: n + 1,
                        col: ci + 1,
                    });
                }
            } else {
                if cur.is_empty() {
                    start = ci;
                }
                cur.push(ch);
            }
        }
        if !cur.is_empty() {
            out.push(Tok {
                text: cur,
                line: n + 1,
                col: start + 1,
            });
        }
    }
    out
}

/// A `{ ... }` body: statements = tokens sharing a line.
type Body = Vec<Vec<Tok>>;

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    origin: &'a Path,
    errors: Vec<Diagnostic>,
}

impl Parser<'_> {
    fn err(&mut self, t: &Tok, msg: impl Into<String>) {
        self.errors
            .push(Diagnostic::new(self.origin, t.line, t.col, msg));
    }
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    /// Header tokens up to `{` (same statement), then the body.
    fn header_and_body(&mut self, kw: &Tok) -> Option<(Vec<Tok>, Body)> {
        let mut header = Vec::new();
        loop {
            match self.next() {
                Some(t) if t.text == "{" => break,
                Some(t) if t.text == "}" => {
                    self.err(&t, format!("unexpected `}}` in `{}` header", kw.text));
                    return None;
                }
                Some(t) => header.push(t),
                None => {
                    self.err(kw, format!("`{}` block has no `{{`", kw.text));
                    return None;
                }
            }
        }
        let mut body: Body = Vec::new();
        loop {
            match self.next() {
                Some(t) if t.text == "}" => return Some((header, body)),
                Some(t) if t.text == "{" => {
                    self.err(&t, "unexpected `{`");
                    return None;
                }
                Some(t) => match body.last_mut() {
                    Some(stmt) if stmt[0].line == t.line => stmt.push(t),
                    _ => body.push(vec![t]),
                },
                None => {
                    self.err(
                        kw,
                        format!("`{}` block is not closed (missing `}}`)", kw.text),
                    );
                    return None;
                }
            }
        }
    }
}

#[derive(Default)]
struct Src {
    name: String,
    nets: Vec<ipnet::IpNet>,
    users: Vec<String>,
}

#[derive(Default)]
struct Dest {
    name: String,
    domainlists: Vec<PathBuf>,
    urllists: Vec<PathBuf>,
    redirect: Option<String>,
}

#[derive(Clone, Debug)]
enum Term {
    Pass(String),
    Block(String),
    All,
    None,
}

#[derive(Clone, Default)]
struct Branch {
    terms: Vec<Term>,
    redirect: Option<String>,
}

struct AclEntry {
    src: String,
    /// (time name, within?) ; `outside` is converted by swapping branches
    time: Option<String>,
    within: Branch,
    otherwise: Option<Branch>,
}

fn q(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04X}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn parse_ip_spec(s: &str) -> Result<Vec<ipnet::IpNet>, String> {
    if let Some((a, b)) = s.split_once('-') {
        let a: Ipv4Addr = a.parse().map_err(|_| format!("bad IP range `{s}`"))?;
        let b: Ipv4Addr = b.parse().map_err(|_| format!("bad IP range `{s}`"))?;
        if a > b {
            return Err(format!("bad IP range `{s}` (start after end)"));
        }
        return Ok(ipnet::Ipv4Subnets::new(a, b, 0)
            .map(ipnet::IpNet::V4)
            .collect());
    }
    if let Some((a, m)) = s.split_once('/') {
        if m.contains('.') {
            let a: Ipv4Addr = a.parse().map_err(|_| format!("bad IP `{s}`"))?;
            let m: Ipv4Addr = m.parse().map_err(|_| format!("bad netmask in `{s}`"))?;
            let n = ipnet::ipv4_mask_to_prefix(m).map_err(|_| format!("bad netmask in `{s}`"))?;
            let net = ipnet::Ipv4Net::new(a, n).map_err(|e| e.to_string())?;
            return Ok(vec![ipnet::IpNet::V4(net.trunc())]);
        }
        let n: ipnet::IpNet = s.parse().map_err(|_| format!("bad CIDR `{s}`"))?;
        return Ok(vec![n.trunc()]);
    }
    let ip: IpAddr = s.parse().map_err(|_| format!("bad IP `{s}`"))?;
    Ok(vec![ipnet::IpNet::from(ip)])
}

/// squidGuard weekday letters: s m t w h f a (sun..sat), `*` = every day,
/// or names like `mondays`.
fn sg_days(s: &str) -> Option<Vec<&'static str>> {
    if s == "*" {
        return Some(vec!["mon", "tue", "wed", "thu", "fri", "sat", "sun"]);
    }
    let names = [
        ("sun", 's'),
        ("mon", 'm'),
        ("tue", 't'),
        ("wed", 'w'),
        ("thu", 'h'),
        ("fri", 'f'),
        ("sat", 'a'),
    ];
    let lower = s.to_ascii_lowercase();
    let mut out = Vec::new();
    if lower.len() > 3 && names.iter().any(|(n, _)| lower.starts_with(n)) {
        for part in lower.split(',') {
            let (n, _) = names.iter().find(|(n, _)| part.starts_with(n))?;
            out.push(*n);
        }
        return Some(out);
    }
    for ch in lower.chars() {
        let (n, _) = names.iter().find(|(_, c)| *c == ch)?;
        if !out.contains(n) {
            out.push(*n);
        }
    }
    Some(out)
}

/// Converts squidGuard.conf text (`origin` names it in errors and resolves a
/// relative `dbhome`) to komugate policy TOML that `check` accepts.
pub fn import_squidguard(conf_text: &str, origin: &Path) -> Result<String, PolicyErrors> {
    let mut p = Parser {
        toks: tokenize(conf_text),
        pos: 0,
        origin,
        errors: Vec::new(),
    };
    let base = origin.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut dbhome = base.clone();
    let mut notes: Vec<String> = Vec::new();
    let mut srcs: Vec<Src> = Vec::new();
    let mut dests: Vec<Dest> = Vec::new();
    let mut times: HashMap<String, Vec<(Vec<&'static str>, String)>> = HashMap::new();
    let mut acl: Vec<AclEntry> = Vec::new();
    let mut default: Option<Branch> = None;

    while let Some(kw) = p.next() {
        match kw.text.as_str() {
            "dbhome" | "logdir" => {
                let args: Vec<Tok> = {
                    let mut v = Vec::new();
                    while p.peek().is_some_and(|t| t.line == kw.line) {
                        v.extend(p.next());
                    }
                    v
                };
                if kw.text == "dbhome" {
                    match args.first() {
                        Some(a) => dbhome = base.join(&a.text),
                        None => p.err(&kw, "`dbhome` needs a directory"),
                    }
                }
            }
            "time" | "src" | "source" | "dest" | "destination" | "rew" | "rewrite" => {
                let Some((header, body)) = p.header_and_body(&kw) else {
                    break;
                };
                let Some(name) = header.first().map(|t| t.text.clone()) else {
                    p.err(&kw, format!("`{}` needs a name", kw.text));
                    continue;
                };
                if header.len() > 1 {
                    notes.push(format!("line {}: `{} {name} {}` ignored (time-limited sources/destinations are not imported)", kw.line, kw.text, header[1].text));
                }
                match kw.text.as_str() {
                    "time" => {
                        let mut entries = Vec::new();
                        for st in &body {
                            match st[0].text.as_str() {
                                "weekly" if st.len() >= 3 => match sg_days(&st[1].text) {
                                    Some(days) => {
                                        for w in &st[2..] {
                                            match crate::TimeWindow::parse(&w.text) {
                                                Ok(_) => {
                                                    entries.push((days.clone(), w.text.clone()))
                                                }
                                                Err(e) => p.err(w, e),
                                            }
                                        }
                                    }
                                    None => p.err(
                                        &st[1],
                                        format!(
                                            "bad weekdays `{}` (letters smtwhfa or *)",
                                            st[1].text
                                        ),
                                    ),
                                },
                                other => {
                                    notes.push(format!("line {}: time `{name}`: `{other}` entries are not imported", st[0].line));
                                }
                            }
                        }
                        times.insert(name, entries);
                    }
                    "src" | "source" => {
                        let mut s = Src {
                            name: name.clone(),
                            ..Default::default()
                        };
                        for st in &body {
                            match st[0].text.as_str() {
                                "ip" => {
                                    for a in &st[1..] {
                                        match parse_ip_spec(&a.text) {
                                            Ok(v) => s.nets.extend(v),
                                            Err(e) => p.err(a, e),
                                        }
                                    }
                                }
                                "user" => s.users.extend(st[1..].iter().map(|t| t.text.clone())),
                                other => notes.push(format!(
                                    "line {}: src `{name}`: `{other}` is not imported",
                                    st[0].line
                                )),
                            }
                        }
                        srcs.push(s);
                    }
                    "dest" | "destination" => {
                        let mut d = Dest {
                            name: name.clone(),
                            ..Default::default()
                        };
                        for st in &body {
                            let arg = st.get(1).map(|t| t.text.clone());
                            match (st[0].text.as_str(), arg) {
                                ("domainlist", Some(f)) => d.domainlists.push(dbhome.join(f)),
                                ("urllist", Some(f)) => d.urllists.push(dbhome.join(f)),
                                ("redirect", Some(u)) => d.redirect = Some(u),
                                (other, _) => notes.push(format!(
                                    "line {}: dest `{name}`: `{other}` is not imported",
                                    st[0].line
                                )),
                            }
                        }
                        dests.push(d);
                    }
                    _ => notes.push(format!(
                        "line {}: `{}` blocks are not imported",
                        kw.line, kw.text
                    )),
                }
            }
            "acl" => {
                match p.next() {
                    Some(t) if t.text == "{" => {}
                    Some(t) => {
                        p.err(&t, "expected `{` after `acl`");
                        break;
                    }
                    None => break,
                }
                loop {
                    let Some(name) = p.next() else {
                        p.err(&kw, "`acl` block is not closed");
                        break;
                    };
                    if name.text == "}" {
                        break;
                    }
                    let Some((header, body)) = p.header_and_body(&name) else {
                        break;
                    };
                    let branch = parse_branch(&mut p, &body, &dests);
                    let mut otherwise = None;
                    if p.peek().is_some_and(|t| t.text == "else") {
                        let e = p.next().unwrap_or(name.clone());
                        let Some((_, eb)) = p.header_and_body(&e) else {
                            break;
                        };
                        otherwise = Some(parse_branch(&mut p, &eb, &dests));
                    }
                    if name.text == "default" {
                        default = Some(branch);
                        continue;
                    }
                    let (mut within, mut time) = (branch, None);
                    if let Some(h) = header.first() {
                        match (h.text.as_str(), header.get(1)) {
                            (kind @ ("within" | "outside"), Some(t)) => {
                                if !times.contains_key(&t.text) {
                                    p.err(t, format!("unknown time `{}`", t.text));
                                }
                                time = Some(t.text.clone());
                                if kind == "outside" {
                                    // outside T {A} else {B} == within T {B} else {A}
                                    let a = within;
                                    within = otherwise.take().unwrap_or(Branch {
                                        terms: vec![Term::All],
                                        redirect: None,
                                    });
                                    otherwise = Some(a);
                                }
                            }
                            _ => p.err(
                                h,
                                format!(
                                    "unexpected `{}` (expected `within TIME` or `outside TIME`)",
                                    h.text
                                ),
                            ),
                        }
                    }
                    if !srcs.iter().any(|s| s.name == name.text) {
                        p.err(&name, format!("acl for unknown src `{}`", name.text));
                    }
                    acl.push(AclEntry {
                        src: name.text.clone(),
                        time,
                        within,
                        otherwise,
                    });
                }
            }
            _ => {
                p.err(&kw, format!("unknown squidGuard keyword `{}`", kw.text));
                while p.peek().is_some_and(|t| t.line == kw.line) {
                    p.next();
                }
            }
        }
    }
    if !p.errors.is_empty() {
        return Err(PolicyErrors(p.errors));
    }

    // ---- emit
    let mut o = String::new();
    let _ = writeln!(o, "# komugate policy imported from {}", origin.display());
    let _ = writeln!(
        o,
        "# Review the notes below, then `komugate policy check` this file."
    );
    for n in &notes {
        let _ = writeln!(o, "# NOTE: {n}");
    }
    let _ = writeln!(o, "\nversion = 1\ntimezone = \"+09:00\"\n");
    let dflt = default.clone().unwrap_or(Branch {
        terms: vec![Term::All],
        redirect: None,
    });
    let dflt_action = match dflt
        .terms
        .iter()
        .find(|t| matches!(t, Term::All | Term::None))
    {
        Some(Term::None) => "block",
        _ => "allow",
    };
    let _ = writeln!(o, "[defaults]\naction = \"{dflt_action}\"");
    if let Some(r) = &dflt.redirect {
        let _ = writeln!(
            o,
            "message = {}",
            q(&format!("blocked (squidGuard redirect: {r})"))
        );
    }
    o.push('\n');
    for s in &srcs {
        if !s.nets.is_empty() {
            let cidrs: Vec<String> = s.nets.iter().map(|n| q(&n.to_string())).collect();
            let _ = writeln!(
                o,
                "[[site]]\nname = {}\ncidrs = [{}]\n",
                q(&s.name),
                cidrs.join(", ")
            );
        }
    }
    for s in &srcs {
        if !s.users.is_empty() {
            let _ = writeln!(o, "# squidGuard users of src `{}`: {} — add their devices to the registry with this group", s.name, s.users.join(" "));
            let _ = writeln!(o, "[[group]]\nname = {}\n", q(&s.name));
        }
    }
    let mut has_entries: HashMap<&str, bool> = HashMap::new();
    for d in &dests {
        has_entries.insert(&d.name, !d.domainlists.is_empty() || !d.urllists.is_empty());
        for (fmt, files) in [("domainlist", &d.domainlists), ("urllist", &d.urllists)] {
            for f in files {
                let _ = writeln!(
                    o,
                    "[[categories.source]]\nformat = \"{fmt}\"\ncategory = {}\npath = {}\n",
                    q(&d.name),
                    q(&f.to_string_lossy())
                );
            }
        }
    }
    let redirect_of = |b: &Branch, dest: Option<&str>| -> Option<String> {
        dest.and_then(|d| {
            dests
                .iter()
                .find(|x| x.name == d)
                .and_then(|x| x.redirect.clone())
        })
        .or_else(|| b.redirect.clone())
        .or_else(|| dflt.redirect.clone())
    };
    let mut names_used: HashMap<String, usize> = HashMap::new();
    let mut emit_branch =
        |o: &mut String, who: &str, cond: &str, b: &Branch, terminate: bool, label: &str| {
            let mut terminated = false;
            for t in &b.terms {
                let (name, extra, action, dest) = match t {
                    Term::Pass(d) => (
                        format!("{who}: pass {d}"),
                        format!("category = {}\n", q(d)),
                        "allow",
                        Some(d.as_str()),
                    ),
                    Term::Block(d) => (
                        format!("{who}: block {d}"),
                        format!("category = {}\n", q(d)),
                        "block",
                        Some(d.as_str()),
                    ),
                    Term::All => (format!("{who}: pass all"), String::new(), "allow", None),
                    Term::None => (format!("{who}: pass none"), String::new(), "block", None),
                };
                if let Some(d) = dest {
                    if !has_entries.get(d).copied().unwrap_or(false) {
                        continue; // no list entries: never matches in squidGuard either
                    }
                }
                let mut name = format!("{name}{label}");
                let n = names_used.entry(name.clone()).or_insert(0);
                *n += 1;
                if *n > 1 {
                    name = format!("{name} #{n}");
                }
                let _ = write!(
                    o,
                    "[[rule]]\nname = {}\n{cond}{extra}action = \"{action}\"\n",
                    q(&name)
                );
                if action == "block" {
                    if let Some(r) = redirect_of(b, dest) {
                        let _ = writeln!(
                            o,
                            "message = {}",
                            q(&format!("blocked (squidGuard redirect: {r})"))
                        );
                    }
                }
                o.push('\n');
                if dest.is_none() {
                    terminated = true;
                    break;
                }
            }
            if terminate && !terminated {
                let name = format!("{who}: pass (end of list){label}");
                let _ = write!(
                    o,
                    "[[rule]]\nname = {}\n{cond}action = \"allow\"\n\n",
                    q(&name)
                );
            }
        };
    // Source acls in src definition order (squidGuard's first-match order).
    for s in &srcs {
        let Some(e) = acl.iter().find(|e| e.src == s.name) else {
            continue;
        };
        let who = if s.nets.is_empty() {
            format!("group = {}\n", q(&s.name))
        } else {
            format!("location = {}\n", q(&s.name))
        };
        if let Some(tname) = &e.time {
            let windows = times.get(tname).cloned().unwrap_or_default();
            for (k, (days, win)) in windows.iter().enumerate() {
                let dl: Vec<String> = days.iter().map(|d| q(d)).collect();
                let cond = format!("{who}time = {}\ndays = [{}]\n", q(win), dl.join(", "));
                emit_branch(
                    &mut o,
                    &s.name,
                    &cond,
                    &e.within,
                    true,
                    &format!(" (within {tname} {})", k + 1),
                );
            }
            let other = e.otherwise.clone().unwrap_or(Branch {
                terms: vec![Term::None],
                redirect: None,
            });
            emit_branch(&mut o, &s.name, &who, &other, true, " (else)");
        } else {
            emit_branch(&mut o, &s.name, &who, &e.within, true, "");
        }
    }
    emit_branch(&mut o, "default", "", &dflt, false, "");
    Ok(o)
}

fn parse_branch(p: &mut Parser<'_>, body: &Body, dests: &[Dest]) -> Branch {
    let mut b = Branch::default();
    for st in body {
        match st[0].text.as_str() {
            "pass" => {
                for t in &st[1..] {
                    let term = match t.text.as_str() {
                        "all" | "any" => Term::All,
                        "none" | "!any" | "!all" => Term::None,
                        "in-addr" | "!in-addr" => continue,
                        s => {
                            let d = s.strip_prefix('!').unwrap_or(s);
                            if !dests.iter().any(|x| x.name == d) {
                                let names: Vec<&str> =
                                    dests.iter().map(|x| x.name.as_str()).collect();
                                p.err(
                                    t,
                                    format!(
                                        "unknown dest `{d}` in pass list{}",
                                        crate::diag::suggest(d, names)
                                    ),
                                );
                                continue;
                            }
                            if s.starts_with('!') {
                                Term::Block(d.to_string())
                            } else {
                                Term::Pass(d.to_string())
                            }
                        }
                    };
                    b.terms.push(term);
                }
            }
            "redirect" => b.redirect = st.get(1).map(|t| t.text.clone()),
            "rewrite" | "log" | "logfile" => {}
            other => {
                let t = st[0].clone();
                p.err(&t, format!("unknown acl statement `{other}`"));
            }
        }
    }
    b
}
