//! CASB and DLP through the inspecting gateway: a local HTTPS
//! upstream stands in for the catalog hosts (its own CA, trusted by the
//! gateway as `inspect.upstream_ca`), a local DNS server (zone `com.`)
//! maps the catalog names to 127.0.0.1, the client trusts only the
//! inspection CA. The school is 127.0.0.1/32; a client bound to 127.0.0.2
//! is off-site.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use komugate_tests::gw::TestGateway;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const NAMES: &[&str] = &[
    "login.microsoftonline.com",
    "login.live.com",
    "accounts.google.com",
    "azumino.sharepoint.com",
    "azumino-my.sharepoint.com",
    "other.sharepoint.com",
    "www.dropbox.com",
    "outlook.office.com",
];

const GUID: &str = "0d3a2b1c-aaaa-bbbb-cccc-123456789abc";

/// What the upstream saw.
#[derive(Clone, Debug)]
#[allow(dead_code)]
struct Seen {
    host: String,
    method: Method,
    path: String,
    headers: HeaderMap,
    body_len: u64,
}

struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    ca_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    fn seen(&self, host: &str, path_prefix: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.host.starts_with(host) && s.path.starts_with(path_prefix))
            .cloned()
            .collect()
    }
}

/// HTTPS upstream for every catalog name: GET answers `view <path>`, or a
/// file (`Content-Disposition: attachment`) when the path contains
/// `attach`; other methods read (and discard) the body and answer its length.
async fn upstream() -> Upstream {
    let ca = komugate::pki::generate_ca("casb-test upstream CA").unwrap();
    let sans: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
    let leaf = ca.issue_server(&sans).unwrap();
    let chain = vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Default::default();
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let (parts, mut body) = req.into_parts();
                        let mut n = 0u64;
                        while let Some(f) = body.frame().await {
                            if let Some(d) = f?.data_ref() {
                                n += d.len() as u64;
                            }
                        }
                        let host = parts
                            .headers
                            .get("host")
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let path = parts
                            .uri
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        seen.lock().unwrap().push(Seen {
                            host,
                            method: parts.method.clone(),
                            path: path.clone(),
                            headers: parts.headers,
                            body_len: n,
                        });
                        let resp = if parts.method == Method::GET && path.contains("attach") {
                            Response::builder()
                                .header(
                                    "content-disposition",
                                    "attachment; filename=\"seiseki.xlsx\"",
                                )
                                .body(Full::new(Bytes::from_static(b"file bytes")))
                                .unwrap()
                        } else if parts.method == Method::GET {
                            Response::new(Full::new(Bytes::from(format!("view {path}"))))
                        } else {
                            Response::new(Full::new(Bytes::from(format!("got {n}"))))
                        };
                        Ok::<_, hyper::Error>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        seen,
        ca_pem: ca.cert_pem(),
        task,
    }
}

const POLICY: &str = r#"
version = 1

[defaults]
action = "allow"
tunnel = "inspect"

[tenant]
microsoft = ["0d3a2b1c-aaaa-bbbb-cccc-123456789abc", "azumino-school.ed.jp"]
google = ["azumino-school.ed.jp"]
sharepoint = ["azumino"]

[[site]]
name = "豊科南小学校"
cidrs = ["127.0.0.1/32"]

[casb]
upload_threshold = 65536
inspect_max_bytes = 1048576
over_cap = "allow"

[[casb.dlp]]
name = "my-number"
my_number = true
action = "block"

[[casb.dlp]]
name = "student-records"
keywords = ["指導要録", "成績一覧"]
action = "block"

[[casb.dlp]]
name = "phone"
regex = '0\d{1,4}-\d{1,4}-\d{4}'
action = "allow"

[[rule]]
name = "tenant restriction and DLP everywhere"
casb = { tenant_restriction = true, dlp = true }

[[rule]]
name = "no uploads outside the tenant"
when = { app_category = ["storage", "transfer", "ai"], app_tenant = "other" }
casb = { upload = "block" }

