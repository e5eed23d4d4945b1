//! The manuals' screenshots are generated, never hand-made: a gateway on the
//! example board's policy, a laptop client with a device certificate, real
//! traffic through it, and headless chromium through the pages the manuals
//! show (block pages for http and https, the client's "gateway unreachable"
//! page, the console's sign-in, dashboard, log search, record, explain and
//! audit pages).
//!
//! With `KOMUGATE_DOCS_IMAGES=DIR` (set by `docs/build.sh --screenshots`)
//! the PNGs go to DIR, normally `docs/ja/images`; otherwise under the test
//! output directory, so CI still opens every page without touching the
//! repository. The other test reads the manuals: every image they embed is
//! one this file makes (and is committed), and every console page they name
//! exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::Locator;
use komugate::console::accounts::{self, Account, AccountFile, Role};
use komugate_tests::browser::{Browser, BrowserOptions};
use komugate_tests::console::ConsoleClient;
use komugate_tests::gw::TestGateway;
use komugate_tests::upstream::HttpUpstream;

/// Every screenshot the manuals may embed: (file under images/, what it shows).
const SHOTS: &[(&str, &str)] = &[
    ("block-http.png", "block page of a blocked http:// site"),
    ("block-https.png", "block page of a blocked https:// site"),
    (
        "client-down.png",
        "the laptop client's page when the gateway is unreachable",
    ),
    ("console-signin.png", "console sign-in"),
    ("console-dashboard.png", "console dashboard"),
    ("console-logs.png", "console log search with results"),
    ("console-record.png", "console record detail"),
    ("console-explain.png", "console explain (why blocked?)"),
    ("console-report.png", "console monthly report"),
    ("console-audit.png", "console audit log"),
];

/// The console's menu as the staff manual names it.
const MENU: [&str; 5] = ["状況", "ログ検索", "判定の理由", "月次報告", "監査ログ"];

const ADMIN: &str = "鈴木";
const ADMIN_PW: &str = "docs-screenshot-password-1";
const DEVICE: &str = "PC-T-0001";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn docs_ja() -> PathBuf {
    repo().join("docs/ja")
}

/// The manuals: every Markdown file in docs/ja.
fn manuals() -> Vec<(PathBuf, String)> {
    let mut out: Vec<(PathBuf, String)> = std::fs::read_dir(docs_ja())
        .expect("docs/ja")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect();
    out.sort();
    assert!(
        out.len() >= 3,
        "the teacher and staff manuals and the quick reference"
    );
    out
}

/// Targets of Markdown images: `![caption](target)`.
fn image_refs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("![") {
        rest = &rest[i + 2..];
        let Some(j) = rest.find("](") else { break };
        let after = &rest[j + 2..];
        let Some(k) = after.find(')') else { break };
        out.push(after[..k].to_string());
        rest = &after[k..];
    }
    out
}

/// Console paths named in the text: `/console/...` up to the first
/// character that cannot be in a path.
fn console_paths(text: &str) -> BTreeSet<String> {
    text.match_indices("/console/")
        .map(|(i, _)| {
            text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_'))
                .collect::<String>()
        })
        .collect()
}

fn output_dir() -> PathBuf {
    match std::env::var_os("KOMUGATE_DOCS_IMAGES") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_TARGET_TMPDIR")).join("docs-images"),
    }
}

#[test]
fn manuals_embed_only_generated_images_that_exist() {
    let names: BTreeSet<&str> = SHOTS.iter().map(|(n, _)| *n).collect();
    let mut used = BTreeSet::new();
    for (path, text) in manuals() {
        for target in image_refs(&text) {
            match target.strip_prefix("images/") {
                Some(name) => {
                    assert!(
                        names.contains(name),
                        "{} embeds {target}, which tests/docs_screenshots.rs does not generate (add it to SHOTS)",
                        path.display()
                    );
                    assert!(
                        docs_ja().join(&target).is_file(),
                        "{} embeds {target}, which is missing: run docs/build.sh --screenshots and commit docs/ja/images",
                        path.display()
                    );
                    used.insert(name.to_string());
                }
                None => assert!(
                    docs_ja().join(&target).is_file(),
                    "{} embeds {target}, which is not in docs/ja",
                    path.display()
                ),
            }
        }
    }
    for name in &names {
        assert!(
            used.contains(*name),
            "{name} is generated but no manual embeds it"
        );
    }
    for e in std::fs::read_dir(docs_ja().join("images")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            names.contains(name.as_str()),
            "docs/ja/images/{name} is not generated by tests/docs_screenshots.rs: remove it"
        );
    }
}

