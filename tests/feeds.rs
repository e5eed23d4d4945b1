//! IPS rules and threat-intel feeds downloaded on a timer: a local HTTPS
//! origin on loopback (its own CA, trusted through `[inspect] upstream_ca`)
//! serves a Suricata rules tarball with its SHA-256 file and a threat list;
//! updates are applied and used by the data path, or refused (shrunk,
//! invalid, checksum mismatch) with the old set kept, and audited.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use komugate::config::FeedConfig;
use komugate_tests::gw::TestGateway;
use komugate_tests::upstream::{tls_acceptor, HttpUpstream};
use komugate_tests::{eventually, raw, within};

const TOKEN: &str = "feeds-admin-token";

/// An HTTPS origin on 127.0.0.1 serving whatever the test puts at a path.
struct FeedOrigin {
    addr: SocketAddr,
    ca_pem: String,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

impl FeedOrigin {
    async fn start() -> FeedOrigin {
        let (acceptor, ca) = tls_acceptor("feeds-test origin CA", &["127.0.0.1"]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Default::default();
        let served = files.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, served) = (acceptor.clone(), served.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let body = served.lock().unwrap().get(req.uri().path()).cloned();
                        async move {
                            Ok::<_, Infallible>(match body {
                                Some(b) => Response::new(Full::new(Bytes::from(b))),
                                None => Response::builder()
                                    .status(404)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            })
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        FeedOrigin {
            addr,
            ca_pem: ca.cert_pem(),
            files,
        }
    }

    fn put(&self, path: &str, body: Vec<u8>) {
        self.files.lock().unwrap().insert(path.into(), body);
    }

    /// The rules tarball and its published checksum file.
    fn serve_rules(&self, rules: &str) {
        let tarball = rules_tar_gz(rules);
        self.put(
            "/et.rules.tar.gz.sha256",
            format!("{}  emerging.rules.tar.gz\n", sha256_hex(&tarball)).into_bytes(),
        );
        self.put("/et.rules.tar.gz", tarball);
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }
}

/// An ET Open-style tarball: `rules/*.rules` plus a non-rules file.
fn rules_tar_gz(rules: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, data) in [
        ("rules/emerging-komugate.rules", rules.as_bytes()),
        (
            "rules/classification.config",
            b"config classification: trojan-activity,A Network Trojan was detected,1\n".as_slice(),
        ),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// A drop rule on a URI marker.
fn drop_rule(sid: u32, marker: &str) -> String {
    format!("drop http $HOME_NET any -> $EXTERNAL_NET any (msg:\"KOMUGATE FEED {marker}\"; flow:established,to_server; http.uri; content:\"/{marker}\"; startswith; sid:{sid}; rev:1;)\n")
}

/// Version 1: four loadable rules (sid 9200001 drops `/feed-v1-marker`).
fn rules_v1() -> String {
    let mut rules = drop_rule(9_200_001, "feed-v1-marker");
    for sid in 9_200_002..=9_200_004 {
        rules += &drop_rule(sid, &format!("feed-unused-{sid}"));
    }
    rules
}

fn threats(hosts: &[&str]) -> Vec<u8> {
    let mut t = String::from("# test threat feed\n");
    for h in hosts {
        t += h;
        t.push('\n');
    }
    t.into_bytes()
}

const THREATS_V1: &[&str] = &[
    "old-c2.test",
    "c2-a.test",
    "c2-b.test",
    "c2-c.test",
    "c2-d.test",
    "c2-e.test",
    "10.66.0.0/16",
    "192.0.2.7",
    "198.51.100.0/24",
    "203.0.113.9",
];

struct Setup {
    gw: TestGateway,
    origin: FeedOrigin,
    _ca_dir: tempfile::TempDir,
}

/// A gateway with one IPS feed (tarball + sha256 file) and one threat feed,
/// nothing on disk: the start-up check downloads version 1.
async fn setup() -> Setup {
    let origin = FeedOrigin::start().await;
    origin.serve_rules(&rules_v1());
    origin.put("/threats.txt", threats(THREATS_V1));
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = ca_dir.path().join("origin-ca.pem");
    std::fs::write(&ca, &origin.ca_pem).unwrap();
    let feed = |url: String, path: &str, sha256_url: Option<String>| FeedConfig {
        url,
        path: PathBuf::from(path),
        refresh_secs: 86_400,
        sha256: None,
        sha256_url,
        max_bytes: 1 << 20,
        max_invalid_ratio: None,
        max_shrink: 0.5,
    };
    let ips = feed(
        origin.url("/et.rules.tar.gz"),
        "feeds/et-open",
        Some(origin.url("/et.rules.tar.gz.sha256")),
    );
    let intel = feed(origin.url("/threats.txt"), "feeds/threats.txt", None);
    let gw = TestGateway::start(move |c, _| {
        c.admin.token = TOKEN.into();
        c.inspect.upstream_ca = ca.display().to_string();
        c.ips.feeds = vec![ips];
        c.threat_intel.feeds = vec![intel];
    })
    .await;
    let admin = gw.admin();
    eventually(Duration::from_secs(10), || async move {
        let s = status(admin).await;
        let done = s["status"]
            .as_array()
            .is_some_and(|a| a.len() == 2 && a.iter().all(|x| x["last_result"] == "applied"));
        done.then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("the start-up checks applied both feeds"));
    Setup {
        gw,
        origin,
        _ca_dir: ca_dir,
    }
}

async fn status(admin: SocketAddr) -> serde_json::Value {
    let (code, v) = raw::admin_json(admin, TOKEN, "GET", "/admin/lists").await;
    assert_eq!(code, 200, "{v:#}");
    v
}

/// `POST /admin/lists/update?url=U`: (HTTP status, the one outcome).
async fn update_now(gw: &TestGateway, url: &str) -> (u16, serde_json::Value) {
    let path = format!("/admin/lists/update?url={url}");
    let (code, v) = raw::admin_json(gw.admin(), TOKEN, "POST", &path).await;
    let outcomes = v["outcomes"].as_array().expect("outcomes");
    assert_eq!(outcomes.len(), 1, "{v:#}");
    (code, outcomes[0].clone())
}

/// The rule that refused `GET path` through the gateway, if any.
async fn refused_by(gw: &TestGateway, url: &str) -> Option<String> {
    let r = raw::proxy_get(gw.plain(), url).await.unwrap();
    (r.status == 403).then(|| r.header("komugate-rule").unwrap_or_default())
}

fn audit(gw: &TestGateway) -> String {
    std::fs::read_to_string(gw.dir.path().join("audit.log")).unwrap_or_default()
}

#[tokio::test]
async fn good_feed_updates_are_applied_and_used() {
    within("feeds applied", async {
        let s = setup().await;
        let up = HttpUpstream::start("127.0.0.1").await;
        let ips_url = s.origin.url("/et.rules.tar.gz");
        let intel_url = s.origin.url("/threats.txt");
        // Version 1 from the first download is in force.
        assert_eq!(
            refused_by(&s.gw, &format!("http://{}/feed-v1-marker", up.addr))
                .await
                .as_deref(),
            Some("ips:9200001")
        );
        assert_eq!(
            refused_by(&s.gw, "http://www.old-c2.test/")
                .await
                .as_deref(),
            Some("threat-intel")
        );
        assert!(s
            .gw
            .dir
            .path()
            .join("feeds/et-open/emerging-komugate.rules")
            .is_file());
        let v2_url = format!("http://{}/feed-new-marker", up.addr);
        assert_eq!(refused_by(&s.gw, &v2_url).await, None);
        assert_ne!(
            refused_by(&s.gw, "http://newbad.test/").await.as_deref(),
            Some("threat-intel")
        );

        // Version 2: one more rule, one more threat host.
        s.origin
            .serve_rules(&(rules_v1() + &drop_rule(9_200_010, "feed-new-marker")));
        let mut hosts = THREATS_V1.to_vec();
        hosts.push("newbad.test");
        s.origin.put("/threats.txt", threats(&hosts));
        let (code, o) = update_now(&s.gw, &ips_url).await;
        assert_eq!(
            (code, o["result"].as_str()),
            (200, Some("applied")),
            "{o:#}"
        );
        assert_eq!(o["entries"], 5, "{o:#}");
        let (code, o) = update_now(&s.gw, &intel_url).await;
        assert_eq!(
            (code, o["result"].as_str()),
            (200, Some("applied")),
            "{o:#}"
        );
        assert_eq!(o["entries"], 11, "{o:#}");

        assert_eq!(
            refused_by(&s.gw, &v2_url).await.as_deref(),
            Some("ips:9200010"),
            "the new rule fires"
        );
        assert_eq!(
            refused_by(&s.gw, "http://newbad.test/").await.as_deref(),
            Some("threat-intel"),
            "the newly listed host is refused"
        );
        assert_eq!(
            refused_by(&s.gw, &format!("http://{}/harmless", up.addr)).await,
            None
        );

        let st = status(s.gw.admin()).await;
        let ips = st["status"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["kind"] == "ips")
            .unwrap()
            .clone();
        assert_eq!(ips["entries_in_force"], 5, "{st:#}");
        let audit = audit(&s.gw);
        assert!(
            audit.contains(&format!("ips feed {ips_url}")) && audit.contains("applied"),
            "{audit}"
        );
        assert!(
            audit.contains(&format!("threat_intel feed {intel_url}")),
            "{audit}"
        );
        assert!(
            s.gw.metric(
                "komugate_list_updates_total",
                &[("kind", "ips"), ("result", "applied")]
            ) >= 2.0
        );
        assert!(
            s.gw.metric(
                "komugate_list_last_success_timestamp_seconds",
                &[("kind", "threat_intel")]
            ) > 0.0
        );
        s.gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn shrunk_invalid_or_tampered_feeds_are_refused_and_the_old_set_stays() {
    within("feeds refused", async {
        let s = setup().await;
        let up = HttpUpstream::start("127.0.0.1").await;
        let ips_url = s.origin.url("/et.rules.tar.gz");
        let intel_url = s.origin.url("/threats.txt");
        let on_disk = |p: &str| std::fs::read(s.gw.dir.path().join(p)).unwrap();
        let (rules_before, threats_before) = (
            on_disk("feeds/et-open/emerging-komugate.rules"),
            on_disk("feeds/threats.txt"),
        );

        // A threat list that lost most of its entries.
        s.origin
            .put("/threats.txt", threats(&["c2-a.test", "newbad.test"]));
        let (code, o) = update_now(&s.gw, &intel_url).await;
        assert_eq!(
            (code, o["result"].as_str()),
            (422, Some("refused_shrink")),
            "{o:#}"
        );
        assert!(
            o["detail"].as_str().unwrap().contains("from 10 to 2"),
            "{o:#}"
        );

        // Rules the engine mostly cannot load (the share over max_invalid_ratio).
        let mut broken = drop_rule(9_200_020, "feed-broken-marker");
        for i in 0..3 {
            broken += &format!(
                "alert foo any any -> any any (msg:\"unsupported {i}\"; sid:{};)\n",
                9_200_030 + i
            );
        }
        s.origin.serve_rules(&broken);
        let (code, o) = update_now(&s.gw, &ips_url).await;
        assert_eq!(
            (code, o["result"].as_str()),
            (422, Some("refused_invalid")),
            "{o:#}"
        );

        // A tarball that does not match the published checksum.
        s.origin
            .serve_rules(&(rules_v1() + &drop_rule(9_200_040, "feed-tampered")));
        s.origin.put(
            "/et.rules.tar.gz.sha256",
            format!("{}  emerging.rules.tar.gz\n", "0".repeat(64)).into_bytes(),
        );
        let (code, o) = update_now(&s.gw, &ips_url).await;
        assert_eq!(
            (code, o["result"].as_str()),
            (422, Some("refused_sha256")),
            "{o:#}"
        );

        // The old sets stay, on disk and in force.
        assert_eq!(
            on_disk("feeds/et-open/emerging-komugate.rules"),
            rules_before
        );
        assert_eq!(on_disk("feeds/threats.txt"), threats_before);
        assert_eq!(
            refused_by(&s.gw, &format!("http://{}/feed-v1-marker", up.addr))
                .await
                .as_deref(),
            Some("ips:9200001")
        );
        assert_eq!(
            refused_by(&s.gw, &format!("http://{}/feed-broken-marker", up.addr)).await,
            None
        );
        assert_eq!(
            refused_by(&s.gw, &format!("http://{}/feed-tampered", up.addr)).await,
            None
        );
        assert_eq!(
            refused_by(&s.gw, "http://c2-e.test/").await.as_deref(),
            Some("threat-intel")
        );
        assert_ne!(
            refused_by(&s.gw, "http://newbad.test/").await.as_deref(),
            Some("threat-intel")
        );

        let audit = audit(&s.gw);
        for result in ["refused_shrink", "refused_invalid", "refused_sha256"] {
            assert!(
                audit.contains(&format!("-> {result}: current lists kept")),
                "{result}: {audit}"
            );
        }
        assert_eq!(
            s.gw.metric(
                "komugate_list_updates_total",
                &[("kind", "ips"), ("result", "refused_invalid")]
            ),
            1.0
        );
        assert_eq!(
            s.gw.metric(
                "komugate_list_updates_total",
                &[("kind", "threat_intel"), ("result", "refused_shrink")]
            ),
            1.0
        );
        s.gw.shutdown().await;
    })
    .await;
}
