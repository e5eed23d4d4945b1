//! The admin console in a real browser (headless Debian chromium over
//! WebDriver, see support/browser.rs) against a gateway with real traffic
//! on loopback: password and OpenID Connect sign-in (through the real
//! provider's login and consent pages), the dashboard counting the traffic
//! just sent, a search, an xlsx export downloaded and read back, explain of
//! a blocked request, a viewer refused an operator page, a form posted
//! without its CSRF token refused, an idle session sent back to sign-in.
//! One chromium for the whole file; each page is saved as a PNG in
//! `$KOMUGATE_SCREENSHOT_DIR` (default target/tmp/screenshots).

use std::time::{Duration, Instant};

use calamine::Reader;
use fantoccini::Locator;
use komugate::console::accounts::Role;
use komugate_tests::browser::{
    click, downloaded, fill, password_sign_in, sign_out, text_of, wait_text, Browser,
    BrowserOptions,
};
use komugate_tests::console::{write_accounts, SCHOOL_POLICY};
use komugate_tests::gw::TestGateway;
use komugate_tests::oidc_provider::{free_port, OidcProvider, ProviderSetup};
use komugate_tests::raw;
use komugate_tests::upstream::HttpUpstream;

const OPERATOR_PW: &str = "operator-password-1";
const VIEWER_PW: &str = "viewer-password-22";

const CLIENT_SECRET: &str = "a-client-secret-for-tests-only-0123";

fn add_accounts(config: &komugate::config::Config) {
    write_accounts(
        config,
        &[
            ("op1", Role::Operator, OPERATOR_PW),
            ("見る人", Role::Viewer, VIEWER_PW),
        ],
    );
}