[[rule]]
name = "off-site: work in the cloud only"
when = { app_tenant = "own", app_category = "storage", location = "offsite" }
casb = { upload = "block", download = "block" }
"#;

struct Env {
    gw: TestGateway,
    up: Upstream,
    _dns: komugate_tests::dns::DnsServer,
}

async fn env() -> Env {
    let records: Vec<(String, Ipv4Addr)> = NAMES
        .iter()
        .map(|n| (format!("{n}."), Ipv4Addr::LOCALHOST))
        .collect();
    let refs: Vec<(&str, Ipv4Addr)> = records.iter().map(|(n, ip)| (n.as_str(), *ip)).collect();
    let dns = komugate_tests::dns::start("com.", &refs).await;
    let up = upstream().await;
    let (dns_addr, ca_pem) = (dns.addr, up.ca_pem.clone());
    let gw = TestGateway::start(move |c, pki| {
        let ca = pki.dir.join("upstream-ca.pem");
        std::fs::write(&ca, ca_pem).unwrap();
        c.inspect.upstream_ca = ca.display().to_string();
        c.dns.servers = vec![dns_addr];
        let policy = pki.dir.parent().unwrap().join("policy.toml");
        std::fs::write(&policy, POLICY).unwrap();
        c.policy.file = policy.display().to_string();
    })
    .await;
    Env { gw, up, _dns: dns }
}

impl Env {
    /// One request through an inspected tunnel from `from` (127.0.0.1 = school, 127.0.0.2 = off-site).
    async fn send<B>(
        &self,
        from: &str,
        host: &str,
        req: Request<B>,
    ) -> (StatusCode, HeaderMap, String)
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let authority = format!("{host}:{}", self.up.addr.port());
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let mut conn: TcpStream = sock.connect(self.gw.plain()).await.unwrap();
        conn.write_all(
            format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            assert_eq!(conn.read(&mut b).await.unwrap(), 1, "closed during CONNECT");
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "CONNECT {authority}: {}",
            String::from_utf8_lossy(&head)
        );
        let cfg =
            komugate_tests::gw::client_config(self.gw.tls().server_ca(), None, &[b"http/1.1"]);
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(ServerName::try_from(host.to_string()).unwrap(), conn)
            .await
            .unwrap();
        let (mut sender, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(c);
        let mut req = req;
        req.headers_mut().insert("host", authority.parse().unwrap());
        let resp = sender.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).to_string(),
        )
    }
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).body(Full::default()).unwrap()
}

fn post(path: &str, content_type: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .unwrap()
}

fn multipart_file(name: &str, content: &[u8]) -> (String, Vec<u8>) {
    let mut b = Vec::new();
    b.extend_from_slice(
        b"--KomugateBoundary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"",
    );
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(b"\"\r\nContent-Type: application/octet-stream\r\n\r\n");
    b.extend_from_slice(content);
    b.extend_from_slice(b"\r\n--KomugateBoundary--\r\n");
    ("multipart/form-data; boundary=KomugateBoundary".into(), b)
}

fn docx(text: &str) -> Vec<u8> {
    use std::io::Write;
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut buf);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    z.start_file("[Content_Types].xml", opts).unwrap();
    z.write_all(b"<Types/>").unwrap();
    z.start_file("word/document.xml", opts).unwrap();
    write!(z, "<w:document xmlns:w=\"w\"><w:body><w:p><w:r><w:t>{text}</w:t></w:r></w:p></w:body></w:document>").unwrap();
    z.finish().unwrap();
    buf.into_inner()
}

async fn record(gw: &TestGateway, host: &str, path: &str) -> serde_json::Value {
    let (host, path) = (host.to_string(), path.to_string());
    gw.access_record(move |v| {
        v["target"]
            .as_str()
            .is_some_and(|t| t.contains(&host) && t.contains(&path))
    })
    .await
}

