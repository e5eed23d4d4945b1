//! Downloaded category lists: a local HTTP server serves
//! a UT1-style tar.gz; updates are verified, swapped in through the reload
//! path, refused (old lists stay) or rolled back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use komugate_tests::gw::TestGateway;
use komugate_tests::{eventually, raw, within};

const TOKEN: &str = "list-token";

/// What the list server serves at `/ut1.tar.gz` (ETag = `"<version>"`).
#[derive(Default)]
struct Served {
    version: String,
    body: Vec<u8>,
    /// Requests seen, and how many carried a matching If-None-Match.
    requests: usize,
    conditional_hits: usize,
    /// Served at `/ut1.tar.gz.sha256`.
    sum: String,
}

struct ListServer {
    addr: SocketAddr,
    state: Arc<Mutex<Served>>,
}

impl ListServer {
    async fn start() -> ListServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(Served::default()));
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let st = st.clone();
                        async move {
                            let mut s = st.lock().unwrap();
                            s.requests += 1;
                            let etag = format!("\"{}\"", s.version);
                            let resp = match req.uri().path() {
                                "/ut1.tar.gz.sha256" => Response::new(Full::new(Bytes::from(
                                    format!("{}  ut1.tar.gz\n", s.sum),
                                ))),
                                "/ut1.tar.gz" | "/list.txt" => {
                                    let inm = req
                                        .headers()
                                        .get("if-none-match")
                                        .and_then(|v| v.to_str().ok());
                                    if inm == Some(etag.as_str()) {
                                        s.conditional_hits += 1;
                                        Response::builder()
                                            .status(304)
                                            .header("etag", &etag)
                                            .body(Full::new(Bytes::new()))
                                            .unwrap()
                                    } else {
                                        Response::builder()
                                            .header("etag", &etag)
                                            .header(
                                                "last-modified",
                                                "Mon, 01 Apr 2024 00:00:00 GMT",
                                            )
                                            .body(Full::new(Bytes::from(s.body.clone())))
                                            .unwrap()
                                    }
                                }
                                _ => Response::builder()
                                    .status(404)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            };
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        ListServer { addr, state }
    }

    fn serve(&self, version: &str, body: Vec<u8>) {
        let mut s = self.state.lock().unwrap();
        s.sum = sha256_hex(&body);
        s.version = version.to_string();
        s.body = body;
    }

    fn url(&self) -> String {
        format!("http://{}/ut1.tar.gz", self.addr)
    }
}

/// A UT1-style archive: `blacklists/<category>/domains` (+ usage files).
fn ut1_tar_gz(categories: &[(&str, Vec<String>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).unwrap();
    };
    for (cat, domains) in categories {
        let mut text = domains.join("\n");
        text.push('\n');
        add(&format!("blacklists/{cat}/domains"), text.as_bytes());
        add(&format!("blacklists/{cat}/usage"), b"black\n");
    }
    add("blacklists/README", b"UT1-style test archive\n");
    b.into_inner().unwrap().finish().unwrap()
}

fn domains(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}.example")).collect()
}

/// Version 1: 100 adult, 20 gambling domains.
fn v1() -> Vec<(&'static str, Vec<String>)> {
    vec![
        ("adult", domains("adult", 100)),
        ("gambling", domains("casino", 20)),
    ]
}

/// Writes `cats` as plain files under `dir` (the list already on disk).
fn write_lists(dir: &Path, cats: &[(&str, Vec<String>)]) {
    for (cat, d) in cats {
        std::fs::create_dir_all(dir.join(cat)).unwrap();
        std::fs::write(dir.join(cat).join("domains"), d.join("\n") + "\n").unwrap();
    }
}

struct Setup {
    gw: TestGateway,
    server: ListServer,
    lists: PathBuf,
    _dir: tempfile::TempDir,
}

