//! The monthly report and the dashboard from real traffic: requests from
//! two "schools" (127.0.0.1 and 127.0.0.2 as site CIDRs), anonymous on the
//! plain listener and from devices over mutual TLS, allowed and blocked by
//! category; then the report as the console's page, as xlsx (read back with
//! calamine, charts present) and from `komugate report monthly`, and every
//! dashboard figure, checked against what was sent.

use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

use calamine::{Data, Reader, Xlsx};
use komugate::console::accounts::Role;
use komugate::pki::IssuedCert;
use komugate::report::Month;
use komugate_tests::console::{write_accounts, ConsoleClient, Page};
use komugate_tests::gw::TestGateway;
use komugate_tests::raw::{RawConn, RawResponse};
use komugate_tests::upstream::HttpUpstream;
use komugate_tests::{eventually, within};
use rustls_pki_types::ServerName;
use tokio::net::TcpSocket;

const VIEWER_PW: &str = "viewer-password-22";
const NORTH: &str = "北小学校";
const SOUTH: &str = "南中学校";

const POLICY: &str = r#"
version = 1
timezone = "+09:00"

[defaults]
action = "allow"

[[site]]
name = "北小学校"
cidrs = ["127.0.0.1/32"]

[[site]]
name = "南中学校"
cidrs = ["127.0.0.2/32"]

[[categories.source]]
format = "plain"
path = "gambling.txt"
category = "gambling"

[[categories.source]]
format = "plain"
path = "blog.txt"
category = "blog"

[[app]]
name = "c4th"
hosts = [".c4th.test"]

[casb]

[[casb.dlp]]
name = "my-number"
my_number = true
action = "block"

[[rule]]
name = "DLP everywhere"
casb = { dlp = true }

[[rule]]
name = "ギャンブル禁止"
categories = ["gambling"]
action = "block"
"#;

async fn gateway() -> TestGateway {
    TestGateway::start(|c, _| {
        let dir = c.data.dir.clone();
        std::fs::write(dir.join("gambling.txt"), "casino.test\npoker.test\n").unwrap();
        std::fs::write(dir.join("blog.txt"), "plain.test\n").unwrap();
        std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
        c.policy.file = dir.join("policy.toml").display().to_string();
        std::fs::write(dir.join("threats.txt"), "evil.test\n").unwrap();
        c.threat_intel.lists = vec![dir.join("threats.txt")];
        c.ips.rules =
            vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("data/ips/komugate-test.rules")];
        write_accounts(c, &[("見る人", Role::Viewer, VIEWER_PW)]);
    })
    .await
}

/// A request through the gateway from source address `from`: on the plain
/// listener, or over mutual TLS as `device`; a POST when `body` is given.
async fn send(
    gw: &TestGateway,
    from: &str,
    url: &str,
    body: Option<&str>,
    device: Option<&IssuedCert>,
) -> RawResponse {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let host = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("");
    let req = match body {
        None => format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        Some(b) => format!(
            "POST {url} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
            b.len()
        ),
    };
    match device {
        None => {
            let mut c = RawConn::new(sock.connect(gw.plain()).await.unwrap());
            c.send(req.as_bytes()).await.unwrap();
            c.read_response(false).await.unwrap()
        }
        Some(d) => {
            let tcp = sock.connect(gw.mtls()).await.unwrap();
            let cfg = gw.tls().client_config(Some(d), &[b"http/1.1"]);
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            let mut c = RawConn::new(tls);
            c.send(req.as_bytes()).await.unwrap();
            c.read_response(false).await.unwrap()
        }
    }
}

/// What was sent, by site: (allowed blog, allowed c4th, blocked casino, blocked poker).
struct Sent {
    requests: u64,
    blocks: u64,
}

