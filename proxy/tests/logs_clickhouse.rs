//! ClickHouse as the log store of several gateways, against a real Debian
//! clickhouse-server started here on loopback (one shared by the tests of
//! this file, each in its own database; the outage test stops its own):
//! the same searches give the same records on the local segment store and
//! on ClickHouse, values that try SQL injection are literals, outages and a
//! gateway killed between an insert and its acknowledgement lose and
//! duplicate nothing, the audit log arrives once, and months older than the
//! retention are dropped and audited. Skipped, loudly, when
//! clickhouse-server is not installed (`.ci/run` installs it).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use komugate::logs::audit::{AuditEvent, AuditLog};
use komugate::logs::clickhouse::Client;
use komugate::logs::query::{Glob, Query};
use komugate::logs::record::{format_rfc3339_ms, format_with_offset, now_ms, LogRecord};
use komugate::logs::ship::{self, ClickHouse, ClickHouseTarget, ShipStop, Shipped, Target};
use komugate::logs::store::{ClickHouseStore, LocalStore, LogStore};
use komugate::logs::writer::{self, LogMetrics, Submitter, WriterHandle, WriterSettings};
use komugate::metrics::Metrics;
use komugate::record::AccessRecord;

const BIN: &str = env!("CARGO_BIN_EXE_komugate");
const USER: &str = "komugate";
const PASSWORD: &str = "pw-for-tests";

fn find_server() -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/bin"])
        .map(|d| Path::new(d).join("clickhouse-server"))
        .find(|p| p.is_file());
    if found.is_none() {
        eprintln!("\n!!!!! SKIPPED: clickhouse-server is not installed; run .ci/run (apt-get install clickhouse-server) to run this test !!!!!\n");
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn wait_for(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ok()
}

/// A clickhouse-server in a tempdir. It runs under a shell that kills it
/// when our end of its stdin closes, i.e. when this test process exits,
/// however it exits.
struct Server {
    bin: PathBuf,
    conf: PathBuf,
    http: u16,
    running: Mutex<Option<(Child, ChildStdin)>>,
    _dir: tempfile::TempDir,
}

impl Server {
    fn new(bin: PathBuf) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let (http, tcp) = (free_port(), free_port());
        std::fs::write(
            dir.path().join("users.xml"),
            format!(
                "<?xml version=\"1.0\"?><yandex><profiles><default></default></profiles><users>\
                 <default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default>\
                 <{USER}><password>{PASSWORD}</password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></{USER}>\
                 </users><quotas><default></default></quotas></yandex>"
            ),
        )
        .unwrap();
        let conf = dir.path().join("config.xml");
        std::fs::write(
            &conf,
            format!(
                "<?xml version=\"1.0\"?><yandex><logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/error.log</errorlog><console>0</console></logger>\
                 <http_port>{http}</http_port><tcp_port>{tcp}</tcp_port><listen_host>127.0.0.1</listen_host>\
                 <path>{d}/data/</path><tmp_path>{d}/tmp/</tmp_path><user_files_path>{d}/user_files/</user_files_path>\
                 <format_schema_path>{d}/format_schemas/</format_schema_path><users_config>{d}/users.xml</users_config>\
                 <default_profile>default</default_profile><default_database>default</default_database>\
                 <mark_cache_size>104857600</mark_cache_size><uncompressed_cache_size>104857600</uncompressed_cache_size>\
                 <timezone>UTC</timezone></yandex>"
            ),
        )
        .unwrap();
        let s = Server {
            bin,
            conf,
            http,
            running: Mutex::new(None),
            _dir: dir,
        };
        s.start();
        s
    }

    fn start(&self) {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("\"$0\" --config-file=\"$1\" & p=$!; cat >/dev/null; kill $p; wait $p")
            .arg(&self.bin)
            .arg(&self.conf)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start clickhouse-server");
        let stdin = child.stdin.take().unwrap();
        assert!(
            wait_port(self.http, Duration::from_secs(60)),
            "clickhouse-server listens on {}",
            self.http
        );
        *self.running.lock().unwrap() = Some((child, stdin));
    }

    /// SIGTERM through the watchdog shell; waits until the server is gone.
    fn stop(&self) {
        if let Some((mut child, stdin)) = self.running.lock().unwrap().take() {
            drop(stdin);
            let _ = child.wait();
        }
        assert!(
            wait_for(Duration::from_secs(30), || TcpStream::connect((
                "127.0.0.1",
                self.http
            ))
            .is_err()),
            "clickhouse-server stopped"
        );
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    fn target(&self, database: &str) -> ClickHouseTarget {
        ClickHouseTarget {
            enabled: true,
            url: self.url(),
            database: database.into(),
            user: USER.into(),
            password: PASSWORD.into(),
            batch_records: 400,
            max_buffer_mb: 64,
            ..Default::default()
        }
    }
}

/// The server shared by the tests of this binary.
fn shared() -> Option<&'static Server> {
    static SERVER: OnceLock<Option<Server>> = OnceLock::new();
    SERVER
        .get_or_init(|| find_server().map(Server::new))
        .as_ref()
}