/// A gateway whose policy blocks the UT1 categories adult and gambling,
/// downloaded from a local server; `extra` goes into the source table
/// (`{server}` = the list server's address).
/// With `prepopulate`, version 1 is already on disk (and served).
async fn setup(extra: &str, prepopulate: bool) -> Setup {
    let server = ListServer::start().await;
    server.serve("v1", ut1_tar_gz(&v1()));
    let extra = extra.replace("{server}", &server.addr.to_string());
    let dir = tempfile::tempdir().unwrap();
    let lists = dir.path().join("lists/ut1");
    if prepopulate {
        write_lists(&lists, &v1());
    }
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            r#"version = 1
[defaults]
action = "allow"

[categories]
[[categories.source]]
format = "squidguard"
path = "lists/ut1"
url = "{}"
refresh = "1d"
{extra}

[[rule]]
name = "ut1-blocked"
categories = ["adult", "gambling"]
action = "block"
message = "blocked by UT1"
"#,
            server.url()
        ),
    )
    .unwrap();
    let policy_s = policy.display().to_string();
    let gw = TestGateway::start(move |c, _| {
        c.policy.file = policy_s;
        c.admin.token = TOKEN.into();
    })
    .await;
    // The updater checks at once at start (no record of a previous check).
    let admin = gw.admin();
    eventually(Duration::from_secs(5), || async move {
        let s = lists_status(admin).await;
        (s["status"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["checks"].as_u64() >= Some(1))))
        .then_some(())
    })
    .await
    .expect("the start-up check ran");
    Setup {
        gw,
        server,
        lists,
        _dir: dir,
    }
}