/// The traffic of every test here; returns the totals.
async fn send_traffic(gw: &TestGateway, up: SocketAddr) -> Sent {
    let port = up.port();
    let blog = format!("http://plain.test:{port}/");
    let c4th = format!("http://www.c4th.test:{port}/");
    let t1 = gw.tls().device("T-1", &["teachers"]);
    let t2 = gw.tls().device("T-2", &["teachers"]);
    let ips_alert = format!("http://plain.test:{port}/ips-alert-marker");
    let my_number = "個人番号 1234 5678 9018 です";
    type Step<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        Option<&'a IssuedCert>,
        u16,
    );
    let plan: Vec<Step> = vec![
        // North: 3 blog + 1 c4th + 2 casino anonymous, 1 blog as T-1,
        // 1 blog with an IPS alert (allowed), 1 blog POST blocked by DLP.
        ("127.0.0.1", &blog, None, None, 200),
        ("127.0.0.1", &blog, None, None, 200),
        ("127.0.0.1", &blog, None, None, 200),
        ("127.0.0.1", &c4th, None, None, 200),
        ("127.0.0.1", "http://casino.test/", None, None, 403),
        ("127.0.0.1", "http://casino.test/x", None, None, 403),
        ("127.0.0.1", &blog, None, Some(&t1), 200),
        ("127.0.0.1", &ips_alert, None, None, 200),
        ("127.0.0.1", &blog, Some(my_number), None, 403),
        // South: 1 blog + 3 casino + 1 poker anonymous, 1 casino as T-2,
        // 1 threat-intel host.
        ("127.0.0.2", &blog, None, None, 200),
        ("127.0.0.2", "http://casino.test/", None, None, 403),
        ("127.0.0.2", "http://casino.test/", None, None, 403),
        ("127.0.0.2", "http://casino.test/", None, None, 403),
        ("127.0.0.2", "http://poker.test/", None, None, 403),
        ("127.0.0.2", "http://casino.test/", None, Some(&t2), 403),
        ("127.0.0.2", "http://evil.test/", None, None, 403),
    ];
    for (from, url, body, device, want) in &plan {
        let r = send(gw, from, url, *body, *device).await;
        assert_eq!(r.status, *want, "{from} {url}: {r:?}");
    }
    let sent = Sent {
        requests: plan.len() as u64,
        blocks: plan.iter().filter(|p| p.4 == 403).count() as u64,
    };
    // Every record written before anything is counted.
    let path = gw.access_log.clone();
    let n = sent.requests as usize;
    eventually(Duration::from_secs(5), || {
        let lines = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .count();
        async move { (lines >= n).then_some(()) }
    })
    .await
    .expect("the access records are written");
    sent
}

fn this_month() -> Month {
    Month::of(komugate::logs::query::current_ms(), 540)
}

/// The numbers in the table row whose first cell contains `first`.
fn row_numbers(html: &str, table_id: &str, first: &str) -> Vec<u64> {
    let table = &html[html
        .find(&format!("id=\"{table_id}\""))
        .unwrap_or_else(|| panic!("no table {table_id}"))..];
    let table = &table[..table.find("</table>").unwrap()];
    for row in table.split("<tr>").skip(1) {
        let cells: Vec<&str> = row
            .split("<td>")
            .skip(1)
            .map(|c| c.split("</td>").next().unwrap_or(""))
            .collect();
        if cells.first().is_some_and(|c| c.contains(first)) {
            return cells
                .iter()
                .filter_map(|c| c.trim().trim_end_matches('%').parse().ok())
                .collect();
        }
    }
    panic!("no row {first:?} in {table_id}:\n{table}");
}

fn sheet(wb: &mut Xlsx<std::io::Cursor<Vec<u8>>>, name: &str) -> Vec<Vec<Data>> {
    let range = wb
        .worksheet_range(name)
        .unwrap_or_else(|e| panic!("sheet {name}: {e}"));
    range.rows().map(|r| r.to_vec()).collect()
}

fn num(d: &Data) -> u64 {
    match d {
        Data::Float(f) => *f as u64,
        Data::Int(i) => *i as u64,
        other => panic!("not a number: {other:?}"),
    }
}

fn text(d: &Data) -> String {
    d.to_string()
}

