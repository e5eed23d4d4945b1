//! Bad input on every console page: each parameter a page reads gets
//! hostile values (HTML and script, SQL, spreadsheet formulas, control
//! characters, very long text, huge time ranges). Every answer is the page
//! or a clear Japanese error, hostile text never comes back as markup, and
//! nothing changes: the policy generation, the accounts file and the audit
//! chain stay as they were (the audit log only gains the searches' entries).

use komugate::console::accounts::Role;
use komugate_tests::console::{write_accounts, ConsoleClient, Page};
use komugate_tests::gw::TestGateway;

const ADMIN_PW: &str = "admin-password-333";

/// (page, the parameters it reads)
const PAGES: &[(&str, &[&str])] = &[
    ("/console/dashboard", &["lang"]),
    ("/console/dashboard/data", &["span"]),
    (
        "/console/logs",
        &[
            "since",
            "until",
            "device",
            "user",
            "group",
            "site",
            "host",
            "url_contains",
            "action",
            "rule",
            "category",
            "app",
            "ips",
            "page",
        ],
    ),
    ("/console/logs/record", &["n", "host", "since"]),
    ("/console/logs/export", &["format", "host", "until"]),
    ("/console/explain", &["device", "from", "url", "method"]),
    ("/console/audit", &["type", "contains"]),
    ("/console/report", &["month", "format"]),
];

fn hostile() -> Vec<String> {
    vec![
        "<script>alert(1)</script>".into(),
        "\"><img src=x onerror=alert(1)>".into(),
        "' OR '1'='1' --; DROP TABLE access".into(),
        "=cmd|' /C calc'!A0".into(),
        "+SUM(1)".into(),
        "@SUM(1)".into(),
        "-2+3".into(),
        "\tx".into(),
        "a\u{0}b".into(),
        "\r\n\r\nX-Injected: 1".into(),
        "../../../../etc/passwd".into(),
        "x".repeat(10_000),
        "%ff%fe".into(),
        "2026-13".into(),
        "99999-99-99".into(),
    ]
}

fn encode(s: &str) -> String {
    komugate::console::form::encode(s)
}

fn check(p: &Page, what: &str) {
    let text = p.text();
    assert!(
        matches!(p.status.as_u16(), 200 | 400 | 401 | 403),
        "{what}: status {} {}",
        p.status,
        &text[..text.len().min(300)]
    );
    assert!(
        !text.contains("<script>alert") && !text.contains("<img src=x"),
        "{what}: hostile markup came back"
    );
    assert!(p.header("x-injected").is_none(), "{what}: header injection");
    if p.status != 200
        && p.header("content-type")
            .unwrap_or_default()
            .starts_with("text/html")
    {
        assert!(text.contains("class=\"error\""), "{what}: {text}");
        assert!(
            text.chars().any(|c| ('\u{3040}'..='\u{30ff}').contains(&c)),
            "{what}: the error is in Japanese: {text}"
        );
    }
}

#[tokio::test]
async fn hostile_values_in_every_field_get_clear_errors_and_change_nothing() {
    let gw =
        TestGateway::start(|c, _| write_accounts(c, &[("root1", Role::Admin, ADMIN_PW)])).await;
    let users_file = {
        let cfg = &gw.running.as_ref().unwrap().gateway.config;
        komugate::console::users_file(cfg)
    };
    let accounts_before = std::fs::read(&users_file).unwrap();
    let generation = gw.metric("komugate_policy_generation", &[]);
    // Hundreds of requests on a busy machine: more time than `within` gives.
    let run = tokio::time::timeout(std::time::Duration::from_secs(180), async {
        let mut c = ConsoleClient::plain(gw.admin());
        // A hostile account name at sign-in: refused, and shown as text in the audit view.
        let p = c.sign_in("<script>alert(1)</script>", "x").await;
        assert_eq!(p.status, 401);
        check(&p, "sign-in");
        assert_eq!(c.sign_in("root1", ADMIN_PW).await.status, 303);
        let mut requests = 0;
        for (page, params) in PAGES {
            for param in *params {
                for v in hostile() {
                    let path = format!("{page}?{param}={}", encode(&v));
                    let p = c.get(&path).await;
                    check(&p, &format!("{page} {param}={:.40}", v));
                    requests += 1;
                }
            }
        }
        assert!(requests > 300);
        // Huge ranges are bounded work, not errors.
        for path in [
            "/console/logs?since=2000-01-01&until=2199-12-31",
            "/console/logs?since=1970-01-01&page=200",
            "/console/logs/export?since=2000-01-01&until=2199-12-31&format=csv",
            "/console/report?month=2199-12",
            "/console/report?month=2000-01&format=xlsx",
        ] {
            let p = c.get(path).await;
            assert_eq!(p.status, 200, "{path}: {}", p.text());
        }
        // Forms with hostile fields: the CSRF check first, then nothing happens.
        for v in hostile() {
            let p = c.post("/console/audit/verify", &[("csrf", &v)]).await;
            assert_eq!(p.status, 403, "a hostile csrf value is refused");
            check(&p, "verify");
        }
        // The audit view shows the hostile sign-in name as text.
        let p = c.get("/console/audit?type=console_session").await;
        assert!(
            p.text()
                .contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
            "{}",
            p.text()
        );
    })
    .await;
    assert!(
        run.is_ok(),
        "the hostile requests did not finish within 180 s"
    );
    // Nothing changed.
    assert_eq!(
        std::fs::read(&users_file).unwrap(),
        accounts_before,
        "accounts file"
    );
    assert_eq!(gw.metric("komugate_policy_generation", &[]), generation);
    let report = komugate::logs::audit::verify(&gw.dir.path().join("audit.log")).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    gw.shutdown().await;
}