async fn lists_status(admin: SocketAddr) -> serde_json::Value {
    let req = format!("GET /admin/lists HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n");
    let r = raw::request(admin, req.as_bytes()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

/// `POST /admin/lists/update`: (HTTP status, the one outcome).
async fn update_now(gw: &TestGateway) -> (u16, serde_json::Value) {
    let req = format!(
        "POST /admin/lists/update HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let r = raw::request(gw.admin(), req.as_bytes()).await.unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()));
    let outcomes = v["outcomes"].as_array().expect("outcomes").clone();
    assert_eq!(outcomes.len(), 1, "{v:#}");
    (r.status, outcomes[0].clone())
}

async fn blocked(gw: &TestGateway, host: &str) -> bool {
    let r = raw::proxy_get(gw.plain(), &format!("http://{host}/"))
        .await
        .unwrap();
    if r.status == 403 {
        assert_eq!(
            r.header("komugate-rule").as_deref(),
            Some("ut1-blocked"),
            "{}",
            r.head
        );
    }
    r.status == 403
}

fn count(gw: &TestGateway, result: &str) -> f64 {
    gw.metric("komugate_list_updates_total", &[("result", result)])
}

/// The refusal leaves version 1 in force: adult0 blocked, nothing new.
async fn assert_v1_in_force(s: &Setup) {
    assert!(blocked(&s.gw, "adult0.example").await);
    assert!(blocked(&s.gw, "www.casino5.example").await);
    assert!(!blocked(&s.gw, "newbad.example").await);
    assert!(s.lists.join("adult/domains").is_file());
    let on_disk = std::fs::read_to_string(s.lists.join("adult/domains")).unwrap();
    assert!(on_disk.contains("adult99.example") && !on_disk.contains("newbad"));
}

fn audit_text(gw: &TestGateway) -> String {
    std::fs::read_to_string(gw.dir.path().join("audit.log")).unwrap_or_default()
}

#[tokio::test]
async fn good_update_is_applied_and_304_is_a_no_op() {
    within("good update", async {
        let s = setup("", true).await;
        assert!(blocked(&s.gw, "adult3.example").await);
        assert!(!blocked(&s.gw, "newbad.example").await);

        let mut v2 = v1();
        v2[0].1.push("newbad.example".into());
        s.server.serve("v2", ut1_tar_gz(&v2));
        let (status, o) = update_now(&s.gw).await;
        assert_eq!(
            (status, o["result"].as_str()),
            (200, Some("applied")),
            "{o:#}"
        );
        assert_eq!(o["entries"], 121);
        assert!(
            blocked(&s.gw, "newbad.example").await,
            "the newly listed domain is blocked"
        );
        assert!(blocked(&s.gw, "sub.newbad.example").await);
        assert!(
            s.lists.join("adult/domains").is_file(),
            "the top-level blacklists/ directory is stripped"
        );
        assert!(
            s.lists
                .with_file_name("ut1.prev")
                .join("adult/domains")
                .is_file(),
            "previous version kept"
        );
        assert!(s.gw.metric("komugate_list_updates_total", &[("result", "applied")]) >= 2.0);

        // Unchanged on the server: a conditional request, 304, nothing reloaded.
        let generation =
            s.gw.running
                .as_ref()
                .unwrap()
                .gateway
                .generation
                .load()
                .number();
        let hits = s.server.state.lock().unwrap().conditional_hits;
        let (status, o) = update_now(&s.gw).await;
        assert_eq!(
            (status, o["result"].as_str()),
            (200, Some("not_modified")),
            "{o:#}"
        );
        assert_eq!(s.server.state.lock().unwrap().conditional_hits, hits + 1);
        assert_eq!(
            s.gw.running
                .as_ref()
                .unwrap()
                .gateway
                .generation
                .load()
                .number(),
            generation
        );
        assert_eq!(count(&s.gw, "not_modified"), 1.0);
        assert!(blocked(&s.gw, "newbad.example").await);
        // The reload through the ordinary path is in the audit log, marked as a list update.
        let audit = audit_text(&s.gw);
        assert!(
            audit.contains("\"list_update\"") && audit.contains(&s.server.url()),
            "{audit}"
        );
        s.gw.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn first_start_without_the_list_downloads_it() {
    within("first start", async {
        // No list on disk: `only` declares the categories so the policy loads.
        let s = setup("only = [\"adult\", \"gambling\"]", false).await;
        let st = lists_status(s.gw.admin()).await;
        assert_eq!(st["status"][0]["last_result"], "applied", "{st:#}");
        assert!(blocked(&s.gw, "adult7.example").await);
        assert!(!s.lists.with_file_name("ut1.prev").exists());
        s.gw.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn bad_sha256_is_refused() {
    within("bad sha256", async {
        // The pinned hash is the one of version 1, so the start-up check passes.
        let sum = sha256_hex(&ut1_tar_gz(&v1()));
        let s = setup(&format!("sha256 = \"{sum}\""), true).await;
        assert_eq!(count(&s.gw, "applied"), 1.0);
        let mut v2 = v1();
        v2[0].1.push("newbad.example".into());
        s.server.serve("v2", ut1_tar_gz(&v2));
        let (status, o) = update_now(&s.gw).await;
        assert_eq!(
            (status, o["result"].as_str()),
            (422, Some("refused_sha256")),
            "{o:#}"
        );
        assert!(o["detail"].as_str().unwrap().contains(&sum), "{o:#}");
        assert_eq!(count(&s.gw, "refused_sha256"), 1.0);
        assert_v1_in_force(&s).await;
        assert!(audit_text(&s.gw).contains("refused_sha256"));
        s.gw.shutdown().await;
    })
    .await
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[tokio::test]
async fn oversize_download_is_refused() {
    within("oversize", async {
        let limit = ut1_tar_gz(&v1()).len() + 200;
        let s = setup(&format!("max_bytes = {limit}"), true).await;
        let mut v2 = v1();
        // Hash-like names compress badly.
        v2[0].1.extend(
            (0..400).map(|i| format!("{}.example", sha256_hex(&[i as u8, (i >> 8) as u8]))),
        );
        s.server.serve("v2", ut1_tar_gz(&v2));
        let (status, o) = update_now(&s.gw).await;
        assert_eq!(
            (status, o["result"].as_str()),
            (422, Some("refused_size")),
            "{o:#}"
        );
        assert!(o["detail"].as_str().unwrap().contains("max_bytes"), "{o:#}");
        assert_eq!(count(&s.gw, "refused_size"), 1.0);
        assert_v1_in_force(&s).await;
        s.gw.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn list_that_shrank_by_more_than_half_is_refused() {
    within("shrink", async {
        let s = setup("", true).await;
        let v2 = vec![
            ("adult", {
                let mut d = domains("adult", 30);
                d.push("newbad.example".into());
                d
            }),
            ("gambling", domains("casino", 20)),
        ];
        s.server.serve("v2", ut1_tar_gz(&v2));
        let (status, o) = update_now(&s.gw).await;
        assert_eq!(
            (status, o["result"].as_str()),
            (422, Some("refused_shrink")),
            "{o:#}"
        );
        assert!(
            o["detail"].as_str().unwrap().contains("from 120 to 51"),
            "{o:#}"
        );
        assert_eq!(count(&s.gw, "refused_shrink"), 1.0);
        assert_v1_in_force(&s).await;
        let st = lists_status(s.gw.admin()).await;
        assert_eq!(st["status"][0]["last_result"], "refused_shrink", "{st:#}");
        s.gw.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn list_with_too_many_invalid_lines_is_refused() {
    within("invalid lines", async {
        let s = setup("max_invalid_ratio = 0.05", true).await;
        let mut v2 = v1();
        v2[0].1.push("newbad.example".into());
        v2[0].1.extend((0..20).map(|i| format!("not a domain {i}")));
        s.server.serve("v2", ut1_tar_gz(&v2));
        let (status, o) = update_now(&s.gw).await;
        assert_eq!(
            (status, o["result"].as_str()),
            (422, Some("refused_invalid")),
            "{o:#}"
        );
        assert!(
            o["detail"]
                .as_str()
                .unwrap()
                .contains("20 of 141 lines are invalid"),
            "{o:#}"
        );
        assert_eq!(count(&s.gw, "refused_invalid"), 1.0);
        assert_v1_in_force(&s).await;
        s.gw.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn failing_reload_rolls_back() {
    within("rollback", async {
        let s = setup("", true).await;
        let generation =
            s.gw.running
                .as_ref()
                .unwrap()
                .gateway
                .generation
                .load()
                .number();
        // Plenty of entries, but no `gambling` category: the rule naming it no longer validates.
        let mut adult = domains("adult", 150);
        adult.push("newbad.example".into());
        s.server.serve("v2", ut1_tar_gz(&[("adult", adult)]));
        let (status, o) = update_now(&s.gw).await;
        assert_eq!(
            (status, o["result"].as_str()),
            (422, Some("rolled_back")),
            "{o:#}"
        );
        let detail = o["detail"].as_str().unwrap();
        assert!(
            detail.contains("gambling") && detail.contains("old list restored"),
            "{o:#}"
        );
        assert_eq!(count(&s.gw, "rolled_back"), 1.0);
        assert!(s.gw.metric("komugate_policy_reloads_total", &[("result", "error")]) >= 1.0);
        // Files and running state agree on version 1.
        assert_v1_in_force(&s).await;
        assert!(s.lists.join("gambling/domains").is_file());
        assert!(
            s.gw.running
                .as_ref()
                .unwrap()
                .gateway
                .generation
                .load()
                .number()
                > generation
        );
        let audit = audit_text(&s.gw);
        assert!(audit.contains("rolled_back"), "{audit}");
        s.gw.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn sha256_url_is_checked() {
    within("sha256_url", async {
        let s = setup("sha256_url = \"http://{server}/ut1.tar.gz.sha256\"", true).await;
        assert_eq!(
            count(&s.gw, "applied"),
            1.0,
            "the start-up download matched its published sum"
        );
        let mut v2 = v1();
        v2[0].1.push("newbad.example".into());
        let v2 = ut1_tar_gz(&v2);
        // A published sum that does not match the archive: refused.
        s.server.serve("v2", v2.clone());
        s.server.state.lock().unwrap().sum = sha256_hex(b"something else");
        let (status, o) = update_now(&s.gw).await;
        assert_eq!(
            (status, o["result"].as_str()),
            (422, Some("refused_sha256")),
            "{o:#}"
        );
        assert_v1_in_force(&s).await;
        // Matching: applied.
        s.server.serve("v2", v2);
        let (status, o) = update_now(&s.gw).await;
        assert_eq!(
            (status, o["result"].as_str()),
            (200, Some("applied")),
            "{o:#}"
        );
        assert!(blocked(&s.gw, "newbad.example").await);
        s.gw.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn plain_list_file_source() {
    within("plain list", async {
        let server = ListServer::start().await;
        server.serve("p1", b"# malware\nevil1.example\nevil2.example\n".to_vec());
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.toml");
        std::fs::write(
            &policy,
            format!(
                "version = 1\n[categories]\n[[categories.source]]\nformat = \"plain\"\ncategory = \"malware\"\n\
                 path = \"lists/malware.txt\"\nurl = \"http://{}/list.txt\"\n\n\
                 [[rule]]\nname = \"ut1-blocked\"\ncategory = \"malware\"\naction = \"block\"\n",
                server.addr
            ),
        )
        .unwrap();
        let policy_s = policy.display().to_string();
        let gw = TestGateway::start(move |c, _| {
            c.policy.file = policy_s;
            c.admin.token = TOKEN.into();
        })
        .await;
        // Not on disk at start: empty, then downloaded at once.
        let admin = gw.admin();
        eventually(Duration::from_secs(5), || async move {
            let st = lists_status(admin).await;
            (st["status"][0]["last_result"] == "applied").then_some(())
        })
        .await
        .expect("first download applied");
        assert!(blocked(&gw, "evil2.example").await);
        assert!(!blocked(&gw, "evil3.example").await);
        server.serve("p2", b"evil1.example\nevil2.example\nevil3.example\n".to_vec());
        let (status, o) = update_now(&gw).await;
        assert_eq!((status, o["result"].as_str()), (200, Some("applied")), "{o:#}");
        assert!(blocked(&gw, "evil3.example").await);
        assert_eq!(std::fs::read_to_string(dir.path().join("lists/malware.txt")).unwrap().lines().count(), 3);
        assert!(dir.path().join("lists/malware.txt.prev").is_file());
        gw.shutdown().await;
    })
    .await
}
