//! The board's shipped policy (`examples/policy.toml`) in force through a
//! running gateway: for each control of the seed, real requests from
//! devices (mTLS, identities from the example's registry) and assertions on
//! the answer and on the access record.
//!
//! Only what a loopback test cannot have is substituted, each exactly once:
//! 豊科南小学校's range becomes 127.0.0.8/29 (a client bound to 127.0.0.9
//! is at school, 127.0.0.1 at home), the fixed egress address 127.0.0.7, the
//! firewall's in-school servers 127.0.0.0/8 and its SSH port the local echo
//! server's, the local HTTPS upstream's port a web port, the hospital
//! beacon's key the test's, and C4th's nightly maintenance window is moved
//! away from the current hour.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use komugate::beacon::BeaconKey;
use komugate_tests::gw::TestGateway;
use komugate_tests::raw::{RawConn, RawResponse};
use komugate_tests::upstream::{EchoServer, HttpUpstream, TlsUpstream};
use komugate_tests::within;
use rustls_pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const SCHOOL: &str = "127.0.0.9";
const HOME: &str = "127.0.0.1";
const FIXED_EGRESS: &str = "127.0.0.7";

/// Cloud names the inspecting gateway reaches at the local HTTPS upstream.
const CLOUD: &[&str] = &[
    "azumino.sharepoint.com",
    "www.dropbox.com",
    "outlook.office.com",
    "login.microsoftonline.com",
];

