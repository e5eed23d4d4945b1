//! A url entry cannot be bypassed by spelling the same URL differently:
//! random escapes (either hex case), doubled slashes, dot segments, case,
//! `www.` and port still give the entry's category.

use std::path::PathBuf;

use komugate_categories::*;
use proptest::prelude::*;

/// Real url entries: the UT1 excerpt shipped in examples/ plus UT1 `dating`
/// entries that were bypassed before paths were normalised.
fn real_entries() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/lists/ut1/adult/urls");
    let text = std::fs::read_to_string(&dir).expect("examples/lists/ut1/adult/urls");
    let mut v: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    v.extend(["vk.com/vkdating".into(), "askmen.com/dating/".into()]);
    v
}

/// Synthetic entries with the characters real lists carry: sub-delimiters,
/// escapes, non-ASCII, queries.
fn synthetic_entry() -> impl Strategy<Value = String> {
    let seg = prop::collection::vec(
        prop_oneof![
            Just("a"),
            Just("Z"),
            Just("-"),
            Just("_"),
            Just("~"),
            Just("."),
            Just(";"),
            Just("="),
            Just("@"),
            Just("!"),
            Just("é"),
            Just("%C3%A9"),
            Just("%2f"),
            Just("(")
        ],
        1..5,
    )
    .prop_map(|v| v.concat());
    (
        "[a-c]{1,3}\\.(com|jp)",
        prop::collection::vec(seg, 1..4),
        prop::option::of("[a-z0-9=&]{1,6}"),
    )
        .prop_map(|(h, segs, q)| {
            let mut e = format!("{h}/{}", segs.join("/"));
            if let Some(q) = q {
                e.push('?');
                e.push_str(&q);
            }
            e
        })
}

fn escape(b: u8, lower: bool) -> String {
    if lower {
        format!("%{b:02x}")
    } else {
        format!("%{b:02X}")
    }
}

/// Re-encodes `path` (as written in the list) into an equivalent request
/// path, driven by `choices`.
fn reencode(path: &str, choices: &[u8]) -> String {
    let mut ch = choices.iter().copied().cycle();
    let mut next = move || ch.next().unwrap_or(0);
    let b = path.as_bytes();
    let qpos = b.iter().position(|&c| c == b'?').unwrap_or(b.len());
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let in_query = i >= qpos;
        let r = next();
        if c == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            let esc = &path[i..i + 3];
            out.push_str(&if r % 2 == 0 {
                esc.to_ascii_lowercase()
            } else {
                esc.to_ascii_uppercase()
            });
            i += 3;
            continue;
        }
        if c >= 0x80 {
            out.push_str(&escape(c, r % 2 == 0)); // requests carry non-ASCII escaped
        } else if c == b'/' && !in_query {
            out.push('/');
            match r % 5 {
                0 => out.push('/'),
                1 => out.push_str("./"),
                2 => out.push_str("zz/../"),
                3 => out.push_str("%2e/"),
                _ => {}
            }
        } else if r % 3 == 0
            && ((!in_query && c != b'?') || (in_query && c.is_ascii_alphanumeric()))
        {
            out.push_str(&escape(c, r % 2 == 0));
        } else if c.is_ascii_alphabetic() && r % 4 == 1 {
            out.push(c.to_ascii_uppercase() as char);
        } else {
            out.push(c as char);
        }
        i += 1;
    }
    out
}

fn check(entries: &[String], choices: &[u8]) -> Result<(), TestCaseError> {
    let mut b = MatcherBuilder::new();
    for e in entries {
        b.add_url("blocked", e).unwrap();
    }
    let m = b.build().unwrap();
    let id = m.category_id("blocked").unwrap();
    for (k, e) in entries.iter().enumerate() {
        let slash = e.find('/').unwrap_or(e.len());
        let (host, path) = e.split_at(slash);
        let path = if path.is_empty() { "/" } else { path };
        let c = &choices[k % choices.len()..];
        let req = reencode(path, c);
        let host = if c[0] % 2 == 0 {
            format!("WWW.{host}:80")
        } else {
            host.to_string()
        };
        prop_assert!(
            m.lookup(&host, &req).contains(id),
            "entry {e} not matched by {host}{req}"
        );
        let url = format!("HTTP://{host}{req}");
        prop_assert!(
            m.lookup_url(&url).contains(id),
            "entry {e} not matched by {url}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn real_entries_survive_reencoding(choices in prop::collection::vec(any::<u8>(), 8..64)) {
        check(&real_entries(), &choices)?;
    }

    #[test]
    fn synthetic_entries_survive_reencoding(entries in prop::collection::vec(synthetic_entry(), 1..10),
                                            choices in prop::collection::vec(any::<u8>(), 8..64)) {
        check(&entries, &choices)?;
    }
}

#[test]
fn the_reported_bypasses_are_blocked() {
    let mut b = MatcherBuilder::new();
    b.add_url("dating", "vk.com/vkdating").unwrap();
    b.add_url("dating", "askmen.com/dating/").unwrap();
    let m = b.build().unwrap();
    let id = m.category_id("dating").unwrap();
    for u in [
        "http://vk.com/vkdating",
        "http://vk.com/%76kdating",
        "http://vk.com/%76%6B%64ating",
        "http://vk.com//vkdating",
        "http://vk.com/x/../vkdating",
        "http://askmen.com//dating/",
        "http://askmen.com/./dating//x",
        "http://askmen.com/%64ating/",
    ] {
        assert!(m.lookup_url(u).contains(id), "{u}");
    }
    // Not the same resource: an encoded slash is not a segment boundary.
    assert!(!m.lookup_url("http://askmen.com/%2fdating/").contains(id));
    assert!(!m.lookup_url("http://vk.com/vk/dating").contains(id));
}