fn scalar(c: &Client, sql: &str) -> u64 {
    c.query(&format!("{sql} FORMAT TabSeparated"))
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(0)
}

/// A writer on `dir` shipping to ClickHouse, as the gateway runs them.
struct Feed {
    sub: Submitter,
    _handle: WriterHandle,
    stop: ShipStop,
    metrics: Arc<LogMetrics>,
}

impl Feed {
    fn start(dir: &Path, target: Box<dyn Target>) -> Feed {
        let metrics = Metrics::new();
        let mut s = WriterSettings::new(dir.join("access.log"));
        s.fsync_interval = Duration::from_millis(100);
        s.ship_queues = vec![target.name().to_string()];
        let (sub, handle, lm) = writer::start(s, &metrics).unwrap();
        let stop = ShipStop::default();
        ship::spawn(dir, target, lm.clone(), stop.clone()).unwrap();
        Feed {
            sub,
            _handle: handle,
            stop,
            metrics: lm,
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.stop.stop();
    }
}

/// Values that would break out of a badly quoted SQL literal.
const EVIL: &[&str] = &[
    "'",
    "\\",
    "\\'",
    "') OR 1=1 --",
    "' OR '1'='1",
    "a\0b",
    "山田'\\太郎",
    "%",
    "_",
    "x\"y`z",
];

/// The records of the comparison: every filterable field varied, some
/// with the values of [`EVIL`]; distinct times, oldest first, spanning the
/// turn of the month (UTC and JST).
fn dataset() -> Vec<AccessRecord> {
    let now = now_ms();
    let (y, m, _) = komugate::logs::record::civil_from_days(now.div_euclid(86_400_000));
    let month_start = komugate::logs::record::days_from_civil(y, m, 1) * 86_400_000;
    let base = month_start - 2 * 86_400_000 - 9 * 3_600_000;
    let hosts = [
        "www.example.com",
        "a.b.example.com",
        "example.com",
        "ads.tracker.net",
        "WWW.Dropbox.com",
        "evil_host%x.io",
        "xevil-hostyx.io",
    ];
    let sites = ["豊科南小学校", "本庁", "offsite", ""];
    let decisions = ["allow", "allow", "block", "error", "block"];
    let apps = ["", "m365", "google", "c4th"];
    let mut out = Vec::new();
    for i in 0..720u64 {
        let t = base + i as i64 * 8 * 60_000 + (i as i64 % 7) * 1000;
        let host = hosts[i as usize % hosts.len()];
        let target = if i % 2 == 0 {
            format!("https://{host}/p/{i}?q=a%27b")
        } else {
            format!("{host}:443")
        };
        out.push(AccessRecord {
            time: format_rfc3339_ms(t),
            listener: if i % 3 == 0 { "plain" } else { "mtls" },
            device: Some(format!("D-{:02}", i % 13)),
            user: Some(if i % 7 == 0 {
                "山田".into()
            } else {
                format!("u{}", i % 7)
            }),
            groups: match i % 3 {
                0 => vec!["teachers".into(), "staff".into()],
                1 => vec!["students".into()],
                _ => Vec::new(),
            },
            site: Some(sites[i as usize % 4].into()).filter(|s: &String| !s.is_empty()),
            client: format!("10.0.{}.{}:4000", i % 5, i % 200),
            method: if i % 2 == 0 { "GET" } else { "CONNECT" }.into(),
            target,
            decision: decisions[i as usize % 5],
            rule: match i % 10 {
                5 => "dlp:mynumber".into(),
                7 => "inspect (inspected)".into(),
                _ => format!("rule-{}", i % 6),
            },
            categories: match i % 4 {
                0 => vec!["adult".into(), "gambling".into()],
                1 => vec!["malware".into()],
                _ => Vec::new(),
            },
            app: Some(apps[i as usize % 4].into()).filter(|s: &String| !s.is_empty()),
            ips: match i % 9 {
                0 => Some("2001,2002".into()),
                3 => Some("3001 4001".into()),
                6 => Some("threat-intel, 2003".into()),
                8 if i % 2 == 0 => Some("threat-intel".into()),
                _ => None,
            },
            status: [200, 403, 502][i as usize % 3],
            bytes_up: i * 3,
            bytes_down: i * 1000,
            duration_ms: i % 900,
            egress: Some("192.0.2.7:5000".into()).filter(|_| i % 5 == 0),
            error: Some("upstream refused".into()).filter(|_| i % 11 == 0),
            ..Default::default()
        });
    }
    for (k, e) in EVIL.iter().enumerate() {
        let t = base + 720 * 8 * 60_000 + k as i64 * 60_000;
        out.push(AccessRecord {
            time: format_rfc3339_ms(t),
            listener: "mtls",
            device: Some(e.to_string()),
            user: Some(e.to_string()),
            groups: vec![e.to_string()],
            site: Some(e.to_string()),
            client: "10.9.9.9:1".into(),
            method: "GET".into(),
            target: format!("https://x{k}.evil.example/{e}"),
            decision: "block",
            rule: e.to_string(),
            categories: vec![e.to_string()],
            app: Some(e.to_string()),
            ips: Some(e.to_string()),
            status: 403,
            ..Default::default()
        });
    }
    out
}

fn collect(store: &dyn LogStore, q: &Query) -> Vec<LogRecord> {
    let mut v = Vec::new();
    store
        .search(q, &mut |r| {
            v.push(r);
            Ok(true)
        })
        .unwrap_or_else(|e| panic!("{} {q:?}: {e}", store.describe()));
    v
}

fn jst(ms: i64) -> String {
    format_with_offset(ms, 540, false)
}

/// The same records in a local log directory and in ClickHouse database
/// `database`, and what the comparisons need to know about them.
struct Filled {
    _feed: Feed,
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    cfg: ClickHouseTarget,
    first_ms: i64,
    n: u64,
}

fn fill(server: &Server, database: &str) -> Filled {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("logs");
    let cfg = server.target(database);
    let feed = Feed::start(
        &dir,
        Box::new(ClickHouse::new(cfg.clone(), 365, None).unwrap()),
    );
    let data = dataset();
    let n = data.len() as u64;
    let first_ms = komugate::logs::record::parse_rfc3339_ms(&data[0].time).unwrap();
    for r in data {
        feed.sub.submit(r);
    }
    assert!(feed.sub.sync(Duration::from_secs(20)));
    let c = Client::new(&cfg).unwrap();
    let final_count = format!("SELECT count() FROM {} FINAL", c.access());
    assert!(
        wait_for(Duration::from_secs(60), || scalar(&c, &final_count) == n),
        "every record reached ClickHouse ({} of {n})",
        scalar(&c, &final_count)
    );
    Filled {
        _feed: feed,
        _tmp: tmp,
        dir,
        cfg,
        first_ms,
        n,
    }
}

#[test]
fn same_searches_give_the_same_records_on_both_stores() {
    let Some(server) = shared() else { return };
    let f = fill(server, "cmp");
    let (first_ms, n) = (f.first_ms, f.n);
    let ch = ClickHouseStore::new(&f.cfg).unwrap();
    let local = LocalStore { dir: f.dir.clone() };

    let q = |f: &dyn Fn(&mut Query)| {
        let mut q = Query::default();
        f(&mut q);
        q
    };
    let text_query = |since: Option<&str>, until: Option<&str>, fields: [Option<&str>; 11]| {
        komugate::logs::cli::build_query(since, until, 540, fields, None).unwrap()
    };
    let day = 86_400_000;
    let mut queries: Vec<(Query, bool)> = vec![
        (Query::default(), true),
        // JST time ranges as typed: dates, date-times, across the month turn.
        (
            text_query(
                Some(&jst(first_ms + day)[..10]),
                Some(&jst(first_ms + 2 * day)[..10]),
                [None; 11],
            ),
            true,
        ),
        (
            text_query(
                Some(&jst(first_ms + day + 3_600_000)[..16]),
                Some(&jst(first_ms + 3 * day - 7_200_000)[..16]),
                [None; 11],
            ),
            true,
        ),
        (
            text_query(
                Some(&jst(first_ms + 2 * day)),
                None,
                [
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    Some("block"),
                    None,
                    None,
                    None,
                    None,
                ],
            ),
            true,
        ),
        (q(&|q| q.device = Some("D-07".into())), true),
        (q(&|q| q.user = Some("山田".into())), true),
        (q(&|q| q.group = Some("staff".into())), true),
        (q(&|q| q.group = Some("students".into())), true),
        (q(&|q| q.site = Some("豊科南小学校".into())), true),
        (q(&|q| q.host = Some(Glob::new("example.com"))), true),
        (q(&|q| q.host = Some(Glob::new("*.example.com"))), true),
        (q(&|q| q.host = Some(Glob::new("ad?.*.NET"))), true),
        (q(&|q| q.host = Some(Glob::new("*dropbox*"))), true),
        (q(&|q| q.host = Some(Glob::new("www.dropbox.com."))), true),
        // LIKE's own wildcards are literal in a host glob.
        (q(&|q| q.host = Some(Glob::new("evil_host%x.io"))), true),
        (q(&|q| q.host = Some(Glob::new("*_host%*"))), true),
        (q(&|q| q.url_contains = Some("?q=a%27b".into())), true),
        (q(&|q| q.action = Some("error".into())), true),
        (q(&|q| q.rule = Some("rule-4".into())), true),
        (q(&|q| q.category = Some("gambling".into())), true),
        (q(&|q| q.app = Some("c4th".into())), true),
        (q(&|q| q.ips = Some("2002".into())), true),
        (q(&|q| q.ips = Some("4001".into())), true),
        (q(&|q| q.ips = Some("200".into())), false),
        (
            q(&|q| {
                q.device = Some("D-03".into());
                q.action = Some("allow".into());
                q.since_ms = Some(first_ms + day);
            }),
            true,
        ),
        (q(&|q| q.device = Some("nobody".into())), false),
        // Paging: pages in order, a partial last page, past the end.
        (
            q(&|q| {
                q.limit = Some(50);
            }),
            true,
        ),
        (
            q(&|q| {
                q.skip = 50;
                q.limit = Some(50);
            }),
            true,
        ),
        (
            q(&|q| {
                q.skip = 700;
                q.limit = Some(50);
            }),
            true,
        ),
        (
            q(&|q| {
                q.skip = 5000;
                q.limit = Some(50);
            }),
            false,
        ),
        (
            q(&|q| {
                q.action = Some("block".into());
                q.skip = 10;
            }),
            true,
        ),
    ];
    for e in EVIL {
        let e = e.to_string();
        let setters: [fn(&mut Query, &str); 10] = [
            |q: &mut Query, e: &str| q.device = Some(e.into()),
            |q: &mut Query, e: &str| q.user = Some(e.into()),
            |q: &mut Query, e: &str| q.group = Some(e.into()),
            |q: &mut Query, e: &str| q.site = Some(e.into()),
            |q: &mut Query, e: &str| q.rule = Some(e.into()),
            |q: &mut Query, e: &str| q.category = Some(e.into()),
            |q: &mut Query, e: &str| q.app = Some(e.into()),
            |q: &mut Query, e: &str| q.action = Some(e.into()),
            |q: &mut Query, e: &str| q.url_contains = Some(e.into()),
            |q: &mut Query, e: &str| q.host = Some(Glob::new(e)),
        ];
        for set in setters {
            let mut query = Query::default();
            set(&mut query, &e);
            queries.push((query, false));
        }
        queries.push((
            Query {
                ips: Some(e.clone()),
                ..Default::default()
            },
            false,
        ));
    }
    let mut nonempty = 0;
    for (query, must_match) in &queries {
        let a = collect(&local, query);
        let b = collect(&ch, query);
        assert_eq!(a.len(), b.len(), "same count for {query:?}");
        assert_eq!(a, b, "same records in the same order for {query:?}");
        if *must_match {
            assert!(!a.is_empty(), "{query:?} matches something");
        }
        nonempty += usize::from(!a.is_empty());
    }
    // The injection attempts find exactly their own record, nothing more.
    let all = collect(&local, &Query::default());
    assert_eq!(all.len() as u64, n);
    for e in EVIL {
        let got = collect(
            &ch,
            &Query {
                device: Some(e.to_string()),
                ..Default::default()
            },
        );
        assert_eq!(got.len(), 1, "device = {e:?}");
        assert_eq!(got[0].user, *e);
    }
    // Pages join up into the whole result.
    let mut paged = Vec::new();
    for page in 0.. {
        let p = collect(
            &ch,
            &Query {
                skip: page * 100,
                limit: Some(100),
                ..Default::default()
            },
        );
        if p.is_empty() {
            break;
        }
        paged.extend(p);
    }
    assert_eq!(paged, all);
    println!(
        "{} searches compared, {nonempty} with matches",
        queries.len()
    );
}

#[test]
fn same_counts_on_both_stores() {
    use komugate::aggregate::{GroupQuery, Key, Measure, SegmentStore};
    let Some(server) = shared() else { return };
    let f = fill(server, "agg");
    let local = SegmentStore::new(f.dir.clone(), None);
    let ch = komugate::logs::clickhouse_agg::ClickHouseAggregates::new(&f.cfg, None).unwrap();
    let day = 86_400_000;
    let jst = 9 * 3_600_000;
    let (from, to) = (f.first_ms - day, f.first_ms + 6 * day);
    let daily = Key::Time {
        width_ms: day,
        offset_ms: jst,
    };
    let queries = vec![
        GroupQuery::total(from, to).with_devices(),
        GroupQuery::total(from, to).by(&[Key::Site]).with_devices(),
        GroupQuery::total(from, to).by(&[Key::Category]).blocked(),
        GroupQuery::total(from, to)
            .by(&[Key::Host])
            .top(Measure::Blocks, 3),
        GroupQuery::total(from, to).by(&[Key::App, daily]),
        GroupQuery::total(f.first_ms + day + 3_600_000, f.first_ms + 2 * day).by(&[Key::Time {
            width_ms: 3_600_000,
            offset_ms: jst,
        }]),
        GroupQuery::total(from, to).by(&[Key::Site, Key::Category, daily]),
        GroupQuery::total(from, to)
            .by(&[Key::Site])
            .with_devices()
            .top(Measure::Devices, 2),
        GroupQuery::total(from, to)
            .by(&[Key::Category])
            .top(Measure::ThreatIntel, 4),
        GroupQuery::total(from, to)
            .by(&[Key::Host])
            .top(Measure::IpsEvents, 2),
        GroupQuery::total(to, to + day).by(&[Key::Site]),
    ];
    for q in &queries {
        let a = local.count(std::slice::from_ref(q)).unwrap().remove(0);
        let b = ch.count(q).unwrap();
        assert!(a.problems.is_empty(), "{:?}", a.problems);
        assert_eq!(a, b, "same figures for {q:?}");
    }
    let all = ch.count(&queries[0]).unwrap().total;
    // Inspected CONNECT tunnels are not counted; every measure is exercised.
    assert!(all.requests > 0 && all.requests < f.n, "{all:?}");
    assert!(
        all.blocks > 0 && all.ips_events > 0 && all.threat_intel > 0 && all.dlp_blocks > 0,
        "{all:?}"
    );
    assert_eq!(all.devices, 13 + EVIL.len() as u64);
}

#[test]
fn audit_entries_reach_clickhouse_once_even_when_sent_again() {
    let Some(server) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let audit_path = tmp.path().join("audit.log");
    let audit = AuditLog::open(&audit_path).unwrap();
    let note = |i: usize| AuditEvent::Note {
        actor: "管理者 'x\\".into(),
        message: format!("entry {i}"),
    };
    for i in 0..5 {
        audit.append(note(i)).unwrap();
    }
    let cfg = server.target("audit_once");
    let metrics = Metrics::new();
    let lm = Arc::new(LogMetrics::new(&metrics));
    let stop = ShipStop::default();
    komugate::logs::audit_ship::spawn(
        audit_path.clone(),
        &logs,
        cfg.clone(),
        lm.clone(),
        stop.clone(),
    )
    .unwrap();
    let c = Client::new(&cfg).unwrap();
    let count = || scalar(&c, &format!("SELECT count() FROM {} FINAL", c.audit()));
    assert!(wait_for(Duration::from_secs(30), || count() == 5));
    for i in 5..12 {
        audit.append(note(i)).unwrap();
    }
    assert!(wait_for(Duration::from_secs(30), || count() == 12));
    stop.stop();
    std::thread::sleep(Duration::from_millis(800));
    // The cursor is lost (as if the gateway died before writing it): the
    // whole file is sent again, and ClickHouse still holds each entry once.
    std::fs::remove_file(logs.join("ship/clickhouse-audit/cursor")).unwrap();
    let stop = ShipStop::default();
    komugate::logs::audit_ship::spawn(audit_path.clone(), &logs, cfg, lm.clone(), stop.clone())
        .unwrap();
    let sent = || lm.ship_sent.with_label_values(&["clickhouse-audit"]).get();
    assert!(
        wait_for(Duration::from_secs(30), || sent() == 24),
        "sent again: {}",
        sent()
    );
    assert_eq!(count(), 12);
    assert_eq!(
        scalar(&c, &format!("SELECT uniqExact(id) FROM {}", c.audit())),
        12
    );
    let seqs = c
        .query(&format!(
            "SELECT seq, type FROM {} FINAL ORDER BY seq FORMAT TabSeparated",
            c.audit()
        ))
        .unwrap();
    let want: String = (1..=12).map(|s| format!("{s}\tnote\n")).collect();
    assert_eq!(seqs, want);
    stop.stop();
}

#[test]
fn months_older_than_the_retention_are_dropped_once_and_audited() {
    let Some(server) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let audit_path = tmp.path().join("audit.log");
    let audit = Arc::new(AuditLog::open(&audit_path).unwrap());
    let cfg = server.target("retention");
    let mut target = ClickHouse::new(cfg.clone(), 365, Some(audit.clone())).unwrap();
    let now = now_ms();
    let day = 86_400_000;
    let ages = [
        (400, "old-a"),
        (401, "old-b"),
        (430, "old-c"),
        (300, "kept-a"),
        (0, "kept-b"),
    ];
    let batch: Vec<Shipped> = ages
        .iter()
        .map(|(age, name)| Shipped {
            id: format!("t/{name}:0"),
            rec: LogRecord {
                time_ms: now - age * day,
                host: format!("{name}.example"),
                ..Default::default()
            },
        })
        .collect();
    target.send(&batch).unwrap();
    let month = |ms: i64| {
        let (y, m, _) = komugate::logs::record::civil_from_days(ms.div_euclid(day));
        format!("{y:04}{m:02}")
    };
    let old: BTreeSet<String> = ages
        .iter()
        .filter(|(age, _)| *age >= 400)
        .map(|(age, _)| month(now - age * day))
        .collect();
    let rep = target.drop_old_partitions(now).unwrap();
    let dropped: BTreeSet<String> = rep.dropped.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(dropped, old);
    assert_eq!(rep.dropped.iter().map(|(_, n)| n).sum::<u64>(), 3);
    let c = target.client().clone();
    let left = c
        .query(&format!(
            "SELECT host FROM {} FINAL ORDER BY ts_ms FORMAT TabSeparated",
            c.access()
        ))
        .unwrap();
    assert_eq!(left, "kept-a.example\nkept-b.example\n");
    let drops = || {
        std::fs::read_to_string(&audit_path)
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"type\":\"partition_drop\""))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let audited = drops();
    assert_eq!(audited.len(), old.len(), "{audited:?}");
    for p in &old {
        assert!(
            audited
                .iter()
                .any(|l| l.contains(&format!("\"partition\":\"{p}\""))),
            "{p} audited: {audited:?}"
        );
    }
    // Run again (another replica, the next day): nothing left to drop.
    let mut other = ClickHouse::new(cfg, 365, Some(audit)).unwrap();
    assert!(other.drop_old_partitions(now).unwrap().dropped.is_empty());
    assert_eq!(drops().len(), old.len());
    assert!(komugate::logs::audit::verify(&audit_path)
        .unwrap()
        .problems
        .is_empty());
}

