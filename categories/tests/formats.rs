use std::io::Write;
use std::path::{Path, PathBuf};

use komugate_categories::*;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("komugate-cat-{}-{}", name, std::process::id()));
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

#[test]
fn domain_semantics() {
    let mut b = MatcherBuilder::new();
    b.add_domain("fin", "amex.com").unwrap();
    b.add_domain("fin", "Example.ORG.").unwrap();
    b.add_domain("other", "example.org").unwrap();
    b.add_domain("ip", "10.1.2.3").unwrap();
    b.add_domain("ip", "[2001:db8::1]").unwrap();
    b.add_domain("idn", "bücher.de").unwrap();
    b.add_domain("wild", "*.wild.test").unwrap();
    let m = b.build().unwrap();
    assert_eq!(names(&m, "http://amex.com/"), ["fin"]);
    assert_eq!(names(&m, "https://www.AMEX.com.:443/x"), ["fin"]);
    assert_eq!(names(&m, "a.b.amex.com"), ["fin"]);
    assert!(m.lookup_url("aamex.com").is_empty());
    assert!(m.lookup_url("amex.com.au").is_empty());
    assert!(m.lookup_url("com").is_empty());
    assert_eq!(names(&m, "http://sub.example.org:8080/"), ["fin", "other"]);
    assert_eq!(names(&m, "http://10.1.2.3/x"), ["ip"]);
    assert_eq!(names(&m, "http://10.1.2.3:81"), ["ip"]);
    assert!(m.lookup_url("http://110.1.2.3/").is_empty());
    assert!(m.lookup_url("http://10.1.2.33/").is_empty());
    assert_eq!(names(&m, "http://[2001:db8:0::1]:443/"), ["ip"]);
    assert_eq!(m.names(m.lookup("2001:DB8::1", "/")), ["ip"]);
    assert_eq!(names(&m, "http://www.bücher.de/"), ["idn"]);
    assert_eq!(names(&m, "http://www.xn--bcher-kva.de/"), ["idn"]);
    assert_eq!(names(&m, "wild.test"), ["wild"]);
    let s = m.lookup("x.EXAMPLE.org.", "");
    assert!(
        s.contains(m.category_id("fin").unwrap()) && s.contains(m.category_id("other").unwrap())
    );
    assert_eq!(m.entry_count(), 6);
}

#[test]
fn url_semantics() {
    let mut b = MatcherBuilder::new();
    b.add_url("u", "www.example.com/foo").unwrap();
    b.add_url("u2", "http://ftp2.Example.com:8080/Foo/Bar")
        .unwrap();
    b.add_url("whole", "whole.test").unwrap();
    b.add_url("ipu", "178.128.25.172/tag/x").unwrap();
    let m = b.build().unwrap();
    assert_eq!(names(&m, "http://example.com/foo"), ["u"]);
    assert_eq!(names(&m, "http://www3.example.com/foo/x"), ["u"]);
    assert_eq!(names(&m, "http://web.example.com/foobar"), ["u"]); // plain prefix
    assert_eq!(names(&m, "http://example.com:81/FOO/bar?q"), ["u", "u2"]);
    assert!(m.lookup_url("http://example.com/fo").is_empty());
    assert!(m.lookup_url("http://example.com/").is_empty());
    assert!(m.lookup_url("http://sub.example.com/foo").is_empty()); // url entries: exact host
    assert!(m.lookup_url("http://example.com/x/foo").is_empty());
    assert_eq!(names(&m, "whole.test"), ["whole"]);
    assert_eq!(names(&m, "http://www.whole.test/any?thing"), ["whole"]);
    assert!(m.lookup_url("whole.test.evil").is_empty());
    assert_eq!(names(&m, "http://178.128.25.172/tag/xyz"), ["ipu"]);
    assert_eq!(m.names(m.lookup("EXAMPLE.com", "/foo")), ["u"]);
    assert_eq!(m.names(m.lookup("example.com", "foo")), ["u"]);
    assert_eq!(names(&m, "http://example.com/foo#frag"), ["u"]);
}

#[test]
fn url_many_prefixes() {
    let mut b = MatcherBuilder::new();
    for (c, p) in [
        ("a", "/"),
        ("b", "/a"),
        ("c", "/a/b"),
        ("d", "/a/c"),
        ("e", "/a/b/c/d"),
        ("f", "/ab"),
    ] {
        b.add_url(c, &format!("h.test{p}")).unwrap();
    }
    let m = b.build().unwrap();
    assert_eq!(names(&m, "h.test/a/b/c/x"), ["a", "b", "c"]);
    assert_eq!(names(&m, "h.test/a/b/c/d/e"), ["a", "b", "c", "e"]);
    assert_eq!(names(&m, "h.test/abc"), ["a", "b", "f"]);
    assert_eq!(names(&m, "h.test/z"), ["a"]);
}

