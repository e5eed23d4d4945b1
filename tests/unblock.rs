//! Unblock requests end to end: the block page offers 「アクセス許可を申請」,
//! the form posted through the proxy to the blocked site is answered by the
//! gateway and queued, the requester sees "pending" when they retry; an
//! operator approves it in the console (an allow entry written through the
//! policy versions, dry run in the audit entry, reload) and the page opens;
//! another is rejected and the requester sees the message; the sixth request
//! within the hour from one client is refused.

use komugate::console::accounts::Role;
use komugate_tests::console::{write_accounts, ConsoleClient, SCHOOL_POLICY};
use komugate_tests::gw::TestGateway;
use komugate_tests::raw::{self, RawResponse};
use komugate_tests::upstream::HttpUpstream;

const OPERATOR_PW: &str = "operator-password-for-unblock";
const SUBMIT: &str = komugate::unblock::SUBMIT_PATH;

async fn submit(gw: &TestGateway, host: &str, reason: &str) -> RawResponse {
    let body = format!(
        "reason={}&url={}",
        komugate::common::percent_encode(reason),
        komugate::common::percent_encode(&format!("http://{host}/casino"))
    );
    raw::request(
        gw.plain(),
        format!(
            "POST http://{host}{SUBMIT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn request_approve_reject_and_rate_limit() {
    let upstream = HttpUpstream::start("127.0.0.1").await;
    let gw = TestGateway::start(|c, _| {
        let policy = c.data.dir.join("policy.toml");
        let video =
            "\n[[rule]]\nname = \"動画禁止\"\nhosts = [\"video.test\"]\naction = \"block\"\n";
        std::fs::write(&policy, format!("{SCHOOL_POLICY}{video}")).unwrap();
        c.policy.file = policy.display().to_string();
        write_accounts(c, &[("op1", Role::Operator, OPERATOR_PW)]);
    })
    .await;
    let port = upstream.addr.port();
    let blocked = format!("http://blocked.test:{port}/casino");

    // The block page offers the request form.
    let page = raw::proxy_get(gw.plain(), &blocked).await.unwrap();
    assert_eq!(page.status, 403);
    let html = page.text();
    assert!(
        html.contains("アクセス許可を申請") && html.contains(SUBMIT),
        "{html}"
    );

    // Posted to the blocked site through the proxy: the gateway answers.
    let r = submit(&gw, "blocked.test", "授業で使う教材のため").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("受付番号 1"), "{}", r.text());
    let again = raw::proxy_get(gw.plain(), &blocked).await.unwrap();
    assert!(again.text().contains("申請済み"), "{}", again.text());
    assert_eq!(
        submit(&gw, "blocked.test", " ").await.status,
        400,
        "a reason is needed"
    );

    // The operator approves it for everyone.
    let mut console = ConsoleClient::plain(gw.admin());
    console.sign_in("op1", OPERATOR_PW).await;
    let queue = console.get("/console/unblock").await;
    assert!(
        queue.text().contains("授業で使う教材のため"),
        "{}",
        queue.text()
    );
    let csrf = queue.field("csrf").unwrap();
    let done = console
        .post(
            "/console/unblock/approve",
            &[
                ("csrf", &csrf),
                ("id", "1"),
                ("scope", "global"),
                ("until", ""),
            ],
        )
        .await;
    let text = done.text();
    assert!(
        text.contains("申請 1 を許可し") && text.contains("dry run over"),
        "{text}"
    );
    // The page opens now; the policy file has the entry and a kept version.
    let open = raw::proxy_get(gw.plain(), &blocked).await.unwrap();
    assert_eq!(open.status, 200, "{}", open.text());
    let policy = std::fs::read_to_string(gw.dir.path().join("policy.toml")).unwrap();
    assert!(
        policy.contains("blocked.test") && policy.contains("[categories]"),
        "{policy}"
    );
    assert!(gw.dir.path().join("policy.toml.versions").is_dir());
    let audit = std::fs::read_to_string(gw.dir.path().join("audit.log")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("unblock-approve") && l.contains("dry run over")),
        "{audit}"
    );

    // Another request: rejected with a message the requester sees on
    // their next visit.
    assert_eq!(submit(&gw, "video.test", "調べ学習").await.status, 200);
    let queue = console.get("/console/unblock").await;
    let csrf = queue.field("csrf").unwrap();
    let done = console
        .post(
            "/console/unblock/reject",
            &[
                ("csrf", &csrf),
                ("id", "2"),
                ("message", "学習用の別サイトを案内します"),
            ],
        )
        .await;
    assert!(
        done.text().contains("申請 2 を却下しました"),
        "{}",
        done.text()
    );
    let page = raw::proxy_get(gw.plain(), "http://video.test/")
        .await
        .unwrap();
    assert!(
        page.text().contains("学習用の別サイトを案内します"),
        "{}",
        page.text()
    );

    // Rate limit: five per client per hour (two made already).
    for h in ["a", "b", "c"] {
        let r = submit(&gw, &format!("{h}.gambling.test"), "r").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = submit(&gw, "d.gambling.test", "r").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("申請が多すぎます"), "{}", r.text());
    gw.shutdown().await;
}
