//! Imports never go silently wrong: split parts with any numeric suffix,
//! gaps and empty results are errors, messages name the real problem,
//! squidGuard per-entry redirects block, hosts semantics are selectable.

use std::path::{Path, PathBuf};

use komugate_categories::*;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("komugate-loud-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn names(m: &Matcher, url: &str) -> Vec<String> {
    m.names(m.lookup_url(url))
        .into_iter()
        .map(String::from)
        .collect()
}

fn split_three(cat: &Path, suffixes: [&str; 3]) {
    let text = "one.test\nsplit-across.test\nthree.test\n";
    let cut1 = text.find("across").unwrap();
    let cut2 = text.find("ee.test").unwrap();
    std::fs::create_dir_all(cat).unwrap();
    std::fs::write(cat.join(format!("domains.{}", suffixes[0])), &text[..cut1]).unwrap();
    std::fs::write(
        cat.join(format!("domains.{}", suffixes[1])),
        &text[cut1..cut2],
    )
    .unwrap();
    std::fs::write(cat.join(format!("domains.{}", suffixes[2])), &text[cut2..]).unwrap();
}

#[test]
fn any_numeric_part_suffix_is_joined_in_order() {
    for (i, sfx) in [["00", "01", "02"], ["001", "002", "003"], ["0", "1", "2"]]
        .into_iter()
        .enumerate()
    {
        let dir = tmpdir(&format!("parts{i}"));
        split_three(&dir.join("dating"), sfx);
        let mut b = MatcherBuilder::new();
        let r = b.add_squidguard_dir(&dir, None).unwrap();
        assert_eq!((r.files, r.domains, r.invalid_lines), (3, 3, 0), "{sfx:?}");
        assert_eq!(r.lists[0].parts, 3);
        let m = b.build().unwrap();
        for u in ["one.test", "split-across.test", "three.test"] {
            assert_eq!(names(&m, u), ["dating"], "{sfx:?} {u}");
        }
    }
}