/// Checks a report workbook against the traffic; `Err` if not an xlsx.
fn check_workbook(bytes: Vec<u8>, sent: &Sent) {
    // Charts are drawn parts of the package.
    let mut zip =
        zip::ZipArchive::new(std::io::Cursor::new(bytes.clone())).expect("an xlsx is a zip");
    let charts: Vec<String> = zip
        .file_names()
        .filter(|n| n.starts_with("xl/charts/chart"))
        .map(str::to_string)
        .collect();
    assert!(
        charts.len() >= 4,
        "charts for days, sites, categories, apps: {charts:?}"
    );
    let mut chart1 = String::new();
    zip.by_name(&charts[0])
        .unwrap()
        .read_to_string(&mut chart1)
        .unwrap();
    assert!(chart1.contains("<c:ser>"), "a chart with series");

    let mut wb: Xlsx<_> = Xlsx::new(std::io::Cursor::new(bytes)).expect("calamine reads it");
    let summary = sheet(&mut wb, "概要 Summary");
    let fact = |label: &str| {
        summary
            .iter()
            .find(|r| text(&r[0]).starts_with(label))
            .map(|r| num(&r[1]))
            .unwrap_or_else(|| panic!("no {label} in the summary"))
    };
    assert_eq!(fact("リクエスト"), sent.requests);
    assert_eq!(fact("ブロック Blocks"), sent.blocks);
    assert_eq!(fact("利用端末"), 2);

    let sites = sheet(&mut wb, "拠点別 Sites");
    let site = |name: &str| {
        sites
            .iter()
            .find(|r| text(&r[0]) == name)
            .map(|r| r[1..].iter().map(num).collect::<Vec<u64>>())
            .unwrap_or_else(|| panic!("no site {name} in {sites:?}"))
    };
    // requests, blocks, IPS, threat intel, DLP, devices
    assert_eq!(site(NORTH), vec![9, 3, 1, 0, 1, 1]);
    assert_eq!(site(SOUTH), vec![7, 6, 0, 1, 0, 1]);

    let sc = sheet(&mut wb, "拠点・カテゴリ Site×Category");
    let pair = |s: &str, id: &str| {
        sc.iter()
            .find(|r| text(&r[0]) == s && text(&r[3]) == id)
            .map(|r| (text(&r[1]), num(&r[4]), num(&r[5])))
            .unwrap_or_else(|| panic!("no {s}/{id} in {sc:?}"))
    };
    assert_eq!(pair(NORTH, "blog"), ("ブログ".into(), 6, 1));
    assert_eq!(pair(NORTH, "gambling"), ("ギャンブル".into(), 2, 2));
    assert_eq!(pair(SOUTH, "gambling"), ("ギャンブル".into(), 5, 5));
    assert_eq!(pair(SOUTH, ""), ("分類なし".into(), 1, 1));

    let top = sheet(&mut wb, "ブロック上位 Top blocked");
    assert_eq!(text(&top[1][0]), "ギャンブル (Gambling)");
    assert_eq!(num(&top[1][1]), 7);
    assert_eq!(
        (text(&top[1][3]), num(&top[1][4])),
        ("casino.test".into(), 6)
    );
    // Ties by name: evil.test, plain.test (the DLP block), poker.test.
    assert_eq!((text(&top[2][3]), num(&top[2][4])), ("evil.test".into(), 1));
    assert_eq!(
        (text(&top[4][3]), num(&top[4][4])),
        ("poker.test".into(), 1)
    );

    let apps = sheet(&mut wb, "クラウドアプリ Apps");
    assert_eq!((text(&apps[1][0]), num(&apps[1][1])), ("c4th".into(), 1));

    let daily = sheet(&mut wb, "日別 Daily");
    let days_counted: u64 = daily[1..].iter().map(|r| num(&r[1])).sum();
    assert_eq!(days_counted, sent.requests, "every request on its day");
    assert!(
        (28..=31).contains(&(daily.len() - 1)),
        "one row per day of the month"
    );
}

