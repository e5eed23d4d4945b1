//! `[[categories.source]]` import options and reports: `match` for hosts
//! lists, per-list counts, lists that give no entry.

use komugate_policy::*;
use std::net::IpAddr;
use std::path::PathBuf;

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("komugate-sources-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn categories(p: &Policy, host: &str, path: &str) -> Vec<String> {
    p.evaluate(&Request {
        device: None,
        cert_groups: &[],
        client_ip: "127.0.10.1".parse::<IpAddr>().unwrap(),
        location: None,
        scheme: Scheme::Http,
        method: "GET",
        host,
        port: 80,
        path,
        time: std::time::SystemTime::now(),
    })
    .categories
}

fn policy(dir: &std::path::Path, sources: &str) -> Result<Policy, PolicyErrors> {
    let file = dir.join("policy.toml");
    std::fs::write(
        &file,
        format!("version = 1\n[defaults]\naction = \"allow\"\n{sources}\n[[rule]]\nname = \"b\"\ncategories = [\"ads\"]\naction = \"block\"\n"),
    )
    .unwrap();
    Policy::load(&file)
}

#[test]
fn hosts_match_is_selectable_per_source() {
    let dir = tempdir("match");
    std::fs::write(
        dir.join("hosts.txt"),
        "0.0.0.0 ads.example\n0.0.0.0 bad..name\n",
    )
    .unwrap();
    let p = policy(
        &dir,
        r#"
[[categories.source]]
format = "hosts"
path = "hosts.txt"
category = "ads"

[[categories.source]]
format = "hosts"
path = "hosts.txt"
category = "adsx"
match = "exact"
"#,
    )
    .unwrap();
    assert_eq!(categories(&p, "ads.example", "/"), ["ads", "adsx"]);
    assert_eq!(categories(&p, "x.ads.example", "/"), ["ads"]);
    let src = &p.import_report().sources[1];
    assert_eq!(src.lists.len(), 1);
    let l = &src.lists[0];
    assert_eq!((l.category.as_str(), l.format.as_str()), ("adsx", "hosts"));
    assert_eq!((l.entries, l.invalid), (1, 1), "{l:?}");

    let e = policy(
        &dir,
        "[[categories.source]]\nformat = \"hosts\"\npath = \"hosts.txt\"\ncategory = \"ads\"\nmatch = \"suffix\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("subdomains") && e.contains("exact"), "{e}");
}

#[test]
fn a_list_that_gives_no_entry_refuses_the_policy() {
    let dir = tempdir("empty");
    std::fs::write(dir.join("ads.txt"), "not a host\nalso not one\n").unwrap();
    for format in ["plain", "domainlist"] {
        let e = policy(
            &dir,
            &format!("[[categories.source]]\nformat = \"{format}\"\npath = \"ads.txt\"\ncategory = \"ads\"\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("gave no entry"), "{format}: {e}");
    }
}

#[test]
fn request_paths_are_normalised_for_url_entries() {
    let dir = tempdir("urls");
    std::fs::write(dir.join("urls.txt"), "vk.com/vkdating\n").unwrap();
    let p = policy(
        &dir,
        "[[categories.source]]\nformat = \"urllist\"\npath = \"urls.txt\"\ncategory = \"ads\"\n",
    )
    .unwrap();
    for path in ["/vkdating", "/%76kdating", "//vkdating", "/a/../VKdating?x"] {
        assert_eq!(categories(&p, "vk.com", path), ["ads"], "{path}");
    }
    assert!(categories(&p, "vk.com", "/vk%2Fdating").is_empty());
}