/// The example board's policy with its paths made absolute, and the test
/// loopback network counted as 豊科南小学校 (so pages show a school).
fn example_policy(dir: &Path) -> PathBuf {
    let examples = repo().join("examples");
    let abs = |rel: &str| examples.join(rel).display().to_string();
    let text = std::fs::read_to_string(examples.join("policy.toml"))
        .unwrap()
        .replace("\"lists/ut1\"", &format!("{:?}", abs("lists/ut1")))
        .replace(
            "\"lists/allow.txt\"",
            &format!("{:?}", abs("lists/allow.txt")),
        )
        .replace("\"registry.csv\"", &format!("{:?}", abs("registry.csv")))
        .replace(
            "cidrs = [\"203.0.113.0/29\"]",
            "cidrs = [\"203.0.113.0/29\", \"127.0.0.0/8\"]",
        );
    let path = dir.join("policy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A gambling site of the example UT1 excerpt.
fn gambling_host() -> String {
    const HOST: &str = "000-online-casino.com";
    let list = std::fs::read_to_string(repo().join("examples/lists/ut1/gambling/domains")).unwrap();
    assert!(
        list.lines().any(|l| l.trim() == HOST),
        "{HOST} in the excerpt"
    );
    HOST.to_string()
}

/// A laptop client for `DEVICE`, connected to `server`.
async fn laptop(
    gw_dir: &Path,
    pki: &komugate_tests::gw::TestPki,
    server: String,
    wait_up: bool,
) -> komugate::client::RunningClient {
    let d = pki.device(DEVICE, &[]);
    let (cert, key) = (gw_dir.join("device.pem"), gw_dir.join("device.key"));
    std::fs::write(&cert, &d.cert_pem).unwrap();
    std::fs::write(&key, &d.key_pem).unwrap();
    let cfg = komugate::client::ClientConfig {
        server,
        server_name: "localhost".into(),
        cert,
        key,
        ca: pki.dir.join("inspect-ca.pem"),
        http: "127.0.0.1:0".into(),
        socks: String::new(),
        dns: String::new(),
        backoff_min_ms: 50,
        backoff_max_ms: 500,
        ..komugate::client::ClientConfig::default()
    };
    let c = komugate::client::start(cfg).await.expect("client starts");
    if wait_up {
        let link = c.link.clone();
        komugate_tests::eventually(Duration::from_secs(10), || {
            let up = link.is_up();
            async move { up.then_some(()) }
        })
        .await
        .expect("the client connects to the gateway");
    }
    c
}

async fn open(browser: &Browser, url: &str) {
    let opened = tokio::time::timeout(Duration::from_secs(60), browser.client.goto(url)).await;
    assert!(matches!(opened, Ok(Ok(()))), "opening {url}: {opened:?}");
}

/// Opens `url`, checks the page shows each of `needles`, saves `shot`.
async fn shoot(browser: &Browser, url: &str, needles: &[&str], shot: &str) {
    assert!(SHOTS.iter().any(|(n, _)| *n == shot), "{shot} is in SHOTS");
    open(browser, url).await;
    capture(browser, needles, shot).await;
}

async fn capture(browser: &Browser, needles: &[&str], shot: &str) {
    let text = browser.body_text().await;
    for needle in needles {
        assert!(
            text.contains(needle),
            "{needle:?} on the page for {shot}:\n{text}"
        );
    }
    let path = output_dir().join(shot);
    browser.screenshot(&path).await;
    eprintln!("wrote {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshots_of_the_pages_the_manuals_show() {
    let upstream = HttpUpstream::start("127.0.0.1").await;
    let gw = TestGateway::start(|c, _| {
        c.policy.file = example_policy(&c.data.dir).display().to_string();
        let mut file = AccountFile::default();
        file.accounts.push(Account {
            name: ADMIN.into(),
            role: Role::Admin,
            hash: accounts::hash_password(ADMIN_PW).unwrap(),
            changed: String::new(),
        });
        accounts::save(&komugate::console::users_file(c), &file).unwrap();
    })
    .await;
    let pki = gw.tls();
    let ca_pem = std::fs::read_to_string(pki.dir.join("inspect-ca.pem")).unwrap();
    let gambling = gambling_host();

    // The teacher's laptop: browser → komugate client → gateway (mTLS).
    let client = laptop(gw.dir.path(), &pki, gw.mtls().to_string(), true).await;
    let browser = Browser::start(&BrowserOptions {
        proxy: client.http,
        trusted_ca_pems: vec![ca_pem.clone()],
        ..BrowserOptions::default()
    })
    .await;
    let allowed = format!("http://plain.test:{}/kyouzai/", upstream.addr.port());
    open(&browser, &allowed).await;
    shoot(
        &browser,
        &format!("http://{gambling}/"),
        &[
            "このページへのアクセスはブロックされました",
            "ギャンブル (gambling)",
            "UT1 有害カテゴリ",
            DEVICE,
            "安曇野市教育委員会",
            " JST",
        ],
        "block-http.png",
    )
    .await;
    shoot(
        &browser,
        &format!("https://www.{gambling}/"),
        &[
            "このページへのアクセスはブロックされました",
            "次にすること",
            DEVICE,
        ],
        "block-https.png",
    )
    .await;
    browser.stop().await;
    client.shutdown();

    // A laptop whose gateway cannot be reached (nothing listens there).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = closed.local_addr().unwrap().to_string();
    drop(closed);
    let down = laptop(gw.dir.path(), &pki, nowhere, false).await;
    let browser = Browser::start(&BrowserOptions {
        proxy: down.http,
        trusted_ca_pems: vec![],
        ..BrowserOptions::default()
    })
    .await;
    shoot(
        &browser,
        "http://www.azumino-school.ed.jp/",
        &["komugate ゲートウェイに接続できません"],
        "client-down.png",
    )
    .await;
    browser.stop().await;
    down.shutdown();

    // The console, straight to the admin listener.
    let browser = Browser::start(&BrowserOptions::default()).await;
    let console = format!("http://{}", gw.admin());
    open(&browser, &format!("{console}/console/signin")).await;
    let c = &browser.client;
    c.find(Locator::Css("input[name=user]"))
        .await
        .unwrap()
        .send_keys(ADMIN)
        .await
        .unwrap();
    capture(&browser, &["サインイン"], "console-signin.png").await;
    c.find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys(ADMIN_PW)
        .await
        .unwrap();
    c.find(Locator::Css("form button, form input[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    komugate_tests::eventually(Duration::from_secs(10), || async {
        let url = c.current_url().await.ok()?;
        url.path().ends_with("/console/dashboard").then_some(())
    })
    .await
    .expect("signed in: the dashboard opens");
    let mut menu = vec!["ポリシー世代", "稼働状態"];
    menu.extend(MENU);
    capture(&browser, &menu, "console-dashboard.png").await;
    let search = format!("{console}/console/logs?device={DEVICE}&action=block");
    shoot(
        &browser,
        &search,
        &[&gambling, "ブロック"],
        "console-logs.png",
    )
    .await;
    shoot(
        &browser,
        &format!("{console}/console/logs/record?device={DEVICE}&action=block&n=0"),
        &["アクセス記録の詳細", "ギャンブル", DEVICE],
        "console-record.png",
    )
    .await;
    shoot(
        &browser,
        &format!("{console}/console/explain?device={DEVICE}&from=127.0.0.1&url=https%3A%2F%2Fwww.{gambling}%2F"),
        &["UT1 有害カテゴリ", "豊科南小学校"],
        "console-explain.png",
    )
    .await;
    // This month (JST), with the traffic just sent.
    let now =
        time::OffsetDateTime::now_utc().to_offset(time::UtcOffset::from_hms(9, 0, 0).unwrap());
    let month = format!("{:04}-{:02}", now.year(), u8::from(now.month()));
    shoot(
        &browser,
        &format!("{console}/console/report?month={month}"),
        &["月次報告", "豊科南小学校", "ギャンブル"],
        "console-report.png",
    )
    .await;
    shoot(
        &browser,
        &format!("{console}/console/audit"),
        &["監査ログ", ADMIN],
        "console-audit.png",
    )
    .await;
    browser.stop().await;

    // Every console page a manual names exists (a signed-in admin may open
    // all of them; pages that need parameters answer 400, not 404).
    let mut http = ConsoleClient::plain(gw.admin());
    assert_eq!(http.sign_in(ADMIN, ADMIN_PW).await.status, 303);
    let staff = std::fs::read_to_string(docs_ja().join("staff-manual.md")).unwrap();
    for item in MENU {
        assert!(
            staff.contains(item),
            "the staff manual names the menu item {item}"
        );
    }
    let paths: BTreeSet<String> = manuals()
        .iter()
        .flat_map(|(_, t)| console_paths(t))
        .collect();
    assert!(paths.len() >= 5, "{paths:?}");
    for path in paths {
        let p = http.get(&path).await;
        assert_ne!(
            p.status, 404,
            "{path}, named in a manual, is not a console page"
        );
        assert!(p.status.as_u16() < 500, "{path}: {}", p.status);
    }
    gw.shutdown().await;
}
