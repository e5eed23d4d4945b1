//! Blocklist import, every text format: squidGuard/UT1 `domains`, `urls`
//! and `expressions` files, hosts files, plain lists, adblock lists and the
//! sniffing `auto` format; then the compiled matcher looks up each line
//! and writes a snapshot. Input: a format byte, then the list text.
#![no_main]

use std::path::Path;

use komugate_categories::{ListFormat, MatcherBuilder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, text)) = data.split_first() else {
        return;
    };
    let (origin, format) = match selector % 7 {
        0 => ("ut1/adult/domains", ListFormat::SquidGuardDir),
        1 => ("ut1/adult/urls", ListFormat::SquidGuardDir),
        2 => ("ut1/adult/expressions", ListFormat::SquidGuardDir),
        3 => ("hosts", ListFormat::Hosts),
        4 => ("list.txt", ListFormat::Plain),
        5 => ("easylist.txt", ListFormat::Adblock),
        _ => ("list", ListFormat::Auto),
    };
    let text = String::from_utf8_lossy(text);
    let mut builder = MatcherBuilder::new();
    builder.enable_expressions(selector & 0x80 != 0);
    let report = builder.add_list_text("adult", Path::new(origin), &text, format);
    assert!(report.first_errors.len() <= komugate_categories::MAX_REPORTED_ERRORS);
    let Ok(matcher) = builder.build() else {
        return;
    };
    for line in text.lines().take(32) {
        let _ = matcher.lookup_url(line);
        let _ = matcher.lookup(line, "/");
    }
    let mut snapshot = Vec::new();
    matcher
        .write_snapshot(&mut snapshot)
        .expect("a snapshot of a built matcher is written");
});