#[tokio::test]
async fn tenant_restriction_headers_replace_forged_ones() {
    let e = env().await;
    let req = Request::get("/common/oauth2/authorize")
        .header("Restrict-Access-To-Tenants", "evil.example")
        .header(
            "Restrict-Access-Context",
            "00000000-0000-0000-0000-000000000000",
        )
        .body(Full::<Bytes>::default())
        .unwrap();
    let (st, _, _) = e.send("127.0.0.1", "login.microsoftonline.com", req).await;
    assert_eq!(st, StatusCode::OK);
    let s =
        e.up.seen("login.microsoftonline.com", "/common")
            .pop()
            .expect("login request reached the upstream");
    let vals = |n: &str| {
        s.headers
            .get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        vals("restrict-access-to-tenants"),
        vec![format!("{GUID},azumino-school.ed.jp")]
    );
    assert_eq!(vals("restrict-access-context"), vec![GUID.to_string()]);
    assert!(
        vals("sec-restrict-tenant-access-policy").is_empty(),
        "TRv2 not configured"
    );

    let req = Request::get("/login.srf")
        .header("sec-Restrict-Tenant-Access-Policy", "allow-all")
        .body(Full::<Bytes>::default())
        .unwrap();
    e.send("127.0.0.2", "login.live.com", req).await;
    let s = e.up.seen("login.live.com", "/login.srf").pop().unwrap();
    assert_eq!(
        s.headers
            .get_all("sec-restrict-tenant-access-policy")
            .iter()
            .collect::<Vec<_>>(),
        vec!["restrict-msa"]
    );

    let req = Request::get("/signin")
        .header("X-GoogApps-Allowed-Domains", "gmail.com")
        .body(Full::<Bytes>::default())
        .unwrap();
    e.send("127.0.0.1", "accounts.google.com", req).await;
    let s = e.up.seen("accounts.google.com", "/signin").pop().unwrap();
    assert_eq!(
        s.headers
            .get_all("x-googapps-allowed-domains")
            .iter()
            .collect::<Vec<_>>(),
        vec!["azumino-school.ed.jp"]
    );
    let r = record(&e.gw, "accounts.google.com", "/signin").await;
    assert_eq!(r["casb"]["tenant_restriction"][0], "google", "{r}");
    assert!(
        e.gw.metric(
            "komugate_casb_events_total",
            &[("app", "m365-login"), ("kind", "tenant-restriction")]
        ) >= 1.0
    );
    e.gw.shutdown().await;
}