#[test]
fn hosts_plain_adblock() {
    let mut b = MatcherBuilder::new();
    let hosts = "# comment\n127.0.0.1 localhost\n0.0.0.0 ads.example  tracker.example # inline\n::1 ip6-localhost\n\
                 0.0.0.0 0.0.0.0\nbogus line\n127.0.0.1\n0.0.0.0 bad..name\n";
    let r = b.add_list_text("hosts", Path::new("h.txt"), hosts, ListFormat::Hosts);
    assert_eq!(r.domains, 2);
    assert_eq!(r.invalid_lines, 3);
    let lines: Vec<usize> = r.first_errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, [6, 7, 8]);
    assert!(r.first_errors[0].to_string().starts_with("h.txt:6: "));
    let plain = "Example.NET.\n*.star.test\n.dot.test\n# c\n\nfoo.test/path\nwith space.test\n";
    let r = b.add_list_text("plain", Path::new("p.txt"), plain, ListFormat::Plain);
    assert_eq!((r.domains, r.urls, r.invalid_lines), (3, 1, 1));
    assert_eq!(r.first_errors[0].line, 7);
    let ab = "[Adblock Plus 2.0]\n! comment\n||blocked.test^\n||sub.allowed.test^\n||allowed.test^\n@@||ok.allowed.test^\n\
              ||opt.test^$third-party\nexample.com##.ad\n/regex/\n";
    let r = b.add_list_text("ads", Path::new("a.txt"), ab, ListFormat::Adblock);
    // Rules a gateway cannot honour are reported as skipped, with their line.
    assert_eq!(
        (r.domains, r.exceptions, r.invalid_lines, r.skipped_lines),
        (3, 1, 0, 3)
    );
    let lines: Vec<usize> = r.first_errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, [7, 8, 9]);
    assert!(
        r.first_errors[0].reason.contains("third-party"),
        "{:?}",
        r.first_errors
    );
    // Auto: one format per file. A file with adblock rules is an adblock
    // list, so its bare names are substring rules (their adblock meaning),
    // and the hosts-syntax line is reported, not guessed.
    let auto =
        "0.0.0.0 auto-hosts.test\n||auto-ab.test^\nauto-plain.test\nauto-url.test/x\n1.2.3.4\n";
    let r = b.add_list_text("auto", Path::new("auto.txt"), auto, ListFormat::Auto);
    assert_eq!((r.domains, r.skipped_lines, r.invalid_lines), (4, 1, 0));
    assert_eq!(r.lists[0].format, "adblock");
    let auto_hosts = "# hosts\n0.0.0.0 h1.test h2.test\n127.0.0.1 h3.test\n";
    let r = b.add_list_text("autoh", Path::new("ah.txt"), auto_hosts, ListFormat::Auto);
    assert_eq!((r.domains, r.lists[0].format), (3, "hosts"));
    let m = b.build().unwrap();
    assert_eq!(names(&m, "ads.example"), ["hosts"]);
    assert_eq!(names(&m, "x.tracker.example"), ["hosts"]);
    assert!(m.lookup_url("localhost").is_empty());
    assert_eq!(names(&m, "example.net"), ["plain"]);
    assert_eq!(names(&m, "a.star.test"), ["plain"]);
    assert_eq!(names(&m, "star.test"), ["plain"]);
    assert_eq!(names(&m, "dot.test"), ["plain"]);
    assert_eq!(names(&m, "foo.test/path/x"), ["plain"]);
    assert!(m.lookup_url("foo.test/other").is_empty());
    assert_eq!(names(&m, "blocked.test"), ["ads"]);
    // exception: ok.allowed.test and its subdomains are not in "ads"...
    assert_eq!(names(&m, "x.allowed.test"), ["ads"]);
    assert!(m.lookup_url("ok.allowed.test").is_empty());
    assert!(m.lookup_url("deep.ok.allowed.test").is_empty());
    assert_eq!(names(&m, "sub.allowed.test"), ["ads"]);
    assert!(m.lookup_url("opt.test").is_empty());
    for u in [
        "auto-ab.test",
        "x.auto-ab.test",
        "auto-plain.test",
        "xauto-plain.test.evil",
        "auto-url.test/x/y",
        "1.2.3.4",
        "11.2.3.45",
    ] {
        assert_eq!(names(&m, u), ["auto"], "{u}");
    }
    assert!(m.lookup_url("auto-hosts.test").is_empty());
    assert_eq!(names(&m, "h3.test"), ["autoh"]);
}

