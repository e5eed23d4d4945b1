//! Policy changes from the console over real sockets: a deny entry
//! previewed (diff, dry run over the traffic just sent) and applied (the
//! next request is blocked, the file keeps its comments, the change is
//! audited), two administrators from the same version (the second is
//! refused, nothing lost), the file edited on disk meanwhile (refused),
//! bad input (invalid CIDR, duplicate site, unknown category: a Japanese
//! error at the field, the file and the running policy untouched), a
//! category switched per policy, an earlier version restored in one
//! action, and `komugate policy diff --against-logs` on the same logs.

use komugate::console::accounts::Role;
use komugate_tests::console::{write_accounts, ConsoleClient, Page};
use komugate_tests::gw::TestGateway;
use komugate_tests::upstream::HttpUpstream;
use komugate_tests::{raw, within};

const OPERATOR_PW: &str = "operator-password-1";
const ADMIN_PW: &str = "admin-password-333";

pub const POLICY: &str = r#"# 安曇野市教育委員会 テスト用ポリシー
version = 1
timezone = "+09:00"

# ブロック画面の問い合わせ先
[contact]
name = "ICT 担当"             # shown on the block page

[defaults]
action = "allow"

[[group]]
name = "教職員"

[[site]]
name = "豊科南小学校"
cidrs = ["127.0.0.1/32"]

# 全体の許可・拒否リスト
[categories]
allow = [
    "azumino.example",        # 市のサイト
]
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

