//! Translation of Suricata `pcre:"/pattern/flags"` to the `regex` crate
//! (bytes mode, Unicode off, so `.` and `\xNN` work on raw bytes).
//!
//! The `regex` crate guarantees linear-time matching, so PCRE features that
//! need backtracking are rejected with a counted reason: lookaround,
//! backreferences, atomic groups, possessive quantifiers, recursion,
//! conditionals. Flags: `i s m x` become inline flags, `G` is `(?U)`, `A`
//! anchors at the buffer start, `R` is relative to the previous match, the
//! buffer flags `U H M P Q W V I D` select the buffer; `B O E` are ignored;
//! other buffer flags (cookie, status) are unsupported.

use crate::rule::{Buffer, Skip};

pub struct Translated {
    pub regex: regex::bytes::Regex,
    pub buffer: Option<Buffer>,
    pub relative: bool,
}

fn unsupported(what: &str, detail: impl Into<String>) -> Skip {
    Skip::new(format!("pcre {what}"), detail)
}

/// `inner` is the text between the quotes of `pcre:"..."`.
pub fn translate(inner: &str) -> Result<Translated, Skip> {
    let body = inner
        .strip_prefix('/')
        .ok_or_else(|| Skip::new("syntax error", "pcre must look like \"/pattern/flags\""))?;
    let end = body
        .rfind('/')
        .ok_or_else(|| Skip::new("syntax error", "pcre has no closing '/'"))?;
    let (pattern, flags) = (&body[..end], &body[end + 1..]);
    let mut flags_on = String::new();
    let mut anchored = false;
    let mut relative = false;
    let mut buffer = None;
    for f in flags.chars() {
        match f {
            'i' | 's' | 'm' | 'x' => flags_on.push(f),
            'G' => flags_on.push('U'),
            'A' => anchored = true,
            'R' => relative = true,
            'U' | 'I' => buffer = Some(Buffer::HttpUri),
            'H' | 'D' => buffer = Some(Buffer::HttpHeader),
            'M' => buffer = Some(Buffer::HttpMethod),
            'P' => buffer = Some(Buffer::HttpRequestBody),
            'Q' => buffer = Some(Buffer::HttpResponseBody),
            'W' => buffer = Some(Buffer::HttpHost),
            'V' => buffer = Some(Buffer::HttpUserAgent),
            'B' | 'O' | 'E' => {}
            other => return Err(unsupported(&format!("flag {other}"), "")),
        }
    }
    // Inline flags on, Unicode off: `(?is-u)`.
    let prefix = format!("(?{flags_on}-u)");
    let body = translate_pattern(pattern)?;
    let full = if anchored {
        format!("{prefix}\\A(?:{body})")
    } else {
        format!("{prefix}{body}")
    };
    let regex = regex::bytes::RegexBuilder::new(&full)
        .unicode(false)
        .size_limit(4 << 20)
        .dfa_size_limit(4 << 20)
        .build()
        .map_err(|e| {
            let msg = e.to_string();
            if msg.contains("exceeds size limit") {
                unsupported("too large", "")
            } else {
                unsupported(
                    "compile error",
                    msg.lines().last().unwrap_or("").trim().to_string(),
                )
            }
        })?;
    Ok(Translated {
        regex,
        buffer,
        relative,
    })
}