#[test]
fn exception_only_removes_its_category() {
    let mut b = MatcherBuilder::new();
    b.add_list_text(
        "ads",
        Path::new("a"),
        "||cdn.test^\n@@||good.cdn.test^\n",
        ListFormat::Adblock,
    );
    b.add_domain("malware", "cdn.test").unwrap();
    b.add_url("ads", "good.cdn.test/banner").unwrap();
    let m = b.build().unwrap();
    assert_eq!(names(&m, "x.cdn.test"), ["ads", "malware"]);
    assert_eq!(names(&m, "good.cdn.test/banner"), ["malware"]);
}

#[test]
fn invalid_lines_report_first_20() {
    let mut b = MatcherBuilder::new();
    let mut text = String::new();
    for i in 0..30 {
        text.push_str(&format!("ok{i}.test\nbad_{i} x\n"));
    }
    let r = b.add_list_text("c", Path::new("list"), &text, ListFormat::Plain);
    assert_eq!(r.domains, 30);
    assert_eq!(r.invalid_lines, 30);
    assert_eq!(r.first_errors.len(), MAX_REPORTED_ERRORS);
    assert_eq!(r.first_errors[1].line, 4);
    // non UTF-8 bytes
    let dir = tmpdir("utf8");
    let p = dir.join("domains");
    std::fs::write(&p, b"good.test\n\xff\xfe.test\n").unwrap();
    let r = b.add_list_file("c", &p, ListFormat::SquidGuardDir).unwrap();
    assert_eq!((r.domains, r.invalid_lines), (1, 1));
    assert_eq!(
        r.first_errors[0].to_string(),
        format!("{}:2: not valid UTF-8", p.display())
    );
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn squidguard_dir_gz_split_usage() {
    let dir = tmpdir("sg");
    let a = dir.join("adult");
    let g = dir.join("gambling");
    let w = dir.join("liste_blanche");
    for d in [&a, &g, &w, &dir.join("empty")] {
        std::fs::create_dir_all(d).unwrap();
    }
    // Split by bytes: a line cut across domains.0 / domains.1 / domains.2.gz.
    let text = "one.test\nsplit-across.test\nthree.test\nbad..line\nfive.test\n";
    let cut1 = text.find("across").unwrap();
    let cut2 = text.find("ee.test").unwrap();
    std::fs::write(a.join("domains.0"), &text[..cut1]).unwrap();
    std::fs::write(a.join("domains.1"), &text[cut1..cut2]).unwrap();
    std::fs::write(a.join("domains.2.gz"), gz(&text.as_bytes()[cut2..])).unwrap();
    std::fs::write(a.join("urls"), "Porn.example/Videos\n").unwrap();
    std::fs::write(a.join("expressions"), "(porn|xxx)\n").unwrap();
    std::fs::write(a.join("very_restrictive_expression"), "sex\n").unwrap();
    std::fs::write(a.join("usage"), "black\nadult\n").unwrap();
    std::fs::write(g.join("domains.gz"), gz(b"casino.test\n")).unwrap();
    std::fs::write(g.join("usage"), "# comment\nblack\n").unwrap();
    std::fs::write(w.join("domains"), "school.test\n").unwrap();
    std::fs::write(w.join("usage"), "white\n").unwrap();

    let mut b = MatcherBuilder::new();
    let r = b.add_squidguard_dir(&dir, None).unwrap();
    assert_eq!(r.files, 3 + 1 + 1 + 1 + 1 + 1);
    assert_eq!(
        (r.domains, r.urls, r.expressions, r.invalid_lines),
        (6, 1, 2, 1)
    );
    // the invalid line is line 2 of domains.2.gz (line 1 is the tail of "three.test").
    assert_eq!(r.first_errors[0].file, a.join("domains.2.gz"));
    assert_eq!(r.first_errors[0].line, 2);
    assert!(r
        .usage
        .contains(&("liste_blanche".to_string(), Usage::White)));
    let m = b.build().unwrap();
    assert_eq!(
        m.category_usage(m.category_id("adult").unwrap()),
        Some(Usage::Black)
    );
    assert_eq!(
        m.category_usage(m.category_id("liste_blanche").unwrap()),
        Some(Usage::White)
    );
    assert!(m.category_id("empty").is_none());
    for u in [
        "one.test",
        "split-across.test",
        "www.three.test",
        "five.test",
    ] {
        assert_eq!(names(&m, u), ["adult"], "{u}");
    }
    assert!(m.lookup_url("split-.test").is_empty());
    assert_eq!(names(&m, "http://www.porn.example/videos/1"), ["adult"]);
    assert_eq!(names(&m, "casino.test"), ["gambling"]);
    // expressions off by default
    assert!(m.lookup_url("http://a.test/xxx").is_empty());

    let mut b = MatcherBuilder::new();
    b.enable_expressions(true);
    b.add_squidguard_dir(&dir, Some(&["adult".to_string()]))
        .unwrap();
    let m = b.build().unwrap();
    assert!(m.category_id("gambling").is_none());
    assert_eq!(names(&m, "http://a.test/XXX"), ["adult"]);
    assert_eq!(names(&m, "http://a.test/sexy"), ["adult.very_restrictive"]);
    // snapshot keeps expressions enabled
    let snap = dir.join("snap.bin");
    m.write_snapshot(std::fs::File::create(&snap).unwrap())
        .unwrap();
    let (m2, _) = load_path(&snap).unwrap();
    assert_eq!(names(&m2, "http://a.test/XXX"), ["adult"]);
    // load_path of a dir
    let (m3, r3) = load_path(&dir).unwrap();
    assert_eq!(r3.invalid_lines, 1);
    assert_eq!(names(&m3, "casino.test"), ["gambling"]);
}

#[test]
fn bad_regex_is_reported() {
    let mut b = MatcherBuilder::new();
    b.enable_expressions(true);
    b.add_list_text(
        "x",
        Path::new("expressions"),
        "ok\n(unclosed\n",
        ListFormat::SquidGuardDir,
    );
    match b.build() {
        Err(CategoryError::BadRegex { line, .. }) => assert_eq!(line, 2),
        other => panic!("expected BadRegex, got {:?}", other.err()),
    }
}

#[test]
fn too_many_categories() {
    let mut b = MatcherBuilder::new();
    for i in 0..MAX_CATEGORIES {
        b.add_domain(&format!("c{i}"), "x.test").unwrap();
    }
    assert!(b.add_domain("one-more", "x.test").is_err());
    assert!(matches!(
        b.build(),
        Err(CategoryError::TooManyCategories { .. })
    ));
}

#[test]
fn snapshot_roundtrip_and_corruption() {
    let mut b = MatcherBuilder::new();
    b.add_domain("a", "a.test").unwrap();
    b.add_domain("b", "a.test").unwrap();
    b.add_url("c", "u.test/p").unwrap();
    b.add_exception("a", "ok.a.test").unwrap();
    b.set_usage("a", Usage::Black).unwrap();
    let m = b.build().unwrap();
    let mut buf = Vec::new();
    m.write_snapshot(&mut buf).unwrap();
    let dir = tmpdir("snap");
    let p = dir.join("s.kgc");
    std::fs::write(&p, &buf).unwrap();
    let m2 = Matcher::read_snapshot(&p).unwrap();
    assert_eq!(m2.category_names(), m.category_names());
    assert!(m2.heap_bytes() > 0);
    for u in [
        "a.test",
        "x.a.test",
        "ok.a.test",
        "u.test/p/q",
        "u.test/",
        "nothing.test",
    ] {
        assert_eq!(m2.lookup_url(u), m.lookup_url(u), "{u}");
    }
    assert_eq!(m2.category_usage(0), Some(Usage::Black));
    assert_eq!(m2.entry_count(), m.entry_count());

    let err = |bytes: &[u8]| {
        std::fs::write(&p, bytes).unwrap();
        match Matcher::read_snapshot(&p) {
            Err(CategoryError::BadSnapshot { reason, .. }) => reason,
            Err(e) => panic!("wrong error {e}"),
            Ok(_) => panic!("accepted a bad snapshot"),
        }
    };
    let mut bad = buf.clone();
    let last = bad.len() - 3;
    bad[last] ^= 0x40;
    assert!(err(&bad).contains("checksum"));
    assert!(err(&buf[..buf.len() - 1]).contains("truncated"));
    let mut v2 = buf.clone();
    v2[8] = 99;
    assert!(err(&v2).contains("version 99"));
    assert!(err(b"hello world, not a snapshot at all").contains("magic"));
    let e = Matcher::read_snapshot(&dir.join("missing")).err().unwrap();
    assert!(matches!(e, CategoryError::Io { .. }));
}

#[test]
fn normalize_host_api() {
    assert_eq!(normalize_host("Ｅxample.com").unwrap(), "example.com"); // fullwidth E mapped by UTS 46
    assert_eq!(
        normalize_host("ドメイン.テスト").unwrap(),
        "xn--eckwd4c7c.xn--zckzah"
    );
    assert!(normalize_host("exa mple.com").is_err());
}

#[test]
fn matcher_is_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<Matcher>();
}