struct Seed {
    gw: TestGateway,
    web: HttpUpstream,
    cloud: TlsUpstream,
    ssh: EchoServer,
    smtp: EchoServer,
    beacon: BeaconKey,
    _dns: komugate_tests::dns::DnsServer,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Replaces `old` (which must occur exactly once) by `new`.
fn substitute(text: &mut String, old: &str, new: &str) {
    assert_eq!(
        text.matches(old).count(),
        1,
        "examples/policy.toml changed: `{old}` must occur once"
    );
    *text = text.replace(old, new);
}

async fn seed() -> Seed {
    let web = HttpUpstream::start("127.0.0.1").await;
    let cloud = TlsUpstream::start_for(CLOUD).await;
    let ssh = EchoServer::start().await;
    let smtp = EchoServer::start().await;
    let beacon = BeaconKey::generate().unwrap();
    let local = Ipv4Addr::LOCALHOST;
    let example: Vec<(&str, Ipv4Addr)> =
        vec![("www.c4th.example.", local), ("hyakumon.example.", local)];
    let com: Vec<String> = CLOUD.iter().map(|n| format!("{n}.")).collect();
    let com: Vec<(&str, Ipv4Addr)> = com.iter().map(|n| (n.as_str(), local)).collect();
    let dns = komugate_tests::dns::start_zones(&[("example.", &example), ("com.", &com)]).await;

    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut policy = std::fs::read_to_string(repo.join("policy.toml")).unwrap();
    substitute(
        &mut policy,
        r#"cidrs = ["203.0.113.0/29"]"#,
        r#"cidrs = ["127.0.0.8/29"]"#,
    );
    substitute(
        &mut policy,
        r#"source = "198.51.100.7""#,
        &format!(r#"source = "{FIXED_EGRESS}""#),
    );
    substitute(
        &mut policy,
        r#"cidrs = ["10.0.0.0/8"]"#,
        r#"cidrs = ["127.0.0.0/8"]"#,
    );
    substitute(
        &mut policy,
        "ports = [22, 3389]",
        &format!("ports = [{}, 3389]", ssh.addr.port()),
    );
    substitute(
        &mut policy,
        "web_ports = [80, 443, 8080, 8443]",
        &format!("web_ports = [80, 443, 8080, 8443, {}]", cloud.addr.port()),
    );
    substitute(
        &mut policy,
        r#"# beacon_key = "<base64 Ed25519 public key>""#,
        &format!(r#"beacon_key = "{}""#, beacon.public_base64()),
    );
    let jst_hour = (komugate::common::unix_now() / 3600 + 9) % 24;
    substitute(
        &mut policy,
        r#"time = "02:00-04:00""#,
        &format!(
            r#"time = "{:02}:00-{:02}:00""#,
            (jst_hour + 6) % 24,
            (jst_hour + 8) % 24
        ),
    );

    let (dns_addr, ca_pem) = (dns.addr, cloud.ca_pem.clone());
    let gw = TestGateway::start(move |c, pki| {
        let dir = pki.dir.parent().unwrap().join("policy");
        copy_dir(&repo.join("lists"), &dir.join("lists"));
        std::fs::copy(repo.join("registry.csv"), dir.join("registry.csv")).unwrap();
        std::fs::write(dir.join("policy.toml"), policy).unwrap();
        c.policy.file = dir.join("policy.toml").display().to_string();
        let ca = pki.dir.join("upstream-ca.pem");
        std::fs::write(&ca, ca_pem).unwrap();
        c.inspect.upstream_ca = ca.display().to_string();
        c.dns.servers = vec![dns_addr];
    })
    .await;
    Seed {
        gw,
        web,
        cloud,
        ssh,
        smtp,
        beacon,
        _dns: dns,
    }
}

type Tls<S> = tokio_rustls::client::TlsStream<S>;

impl Seed {
    /// A device's mTLS connection to the gateway from `source`.
    async fn device(&self, id: &str, source: &str) -> Tls<TcpStream> {
        let cert = self.gw.tls().device(id, &[]);
        let config = self.gw.tls().client_config(Some(&cert), &[b"http/1.1"]);
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(source.parse().unwrap(), 0))
            .unwrap();
        let tcp = sock.connect(self.gw.mtls()).await.unwrap();
        tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }

    /// `GET http://host:port/path` through the gateway (the plain-HTTP upstream).
    async fn get(&self, id: &str, source: &str, host: &str, extra: &str) -> RawResponse {
        let authority = format!("{host}:{}", self.web.addr.port());
        let mut conn = RawConn::new(self.device(id, source).await);
        conn.send(
            format!(
                "GET http://{authority}/{id} HTTP/1.1\r\nHost: {authority}\r\n{extra}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        within("forward GET", conn.read_response(false))
            .await
            .unwrap()
    }

    /// CONNECT `authority`; `Ok(stream)` on 200, `Err(status)` otherwise.
    async fn connect(
        &self,
        id: &str,
        source: &str,
        authority: &str,
    ) -> Result<Tls<TcpStream>, u16> {
        let mut conn = RawConn::new(self.device(id, source).await);
        conn.send(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let head = within("CONNECT", conn.read_response(true)).await.unwrap();
        if head.status != 200 {
            return Err(head.status);
        }
        assert!(conn.take_buffered().is_empty());
        Ok(conn.stream)
    }

    /// One request inside an inspected tunnel to a cloud name (the client
    /// trusts only the inspection CA).
    async fn cloud(&self, id: &str, source: &str, host: &str, request: &str) -> RawResponse {
        let authority = format!("{host}:{}", self.cloud.addr.port());
        let tunnel = self
            .connect(id, source, &authority)
            .await
            .unwrap_or_else(|s| panic!("CONNECT {authority}: {s}"));
        let config =
            komugate_tests::gw::client_config(self.gw.tls().server_ca(), None, &[b"http/1.1"]);
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from(host.to_string()).unwrap(), tunnel)
            .await
            .expect("the tunnel is inspected: the gateway's certificate is trusted");
        let mut conn = RawConn::new(tls);
        let request = request.replace("{host}", &authority);
        conn.send(request.as_bytes()).await.unwrap();
        within("inspected request", conn.read_response(false))
            .await
            .unwrap()
    }

    async fn record(&self, device: &str, target_has: &str) -> Value {
        let (device, target_has) = (device.to_string(), target_has.to_string());
        self.gw
            .access_record(move |r| {
                r["device"] == device.as_str()
                    && r["target"]
                        .as_str()
                        .is_some_and(|t| t.contains(&target_has))
            })
            .await
    }
}

fn post(path: &str, content_type: &str, body: &[u8]) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {{host}}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        String::from_utf8_lossy(body)
    )
}

fn multipart_file(name: &str, content: &str) -> (String, Vec<u8>) {
    let body = format!(
        "--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n{content}\r\n--B--\r\n"
    );
    ("multipart/form-data; boundary=B".into(), body.into_bytes())
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut S, msg: &[u8]) {
    conn.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    within("echo", conn.read_exact(&mut buf)).await.unwrap();
    assert_eq!(buf, msg);
}

fn summary(r: &Value) -> (&str, &str, &str) {
    (
        r["decision"].as_str().unwrap_or(""),
        r["rule"].as_str().unwrap_or(""),
        r["site"].as_str().unwrap_or(""),
    )
}

/// イ②1 C4th only from school or the board (never off-site), イ⑤ through
/// the fixed egress address; イ②2 百問繚乱 likewise, except for telework
/// staff; イ③ the hospital classroom, which has no address range, by a
/// signed site assertion.
#[tokio::test]
async fn school_apps_by_location_fixed_egress_and_hospital_assertion() {
    let s = seed().await;
    // イ②1: a teacher at home is refused C4th; at school it goes through.
    let r = s.get("PC-T-0001", HOME, "www.c4th.example", "").await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r
        .text()
        .contains("C4th は学校・教育委員会からのみ利用できます"));
    let rec = s.record("PC-T-0001", "www.c4th.example").await;
    assert_eq!(
        summary(&rec),
        ("block", "C4th 校外禁止", "offsite"),
        "{rec}"
    );
    assert_eq!(rec["app"], "c4th");
    let r = s.get("PC-T-0001", SCHOOL, "www.c4th.example", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // イ⑤: C4th sees the city's fixed address, whatever the client's.
    let seen = s.web.seen();
    assert_eq!(seen.len(), 1, "the refused request never left");
    assert_eq!(seen[0].peer.ip().to_string(), FIXED_EGRESS);
    let rec =
        s.gw.access_record(|r| r["decision"] == "allow" && r["app"] == "c4th")
            .await;
    assert_eq!(rec["site"], "豊科南小学校", "{rec}");
    assert_eq!(rec["egress"], FIXED_EGRESS, "{rec}");

    // イ②2: 百問繚乱 off-site only for telework staff.
    let r = s.get("PC-T-0001", HOME, "hyakumon.example", "").await;
    assert_eq!(r.status, 403);
    let rec = s.record("PC-T-0001", "hyakumon.example").await;
    assert_eq!(
        summary(&rec),
        ("block", "百問繚乱 校外禁止", "offsite"),
        "{rec}"
    );
    let r = s.get("PC-T-0002", HOME, "hyakumon.example", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = s.record("PC-T-0002", "hyakumon.example").await;
    assert_eq!(
        summary(&rec),
        ("allow", "百問繚乱 テレワーク", "offsite"),
        "{rec}"
    );
    // Telework is no exception for C4th.
    assert_eq!(
        s.get("PC-T-0002", HOME, "www.c4th.example", "")
            .await
            .status,
        403
    );
    let r = s.get("PC-T-0001", SCHOOL, "hyakumon.example", "").await;
    assert_eq!(r.status, 200);
    assert!(s
        .web
        .seen()
        .iter()
        .all(|seen| seen.peer.ip().to_string() == FIXED_EGRESS));

    // イ③: the hospital classroom's device, with its beacon's assertion.
    let now = komugate::common::unix_now();
    let token = s.beacon.issue("院内学級", "PC-H-0001", now).unwrap();
    let header = format!("{}: {token}\r\n", komugate::beacon::ASSERTION_HEADER);
    let r = s.get("PC-H-0001", HOME, "www.c4th.example", &header).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rec =
        s.gw.access_record(|r| r["device"] == "PC-H-0001" && r["decision"] == "allow")
            .await;
    assert_eq!(summary(&rec).2, "院内学級", "{rec}");
    // Without it, the same device at the same address is off-site.
    let r = s.get("PC-H-0001", HOME, "www.c4th.example", "").await;
    assert_eq!(r.status, 403);
    let rec =
        s.gw.access_record(|r| r["device"] == "PC-H-0001" && r["decision"] == "block")
            .await;
    assert_eq!(
        summary(&rec),
        ("block", "C4th 校外禁止", "offsite"),
        "{rec}"
    );
    s.gw.shutdown().await;
}

/// ⑪3 the harmful categories (UT1) are refused; ⑪4 non-web ports are
/// closed except SSH/RDP to in-school servers for teachers at a site,
/// through the data path (no web rule shadows the exception).
#[tokio::test]
async fn categories_and_firewall_exceptions() {
    let s = seed().await;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lists/ut1");
    let malware = std::fs::read_to_string(repo.join("malware/domains")).unwrap();
    let malware = malware
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap()
        .trim();
    let r = s.get("PC-T-0001", SCHOOL, malware, "").await;
    assert_eq!(r.status, 403);
    let rec = s.record("PC-T-0001", malware).await;
    assert_eq!(summary(&rec).1, "UT1 有害カテゴリ", "{rec}");
    assert_eq!(rec["categories"], serde_json::json!(["malware"]));

    // ⑪4: a teacher at school reaches the in-school SSH server.
    let ssh = s.ssh.addr.to_string();
    let mut tunnel = s
        .connect("PC-T-0001", SCHOOL, &ssh)
        .await
        .expect("teacher SSH at school");
    echo(&mut tunnel, b"SSH-2.0-OpenSSH_9.6\r\n").await;
    drop(tunnel);
    let rec =
        s.gw.access_record(|r| r["target"] == ssh.as_str() && r["decision"] == "allow")
            .await;
    assert_eq!(rec["rule"], "校内サーバー (SSH/RDP) は教職員のみ", "{rec}");
    // Not from home, not for board staff, and no other port.
    assert_eq!(s.connect("PC-T-0001", HOME, &ssh).await.err(), Some(403));
    assert_eq!(s.connect("PC-B-0002", SCHOOL, &ssh).await.err(), Some(403));
    let smtp = s.smtp.addr.to_string();
    assert_eq!(s.connect("PC-T-0001", SCHOOL, &smtp).await.err(), Some(403));
    let rec = s.record("PC-T-0001", &smtp).await;
    assert_eq!(summary(&rec).0, "block");
    assert_eq!(rec["rule"], "firewall-default");
    let rec = s.record("PC-B-0002", &ssh).await;
    assert_eq!(rec["rule"], "firewall-default", "{rec}");
    assert_eq!(s.ssh.accepts(), 1, "only the teacher at school got through");
    assert_eq!(s.smtp.accepts(), 0);
    // A web port other than 443 takes no CONNECT.
    assert_eq!(
        s.connect("PC-T-0001", SCHOOL, "www.c4th.example:8080")
            .await
            .err(),
        Some(403)
    );
    s.gw.shutdown().await;
}

/// イ②3 no downloads from the tenant's storage off-site; イ②4 no
/// local-file uploads to it off-site; no uploads to storage outside the
/// tenant; ⑪5 DLP (My Number) on uploads; tenant restriction on logins.
#[tokio::test]
async fn cloud_storage_and_dlp_controls() {
    let s = seed().await;
    let sp = "azumino.sharepoint.com";
    let download = "/sites/x/_layouts/15/download.aspx?UniqueId=1234";
    let get =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {{host}}\r\nConnection: close\r\n\r\n");
    // イ②3: off-site the download is refused before the upstream; viewing works.
    let r = s.cloud("PC-T-0001", HOME, sp, &get(download)).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let view = "/sites/x/_layouts/15/Doc.aspx?sourcedoc=1234&action=view";
    assert_eq!(s.cloud("PC-T-0001", HOME, sp, &get(view)).await.status, 200);
    let rec = s.record("PC-T-0001", "download.aspx").await;
    assert_eq!(
        summary(&rec),
        ("block", "casb-download", "offsite"),
        "{rec}"
    );
    // At school the same download is allowed.
    assert_eq!(
        s.cloud("PC-T-0001", SCHOOL, sp, &get(download))
            .await
            .status,
        200
    );

    // イ②4: a local file uploaded off-site is refused; at school it passes.
    let (ct, body) = multipart_file("名簿.xlsx", "local file");
    let upload = post("/sites/x/_api/web/lists", &ct, &body);
    let r = s.cloud("PC-T-0002", HOME, sp, &upload).await;
    assert_eq!(r.status, 403);
    let rec = s.record("PC-T-0002", "/sites/x/_api/web/lists").await;
    assert_eq!(summary(&rec), ("block", "casb-upload", "offsite"), "{rec}");
    assert_eq!(rec["casb"]["tenant"], "own");
    assert_eq!(s.cloud("PC-T-0001", SCHOOL, sp, &upload).await.status, 200);
    // Storage outside the tenant takes no upload, even at school.
    let r = s
        .cloud(
            "PC-T-0001",
            SCHOOL,
            "www.dropbox.com",
            &post("/upload", &ct, &body),
        )
        .await;
    assert_eq!(r.status, 403);
    let rec = s.record("PC-T-0001", "/upload").await;
    assert_eq!(
        (summary(&rec).1, rec["casb"]["tenant"].as_str()),
        ("casb-upload", Some("other"))
    );

    // ⑪5: a My Number in a mail body is refused; an invalid check digit passes.
    let mail = post(
        "/owa/service.svc?action=CreateItem",
        "application/json",
        r#"{"Body":"個人番号 1234 5678 9018 です"}"#.as_bytes(),
    );
    let r = s
        .cloud("PC-T-0001", SCHOOL, "outlook.office.com", &mail)
        .await;
    assert_eq!(r.status, 403);
    let rec = s.record("PC-T-0001", "CreateItem").await;
    assert_eq!(summary(&rec).1, "dlp:my-number", "{rec}");
    assert!(
        !rec.to_string().contains("9018"),
        "matched data is never logged"
    );
    let ok = post(
        "/owa/service.svc?action=SendItem",
        "application/json",
        r#"{"Body":"番号 1234 5678 9017 です"}"#.as_bytes(),
    );
    assert_eq!(
        s.cloud("PC-T-0001", SCHOOL, "outlook.office.com", &ok)
            .await
            .status,
        200
    );

    // Tenant restriction: the login carries the board's tenants.
    let login = get("/common/oauth2/v2.0/authorize");
    assert_eq!(
        s.cloud("PC-T-0001", SCHOOL, "login.microsoftonline.com", &login)
            .await
            .status,
        200
    );
    let rec = s.record("PC-T-0001", "authorize").await;
    assert!(
        rec["casb"]["tenant_restriction"]
            .as_array()
            .is_some_and(|h| !h.is_empty()),
        "{rec}"
    );
    // What reached the upstream: never a refused request.
    let reached = s.cloud.requests();
    assert_eq!(
        reached
            .iter()
            .filter(|l| l.contains("download.aspx"))
            .count(),
        1,
        "only the download at school: {reached:?}"
    );
    assert!(
        !reached
            .iter()
            .any(|l| l.contains("/upload") || l.contains("CreateItem")),
        "{reached:?}"
    );
    s.gw.shutdown().await;
}