#[test]
fn a_missing_part_is_an_error_naming_it() {
    let dir = tmpdir("gap");
    split_three(&dir.join("dating"), ["00", "01", "03"]);
    let mut b = MatcherBuilder::new();
    let e = b.add_squidguard_dir(&dir, None).unwrap_err().to_string();
    assert!(e.contains("domains.02 is missing"), "{e}");
    let dir = tmpdir("gap-start");
    split_three(&dir.join("dating"), ["2", "3", "4"]);
    let e = MatcherBuilder::new()
        .add_squidguard_dir(&dir, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing"), "{e}");
    let dir = tmpdir("dup");
    split_three(&dir.join("dating"), ["0", "1", "01"]);
    let e = MatcherBuilder::new()
        .add_squidguard_dir(&dir, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("keep one"), "{e}");
}

#[test]
fn a_non_empty_list_with_no_entry_is_an_error() {
    let dir = tmpdir("empty");
    let f = dir.join("list.txt");
    std::fs::write(&f, "# only junk\nhttp://a.example/x y\nbad..name\n").unwrap();
    let e = MatcherBuilder::new()
        .add_list_file("c", &f, ListFormat::Plain)
        .unwrap_err()
        .to_string();
    assert!(e.contains("gave no entry") && e.contains("list.txt"), "{e}");
    // Comments only, or nothing: an empty list, not an error.
    std::fs::write(&f, "# nothing yet\n\n").unwrap();
    let r = MatcherBuilder::new()
        .add_list_file("c", &f, ListFormat::Plain)
        .unwrap();
    assert_eq!(r.entries(), 0);
    // A squidGuard category whose domains file has only invalid lines.
    let sg = dir.join("sg/cat");
    std::fs::create_dir_all(&sg).unwrap();
    std::fs::write(sg.join("domains"), "not a domain\n").unwrap();
    let e = MatcherBuilder::new()
        .add_squidguard_dir(&dir.join("sg"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("gave no entry"), "{e}");
}

#[test]
fn messages_name_the_real_problem() {
    let mut b = MatcherBuilder::new();
    let r = b.add_list_text(
        "h",
        Path::new("hosts"),
        "0.0.0.0 http://bad.example/path\n0.0.0.0 ok.example\n",
        ListFormat::Hosts,
    );
    assert!(
        r.first_errors[0].reason.contains("is a URL"),
        "{:?}",
        r.first_errors
    );
    let r = b.add_list_text(
        "p",
        Path::new("plain"),
        "||ads.example^\nok.example\n",
        ListFormat::Plain,
    );
    assert!(
        r.first_errors[0].reason.contains("adblock"),
        "{:?}",
        r.first_errors
    );
    let r = b.add_list_text(
        "a",
        Path::new("ab"),
        "/ads[0-9]/\n||x.test^\n",
        ListFormat::Adblock,
    );
    assert!(
        r.first_errors[0].reason.contains("regular-expression"),
        "{:?}",
        r.first_errors
    );
}

#[test]
fn squidguard_per_entry_redirects_block() {
    let dir = tmpdir("redirect");
    let c = dir.join("porn");
    std::fs::create_dir_all(&c).unwrap();
    std::fs::write(
        c.join("domains"),
        "redirected.test http://blocked.school/porn.html\nplain.test\n",
    )
    .unwrap();
    std::fs::write(c.join("urls"), "redir.test/path https://blocked.school/\n").unwrap();
    let mut b = MatcherBuilder::new();
    let r = b.add_squidguard_dir(&dir, None).unwrap();
    assert_eq!(
        (r.domains, r.urls, r.invalid_lines, r.redirects_ignored),
        (2, 1, 0, 2)
    );
    assert!(r.first_errors[0].reason.contains("redirect"));
    let m = b.build().unwrap();
    assert_eq!(names(&m, "redirected.test"), ["porn"]);
    assert_eq!(names(&m, "http://redir.test/path/x"), ["porn"]);
    // Anything else after an entry is still an error.
    let r = MatcherBuilder::new().add_list_text(
        "x",
        Path::new("domains"),
        "a.test b.test\n",
        ListFormat::SquidGuardDir,
    );
    assert_eq!(r.invalid_lines, 1);
}

#[test]
fn hosts_names_match_subdomains_by_default_or_exactly() {
    let hosts = "0.0.0.0 ads.example\n";
    let mut b = MatcherBuilder::new();
    b.add_list_text("sub", Path::new("h1"), hosts, ListFormat::Hosts);
    b.set_hosts_match(HostsMatch::Exact);
    b.add_list_text("exact", Path::new("h2"), hosts, ListFormat::Hosts);
    let m = b.build().unwrap();
    assert_eq!(names(&m, "ads.example"), ["sub", "exact"]);
    assert_eq!(names(&m, "x.ads.example"), ["sub"]);
    // Exact entries survive a snapshot.
    let mut buf = Vec::new();
    m.write_snapshot(&mut buf).unwrap();
    let p = tmpdir("snap").join("s");
    std::fs::write(&p, buf).unwrap();
    let m2 = Matcher::read_snapshot(&p).unwrap();
    assert_eq!(names(&m2, "ads.example"), ["sub", "exact"]);
    assert_eq!(names(&m2, "x.ads.example"), ["sub"]);
}

#[test]
fn adblock_rules_keep_their_meaning() {
    let list = "\
[Adblock Plus 2.0]
! DNS-filter style list
||blocked.test^
||name.
-ads1.
||ads*.wild.test^
.strict.test^
://exacthost.test^
10.1.2.3^
@@||ok.blocked.test^
@@|only.blocked.test^|
@@||*.cdn.blocked.test^
||imp.test^$important
@@||imp.test^
||both.test^$important
@@||both.test^$important
||over.test^
||over.test^$badfilter
||types.test^$script
";
    let mut b = MatcherBuilder::new();
    let r = b.add_list_text("ads", Path::new("dns.txt"), list, ListFormat::Adblock);
    assert_eq!(r.invalid_lines, 0, "{:?}", r.first_errors);
    assert_eq!(r.skipped_lines, 2, "{:?}", r.first_errors); // badfiltered + $script
    let m = b.build().unwrap();
    let blocked = |u: &str| !m.lookup_url(u).is_empty();
    for u in [
        "https://blocked.test/",
        "https://x.blocked.test/",
        "https://name.org/",
        "https://a.name.co.uk/",
        "https://x-ads1.example/",
        "https://ads42.wild.test/",
        "https://a.strict.test/",
        "https://exacthost.test/",
        "https://10.1.2.3/",
        "https://sub.only.blocked.test/",
        "https://imp.test/",
    ] {
        assert!(blocked(u), "{u} must be blocked");
    }
    for u in [
        "https://ok.blocked.test/",
        "https://deep.ok.blocked.test/",
        "https://only.blocked.test/",
        "https://a.cdn.blocked.test/",
        "https://xname.org/",
        "https://strict.test/",
        "https://sub.exacthost.test/",
        "https://10.1.2.33/",
        "https://both.test/",
        "https://over.test/",
        "https://types.test/",
        "https://wild.test/",
    ] {
        assert!(!blocked(u), "{u} must not be blocked");
    }
    // Same answers from a snapshot (patterns and tagged keys are stored).
    let mut buf = Vec::new();
    m.write_snapshot(&mut buf).unwrap();
    let p = tmpdir("absnap").join("s");
    std::fs::write(&p, buf).unwrap();
    let m2 = Matcher::read_snapshot(&p).unwrap();
    for u in [
        "https://a.name.co.uk/",
        "https://imp.test/",
        "https://ok.blocked.test/",
    ] {
        assert_eq!(m.lookup_url(u), m2.lookup_url(u), "{u}");
    }
}