#[tokio::test]
async fn uploads_to_non_tenant_storage_are_blocked_tenant_passes() {
    let e = env().await;
    let (ct, body) = multipart_file("report.pdf", b"just a file");
    let (st, h, page) = e
        .send(
            "127.0.0.1",
            "www.dropbox.com",
            post("/upload", &ct, body.clone()),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{page}");
    assert_eq!(
        h.get("komugate-rule").map(|v| v.to_str().unwrap()),
        Some("casb-upload")
    );
    assert!(
        e.up.seen("www.dropbox.com", "/upload").is_empty(),
        "a blocked upload never reaches the upstream"
    );
    // Another tenant's SharePoint is not the board's either.
    let (st, _, _) = e
        .send(
            "127.0.0.1",
            "other.sharepoint.com",
            post("/sites/x/_api/web/lists", &ct, body.clone()),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // The board's tenant, in school: the upload passes.
    let (st, _, answer) = e
        .send(
            "127.0.0.1",
            "azumino.sharepoint.com",
            post("/sites/x/_api/web/lists", &ct, body.clone()),
        )
        .await;
    assert_eq!(
        (st, answer),
        (StatusCode::OK, format!("got {}", body.len()))
    );
    let r = record(&e.gw, "www.dropbox.com", "/upload").await;
    assert_eq!(
        (
            r["decision"].as_str(),
            r["rule"].as_str(),
            r["app"].as_str()
        ),
        (Some("block"), Some("casb-upload"), Some("dropbox"))
    );
    assert_eq!(r["casb"]["tenant"], "other");
    let r = record(&e.gw, "azumino.sharepoint.com", "/sites/x/_api/web/lists").await;
    assert_eq!(
        (r["casb"]["tenant"].as_str(), r["casb"]["upload"].as_bool()),
        (Some("own"), Some(true)),
        "{r}"
    );
    assert_eq!(
        e.gw.metric(
            "komugate_casb_requests_total",
            &[("app", "dropbox"), ("action", "block")]
        ),
        1.0
    );
    assert_eq!(
        e.gw.metric(
            "komugate_casb_requests_total",
            &[("app", "sharepoint"), ("action", "allow")]
        ),
        1.0
    );
    e.gw.shutdown().await;
}

#[tokio::test]
async fn offsite_local_file_upload_blocked_json_edit_passes() {
    let e = env().await;
    let (ct, body) = multipart_file("名簿.xlsx", b"local file");
    let (st, h, _) = e
        .send(
            "127.0.0.2",
            "azumino.sharepoint.com",
            post("/sites/x/_api/web/lists", &ct, body),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(h.get("komugate-rule").unwrap(), "casb-upload");
    // Known upload endpoint (catalog), even without multipart.
    let (st, _, _) = e
        .send(
            "127.0.0.2",
            "azumino.sharepoint.com",
            post(
                "/sites/x/_api/web/GetFolderByServerRelativeUrl('/d')/Files/add(url='a.txt')",
                "application/octet-stream",
                "x",
            ),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // Editing in the app (a small JSON body) goes through.
    let edit = r#"{"__metadata":{"type":"SP.ListItem"},"Title":"週案 更新"}"#;
    let (st, _, answer) = e
        .send(
            "127.0.0.2",
            "azumino.sharepoint.com",
            post("/sites/x/_api/web/lists/items(1)", "application/json", edit),
        )
        .await;
    assert_eq!(
        (st, answer),
        (StatusCode::OK, format!("got {}", edit.len()))
    );
    e.gw.shutdown().await;
}

#[tokio::test]
async fn sharepoint_downloads_blocked_offsite_allowed_in_school() {
    let e = env().await;
    let download = "/sites/x/_layouts/15/download.aspx?UniqueId=1234";
    let attach = "/sites/x/Shared%20Documents/seiseki.xlsx?attach=1";
    let param = "/sites/x/Shared%20Documents/a.docx?download=1";
    let view = "/sites/x/_layouts/15/Doc.aspx?sourcedoc=1234&action=view";
    for path in [download, attach, param] {
        let (st, h, page) = e
            .send("127.0.0.2", "azumino.sharepoint.com", get(path))
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{path}: {page}");
        assert_eq!(h.get("komugate-rule").unwrap(), "casb-download", "{path}");
        assert!(page.contains("ダウンロード"), "block page explains: {page}");
    }
    // The download endpoint is refused before the upstream; the attachment after it answered.
    assert!(e
        .up
        .seen(
            "azumino.sharepoint.com",
            "/sites/x/_layouts/15/download.aspx"
        )
        .is_empty());
    // Viewing in the browser still works off-site.
    let (st, _, body) = e
        .send("127.0.0.2", "azumino.sharepoint.com", get(view))
        .await;
    assert_eq!(
        (st, body.as_str()),
        (StatusCode::OK, format!("view {view}").as_str())
    );
    // The OneDrive host too.
    let (st, _, _) = e
        .send(
            "127.0.0.2",
            "azumino-my.sharepoint.com",
            get("/personal/t/_layouts/15/download.aspx?UniqueId=1"),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // In school, the same downloads are allowed.
    for path in [download, attach, param] {
        let (st, _, _) = e
            .send("127.0.0.1", "azumino.sharepoint.com", get(path))
            .await;
        assert_eq!(st, StatusCode::OK, "{path}");
    }
    let r = e.gw.access_record(|v| v["rule"] == "casb-download").await;
    assert_eq!(r["casb"]["download"], true);
    e.gw.shutdown().await;
}

#[tokio::test]
async fn dlp_my_number_and_docx_keywords() {
    let e = env().await;
    // Mail body with a valid My Number: blocked; an invalid check digit: passes.
    let (st, h, _) = e
        .send(
            "127.0.0.1",
            "outlook.office.com",
            post(
                "/owa/service.svc?action=CreateItem",
                "application/json",
                r#"{"Body":"個人番号 1234 5678 9018 です"}"#,
            ),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(h.get("komugate-rule").unwrap(), "dlp:my-number");
    let (st, _, _) = e
        .send(
            "127.0.0.1",
            "outlook.office.com",
            post(
                "/owa/service.svc?action=SendItem",
                "application/json",
                r#"{"Body":"番号 1234 5678 9017 です 0263-00-0000"}"#,
            ),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let r = record(&e.gw, "outlook.office.com", "CreateItem").await;
    assert_eq!(r["casb"]["dlp"], serde_json::json!(["my-number"]));
    let line = r.to_string();
    assert!(
        !line.contains("9018") && !line.contains("5678"),
        "matched data is never logged: {line}"
    );
    // A log-only pattern is noted, the request passes.
    let r = record(&e.gw, "outlook.office.com", "SendItem").await;
    assert_eq!(r["casb"]["dlp"], serde_json::json!(["phone"]));
    assert!(!r.to_string().contains("0263"));
    // A .docx with a keyword, uploaded to the board's SharePoint from school (uploads allowed there).
    let (ct, body) = multipart_file("要録.docx", &docx("令和6年度 指導要録 (写)"));
    let (st, h, _) = e
        .send(
            "127.0.0.1",
            "azumino.sharepoint.com",
            post("/sites/x/_api/web/lists", &ct, body),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(h.get("komugate-rule").unwrap(), "dlp:student-records");
    let (ct, body) = multipart_file("週案.docx", &docx("来週の予定"));
    let (st, _, _) = e
        .send(
            "127.0.0.1",
            "azumino.sharepoint.com",
            post("/sites/x/_api/web/lists", &ct, body),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        e.gw.metric(
            "komugate_dlp_matches_total",
            &[("pattern", "student-records"), ("action", "block")]
        ),
        1.0
    );
    e.gw.shutdown().await;
}

/// Uploads bigger than the inspection cap stream through with bounded
/// buffering (`over_cap = "allow"`): 1 GiB through TLS inspection (about
/// 2-3 s in a debug build; KOMUGATE_CASB_BIG_UPLOAD_MIB changes the size).
#[tokio::test]
async fn big_upload_streams_with_bounded_buffering() {
    let e = env().await;
    let mib: usize = std::env::var("KOMUGATE_CASB_BIG_UPLOAD_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let chunk = Bytes::from(vec![b'a'; 256 * 1024]);
    let chunks = mib * 4;
    let sent = Arc::new(AtomicUsize::new(0));
    let sent2 = sent.clone();
    let stream = futures_util::stream::iter((0..chunks).map(move |_| {
        sent2.fetch_add(chunk.len(), Ordering::Relaxed);
        Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone()))
    }));
    let req = Request::put("/sites/x/big.bin")
        .header("content-type", "application/octet-stream")
        .body(StreamBody::new(stream))
        .unwrap();
    let started = Instant::now();
    let (st, _, answer) = tokio::time::timeout(
        Duration::from_secs(120),
        e.send("127.0.0.1", "azumino.sharepoint.com", req),
    )
    .await
    .expect("upload finished");
    let elapsed = started.elapsed();
    assert_eq!(st, StatusCode::OK, "{answer}");
    assert_eq!(answer, format!("got {}", mib << 20));
    let max = e.gw.metric("komugate_casb_inspect_buffer_max_bytes", &[]);
    // Cap (1 MiB) plus at most one read frame.
    assert!(
        max > 0.0 && max <= (1 << 20) as f64 + (512 << 10) as f64,
        "buffered at most {max} bytes"
    );
    let r = record(&e.gw, "azumino.sharepoint.com", "/sites/x/big.bin").await;
    assert_eq!(r["casb"]["over_cap"], true);
    assert_eq!(r["bytes_up"].as_u64(), Some((mib as u64) << 20));
    eprintln!(
        "{mib} MiB through inspection in {elapsed:?} ({:.0} MiB/s), max buffered {max} bytes",
        mib as f64 / elapsed.as_secs_f64()
    );
    e.gw.shutdown().await;
}

#[tokio::test]
async fn usage_report_from_the_access_logs() {
    let e = env().await;
    let (ct, body) = multipart_file("a.pdf", b"pdf");
    e.send(
        "127.0.0.1",
        "www.dropbox.com",
        post("/upload", &ct, body.clone()),
    )
    .await;
    e.send(
        "127.0.0.1",
        "azumino.sharepoint.com",
        post("/sites/x/_api/web/lists", &ct, body),
    )
    .await;
    e.send("127.0.0.1", "azumino.sharepoint.com", get("/sites/x/view"))
        .await;
    record(&e.gw, "azumino.sharepoint.com", "/sites/x/view").await;
    e.gw.running
        .as_ref()
        .unwrap()
        .gateway
        .access_log
        .sync(Duration::from_secs(5));
    let dir = e.gw.access_log.parent().unwrap().to_path_buf();
    let args = komugate::stages::casb::report::ReportArgs {
        loc: komugate::logs::cli::LogDirArgs {
            dir: Some(dir.clone()),
            ..Default::default()
        },
        since: "-1d".into(),
        until: None,
        format: "json".into(),
        out: None,
        by: "user".into(),
        policy: None,
        utc_offset: "+09:00".into(),
    };
    let rows = komugate::stages::casb::report::build(&args).unwrap();
    let dropbox = rows
        .iter()
        .find(|r| r.app == "dropbox")
        .expect("dropbox row");
    assert_eq!(
        (
            dropbox.requests,
            dropbox.blocks,
            dropbox.uploads,
            dropbox.category.as_str()
        ),
        (1, 1, 1, "storage")
    );
    assert!(dropbox.certifications.contains("ISO27001"));
    assert_eq!(dropbox.principal, "127.0.0.1");
    let sp = rows
        .iter()
        .find(|r| r.app == "sharepoint")
        .expect("sharepoint row");
    assert_eq!((sp.requests, sp.blocks, sp.uploads), (2, 0, 1));
    assert!(sp.bytes_up > 0 && sp.bytes_down > 0);
    assert!(sp.certifications.contains("ISMAP"));
    assert!(!sp.first_seen.is_empty() && sp.first_seen <= sp.last_seen);
    // Every output format of `komugate casb report` (same code path as the CLI).
    for fmt in ["table", "csv", "json", "xlsx"] {
        let out = e.gw.dir.path().join(format!("report.{fmt}"));
        let args = komugate::stages::casb::report::ReportArgs {
            format: fmt.into(),
            out: Some(out.clone()),
            ..args.clone()
        };
        komugate::stages::casb::report::run_casb(
            komugate::stages::casb::report::CasbCommand::Report(args),
        )
        .unwrap();
        assert!(std::fs::metadata(&out).unwrap().len() > 0, "{fmt}");
    }
    let csv = std::fs::read_to_string(e.gw.dir.path().join("report.csv")).unwrap();
    assert!(
        csv.starts_with('\u{feff}') && csv.contains("dropbox") && csv.contains("アプリ app"),
        "{csv}"
    );
    let json = std::fs::read_to_string(e.gw.dir.path().join("report.json")).unwrap();
    assert_eq!(json.lines().count(), rows.len());
    e.gw.shutdown().await;
}