fn audit_events(gw: &TestGateway, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(gw.dir.path().join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
        .filter(|e| e["type"] == kind)
        .collect()
}

async fn signed_in(gw: &TestGateway, user: &str, pw: &str) -> ConsoleClient {
    let mut c = ConsoleClient::plain(gw.admin());
    let p = c.sign_in(user, pw).await;
    assert_eq!(p.status, 303, "{}", p.text());
    c
}

/// The policy page's csrf and version token.
async fn tokens(c: &mut ConsoleClient) -> (String, String) {
    let p = c.get("/console/policy").await;
    assert_eq!(p.status, 200, "{}", p.text());
    (p.field("csrf").unwrap(), p.field("base").unwrap())
}

async fn preview(c: &mut ConsoleClient, csrf: &str, base: &str, form: &[(&str, &str)]) -> Page {
    let mut f = vec![("csrf", csrf), ("base", base)];
    f.extend_from_slice(form);
    c.post("/console/policy/preview", &f).await
}

fn generation(gw: &TestGateway) -> f64 {
    gw.metric("komugate_policy_generation", &[])
}

#[tokio::test]
async fn policy_changes_from_the_console() {
    let upstream = HttpUpstream::start("127.0.0.1").await;
    let gw = TestGateway::start(|c, _| {
        let policy = c.data.dir.join("policy.toml");
        std::fs::write(&policy, POLICY).unwrap();
        std::fs::write(c.data.dir.join("games.txt"), "games.example\n").unwrap();
        c.policy.file = policy.display().to_string();
        // The console reloads after applying; no watcher racing the checks.
        c.policy.watch = false;
        write_accounts(
            c,
            &[
                ("op1", Role::Operator, OPERATOR_PW),
                ("root1", Role::Admin, ADMIN_PW),
            ],
        );
    })
    .await;
    let policy_file = gw.dir.path().join("policy.toml");
    within("console policy changes", async {
        // Traffic the dry run will find: two requests to plain.test, allowed.
        let url = format!("http://plain.test:{}/probe", upstream.addr.port());
        for _ in 0..2 {
            assert_eq!(raw::proxy_get(gw.plain(), &url).await.unwrap().status, 200);
        }
        gw.access_record(|v| v["target"].as_str().is_some_and(|t| t.contains("/probe")))
            .await;
        let mut op = signed_in(&gw, "op1", OPERATOR_PW).await;
        let mut root = signed_in(&gw, "root1", ADMIN_PW).await;
        let (csrf, base) = tokens(&mut op).await;
        let (root_csrf, root_base) = tokens(&mut root).await;
        assert_eq!(base, root_base);

        // Preview: the diff and the dry run (2 requests newly blocked, from
        // one client without a device certificate).
        let p = preview(
            &mut op,
            &csrf,
            &base,
            &[
                ("op", "add_entry"),
                ("scope", "global"),
                ("kind", "deny"),
                ("entry", "plain.test"),
                ("until", ""),
                ("note", "テスト"),
            ],
        )
        .await;
        assert_eq!(p.status, 200, "{}", p.text());
        let v = p.visible();
        assert!(
            v.contains("新たにブロックされる: <span class=\"count\">2</span>"),
            "{v}"
        );
        assert!(
            v.contains("+deny = [{ entry = \"plain.test\", note = \"テスト\" }]"),
            "{v}"
        );
        assert!(v.contains("端末証明書なしの接続元: 1"), "{v}");
        let id = p.field("id").unwrap();
        // The other administrator prepares a change from the same version.
        let p2 = preview(
            &mut root,
            &root_csrf,
            &root_base,
            &[
                ("op", "add_entry"),
                ("scope", "global"),
                ("kind", "allow"),
                ("entry", "other.example"),
            ],
        )
        .await;
        assert_eq!(p2.status, 200, "{}", p2.text());
        let id2 = p2.field("id").unwrap();

        // Apply: the file changes (comments kept), the policy reloads, the
        // next request to plain.test is blocked.
        let before = generation(&gw);
        let p = op
            .post("/console/policy/apply", &[("csrf", &csrf), ("id", &id)])
            .await;
        assert_eq!(p.status, 200, "{}", p.text());
        assert!(p.visible().contains("変更を適用し"), "{}", p.visible());
        assert!(generation(&gw) > before);
        let text = std::fs::read_to_string(&policy_file).unwrap();
        assert!(
            text.contains("# 全体の許可・拒否リスト") && text.contains("# 市のサイト"),
            "{text}"
        );
        assert!(
            text.contains("deny = [{ entry = \"plain.test\", note = \"テスト\" }]"),
            "{text}"
        );
        assert_eq!(raw::proxy_get(gw.plain(), &url).await.unwrap().status, 403);
        let applied = audit_events(&gw, "policy_change");
        assert_eq!(applied.len(), 1, "{applied:?}");
        assert_eq!(applied[0]["action"], "apply");
        assert!(applied[0]["actor"].as_str().unwrap().starts_with("op1"));
        assert!(applied[0]["diff"]
            .as_str()
            .unwrap()
            .contains("+deny = [{ entry = \"plain.test\""));
        assert!(
            applied[0]["dry_run"]
                .as_str()
                .unwrap()
                .contains("2 newly blocked"),
            "{applied:?}"
        );

        // The second administrator's change was based on the old version: refused.
        let text_after_first = std::fs::read_to_string(&policy_file).unwrap();
        let p = root
            .post(
                "/console/policy/apply",
                &[("csrf", &root_csrf), ("id", &id2)],
            )
            .await;
        assert_eq!(p.status, 409, "{}", p.text());
        assert!(
            p.visible().contains("他の変更と重なりました"),
            "{}",
            p.visible()
        );
        assert_eq!(
            std::fs::read_to_string(&policy_file).unwrap(),
            text_after_first
        );
        let refused = audit_events(&gw, "policy_change");
        assert!(
            refused[1]["error"]
                .as_str()
                .unwrap()
                .contains("changed since"),
            "{refused:?}"
        );

        // Edited on disk after the page was opened: refused as well.
        let (csrf, base) = tokens(&mut op).await;
        let edited = format!("{text_after_first}# 手で編集\n");
        std::fs::write(&policy_file, &edited).unwrap();
        let p = preview(
            &mut op,
            &csrf,
            &base,
            &[
                ("op", "add_entry"),
                ("scope", "global"),
                ("kind", "allow"),
                ("entry", "x.example"),
            ],
        )
        .await;
        assert_eq!(p.status, 409, "{}", p.text());
        assert_eq!(std::fs::read_to_string(&policy_file).unwrap(), edited);

        // Bad input: a Japanese error at the field, nothing applied.
        let (csrf, base) = tokens(&mut op).await;
        let gen = generation(&gw);
        for (form, field, message) in [
            (
                vec![
                    ("op", "upsert_site"),
                    ("name", "新しい学校"),
                    ("cidrs", "203.0.113.300/29"),
                ],
                "cidrs",
                "「203.0.113.300/29」は CIDR として読み取れません",
            ),
            (
                vec![
                    ("op", "upsert_site"),
                    ("name", "豊科南小学校"),
                    ("cidrs", "203.0.113.8/29"),
                ],
                "name",
                "拠点「豊科南小学校」は既にあります",
            ),
            (
                vec![
                    ("op", "upsert_site"),
                    ("name", "新しい学校"),
                    ("cidrs", "127.0.0.1/32"),
                ],
                "cidrs",
                "CIDR「127.0.0.1/32」は拠点「豊科南小学校」で既に使われています",
            ),
            (
                vec![
                    ("op", "set_category"),
                    ("policy", "全職員"),
                    ("category", "gamez"),
                    ("blocked", "1"),
                ],
                "category",
                "カテゴリ「gamez」はありません",
            ),
            (
                vec![
                    ("op", "add_entry"),
                    ("scope", "global"),
                    ("kind", "deny"),
                    ("entry", "a b.example"),
                ],
                "entry",
                "リストの項目として使えません",
            ),
        ] {
            let p = preview(&mut op, &csrf, &base, &form).await;
            assert_eq!(p.status, 422, "{form:?}: {}", p.text());
            let v = p.visible();
            let at = v
                .find(&format!("id=\"err-{field}\">"))
                .unwrap_or_else(|| panic!("{form:?}: no error at {field}: {v}"));
            assert!(
                v[at..].contains(message),
                "{form:?}: {}",
                &v[at..at + 300.min(v.len() - at)]
            );
            assert_eq!(std::fs::read_to_string(&policy_file).unwrap(), edited);
        }
        assert_eq!(generation(&gw), gen, "the running policy is untouched");

        // A category switched on for the policy, through preview and apply.
        let p = preview(
            &mut op,
            &csrf,
            &base,
            &[
                ("op", "set_category"),
                ("policy", "全職員"),
                ("category", "games"),
                ("blocked", "1"),
            ],
        )
        .await;
        assert_eq!(p.status, 200, "{}", p.text());
        let id = p.field("id").unwrap();
        let p = op
            .post("/console/policy/apply", &[("csrf", &csrf), ("id", &id)])
            .await;
        assert_eq!(p.status, 200, "{}", p.text());
        assert!(std::fs::read_to_string(&policy_file)
            .unwrap()
            .contains("block_categories = [\"games\"]"));
        assert_eq!(
            raw::proxy_get(gw.plain(), "http://www.games.example/")
                .await
                .unwrap()
                .status,
            403
        );

        // Every version kept; the first (the file as it was) restored in one action.
        let page = op.get("/console/policy").await;
        let v = page.visible();
        assert!(v.contains("この版に戻す"), "{v}");
        let (csrf, base) = (page.field("csrf").unwrap(), page.field("base").unwrap());
        let first = v
            .split("<code>000001-")
            .nth(1)
            .unwrap()
            .split('<')
            .next()
            .unwrap();
        let p = op
            .post(
                "/console/policy/restore",
                &[
                    ("csrf", &csrf),
                    ("base", &base),
                    ("version", &format!("000001-{first}")),
                ],
            )
            .await;
        assert_eq!(p.status, 200, "{}", p.text());
        assert_eq!(std::fs::read_to_string(&policy_file).unwrap(), POLICY);
        assert_eq!(raw::proxy_get(gw.plain(), &url).await.unwrap().status, 200);
        let restore = audit_events(&gw, "policy_change");
        assert_eq!(restore.last().unwrap()["action"], "restore");
        let versions = std::fs::read_dir(gw.dir.path().join("policy.toml.versions"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
            .count();
        // original, first apply, hand edit, category switch, restore
        assert_eq!(versions, 5);
    })
    .await;

    // The same question on the command line, against the same logs.
    let changed = gw.dir.path().join("changed.toml");
    std::fs::write(
        &changed,
        POLICY.replace("deny = []", "deny = [\"plain.test\"]"),
    )
    .unwrap();
    let mut out = Vec::new();
    let code = komugate::policy_edit::cli::run_to(
        komugate::policy_edit::cli::DiffArgs {
            old: policy_file.clone(),
            new: changed,
            against_logs: Some("7d".into()),
            loc: komugate::logs::cli::LogDirArgs {
                dir: Some(gw.dir.path().join("logs")),
                ..Default::default()
            },
            threads: None,
            json: false,
        },
        &mut out,
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out);
    assert_eq!(code, std::process::ExitCode::SUCCESS, "{stdout}");
    assert!(
        stdout.contains("-deny = []\n+deny = [\"plain.test\"]"),
        "{stdout}"
    );
    // Every request to plain.test so far: the two first, the one blocked
    // while the deny entry was in force, the one after the restore.
    assert!(
        stdout.contains("newly blocked: 4 requests, 0 devices, 1 clients without a device"),
        "{stdout}"
    );
    gw.shutdown().await;
}