#[tokio::test]
async fn the_console_in_a_real_browser() {
    let started = Instant::now();
    let admin_port = free_port();
    let base = format!("http://127.0.0.1:{admin_port}");
    let setup = ProviderSetup {
        client_id: "komugate-console".into(),
        client_secret: CLIENT_SECRET.into(),
        redirect_uri: format!("{base}/console/oidc/callback"),
        accounts: serde_json::json!({
            "hanako": {"name": "山田 花子", "groups": ["komugate-admins"]},
        }),
        ..Default::default()
    };
    let provider = OidcProvider::start(&setup).await;
    let upstream = HttpUpstream::start("127.0.0.1").await;
    let gw = TestGateway::start(|c, _| {
        c.listen.admin = format!("127.0.0.1:{admin_port}");
        std::fs::write(c.data.dir.join("oidc-secret"), CLIENT_SECRET).unwrap();
        c.admin.oidc = Some(provider.console_config(&setup, "oidc-secret"));
        let policy = c.data.dir.join("policy.toml");
        std::fs::write(&policy, SCHOOL_POLICY).unwrap();
        c.policy.file = policy.display().to_string();
        add_accounts(c);
    })
    .await;

    // Real traffic through the gateway: one page allowed, one blocked.
    let url = format!(
        "http://plain.test:{}/browser-probe?x=1",
        upstream.addr.port()
    );
    assert_eq!(raw::proxy_get(gw.plain(), &url).await.unwrap().status, 200);
    assert_eq!(
        raw::proxy_get(gw.plain(), "http://blocked.test/casino")
            .await
            .unwrap()
            .status,
        403
    );
    gw.access_record(|v| v["target"] == "http://blocked.test/casino")
        .await;
    gw.access_record(|v| {
        v["target"]
            .as_str()
            .is_some_and(|t| t.contains("browser-probe"))
    })
    .await;

    let downloads = tempfile::tempdir().unwrap();
    let b = Browser::start(&BrowserOptions {
        proxy: None,
        trusted_ca_pems: vec![provider.ca_pem()],
        download_dir: Some(downloads.path().to_path_buf()),
    })
    .await;

    // Password sign-in; the dashboard counts the traffic just sent.
    password_sign_in(&b, &base, "op1", OPERATOR_PW, Some("console-signin")).await;
    assert_eq!(text_of(&b, "#requests-24h").await, "2");
    assert_eq!(text_of(&b, "#blocks-24h").await, "1");
    let top = text_of(&b, "#top-hosts").await;
    assert!(top.contains("blocked.test"), "top blocked hosts: {top}");
    b.shot("console-dashboard").await;

    // A search through the form (htmx swaps the results in).
    b.client
        .goto(&format!("{base}/console/logs"))
        .await
        .unwrap();
    fill(&b, "input[name=host]", "plain.test").await;
    click(&b, "form.filters button[type=submit]").await;
    let text = wait_text(&b, "search results", |_, t| t.contains("1 件")).await;
    assert!(
        text.contains("plain.test") && !text.contains("blocked.test"),
        "{text}"
    );
    b.shot("console-logs-search").await;

    // The xlsx export of that result, downloaded and read back.
    click(&b, "a[href*='format=xlsx']").await;
    let xlsx = downloaded(downloads.path(), "xlsx").await;
    let mut book: calamine::Xlsx<_> = calamine::open_workbook(&xlsx).unwrap();
    let sheet = book.worksheet_range_at(0).unwrap().unwrap();
    let cells: Vec<String> = sheet
        .rows()
        .flat_map(|r| r.iter().map(|c| c.to_string()))
        .collect();
    assert!(
        cells.iter().any(|c| c.contains("/browser-probe?x=1")),
        "{cells:?}"
    );
    assert!(
        !cells.iter().any(|c| c.contains("blocked.test")),
        "only the result"
    );

    // Explain of the blocked request, from its log row.
    b.client
        .goto(&format!("{base}/console/logs?action=block"))
        .await
        .unwrap();
    click(&b, "a[href^='/console/explain?']").await;
    let text = wait_text(&b, "explain", |url, t| {
        url.contains("/console/explain") && t.contains("ゲーム禁止")
    })
    .await;
    assert!(text.contains("判定") && text.contains("ブロック"), "{text}");
    b.shot("console-explain").await;

    // A form posted without its CSRF token: refused, still signed in.
    b.client
        .execute(
            "document.querySelector(\"form[action='/console/signout'] input[name=csrf]\").remove();",
            vec![],
        )
        .await
        .unwrap();
    click(&b, "form[action='/console/signout'] button").await;
    let text = wait_text(&b, "CSRF refusal", |_, t| t.contains("トークン")).await;
    assert!(!text.contains("サインインしてください"), "{text}");
    b.shot("console-csrf-refused").await;
    b.client
        .goto(&format!("{base}/console/dashboard"))
        .await
        .unwrap();
    wait_text(&b, "still signed in", |url, _| {
        url.ends_with("/console/dashboard")
    })
    .await;
    sign_out(&b).await;

    // A viewer is refused an operator page.
    password_sign_in(&b, &base, "見る人", VIEWER_PW, None).await;
    b.client
        .goto(&format!("{base}/console/explain"))
        .await
        .unwrap();
    wait_text(&b, "viewer refused", |_, t| {
        t.contains("「運用担当」以上の権限が必要です")
    })
    .await;
    b.shot("console-viewer-refused").await;
    sign_out(&b).await;

    // OpenID Connect through the provider's own login and consent pages.
    b.client
        .goto(&format!("{base}/console/signin"))
        .await
        .unwrap();
    click(&b, "#oidc-signin").await;
    wait_text(&b, "provider login page", |url, _| {
        url.starts_with(&provider.issuer)
    })
    .await;
    b.client
        .find(Locator::Css("input[name=login]"))
        .await
        .unwrap();
    fill(&b, "input[name=login]", "hanako").await;
    fill(&b, "input[name=password]", "any").await;
    b.shot("oidc-provider-login").await;
    click(&b, "button[type=submit]").await;
    wait_text(&b, "provider consent page", |url, t| {
        url.starts_with(&provider.issuer) && !t.is_empty() && t.contains("Continue")
    })
    .await;
    b.shot("oidc-provider-consent").await;
    click(&b, "button[type=submit]").await;
    wait_text(&b, "dashboard after OIDC sign-in", |url, t| {
        url.ends_with("/console/dashboard") && t.contains("山田 花子")
    })
    .await;
    b.shot("console-oidc-dashboard").await;
    b.client
        .goto(&format!("{base}/console/audit"))
        .await
        .unwrap();
    wait_text(&b, "audit page (admin by group)", |_, t| {
        t.contains("山田 花子")
    })
    .await;

    // An idle session goes back to sign-in (a second gateway, 2 s idle).
    let idle_port = free_port();
    let idle = TestGateway::start(|c, _| {
        c.listen.admin = format!("127.0.0.1:{idle_port}");
        c.admin.session_idle_secs = 2;
        add_accounts(c);
    })
    .await;
    let idle_base = format!("http://127.0.0.1:{idle_port}");
    password_sign_in(&b, &idle_base, "op1", OPERATOR_PW, None).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    b.client
        .goto(&format!("{idle_base}/console/logs"))
        .await
        .unwrap();
    wait_text(&b, "expired session", |url, t| {
        url.contains("/console/signin?expired=1") && t.contains("一定時間操作がなかったため")
    })
    .await;
    b.shot("console-session-expired").await;

    b.stop().await;
    idle.shutdown().await;
    gw.shutdown().await;
    eprintln!("browser test took {:?}", started.elapsed());
}
