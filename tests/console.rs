//! The admin console over real sockets: sign-in (right, wrong, rate
//! limited), roles, CSRF, idle expiry, TLS on the admin listener, log search
//! of traffic just sent through the gateway, CSV / xlsx exports read back,
//! injection attempts neutralised, named API tokens, the audit trail.

use std::time::Duration;

use komugate::console::accounts::{self, Role};
use komugate_tests::console::{write_accounts, ConsoleClient, Page, SCHOOL_POLICY};
use komugate_tests::gw::TestGateway;
use komugate_tests::upstream::HttpUpstream;
use komugate_tests::{raw, within};

const OPERATOR_PW: &str = "operator-password-1";
const VIEWER_PW: &str = "viewer-password-22";
const ADMIN_PW: &str = "admin-password-333";

fn add_accounts(config: &komugate::config::Config) {
    write_accounts(
        config,
        &[
            ("op1", Role::Operator, OPERATOR_PW),
            ("見る人", Role::Viewer, VIEWER_PW),
            ("root1", Role::Admin, ADMIN_PW),
        ],
    );
}

async fn gateway(tweak: impl FnOnce(&mut komugate::config::Config)) -> TestGateway {
    TestGateway::start(|c, _| {
        tweak(c);
        add_accounts(c);
    })
    .await
}