#[test]
fn clickhouse_stopped_mid_traffic_loses_and_duplicates_nothing() {
    let Some(bin) = find_server() else { return };
    let server = Server::new(bin);
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    let audit_path = tmp.path().join("audit.log");
    let audit = AuditLog::open(&audit_path).unwrap();
    let cfg = server.target("komugate");
    let feed = Feed::start(
        &logs,
        Box::new(ClickHouse::new(cfg.clone(), 365, None).unwrap()),
    );
    komugate::logs::audit_ship::spawn(
        audit_path.clone(),
        &logs,
        cfg.clone(),
        feed.metrics.clone(),
        feed.stop.clone(),
    )
    .unwrap();
    let mut next = 0u64;
    let mut send = |n: u64| {
        for _ in 0..n {
            feed.sub.submit(komugate::logs::cli::sample_record(
                next,
                std::time::SystemTime::now(),
            ));
            next += 1;
            if next % 50 == 0 {
                std::thread::sleep(Duration::from_millis(30));
            }
        }
        audit
            .append(AuditEvent::Note {
                actor: "test".into(),
                message: format!("after {next}"),
            })
            .unwrap();
        next
    };
    send(1000);
    server.stop(); // down mid-traffic
    send(1000);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        feed.metrics
            .ship_errors
            .with_label_values(&["clickhouse"])
            .get()
            > 0,
        "the outage was seen"
    );
    server.start();
    let n = send(1000);
    let c = Client::new(&cfg).unwrap();
    let access_final = format!("SELECT count() FROM {} FINAL", c.access());
    let audit_final = format!("SELECT count() FROM {} FINAL", c.audit());
    assert!(
        wait_for(Duration::from_secs(90), || scalar(&c, &access_final) == n
            && scalar(&c, &audit_final) == 3),
        "everything arrived: {} of {n} records, {} of 3 audit entries",
        scalar(&c, &access_final),
        scalar(&c, &audit_final)
    );
    assert_eq!(
        scalar(
            &c,
            &format!("SELECT uniqExact(user) FROM {} FINAL", c.access())
        ),
        n,
        "each record once"
    );
    let store = ClickHouseStore::new(&cfg).unwrap();
    let found = collect(&store, &Query::default());
    let users: BTreeSet<&str> = found.iter().map(|r| r.user.as_str()).collect();
    assert_eq!((found.len() as u64, users.len() as u64), (n, n));
    drop(feed);
    server.stop();
}