/// Rewrites PCRE syntax into `regex` syntax, rejecting what it cannot express.
fn translate_pattern(p: &str) -> Result<String, Skip> {
    let chars: Vec<char> = p.chars().collect();
    let mut out = String::with_capacity(p.len() + 8);
    let mut i = 0;
    let mut in_class = false;
    // Whether the last thing emitted was a quantifier (for possessive `*+`).
    let mut after_quantifier = false;
    while i < chars.len() {
        let c = chars[i];
        let was_quantifier = after_quantifier;
        after_quantifier = false;
        match c {
            '\\' => {
                let Some(&n) = chars.get(i + 1) else {
                    return Err(Skip::new("syntax error", "pcre ends with a backslash"));
                };
                i += 2;
                match n {
                    '1'..='9' => return Err(unsupported("backreference", format!("\\{n}"))),
                    'k' | 'g' => return Err(unsupported("backreference", format!("\\{n}"))),
                    '0' => out.push_str("\\x00"),
                    'a' => out.push_str("\\x07"),
                    'e' => out.push_str("\\x1B"),
                    'h' => out.push_str(if in_class { " \\t" } else { "[ \\t]" }),
                    'H' if !in_class => out.push_str("[^ \\t]"),
                    'R' if !in_class => out.push_str("(?:\\r\\n|\\n|\\r)"),
                    'Z' if !in_class => out.push_str("(?:\\n?\\z)"),
                    'Q' => {
                        // \Q...\E: literal text.
                        let mut lit = String::new();
                        while i < chars.len()
                            && !(chars[i] == '\\' && chars.get(i + 1) == Some(&'E'))
                        {
                            lit.push(chars[i]);
                            i += 1;
                        }
                        i = (i + 2).min(chars.len());
                        out.push_str(&regex::escape(&lit));
                    }
                    'E' => {}
                    'G' | 'K' | 'X' | 'C' | 'N' | 'L' | 'l' | 'u' | 'U' | 'c' | 'o' => {
                        return Err(unsupported("escape", format!("\\{n}")))
                    }
                    'p' | 'P' => return Err(unsupported("unicode property", format!("\\{n}"))),
                    // PCRE `\<` and `\>` are literal; in `regex` they are word boundaries.
                    '<' | '>' => out.push(n),
                    n if n.is_ascii_alphanumeric() => {
                        // \d \w \s \b \B \A \z \n \r \t \f \v \xNN ... pass through.
                        out.push('\\');
                        out.push(n);
                    }
                    n if n.is_ascii() => out.push_str(&regex::escape(&n.to_string())),
                    n => out.push(n),
                }
                continue;
            }
            '[' if in_class => {
                if chars.get(i + 1) == Some(&':') {
                    // POSIX class [:alpha:]
                    let rest: String = chars[i..].iter().collect();
                    if let Some(end) = rest.find(":]") {
                        out.push_str(&rest[..end + 2]);
                        i += rest[..end + 2].chars().count();
                        continue;
                    }
                }
                out.push_str("\\[");
            }
            '&' | '~' if in_class => {
                out.push('\\');
                out.push(c);
            }
            '[' => {
                in_class = true;
                out.push('[');
                if chars.get(i + 1) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                if chars.get(i + 1) == Some(&']') {
                    // A leading ']' is literal.
                    out.push_str("\\]");
                    i += 1;
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            '(' if !in_class => {
                if chars.get(i + 1) == Some(&'?') {
                    let next = chars.get(i + 2).copied();
                    let next2 = chars.get(i + 3).copied();
                    match (next, next2) {
                        (Some('='), _)
                        | (Some('!'), _)
                        | (Some('<'), Some('='))
                        | (Some('<'), Some('!')) => return Err(unsupported("lookaround", "")),
                        (Some('>'), _) => return Err(unsupported("atomic group", "")),
                        (Some('|'), _) => return Err(unsupported("branch reset", "")),
                        (Some('('), _) => return Err(unsupported("conditional", "")),
                        (Some('R'), _) | (Some('0'..='9'), _) | (Some('&'), _) | (Some('+'), _) => {
                            return Err(unsupported("recursion", ""))
                        }
                        (Some('P'), Some('=')) | (Some('P'), Some('>')) => {
                            return Err(unsupported("backreference", ""))
                        }
                        (Some('#'), _) => {
                            // Comment group: drop it.
                            while i < chars.len() && chars[i] != ')' {
                                i += 1;
                            }
                            i += 1;
                            continue;
                        }
                        (Some('\''), _) => {
                            // (?'name'...) -> (?P<name>...)
                            let rest: String = chars[i + 3..].iter().collect();
                            let Some(end) = rest.find('\'') else {
                                return Err(Skip::new(
                                    "syntax error",
                                    "unterminated group name in pcre",
                                ));
                            };
                            out.push_str("(?P<");
                            out.push_str(&rest[..end]);
                            out.push('>');
                            i += 3 + rest[..end].chars().count() + 1;
                            continue;
                        }
                        _ => {}
                    }
                }
                out.push('(');
            }
            '*' | '+' | '?' if !in_class => {
                if was_quantifier && c == '+' {
                    return Err(unsupported("possessive quantifier", ""));
                }
                out.push(c);
                // `*?` (lazy) is still a quantifier; a following `+` is possessive only directly after.
                after_quantifier = !(was_quantifier && c == '?');
            }
            '{' if !in_class => {
                // A counted repetition {n}, {n,}, {n,m}; otherwise a literal brace.
                let rest: String = chars[i..].iter().take(24).collect();
                let counted = rest.find('}').is_some_and(|end| {
                    let inner = &rest[1..end];
                    !inner.is_empty()
                        && inner.chars().all(|c| c.is_ascii_digit() || c == ',')
                        && inner.chars().next().is_some_and(|c| c.is_ascii_digit())
                });
                if counted {
                    let end = rest.find('}').unwrap_or(0);
                    out.push_str(&rest[..=end]);
                    i += end + 1;
                    after_quantifier = true;
                    continue;
                }
                out.push_str("\\{");
            }
            '}' if !in_class => out.push_str("\\}"),
            c => out.push(c),
        }
        i += 1;
    }
    if in_class {
        return Err(Skip::new(
            "syntax error",
            "unterminated character class in pcre",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(p: &str) -> Translated {
        translate(p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }
    fn reason(p: &str) -> String {
        match translate(p) {
            Ok(_) => panic!("{p} should be rejected"),
            Err(e) => e.reason,
        }
    }

    #[test]
    fn flags() {
        assert!(t("/abc/i").regex.is_match(b"xABCx"));
        assert!(!t("/abc/").regex.is_match(b"ABC"));
        assert!(t("/a.b/s").regex.is_match(b"a\nb"));
        assert!(!t("/a.b/").regex.is_match(b"a\nb"));
        assert!(t("/^b/m").regex.is_match(b"a\nb"));
        assert!(!t("/^b/").regex.is_match(b"a\nb"));
        assert!(t("/a b # comment\n c/x").regex.is_match(b"abc"));
        assert!(t("/bc/A").regex.find(b"abc").is_none());
        assert!(t("/ab/A").regex.is_match(b"abc"));
        let lazy = t("/a.+c/G");
        assert_eq!(lazy.regex.find(b"abcbc").unwrap().end(), 3);
        let r = t("/x/R");
        assert!(r.relative);
        assert_eq!(t("/x/U").buffer, Some(Buffer::HttpUri));
        assert_eq!(t("/x/H").buffer, Some(Buffer::HttpHeader));
        assert_eq!(t("/x/P").buffer, Some(Buffer::HttpRequestBody));
        assert_eq!(t("/x/Q").buffer, Some(Buffer::HttpResponseBody));
        assert_eq!(t("/x/V").buffer, Some(Buffer::HttpUserAgent));
        assert_eq!(t("/x/W").buffer, Some(Buffer::HttpHost));
        assert_eq!(t("/x/M").buffer, Some(Buffer::HttpMethod));
        assert_eq!(reason("/x/C"), "pcre flag C");
    }

    #[test]
    fn bytes_and_escapes() {
        assert!(t(r"/\x00\xff/").regex.is_match(b"\x00\xff"));
        assert!(t(r"/\/gate\.php\;/").regex.is_match(b"/gate.php;"));
        assert!(t(r"/a\<b\>/").regex.is_match(b"a<b>"));
        assert!(t(r"/a\hb/").regex.is_match(b"a\tb"));
        assert!(t(r"/\Qa.b\E+/").regex.is_match(b"a.bb"));
        assert!(!t(r"/\Qa.b\E/").regex.is_match(b"axb"));
        assert!(t(r"/[a[]/").regex.is_match(b"["));
        assert!(t(r"/[]a]/").regex.is_match(b"]"));
        assert!(t(r"/[[:digit:]]{3}/").regex.is_match(b"123"));
        assert!(t(r"/a{/").regex.is_match(b"a{"));
        assert!(t(r"/a{2,}/").regex.is_match(b"aa"));
        assert!(t(r"/(?'n'ab)(?#c)c/").regex.is_match(b"abc"));
        assert!(t(r"/a*?b/").regex.is_match(b"aab"));
        assert!(t(r"/[&~]/").regex.is_match(b"~"));
        assert!(t(r"/end\Z/").regex.is_match(b"the end\n"));
    }

    #[test]
    fn unsupported_constructs_are_counted() {
        assert_eq!(reason(r"/a(?=b)/"), "pcre lookaround");
        assert_eq!(reason(r"/a(?!b)/"), "pcre lookaround");
        assert_eq!(reason(r"/(?<=a)b/"), "pcre lookaround");
        assert_eq!(reason(r"/(?<!a)b/"), "pcre lookaround");
        assert_eq!(reason(r"/(a)\1/"), "pcre backreference");
        assert_eq!(reason(r"/(?>a+)b/"), "pcre atomic group");
        assert_eq!(reason(r"/a++b/"), "pcre possessive quantifier");
        assert_eq!(reason(r"/a{2}+b/"), "pcre possessive quantifier");
        assert_eq!(reason(r"/(?R)/"), "pcre recursion");
        assert_eq!(reason(r"/(?(1)a|b)/"), "pcre conditional");
        assert_eq!(reason(r"/\p{L}/"), "pcre unicode property");
        assert_eq!(reason(r"/\Ga/"), "pcre escape");
        assert_eq!(reason(r"/(/"), "pcre compile error");
        assert_eq!(reason(r"abc"), "syntax error");
    }
}
