//! URL categories through a running gateway: url entries cannot be bypassed
//! by re-encoding the request path, forward or inside an inspected tunnel,
//! and `policy explain` decides the same.

use std::net::Ipv4Addr;

use komugate_tests::dns::DnsServer;
use komugate_tests::gw::TestGateway;
use komugate_tests::raw::proxy_get;
use komugate_tests::upstream::HttpUpstream;

/// The UT1 `dating` url entries that were bypassed (UT1, CC BY-SA 4.0).
const DATING_URLS: &str = "askmen.com/dating/\nvk.com/vkdating\n";

const POLICY: &str = r#"
version = 1
timezone = "+09:00"

[defaults]
action = "allow"

[[site]]
name = "school"
cidrs = ["127.0.0.1/32"]

[[categories.source]]
format = "squidguard"
path = "ut1"

[[rule]]
name = "dating"
categories = ["dating"]
action = "block"
"#;

struct Env {
    gw: TestGateway,
    up: HttpUpstream,
    _dns: DnsServer,
    policy: std::path::PathBuf,
}

/// vk.com and askmen.com resolve to the loopback upstream through the test's
/// own DNS server (zone `com.`).
async fn env() -> Env {
    let dns = komugate_tests::dns::start(
        "com.",
        &[
            ("vk.com.", Ipv4Addr::LOCALHOST),
            ("askmen.com.", Ipv4Addr::LOCALHOST),
        ],
    )
    .await;
    let up = HttpUpstream::start("127.0.0.1").await;
    let dns_addr = dns.addr;
    let mut policy_path = None;
    let gw = TestGateway::start(|c, pki| {
        let root = pki.dir.parent().unwrap();
        let dating = root.join("ut1/dating");
        std::fs::create_dir_all(&dating).unwrap();
        std::fs::write(dating.join("urls"), DATING_URLS).unwrap();
        let policy = root.join("policy.toml");
        std::fs::write(&policy, POLICY).unwrap();
        c.policy.file = policy.display().to_string();
        c.dns.servers = vec![dns_addr];
        policy_path = Some(policy);
    })
    .await;
    Env {
        gw,
        up,
        _dns: dns,
        policy: policy_path.unwrap(),
    }
}

fn url(env: &Env, host: &str, path: &str) -> String {
    format!("http://{host}:{}{path}", env.up.addr.port())
}

#[tokio::test]
async fn re_encoded_url_entries_are_blocked_through_the_proxy() {
    let env = env().await;
    for (host, path) in [
        ("vk.com", "/vkdating"),
        ("vk.com", "/%76kdating"),
        ("vk.com", "/%76%6B%64ating?x=1"),
        ("vk.com", "/x/../vkdating"),
        ("askmen.com", "//dating/"),
        ("askmen.com", "/./dating//profile"),
        ("ASKMEN.com", "/%64ating/"),
    ] {
        let u = url(&env, host, path);
        let resp = proxy_get(env.gw.plain(), &u).await.unwrap();
        assert_eq!(resp.status, 403, "{u} must be blocked: {}", resp.text());
        assert_eq!(
            resp.header("komugate-rule").as_deref(),
            Some("dating"),
            "{u}"
        );
    }
    // The same hosts with other paths, and an encoded slash (another
    // resource), still go through.
    for (host, path) in [("vk.com", "/news"), ("askmen.com", "/%2Fdating/")] {
        let u = url(&env, host, path);
        let resp = proxy_get(env.gw.plain(), &u).await.unwrap();
        assert_eq!(resp.status, 200, "{u} must pass: {}", resp.text());
    }
    assert_eq!(
        env.up.seen().len(),
        2,
        "only the two allowed requests reached the origin"
    );
    env.gw.shutdown().await;
}

#[tokio::test]
async fn explain_agrees_with_the_proxy_on_re_encoded_urls() {
    let env = env().await;
    let policy = komugate_policy::Policy::load(&env.policy).expect("policy loads");
    for u in [
        "http://vk.com/%76kdating",
        "HTTP://askmen.com//dating/",
        "Http://VK.com./vkdating",
        "http://user@vk.com:8080/vk%64ating#frag",
    ] {
        let d = komugate::explain::explain(&policy, None, "127.0.0.1", u, "GET")
            .unwrap_or_else(|e| panic!("{u}: {e}"));
        assert_eq!(d.rule, "dating", "{u}: {d:?}");
    }
    let d = komugate::explain::explain(&policy, None, "127.0.0.1", "http://vk.com/news", "GET")
        .unwrap();
    assert_eq!(d.rule, "default");
    env.gw.shutdown().await;
}

/// The import counts of every list file are exported at start and follow a
/// reload: `komugate_category_list_lines{category,file,kind}`.
#[tokio::test]
async fn list_import_counts_are_metrics_and_follow_reloads() {
    let env = env().await;
    let urls_file = env.policy.parent().unwrap().join("ut1/dating/urls");
    let file = urls_file.display().to_string();
    let lines = |kind: &'static str| {
        env.gw.metric(
            "komugate_category_list_lines",
            &[("category", "dating"), ("file", &file), ("kind", kind)],
        )
    };
    assert_eq!(lines("entries"), 2.0, "{}", env.gw.metrics());
    assert_eq!(lines("invalid"), 0.0);

    // One more entry and one line that is not a URL entry.
    std::fs::write(
        &urls_file,
        format!("{DATING_URLS}example.com/dating/more\nhttp://[bad\n"),
    )
    .unwrap();
    env.gw
        .running
        .as_ref()
        .unwrap()
        .gateway
        .reload(komugate::logs::audit::ReloadSource::Sighup)
        .await
        .expect("the policy reloads");
    assert_eq!(lines("entries"), 3.0, "{}", env.gw.metrics());
    assert_eq!(lines("invalid"), 1.0, "{}", env.gw.metrics());
}