/// A TCP proxy in front of ClickHouse that answers 503 until `armed`, then
/// forwards; the first INSERT it forwards once armed is committed by
/// ClickHouse but its answer never returns: the gateway process is killed
/// first. Counts the rows of every INSERT forwarded.
struct AckKiller {
    port: u16,
    armed: Arc<AtomicBool>,
    victim: Arc<AtomicU32>,
    killed: Arc<AtomicBool>,
    rows_forwarded: Arc<AtomicU64>,
}

impl AckKiller {
    fn start(upstream: u16) -> AckKiller {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let k = AckKiller {
            port: l.local_addr().unwrap().port(),
            armed: Arc::default(),
            victim: Arc::default(),
            killed: Arc::default(),
            rows_forwarded: Arc::default(),
        };
        let (armed, victim, killed, rows) = (
            k.armed.clone(),
            k.victim.clone(),
            k.killed.clone(),
            k.rows_forwarded.clone(),
        );
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut head = Vec::new();
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    head.extend_from_slice(line.as_bytes());
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_err() {
                    continue;
                }
                if !armed.load(Ordering::SeqCst) {
                    let _ = conn.write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    continue;
                }
                let insert = String::from_utf8_lossy(&head).contains("INSERT");
                let mut up = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                up.write_all(&head).unwrap();
                up.write_all(&body).unwrap();
                let mut answer = Vec::new();
                let _ = up.read_to_end(&mut answer);
                if insert {
                    rows.fetch_add(
                        body.iter().filter(|&&b| b == b'\n').count() as u64,
                        Ordering::SeqCst,
                    );
                }
                let ok = answer.starts_with(b"HTTP/1.1 200");
                if insert && ok && !killed.swap(true, Ordering::SeqCst) {
                    let pid = victim.load(Ordering::SeqCst);
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                    continue; // the acknowledgement is lost with the process
                }
                let _ = conn.write_all(&answer);
            }
        });
        k
    }
}