#[tokio::test]
async fn monthly_report_page_xlsx_and_cli_match_the_traffic() {
    let up = HttpUpstream::start("127.0.0.1").await;
    let gw = gateway().await;
    let sent = within("traffic", send_traffic(&gw, up.addr)).await;
    let month = this_month().label();
    within("report page and xlsx", async {
        let mut c = ConsoleClient::plain(gw.admin());
        assert_eq!(c.sign_in("見る人", VIEWER_PW).await.status, 303);

        let p = c.get(&format!("/console/report?month={month}")).await;
        assert_eq!(p.status, 200, "{}", p.text());
        let html = p.visible();
        assert!(
            html.contains("月次報告") && html.contains("Monthly report"),
            "Japanese with English beside"
        );
        assert!(
            html.contains("このゲートウェイのログ"),
            "says where the figures come from"
        );
        let overall = row_numbers(&html, "overall", "");
        assert_eq!(&overall[..2], &[sent.requests, sent.blocks], "{html}");
        assert_eq!(
            &overall[2..],
            &[1, 1, 1, 2],
            "IPS, threat intel, DLP, devices"
        );
        assert_eq!(overall.last(), Some(&2), "devices active");
        assert_eq!(row_numbers(&html, "sites", NORTH), vec![9, 3, 1, 0, 1, 1]);
        assert_eq!(row_numbers(&html, "sites", SOUTH), vec![7, 6, 0, 1, 0, 1]);
        assert_eq!(row_numbers(&html, "top-categories", "ギャンブル"), vec![7]);
        assert_eq!(row_numbers(&html, "top-hosts", "casino.test"), vec![6]);
        assert_eq!(row_numbers(&html, "apps", "c4th"), vec![1, 0, 0, 0]);
        assert!(html.contains("@media print") || p.text().contains("/console/assets/report.css"));
        let css = c.get("/console/assets/report.css").await;
        assert!(css.text().contains("@media print"), "print rules");

        let x = c
            .get(&format!("/console/report?month={month}&format=xlsx"))
            .await;
        assert_eq!(x.status, 200, "{}", x.text());
        assert!(x
            .header("content-disposition")
            .unwrap()
            .contains(&format!("komugate-report-{month}.xlsx")));
        check_workbook(x.body, &sent);

        // A month with no traffic: zeros, not an error.
        let p = c.get("/console/report?month=2001-01").await;
        assert_eq!(p.status, 200);
        assert_eq!(&row_numbers(&p.visible(), "overall", "")[..2], &[0, 0]);

        // Viewing and downloading are audited with the person's name.
        let audit = std::fs::read_to_string(gw.dir.path().join("audit.log")).unwrap();
        assert!(
            audit.contains("report-xlsx") && audit.contains("見る人"),
            "{audit}"
        );
    })
    .await;

    // The CLI on the same data directory (in-process: the same code as the binary).
    let data = gw.dir.path().to_path_buf();
    let out_dir = tempfile::tempdir().unwrap();
    let xlsx = out_dir.path().join("r.xlsx");
    let html = out_dir.path().join("r.html");
    let (x2, h2, m2) = (xlsx.clone(), html.clone(), month.clone());
    std::thread::spawn(move || {
        for (format, out) in [("xlsx", &x2), ("html", &h2)] {
            komugate::report::cli::run_report(komugate::report::cli::ReportCommand::Monthly(
                komugate::report::cli::MonthlyArgs {
                    month: m2.clone(),
                    format: format.into(),
                    out: out.clone(),
                    loc: komugate::logs::cli::LogDirArgs {
                        dir: Some(data.join("logs")),
                        config: None,
                        data: None,
                    },
                    utc_offset: None,
                },
            ))
            .unwrap_or_else(|e| panic!("report {format}: {e:#}"));
        }
    })
    .join()
    .unwrap();
    check_workbook(std::fs::read(&xlsx).unwrap(), &sent);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("<style>") && page.contains("@media print"),
        "standalone, printable"
    );
    assert!(
        !page.contains("/console/signout"),
        "no console navigation in the file"
    );
    assert_eq!(
        &row_numbers(&page, "overall", "")[..2],
        &[sent.requests, sent.blocks]
    );
    gw.shutdown().await;
}

