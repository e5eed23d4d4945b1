//! Unblock requests end to end: the block page offers 「アクセス許可を申請」,
//! the form posted through the proxy to the blocked site is answered by the
//! gateway and queued, the requester sees "pending" when they retry; an
//! operator approves it in the console (an allow entry written through the
//! policy versions, dry run in the audit entry, reload) and the page opens;
//! another is rejected and the requester sees the message; the sixth request
//! within the hour from one client is refused.

use std::net::SocketAddr;

use komugate::console::accounts::Role;
use komugate::pki::IssuedCert;
use komugate_tests::console::{write_accounts, ConsoleClient, SCHOOL_POLICY};
use komugate_tests::gw::{client_config, tls_connect, TestGateway};
use komugate_tests::raw::{self, RawConn, RawResponse};
use komugate_tests::upstream::HttpUpstream;
use tokio::net::TcpSocket;

const OPERATOR_PW: &str = "operator-password-for-unblock";
const SUBMIT: &str = komugate::unblock::SUBMIT_PATH;

/// The block page's form as the browser posts it through the proxy.
fn submission(host: &str, reason: &str) -> Vec<u8> {
    let body = format!(
        "reason={}&url={}",
        komugate::common::percent_encode(reason),
        komugate::common::percent_encode(&format!("http://{host}/casino"))
    );
    format!(
        "POST http://{host}{SUBMIT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn submit(gw: &TestGateway, host: &str, reason: &str) -> RawResponse {
    raw::request(gw.plain(), &submission(host, reason))
        .await
        .unwrap()
}

/// One request through the mTLS listener presenting `device`.
async fn mtls(gw: &TestGateway, device: &IssuedCert, bytes: &[u8]) -> RawResponse {
    let config = client_config(gw.tls().server_ca(), Some(device), &[b"http/1.1"]);
    let mut c = RawConn::new(tls_connect(gw.mtls(), config).await.unwrap());
    c.send(bytes).await.unwrap();
    c.read_response(false).await.unwrap()
}

fn get(url: &str) -> Vec<u8> {
    let host = url.split('/').nth(2).unwrap_or_default();
    format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// One request through the plain listener from the loopback address `from`.
async fn plain_from(gw: &TestGateway, from: &str, bytes: &[u8]) -> RawResponse {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    let mut c = RawConn::new(sock.connect(gw.plain()).await.unwrap());
    c.send(bytes).await.unwrap();
    c.read_response(false).await.unwrap()
}

async fn approve(
    console: &mut ConsoleClient,
    csrf: &str,
    id: &str,
    scope: &str,
) -> komugate_tests::console::Page {
    let form = [
        ("csrf", csrf),
        ("id", id),
        ("scope", scope),
        ("until", "2099-03-31"),
    ];
    console.post("/console/unblock/approve", &form).await
}

/// The approval's scopes: one for device T-A lets T-A through and not
/// T-B of the same group (nor anyone else at the site); one for the site
/// lets everyone at 127.0.0.1's site through and not a requester at
/// 127.0.0.2's. The entries land in the policy file with `devices` /
/// `locations` conditions; a scope the request does not offer is refused.
#[tokio::test]
async fn approval_for_one_device_or_one_site() {
    let upstream = HttpUpstream::start("127.0.0.1").await;
    let gw = TestGateway::start(|c, _| {
        let policy = c.data.dir.join("policy.toml");
        let more = "\n[[site]]\nname = \"穂高北小学校\"\ncidrs = [\"127.0.0.2/32\"]\n\n\
                    [[group]]\nname = \"教職員\"\n\n[registry]\npath = \"registry.csv\"\n";
        std::fs::write(&policy, format!("{SCHOOL_POLICY}{more}")).unwrap();
        std::fs::write(
            c.data.dir.join("registry.csv"),
            "device_id,user,groups\nT-A,田中 花子,教職員\nT-B,鈴木 一郎,教職員\n",
        )
        .unwrap();
        c.policy.file = policy.display().to_string();
        write_accounts(c, &[("op1", Role::Operator, OPERATOR_PW)]);
    })
    .await;
    let pki = gw.tls();
    // Their group comes from the registry.
    let (a, b) = (pki.device("T-A", &[]), pki.device("T-B", &[]));
    let url = format!("http://blocked.test:{}/casino", upstream.addr.port());
    for who in [&a, &b] {
        assert_eq!(mtls(&gw, who, &get(&url)).await.status, 403);
    }

    // T-A asks; the queue offers its device, its group, its site, everyone.
    let r = mtls(&gw, &a, &submission("blocked.test", "T-A の授業で使う")).await;
    assert!(r.text().contains("受付番号 1"), "{}", r.text());
    let mut console = ConsoleClient::plain(gw.admin());
    console.sign_in("op1", OPERATOR_PW).await;
    let queue = console.get("/console/unblock").await;
    let html = queue.text();
    for offered in [
        "value=\"device:T-A\"",
        "value=\"group:教職員\"",
        "value=\"site:豊科南小学校\"",
        "value=\"global\"",
    ] {
        assert!(html.contains(offered), "{offered}: {html}");
    }
    let csrf = queue.field("csrf").unwrap();
    // Another device's scope is not T-A's to get.
    let refused = approve(&mut console, &csrf, "1", "device:T-B").await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    let done = approve(&mut console, &csrf, "1", "device:T-A").await;
    assert!(
        done.text().contains("申請 1 を許可し") && done.text().contains("端末「T-A」"),
        "{}",
        done.text()
    );
    assert_eq!(
        mtls(&gw, &a, &get(&url)).await.status,
        200,
        "T-A is let through"
    );
    assert_eq!(mtls(&gw, &b, &get(&url)).await.status, 403, "T-B is not");
    assert_eq!(plain_from(&gw, "127.0.0.1", &get(&url)).await.status, 403);
    let policy = std::fs::read_to_string(gw.dir.path().join("policy.toml")).unwrap();
    assert!(
        policy.contains("entry = \"blocked.test\", devices = [\"T-A\"], until = \"2099-03-31\""),
        "{policy}"
    );

    // An anonymous requester at 豊科南小学校 asks; approved for the site.
    let r = plain_from(&gw, "127.0.0.1", &submission("blocked.test", "学校で使う")).await;
    assert!(r.text().contains("受付番号 2"), "{}", r.text());
    let queue = console.get("/console/unblock").await;
    assert!(
        !queue.text().contains("value=\"device:"),
        "no device to offer for an anonymous requester: {}",
        queue.text()
    );
    let done = approve(&mut console, &csrf, "2", "site:豊科南小学校").await;
    assert!(done.text().contains("申請 2 を許可し"), "{}", done.text());
    assert_eq!(plain_from(&gw, "127.0.0.1", &get(&url)).await.status, 200);
    assert_eq!(
        mtls(&gw, &b, &get(&url)).await.status,
        200,
        "T-B is at the site"
    );
    assert_eq!(
        plain_from(&gw, "127.0.0.2", &get(&url)).await.status,
        403,
        "穂高北小学校 is another site"
    );
    let policy = std::fs::read_to_string(gw.dir.path().join("policy.toml")).unwrap();
    assert!(
        policy.contains("locations = [\"豊科南小学校\"]"),
        "{policy}"
    );
    let audit = std::fs::read_to_string(gw.dir.path().join("audit.log")).unwrap();
    assert_eq!(
        audit
            .lines()
            .filter(|l| l.contains("unblock-approve") && l.contains("dry run over"))
            .count(),
        2,
        "{audit}"
    );
    gw.shutdown().await;
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