fn write_test(dir: &Path, count: u64, clickhouse: &str, database: &str, out: Stdio) -> Child {
    Command::new(BIN)
        .args(["logs", "write-test", "--dir"])
        .arg(dir)
        .args(["--rate", "20000", "--count", &count.to_string()])
        .args([
            "--clickhouse",
            clickhouse,
            "--clickhouse-database",
            database,
        ])
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .expect("start komugate logs write-test")
}

#[test]
fn gateway_killed_between_insert_and_acknowledgement_duplicates_nothing() {
    let Some(server) = shared() else { return };
    // write-test ships as the default user (no password) into this database.
    let database = "killed";
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("logs");
    let proxy = AckKiller::start(server.http);
    let n = 3000u64;
    let mut child = write_test(
        &dir,
        n,
        &format!("http://127.0.0.1:{}", proxy.port),
        database,
        Stdio::piped(),
    );
    proxy.victim.store(child.id(), Ordering::SeqCst);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "write-test runs");
        if line.trim() == format!("acked {n}") {
            break;
        }
    }
    // Every record is on disk; now the first insert goes through and its
    // acknowledgement is lost with the process.
    proxy.armed.store(true, Ordering::SeqCst);
    let _ = child.wait();
    assert!(
        proxy.killed.load(Ordering::SeqCst),
        "killed after an insert"
    );
    let c = Client::new(&ClickHouseTarget {
        url: server.url(),
        database: database.into(),
        ..Default::default()
    })
    .unwrap();
    let final_count = format!("SELECT count() FROM {} FINAL", c.access());
    let committed = scalar(&c, &final_count);
    assert!(committed > 0, "the unacknowledged insert was committed");

    // Restarted on the same directory (through the proxy, now passing all).
    let mut child = write_test(
        &dir,
        0,
        &format!("http://127.0.0.1:{}", proxy.port),
        database,
        Stdio::null(),
    );
    assert!(
        wait_for(Duration::from_secs(60), || scalar(&c, &final_count) == n),
        "all {n} arrived ({} in ClickHouse)",
        scalar(&c, &final_count)
    );
    std::thread::sleep(Duration::from_millis(500));
    let _ = child.kill();
    let _ = child.wait();
    let forwarded = proxy.rows_forwarded.load(Ordering::SeqCst);
    assert!(
        forwarded > n,
        "the unacknowledged batch was sent again ({forwarded} rows for {n} records)"
    );
    assert_eq!(scalar(&c, &final_count), n, "no duplicates");
    assert_eq!(
        scalar(&c, &format!("SELECT uniqExact(id) FROM {}", c.access())),
        n
    );
    // The local store and ClickHouse agree record for record.
    let local = collect(&LocalStore { dir }, &Query::default());
    let mut a: Vec<String> = local.iter().map(|r| r.user.clone()).collect();
    let store = ClickHouseStore::new(&ClickHouseTarget {
        url: server.url(),
        database: database.into(),
        ..Default::default()
    })
    .unwrap();
    let mut b: Vec<String> = collect(&store, &Query::default())
        .iter()
        .map(|r| r.user.clone())
        .collect();
    a.sort();
    b.sort();
    assert_eq!(a.len() as u64, n);
    assert_eq!(a, b);
}
