//! Loads the real UT1 sample (skips when it is not there).

use std::path::PathBuf;

use komugate_categories::*;

fn ut1_dir() -> Option<PathBuf> {
    let p = std::env::var_os("KOMUGATE_UT1")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/blocklists/ut1")
        });
    if p.join("gambling").is_dir() {
        Some(p)
    } else {
        eprintln!(
            "UT1 sample not found at {} (set KOMUGATE_UT1); skipping",
            p.display()
        );
        None
    }
}

fn has(m: &Matcher, url: &str, cat: &str) -> bool {
    m.lookup_url(url).contains(m.category_id(cat).unwrap())
}

#[test]
fn real_ut1_sample() {
    let Some(dir) = ut1_dir() else { return };
    let only: Vec<String> = [
        "adult",
        "gambling",
        "malware",
        "phishing",
        "liste_blanche",
        "cryptojacking",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut b = MatcherBuilder::new();
    let rep = b.add_squidguard_dir(&dir, Some(&only)).unwrap();
    assert!(rep.domains > 400_000, "{rep:?}");
    assert!(rep.urls > 10_000);
    for e in &rep.first_errors {
        eprintln!("{e}");
    }
    assert!(
        rep.invalid_lines < 100,
        "{} invalid lines",
        rep.invalid_lines
    );
    let m = b.build().unwrap();
    // adult/urls (url prefix, www-stripped, scheme/port ignored)
    assert!(has(&m, "http://beegdownload.pro/de/video/pornstar-lisa-ann-gets-her-asshole-stretched-in-interracial-anal-sex-tape/1545534", "adult"));
    assert!(has(
        &m,
        "https://www.020sextoy.com:443/sk/item?x=1",
        "adult"
    ));
    assert!(!has(&m, "https://020sextoy.com/other", "adult"));
    assert!(has(&m, "http://178.128.25.172/watch?v=1", "adult"));
    // gambling/domains (subdomains, no string suffix)
    assert!(has(&m, "1-casinogambling.com", "gambling"));
    assert!(has(&m, "https://WWW.LiveRoulette.com./", "gambling"));
    assert!(!has(&m, "notliveroulette.com", "gambling"));
    // malware / phishing domains, incl. IPv4 entries and underscores
    assert!(has(&m, "http://00lx.045375423.xyz/a", "malware"));
    assert!(has(&m, "http://1.13.249.217/", "malware"));
    assert!(!has(&m, "http://1.13.249.21/", "malware"));
    assert!(has(&m, "kujtfc.blogspot.com", "phishing"));
    assert!(!has(&m, "blogspot.com", "phishing"));
    assert!(has(
        &m,
        "https://cbinsdase_vto_goingh.godaddysites.com/",
        "phishing"
    ));
    // punycode entries, matched from the Unicode form too
    assert!(has(&m, "xn--bittex-zhb.com", "cryptojacking"));
    assert!(has(&m, "http://www.bittŕex.com/", "cryptojacking"));
    assert_eq!(
        m.category_usage(m.category_id("gambling").unwrap()),
        Some(Usage::Black)
    );
    assert_eq!(
        m.category_usage(m.category_id("liste_blanche").unwrap()),
        Some(Usage::White)
    );
    assert!(m.lookup_url("https://example.org/").is_empty());
}