fn audit_entries(gw: &TestGateway) -> Vec<serde_json::Value> {
    std::fs::read_to_string(gw.dir.path().join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
        .collect()
}

fn cookie_line(page: &Page, name: &str) -> String {
    page.set_cookies()
        .into_iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie in {:?}", page.set_cookies()))
}

#[tokio::test]
async fn sign_in_roles_csrf_sign_out_and_audit() {
    let gw = gateway(|_| {}).await;
    within("console sign-in", async {
        let mut c = ConsoleClient::plain(gw.admin());
        // Not signed in: every page sends to the sign-in page.
        let p = c.get("/console/logs").await;
        assert_eq!(p.status, 303);
        assert_eq!(p.location().as_deref(), Some("/console/signin"));

        let form = c.get("/console/signin").await;
        assert_eq!(form.status, 200);
        assert!(form.text().contains("サインイン"), "Japanese first");
        assert!(form
            .header("content-security-policy")
            .unwrap()
            .contains("script-src 'self'"));
        let pre = cookie_line(&form, "komugate_signin");
        assert!(
            pre.contains("HttpOnly") && pre.contains("SameSite=Strict"),
            "{pre}"
        );
        assert!(
            !pre.contains("Secure"),
            "plain HTTP on loopback: no Secure flag ({pre})"
        );

        // The sign-in form without its token is refused, even with the right password.
        let p = c
            .post(
                "/console/signin",
                &[("user", "op1"), ("password", OPERATOR_PW)],
            )
            .await;
        assert_eq!(p.status, 403);
        assert!(p.text().contains("トークン"), "{}", p.text());
        assert!(!c.cookies.contains_key("komugate_session"));

        // Wrong password: a clear Japanese message, no session.
        let p = c.sign_in("op1", "not-the-password").await;
        assert_eq!(p.status, 401);
        assert!(p
            .text()
            .contains("アカウント名またはパスワードが正しくありません"));
        assert!(!c.cookies.contains_key("komugate_session"));

        // Right password: a session cookie, HttpOnly + SameSite=Strict, and the dashboard.
        let p = c.sign_in("op1", OPERATOR_PW).await;
        assert_eq!(p.status, 303, "{}", p.text());
        assert_eq!(p.location().as_deref(), Some("/console/dashboard"));
        let s = cookie_line(&p, "komugate_session");
        assert!(
            s.contains("HttpOnly") && s.contains("SameSite=Strict") && s.contains("Path=/console/"),
            "{s}"
        );
        let d = c.get("/console/dashboard").await;
        assert_eq!(d.status, 200);
        assert!(
            d.text().contains("ポリシー世代") && d.text().contains("op1"),
            "{}",
            d.text()
        );
        assert!(d.text().contains("/console/assets/htmx.min.js"));
        assert!(
            d.visible().contains("JST (Asia/Tokyo)"),
            "times in the block page's zone"
        );
        let js = c.get("/console/assets/htmx.min.js").await;
        assert_eq!(js.status, 200);
        assert!(js.text().contains("htmx"), "htmx is embedded");

        // English on request, remembered in a cookie.
        let en = c.get("/console/dashboard?lang=en").await;
        assert!(en.text().contains("Policy generation"), "{}", en.text());
        let en = c.get("/console/dashboard").await;
        assert!(en.text().contains("Policy generation"));
        c.get("/console/dashboard?lang=ja").await;

        // An operator may not open the audit log (admin only).
        let p = c.get("/console/audit").await;
        assert_eq!(p.status, 403);
        assert!(
            p.text().contains("「管理者」以上の権限が必要です"),
            "{}",
            p.text()
        );

        // Sign-out without the CSRF token is refused and changes nothing.
        let p = c.post("/console/signout", &[]).await;
        assert_eq!(p.status, 403);
        assert_eq!(
            c.get("/console/dashboard").await.status,
            200,
            "still signed in"
        );
        let csrf = c.get("/console/dashboard").await.field("csrf").unwrap();
        let p = c.post("/console/signout", &[("csrf", &csrf)]).await;
        assert_eq!(p.status, 303);
        assert_eq!(c.get("/console/dashboard").await.status, 303);

        // A viewer is refused an operator page.
        let mut v = ConsoleClient::plain(gw.admin());
        assert_eq!(v.sign_in("見る人", VIEWER_PW).await.status, 303);
        assert_eq!(v.get("/console/logs").await.status, 200);
        let p = v.get("/console/explain").await;
        assert_eq!(p.status, 403);
        assert!(
            p.text().contains("「運用担当」以上の権限が必要です"),
            "{}",
            p.text()
        );
        let p = v.get("/console/logs/export?format=csv").await;
        assert_eq!(p.status, 403);

        // Unknown pages say so.
        let p = v.get("/console/nothing-here").await;
        assert_eq!(p.status, 404);
        assert!(
            p.visible().contains("/console/nothing-here"),
            "{}",
            p.text()
        );
    })
    .await;

    let events = audit_entries(&gw);
    let session = |user: &str, action: &str| {
        events
            .iter()
            .any(|e| e["type"] == "console_session" && e["user"] == user && e["action"] == action)
    };
    assert!(session("op1", "sign_in_failed"), "{events:#?}");
    assert!(session("op1", "sign_in"));
    assert!(session("op1", "sign_out"));
    assert!(session("見る人", "sign_in"));
    let report = komugate::logs::audit::verify(&gw.dir.path().join("audit.log")).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    gw.shutdown().await;
}

#[tokio::test]
async fn sign_in_is_rate_limited_per_account() {
    let gw = gateway(|c| {
        c.admin.signin_max_failures = 3;
        c.admin.signin_window_secs = 600;
    })
    .await;
    within("rate limit", async {
        let mut c = ConsoleClient::plain(gw.admin());
        for _ in 0..3 {
            assert_eq!(c.sign_in("op1", "wrong-password-x").await.status, 401);
        }
        // Locked: even the right password is refused, with a wait time.
        let p = c.sign_in("op1", OPERATOR_PW).await;
        assert_eq!(p.status, 429);
        assert!(
            p.text().contains("秒後にもう一度お試しください"),
            "{}",
            p.text()
        );
        assert!(!c.cookies.contains_key("komugate_session"));
        // Another account from the same address is not locked yet.
        assert_eq!(c.sign_in("root1", ADMIN_PW).await.status, 303);

        // Attempts sent at once cannot all pass before the first fails:
        // of 10 parallel wrong passwords for a fresh account, at most 3
        // are checked, the rest refused.
        let mut forms = Vec::new();
        for _ in 0..10 {
            let mut c = ConsoleClient::plain(gw.admin());
            let csrf = c.get("/console/signin").await.field("csrf").unwrap();
            forms.push((c, csrf));
        }
        let attempts = forms.into_iter().map(|(mut c, csrf)| async move {
            c.post(
                "/console/signin",
                &[
                    ("csrf", &csrf),
                    ("user", "見る人"),
                    ("password", "wrong-password-z"),
                ],
            )
            .await
            .status
        });
        let statuses = futures_util::future::join_all(attempts).await;
        let checked = statuses.iter().filter(|s| **s == 401).count();
        let refused = statuses.iter().filter(|s| **s == 429).count();
        assert!(checked <= 3 && checked + refused == 10, "{statuses:?}");
    })
    .await;
    assert!(audit_entries(&gw)
        .iter()
        .any(|e| e["action"] == "sign_in_refused" && e["user"] == "op1"));
    gw.shutdown().await;
}

#[tokio::test]
async fn an_idle_session_goes_back_to_sign_in() {
    // 3 s: the first request must come within it even on a loaded machine.
    let gw = gateway(|c| c.admin.session_idle_secs = 3).await;
    let mut c = ConsoleClient::plain(gw.admin());
    assert_eq!(c.sign_in("op1", OPERATOR_PW).await.status, 303);
    assert_eq!(c.get("/console/dashboard").await.status, 200);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let p = c.get("/console/dashboard").await;
    assert_eq!(p.status, 303);
    assert_eq!(p.location().as_deref(), Some("/console/signin?expired=1"));
    assert!(
        !c.cookies.contains_key("komugate_session"),
        "the stale cookie is cleared"
    );
    let p = c.get("/console/signin?expired=1").await;
    assert!(
        p.text().contains("一定時間操作がなかったため"),
        "{}",
        p.text()
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn console_over_tls_with_secure_cookies() {
    let gw = gateway(|c| c.admin.tls = "on".into()).await;
    within("TLS console", async {
        let mut c = ConsoleClient::tls(gw.admin(), gw.tls().server_ca());
        let form = c.get("/console/signin").await;
        assert_eq!(form.status, 200);
        assert!(cookie_line(&form, "komugate_signin").contains("; Secure"));
        let p = c.sign_in("op1", OPERATOR_PW).await;
        assert_eq!(p.status, 303);
        assert!(cookie_line(&p, "komugate_session").contains("; Secure"));
        assert_eq!(c.get("/console/dashboard").await.status, 200);
        assert_eq!(
            c.get("/healthz").await.status,
            200,
            "the whole listener is TLS"
        );
        // Plain HTTP to the TLS listener gets no HTTP answer.
        let r = raw::request(gw.admin(), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.map(|r| r.status != 200).unwrap_or(true));
    })
    .await;
    gw.shutdown().await;
}

/// A record as the gateway writes it, with attacker-chosen text in its
/// fields (a formula for spreadsheets, HTML for the page).
fn planted_record() -> String {
    let now = komugate::logs::record::format_rfc3339_ms(komugate::logs::record::now_ms());
    serde_json::json!({
        "time": now, "listener": "mtls", "device": "=cmd|' /C calc'!A0",
        "user": "<img src=x onerror=alert(1)>", "client": "127.0.0.9:5000",
        "method": "GET", "target": "http://planted.test/@SUM(1+1)", "host": "planted.test",
        "decision": "block", "rule": "+HYPERLINK(\"http://evil\")", "status": 403,
        "categories": ["gambling"],
    })
    .to_string()
}

#[tokio::test]
async fn search_finds_traffic_just_sent_and_exports_it() {
    let upstream = HttpUpstream::start("127.0.0.1").await;
    let gw = gateway(|_| {}).await;
    let url = format!(
        "http://plain.test:{}/console-probe?x=1",
        upstream.addr.port()
    );
    let r = raw::proxy_get(gw.plain(), &url).await.unwrap();
    assert_eq!(r.status, 200);
    let r = raw::proxy_get(gw.plain(), "http://blocked.test/")
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    gw.access_record(|v| v["target"] == "http://blocked.test/")
        .await;
    gw.access_record(|v| {
        v["target"]
            .as_str()
            .is_some_and(|t| t.contains("console-probe"))
    })
    .await;
    // A record with hostile text in it, in the log directory's format.
    let logs = gw.access_log.parent().unwrap().to_path_buf();
    std::fs::write(logs.join("planted.log"), planted_record() + "\n").unwrap();

    within("search and export", async {
        let mut c = ConsoleClient::plain(gw.admin());
        assert_eq!(c.sign_in("op1", OPERATOR_PW).await.status, 303);

        // The dashboard counts the traffic just sent (and the planted
        // blocked record), in its charts too.
        let d = c.get("/console/dashboard").await.visible();
        assert!(
            d.contains("<td id=\"requests-24h\">3</td>")
                && d.contains("<td id=\"blocks-24h\">2</td>"),
            "{d}"
        );
        assert!(
            d.contains("<td><a href=\"/console/logs?action=block&host=blocked.test\">blocked.test</a></td><td>1</td>"),
            "top blocked hosts: {d}"
        );
        let data = c.get("/console/dashboard/data").await;
        let v: serde_json::Value = serde_json::from_slice(&data.body).unwrap();
        for span in ["day", "week"] {
            let sum = |k: &str| {
                v[span][k]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap())
                    .sum::<u64>()
            };
            assert_eq!((sum("requests"), sum("blocks")), (3, 2), "{span}: {v}");
        }

        let p = c.get("/console/logs?host=plain.test").await;
        assert_eq!(p.status, 200, "{}", p.text());
        let html = p.text();
        assert!(
            html.contains("plain.test") && html.contains("1 件"),
            "{html}"
        );
        assert!(!html.contains("planted.test"), "the host filter applies");
        assert!(
            p.visible().contains("/console/explain?from=127.0.0.1&url=http"),
            "each row links to explain: {html}"
        );

        // The detail view, with a link to explain filled in.
        let d = c.get("/console/logs/record?host=plain.test&n=0").await;
        assert_eq!(d.status, 200, "{}", d.text());
        assert!(d.visible().contains("/console-probe?x=1"), "{}", d.text());
        assert!(
            d.text()
                .contains("/console/explain?from=127.0.0.1&amp;url=http"),
            "{}",
            d.text()
        );

        // Hostile text is shown as text.
        let p = c.get("/console/logs?host=planted.test").await;
        let html = p.text();
        assert!(
            html.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{html}"
        );
        assert!(!html.contains("<img src=x"), "{html}");
        // Categories read as their Japanese labels in the list.
        assert!(
            html.contains("<td>ギャンブル</td>") && !html.contains("<td>gambling</td>"),
            "{html}"
        );
        let p = c
            .get("/console/logs?host=%3Cscript%3Ealert(1)%3C%2Fscript%3E")
            .await;
        assert!(
            !p.text().contains("<script>alert"),
            "a filter value is escaped"
        );

        // Bad input: clear Japanese errors.
        let p = c.get("/console/logs?since=last+tuesday").await;
        assert_eq!(p.status, 400);
        assert!(
            p.text()
                .contains("開始日時「last tuesday」を日時として読み取れません"),
            "{}",
            p.text()
        );
        let p = c
            .get("/console/logs?since=2026-02-01T00:00&until=2026-01-01T00:00")
            .await;
        assert!(p.text().contains("開始日時は終了日時より前にしてください"));
        let p = c.get("/console/logs?page=100000").await;
        assert!(p.text().contains("ページ番号は 1 から"));
        let long = "a".repeat(300);
        let p = c.get(&format!("/console/logs?host={long}")).await;
        assert!(
            p.text().contains("「ホスト」の値が長すぎるか"),
            "{}",
            p.text()
        );
        let p = c.get("/console/logs?action=drop%20table").await;
        assert_eq!(p.status, 400);
        for malformed in [
            "/console/logs?page=abc",
            "/console/logs?page=-1",
            "/console/logs?since=%ff%fe",
            "/console/logs?until=99999-99-99",
            "/console/logs/record?n=abc",
            "/console/logs/record?n=99999999999999999999",
        ] {
            let p = c.get(malformed).await;
            assert!(p.status == 400 || p.status == 404, "{malformed}: {}", p.status);
            assert!(p.text().contains("class=\"error\""), "{malformed}: {}", p.text());
        }
        let p = c.get("/console/logs?host=%ff%00x").await;
        assert_eq!(p.status, 400, "a control character in a filter");
        let big = "x".repeat(70 * 1024);
        let csrf = c.get("/console/dashboard").await.field("csrf").unwrap();
        let p = c.post("/console/signout", &[("csrf", &csrf), ("pad", &big)]).await;
        assert_eq!(p.status, 400);
        assert!(p.text().contains("64 KB を超えているか"), "{}", p.text());
        assert_eq!(c.get("/console/dashboard").await.status, 200, "still signed in");

        // xlsx export of the traffic, read back.
        let x = c
            .get("/console/logs/export?host=plain.test&format=xlsx")
            .await;
        assert_eq!(x.status, 200);
        assert!(x.header("content-disposition").unwrap().contains(".xlsx"));
        use calamine::Reader;
        let mut wb: calamine::Xlsx<_> =
            calamine::open_workbook_from_rs(std::io::Cursor::new(x.body.clone())).unwrap();
        let sheet = wb.worksheet_range("ログ").unwrap();
        let rows: Vec<Vec<String>> = sheet
            .rows()
            .map(|r| r.iter().map(|c| c.to_string()).collect())
            .collect();
        assert_eq!(rows.len(), 2, "header + the one request: {rows:?}");
        assert!(
            rows[1].iter().any(|c| c.contains("/console-probe?x=1")),
            "{rows:?}"
        );

        // CSV export: BOM, formulas neutralised.
        let csv = c
            .get("/console/logs/export?host=planted.test&format=csv")
            .await;
        assert_eq!(csv.status, 200);
        assert!(csv.body.starts_with(b"\xEF\xBB\xBF"), "UTF-8 BOM for Excel");
        let text = csv.text();
        assert!(text.contains("'=cmd|' /C calc'!A0"), "{text}");
        assert!(text.contains("'+HYPERLINK("), "{text}");
        assert!(
            !text.contains(",=cmd") && !text.contains("\n=cmd"),
            "{text}"
        );
        // In xlsx, hostile text is a string cell, never a formula.
        let x = c
            .get("/console/logs/export?host=planted.test&format=xlsx")
            .await;
        let mut wb: calamine::Xlsx<_> =
            calamine::open_workbook_from_rs(std::io::Cursor::new(x.body.clone())).unwrap();
        let formulas = wb.worksheet_formula("ログ").unwrap();
        assert!(
            formulas.used_cells().all(|(_, _, f)| f.is_empty()),
            "no formula cells"
        );
        let values = wb.worksheet_range("ログ").unwrap();
        assert!(values.rows().any(|r| r
            .iter()
            .any(|c| matches!(c, calamine::Data::String(s) if s == "=cmd|' /C calc'!A0"))));

        let p = c.get("/console/logs/export?format=pdf").await;
        assert_eq!(p.status, 400);
        assert!(p.text().contains("csv か xlsx"));
    })
    .await;

    let events = audit_entries(&gw);
    let searched = |format: &str| {
        events.iter().any(|e| {
            e["type"] == "log_search"
                && e["via"] == "console"
                && e["format"] == format
                && e["actor"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("op1 (console, 127.0.0.1)")
        })
    };
    assert!(
        searched("page") && searched("record") && searched("xlsx") && searched("csv"),
        "{events:#?}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn named_api_tokens_are_named_in_the_audit_log() {
    let gw = gateway(|c| {
        c.admin
            .tokens
            .insert("backup-script".into(), "0123456789abcdef-backup".into());
    })
    .await;
    let req = |path: &str, method: &str, token: &str| {
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    };
    let r = raw::request(
        gw.admin(),
        req("/admin/logs?since=-1h", "GET", "0123456789abcdef-backup").as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = raw::request(
        gw.admin(),
        req("/admin/reload", "POST", "0123456789abcdef-backup").as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = raw::request(
        gw.admin(),
        req("/admin/logs", "GET", "wrong-token-wrong").as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    let events = audit_entries(&gw);
    assert!(
        events.iter().any(|e| e["type"] == "log_search"
            && e["actor"]
                .as_str()
                .unwrap_or("")
                .starts_with("token backup-script from")),
        "{events:#?}"
    );
    assert!(events
        .iter()
        .any(|e| e["type"] == "policy_reload" && e["source"]["token_name"] == "backup-script"));
    gw.shutdown().await;
}

#[tokio::test]
async fn explain_shows_the_deciding_rule_in_japanese() {
    let gw = gateway(|c| {
        let policy = c.data.dir.join("policy.toml");
        std::fs::write(&policy, SCHOOL_POLICY).unwrap();
        c.policy.file = policy.display().to_string();
    })
    .await;
    within("explain", async {
        let mut c = ConsoleClient::plain(gw.admin());
        assert_eq!(c.sign_in("op1", OPERATOR_PW).await.status, 303);
        let form = c.get("/console/explain").await;
        assert_eq!(form.status, 200);
        assert!(form.text().contains("判定を調べる"));

        let p = c
            .get("/console/explain?from=127.0.0.1&url=http%3A%2F%2Fblocked.test%2Fplay&method=GET")
            .await;
        assert_eq!(p.status, 200, "{}", p.text());
        let html = p.visible();
        assert!(html.contains("判定: ブロック"), "{html}");
        assert!(
            html.contains("ゲーム禁止") && html.contains("拠点「豊科南小学校」"),
            "{html}"
        );
        assert!(html.contains("ゲームサイトは利用できません。"), "{html}");

        let p = c
            .get("/console/explain?from=10.9.9.9&url=http%3A%2F%2Fwww.example.test%2F")
            .await;
        let html = p.visible();
        assert!(
            html.contains("判定: 許可") && html.contains("拠点外"),
            "{html}"
        );

        // Bad input: clear errors, nothing else happens.
        let p = c
            .get("/console/explain?from=not-an-ip&url=http%3A%2F%2Fa.test%2F")
            .await;
        assert_eq!(p.status, 400);
        assert!(p.visible().contains("判定できません"), "{}", p.text());
        let p = c.get("/console/explain?url=http%3A%2F%2Fa.test%2F").await;
        assert!(p
            .text()
            .contains("接続元 IP アドレスと URL を入力してください"));
        let p = c
            .get("/console/explain?from=127.0.0.1&url=%3Cscript%3Ealert(1)%3C%2Fscript%3E")
            .await;
        assert!(!p.text().contains("<script>alert"), "{}", p.text());
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn audit_view_filters_and_verifies_the_chain() {
    let gw = gateway(|_| {}).await;
    let audit_file = gw.dir.path().join("audit.log");
    within("audit view", async {
        let mut op = ConsoleClient::plain(gw.admin());
        assert_eq!(op.sign_in("op1", "wrong-password-y").await.status, 401);
        let mut c = ConsoleClient::plain(gw.admin());
        assert_eq!(c.sign_in("root1", ADMIN_PW).await.status, 303);

        let p = c.get("/console/audit?type=console_session").await;
        assert_eq!(p.status, 200, "{}", p.text());
        let html = p.visible();
        assert!(
            html.contains("sign_in_failed") && html.contains("root1"),
            "{html}"
        );
        assert!(!html.contains(">log_search<"), "the type filter applies");

        // Verifying is a POST: without its CSRF token it is refused.
        let p = c.post("/console/audit/verify", &[]).await;
        assert_eq!(p.status, 403);
        let csrf = c.get("/console/audit").await.field("csrf").unwrap();
        let p = c.post("/console/audit/verify", &[("csrf", &csrf)]).await;
        assert_eq!(p.status, 200, "{}", p.text());
        assert!(
            p.text().contains("監査ログは改ざんされていません。"),
            "{}",
            p.text()
        );

        // An edited entry is found, with its line.
        let text = std::fs::read_to_string(&audit_file).unwrap();
        std::fs::write(
            &audit_file,
            text.replacen("wrong password", "right password", 1),
        )
        .unwrap();
        let p = c.post("/console/audit/verify", &[("csrf", &csrf)]).await;
        let html = p.visible();
        assert!(html.contains("監査ログに不整合があります。"), "{html}");
        assert!(
            html.contains("content does not match its hash (edited)"),
            "{html}"
        );
    })
    .await;
    let events = audit_entries(&gw);
    assert!(events.iter().any(|e| e["type"] == "note"
        && e["actor"]
            .as_str()
            .unwrap_or("")
            .starts_with("root1 (console")
        && e["message"]
            .as_str()
            .unwrap_or("")
            .contains("verified the audit log chain")));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_changed_role_or_password_ends_the_session() {
    let gw = gateway(|_| {}).await;
    let users = gw.dir.path().join("console-users.json");
    let mut op = ConsoleClient::plain(gw.admin());
    let mut viewer = ConsoleClient::plain(gw.admin());
    assert_eq!(op.sign_in("op1", OPERATOR_PW).await.status, 303);
    assert_eq!(viewer.sign_in("見る人", VIEWER_PW).await.status, 303);
    let mut file = accounts::load(&users).unwrap();
    for a in &mut file.accounts {
        match a.name.as_str() {
            "op1" => a.role = Role::Viewer,
            "見る人" => a.hash = accounts::hash_password("a-new-password-4").unwrap(),
            _ => {}
        }
    }
    accounts::save(&users, &file).unwrap();
    for c in [&mut op, &mut viewer] {
        let p = c.get("/console/dashboard").await;
        assert_eq!(p.status, 303, "signed out by the change");
    }
    assert_eq!(
        viewer.sign_in("見る人", "a-new-password-4").await.status,
        303
    );
    assert_eq!(viewer.get("/console/dashboard").await.status, 200);
    gw.shutdown().await;
}