/// The dashboard's figures, each checked against the traffic.
#[tokio::test]
async fn dashboard_figures_match_the_traffic() {
    let up = HttpUpstream::start("127.0.0.1").await;
    let gw = gateway().await;
    let sent = within("traffic", send_traffic(&gw, up.addr)).await;
    within("dashboard", async {
        let mut c = ConsoleClient::plain(gw.admin());
        assert_eq!(c.sign_in("見る人", VIEWER_PW).await.status, 303);
        let p: Page = c.get("/console/dashboard").await;
        assert_eq!(p.status, 200, "{}", p.text());
        let html = p.visible();
        let cell = |id: &str| -> u64 {
            let at = html
                .find(&format!("id=\"{id}\">"))
                .unwrap_or_else(|| panic!("no {id} in {html}"));
            let rest = &html[at + id.len() + 6..];
            rest[..rest.find('<').unwrap()]
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{id}: {rest:.40}"))
        };
        assert_eq!(cell("requests-24h"), sent.requests);
        assert_eq!(cell("blocks-24h"), sent.blocks);
        assert_eq!(
            cell("devices-active"),
            2,
            "T-1 and T-2 in the last 5 minutes"
        );
        assert_eq!(cell("devices-day"), 2);
        assert_eq!(cell("ips-events"), 1, "the IPS alert");
        assert_eq!(cell("threat-intel"), 1, "evil.test");
        assert_eq!(cell("dlp-blocks"), 1, "the My Number POST");
        assert_eq!(
            cell("devices-connected"),
            0,
            "the TLS connections are closed"
        );
        assert_eq!(cell("generation"), 1);
        assert!(html.contains("起動後はまだありません"), "no reload yet");
        assert_eq!(row_numbers(&html, "top-categories", "ギャンブル"), vec![7]);
        assert_eq!(row_numbers(&html, "top-hosts", "casino.test"), vec![6]);
        assert_eq!(row_numbers(&html, "top-hosts", "poker.test"), vec![1]);
        assert_eq!(row_numbers(&html, "sites", NORTH), vec![9, 3, 1]);
        assert_eq!(row_numbers(&html, "sites", SOUTH), vec![7, 6, 1]);
        assert!(
            html.contains("このゲートウェイ自身のログ"),
            "says where the figures come from"
        );
        // List freshness: each list file in force, just written.
        let lists = &html[html.find("id=\"lists\"").unwrap()..];
        assert!(
            lists.contains("gambling.txt") && lists.contains("blog.txt"),
            "{lists}"
        );
        assert!(
            lists.contains("ギャンブル") && !lists.contains("3 日以上"),
            "{lists}"
        );

        // The chart data: every minute of the last 24 h, the traffic in the last ones.
        let d = c.get("/console/dashboard/data").await;
        assert_eq!(d.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
        let day = &v["day"];
        let n = day["x"].as_array().unwrap().len();
        assert!((1441..=1501).contains(&n), "one point a minute: {n}");
        let sum = |s: &serde_json::Value| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .sum::<u64>()
        };
        assert_eq!(sum(&day["requests"]), sent.requests);
        assert_eq!(sum(&day["blocks"]), sent.blocks);
        assert_eq!(sum(&v["week"]["requests"]), sent.requests);
        assert_eq!(v["week"]["x"].as_array().unwrap().len(), 7 * 24 + 1);
        // The chart library is embedded, not fetched.
        let js = c.get("/console/assets/uPlot.iife.min.js").await;
        assert_eq!(js.status, 200);
        assert!(js.text().contains("uPlot"));
        assert!(p.text().contains("/console/assets/dashboard.js"));

        // A failed reload shows on the dashboard with its reason.
        let policy = gw.dir.path().join("policy.toml");
        std::fs::write(
            &policy,
            "version = 1\n[[rule]]\nname = \"broken\"\naction = \"maybe\"\n",
        )
        .unwrap();
        let running = gw.running.as_ref().unwrap().gateway.clone();
        assert!(running
            .reload(komugate::logs::audit::ReloadSource::Api {
                token_name: "test".into()
            })
            .await
            .is_err());
        let html = c.get("/console/dashboard").await.visible();
        let last = &html[html.find("id=\"last-reload\"").unwrap()..];
        assert!(last.contains("失敗"), "{last:.300}");
        assert_eq!(cell_in(&html, "generation"), "1");
    })
    .await;
    gw.shutdown().await;
}

fn cell_in(html: &str, id: &str) -> String {
    let at = html.find(&format!("id=\"{id}\">")).unwrap();
    let rest = &html[at + id.len() + 6..];
    rest[..rest.find('<').unwrap()].trim().to_string()
}
