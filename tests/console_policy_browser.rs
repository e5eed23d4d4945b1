//! The policy-change pages in a real browser (headless chromium over
//! WebDriver, as tests/console_browser.rs): a deny entry added through the
//! form, its preview with the diff and the dry run counting the traffic
//! just sent, applied (the proxy then blocks it); an invalid CIDR shown in
//! Japanese next to its field with nothing applied; a duplicate site
//! refused the same way; a category switch previewed; the first version
//! restored from the history in one click. Each page is saved as a PNG in
//! `$KOMUGATE_SCREENSHOT_DIR` (default target/tmp/screenshots).

use komugate::console::accounts::Role;
use komugate_tests::browser::{
    click, fill, password_sign_in, text_of, wait_text, Browser, BrowserOptions,
};
use komugate_tests::console::write_accounts;
use komugate_tests::gw::TestGateway;
use komugate_tests::raw;
use komugate_tests::upstream::HttpUpstream;

const OPERATOR_PW: &str = "operator-password-1";

const POLICY: &str = r#"# テスト用ポリシー
version = 1
timezone = "+09:00"

[contact]
name = "ICT 担当"             # shown on the block page

[[site]]
name = "豊科南小学校"
cidrs = ["127.0.0.1/32"]

# 全体の許可・拒否リスト
[categories]
deny = []

[[categories.source]]
format = "domainlist"
category = "games"
path = "games.txt"

[[ruleset]]
name = "base"

[[ruleset.rule]]
name = "ゲーム禁止"
hosts = ["blocked.test"]
action = "block"

[[policy]]
name = "全職員"
rulesets = ["base"]
"#;

#[tokio::test]
async fn policy_pages_in_a_real_browser() {
    let upstream = HttpUpstream::start("127.0.0.1").await;
    let gw = TestGateway::start(|c, _| {
        let policy = c.data.dir.join("policy.toml");
        std::fs::write(&policy, POLICY).unwrap();
        std::fs::write(c.data.dir.join("games.txt"), "games.example\n").unwrap();
        c.policy.file = policy.display().to_string();
        // The console reloads after applying; no watcher racing the checks.
        c.policy.watch = false;
        write_accounts(c, &[("op1", Role::Operator, OPERATOR_PW)]);
    })
    .await;
    let policy_file = gw.dir.path().join("policy.toml");
    let base = format!("http://{}", gw.admin());
    let url = format!("http://plain.test:{}/probe", upstream.addr.port());
    for _ in 0..2 {
        assert_eq!(raw::proxy_get(gw.plain(), &url).await.unwrap().status, 200);
    }
    gw.access_record(|v| v["target"].as_str().is_some_and(|t| t.contains("/probe")))
        .await;

    let b = Browser::start(&BrowserOptions::default()).await;
    password_sign_in(&b, &base, "op1", OPERATOR_PW, None).await;

    // The policy page; a deny entry through the form.
    b.client
        .goto(&format!("{base}/console/policy"))
        .await
        .unwrap();
    wait_text(&b, "policy page", |_, t| t.contains("許可・拒否リスト")).await;
    b.shot("policy-overview").await;
    click(&b, "#add-entry option[value=deny]").await;
    fill(&b, "#add-entry input[name=entry]", "plain.test").await;
    fill(&b, "#add-entry input[name=note]", "授業に不要").await;
    click(&b, "#add-entry button[type=submit]").await;
    wait_text(&b, "preview", |_, t| {
        t.contains("過去のアクセスログでの試算")
    })
    .await;
    assert_eq!(text_of(&b, "#dry-blocked .count").await, "2");
    assert_eq!(text_of(&b, "#dry-allowed .count").await, "0");
    let diff = text_of(&b, "#diff pre").await;
    assert!(
        diff.contains("+deny = [{ entry = \"plain.test\", note = \"授業に不要\" }]"),
        "{diff}"
    );
    b.shot("policy-preview").await;
    click(&b, "#apply button[type=submit]").await;
    wait_text(&b, "applied", |_, t| t.contains("変更を適用し")).await;
    b.shot("policy-applied").await;
    assert_eq!(raw::proxy_get(gw.plain(), &url).await.unwrap().status, 403);
    let applied = std::fs::read_to_string(&policy_file).unwrap();
    assert!(applied.contains("# 全体の許可・拒否リスト"), "{applied}");

    // An invalid CIDR for a new site: the error at the field, nothing applied.
    b.client
        .goto(&format!("{base}/console/policy"))
        .await
        .unwrap();
    let new_site = "form.site-form[data-site='']";
    fill(&b, &format!("{new_site} input[name=name]"), "院内学級").await;
    fill(
        &b,
        &format!("{new_site} textarea[name=cidrs]"),
        "10.0.0.300/24",
    )
    .await;
    click(&b, &format!("{new_site} button[type=submit]")).await;
    wait_text(&b, "invalid CIDR", |_, t| {
        t.contains("CIDR として読み取れません")
    })
    .await;
    let err = text_of(&b, "#err-cidrs").await;
    assert!(
        err.contains("「10.0.0.300/24」は CIDR として読み取れません"),
        "{err}"
    );
    b.client
        .execute(
            "document.getElementById('err-cidrs').scrollIntoView();",
            vec![],
        )
        .await
        .unwrap();
    b.shot("policy-invalid-cidr").await;
    assert_eq!(std::fs::read_to_string(&policy_file).unwrap(), applied);

    // A duplicate site name, the same way.
    b.client
        .goto(&format!("{base}/console/policy"))
        .await
        .unwrap();
    fill(&b, &format!("{new_site} input[name=name]"), "豊科南小学校").await;
    fill(
        &b,
        &format!("{new_site} textarea[name=cidrs]"),
        "203.0.113.8/29",
    )
    .await;
    click(&b, &format!("{new_site} button[type=submit]")).await;
    wait_text(&b, "duplicate site", |_, t| t.contains("既にあります")).await;
    assert!(text_of(&b, "#err-name")
        .await
        .contains("拠点「豊科南小学校」は既にあります"));
    b.shot("policy-duplicate-site").await;
    assert_eq!(std::fs::read_to_string(&policy_file).unwrap(), applied);

    // A category switch: blocking games for the policy.
    b.client
        .goto(&format!("{base}/console/policy"))
        .await
        .unwrap();
    click(&b, "button[data-cat='全職員/games']").await;
    wait_text(&b, "category preview", |_, t| {
        t.contains("過去のアクセスログでの試算")
    })
    .await;
    assert!(text_of(&b, "#diff pre")
        .await
        .contains("+block_categories = [\"games\"]"));
    b.shot("policy-category-preview").await;

    // The history: back to the first version in one click.
    b.client
        .goto(&format!("{base}/console/policy#versions"))
        .await
        .unwrap();
    b.shot("policy-versions").await;
    click(&b, "#versions tbody tr:last-child button[type=submit]").await;
    wait_text(&b, "restored", |_, t| t.contains("変更を適用し")).await;
    b.shot("policy-restored").await;
    assert_eq!(std::fs::read_to_string(&policy_file).unwrap(), POLICY);
    assert_eq!(raw::proxy_get(gw.plain(), &url).await.unwrap().status, 200);

    b.stop().await;
    gw.shutdown().await;
}
