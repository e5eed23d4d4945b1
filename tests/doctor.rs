//! `komugate doctor` against a running gateway and real neighbours on
//! loopback: an HTTPS echo service (what source address it sees), a real
//! SMTP server requiring STARTTLS, the webhook host, and the gateway's own
//! admin listener. A healthy deployment passes and reports the fixed
//! egress address actually seen; a broken one names each fault.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use komugate::config::{Config, FixedEgress};
use komugate::doctor::{diagnose, Report, Status};
use komugate_tests::gw::TestGateway;
use komugate_tests::smtp::SmtpServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const FIXED_SOURCE: &str = "127.0.0.7";

/// An HTTPS service on 127.0.0.3 answering every request with the client
/// address it sees (like the city's echo page); its CA is written to `ca`.
struct Echo {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_echo(ca_path: &std::path::Path) -> Echo {
    let (acceptor, ca) =
        komugate_tests::upstream::tls_acceptor("doctor test echo CA", &["127.0.0.3"]);
    std::fs::write(ca_path, ca.cert_pem()).unwrap();
    let listener = TcpListener::bind("127.0.0.3:0").await.unwrap();
    let url = format!("https://{}/ip", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let body = format!("{}\n", peer.ip());
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Echo { url, task }
}

/// The running gateway's configuration with the admin address it bound.
fn running_config(gw: &TestGateway) -> Config {
    let mut c = gw.running.as_ref().unwrap().gateway.config.clone();
    c.listen.admin = gw.admin().to_string();
    c
}

fn status_of(report: &Report, area: &str) -> Vec<Status> {
    report.area(area).map(|c| c.status).collect()
}

fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test]
async fn a_healthy_deployment_passes_and_reports_the_egress_address_seen() {
    let smtp = SmtpServer::start();
    let scratch = tempfile::tempdir().unwrap();
    let echo_ca = scratch.path().join("echo-ca.pem");
    let echo = start_echo(&echo_ca).await;
    let (echo_url, smtp_port) = (echo.url.clone(), smtp.port);
    let smtp_ca = smtp.ca_path.display().to_string();
    let webhook = echo.url.replace("/ip", "/webhook/T000/B000/secret");
    let gw = TestGateway::start(move |c, pki| {
        let d = pki.dir.parent().unwrap();
        std::fs::write(d.join("threats.txt"), "203.0.113.66\n").unwrap();
        c.threat_intel.lists = vec![d.join("threats.txt")];
        c.egress.fixed = vec![FixedEgress {
            name: "city-fixed-ip".into(),
            hosts: vec!["*.c4th.test".into()],
            source: FIXED_SOURCE.parse().unwrap(),
        }];
        c.inspect.upstream_ca = echo_ca.display().to_string();
        c.alerts.smtp_host = "localhost".into();
        c.alerts.smtp_port = smtp_port;
        c.alerts.smtp_from = "komugate@school.example".into();
        c.alerts.smtp_to = vec!["ict@school.example".into()];
        c.alerts.smtp_ca = smtp_ca;
        c.alerts.webhook_url = webhook;
        c.doctor.echo_url = echo_url;
        c.doctor.expected_egress = vec![FIXED_SOURCE.parse().unwrap()];
    })
    .await;

    let report = diagnose(&running_config(&gw), Duration::from_secs(10)).await;
    let text = report.render_text();
    assert_eq!(report.count(Status::Fail), 0, "{text}");
    assert_eq!(report.count(Status::Warn), 0, "{text}");
    assert_eq!(status_of(&report, "config"), [Status::Ok], "{text}");
    assert_eq!(
        status_of(&report, "certificate"),
        [Status::Ok, Status::Ok, Status::Ok],
        "server, device CA, inspection CA: {text}"
    );
    assert_eq!(status_of(&report, "lists"), [Status::Ok], "{text}");
    assert_eq!(status_of(&report, "gateway"), [Status::Ok], "{text}");
    assert!(text.contains("policy generation 1"), "{text}");
    assert_eq!(status_of(&report, "clickhouse"), [Status::Skip], "{text}");
    assert_eq!(status_of(&report, "smtp"), [Status::Ok], "{text}");
    assert_eq!(status_of(&report, "webhook"), [Status::Ok], "{text}");
    // The webhook's secret path is not printed.
    assert!(!text.contains("secret"), "{text}");

    // Two routes: the default one and the fixed source, each as the echo
    // service saw it.
    let egress: Vec<_> = report.area("egress").collect();
    assert_eq!(egress.len(), 2, "{text}");
    assert!(egress[0].subject.contains("unbound"), "{text}");
    let default_seen: IpAddr = egress[0]
        .detail
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(default_seen.is_loopback() && default_seen.to_string() != FIXED_SOURCE);
    assert!(egress[1].subject.contains("city-fixed-ip"), "{text}");
    assert!(
        egress[1]
            .detail
            .contains(&format!("seen as {FIXED_SOURCE} (")),
        "{text}"
    );
    assert!(egress[1].detail.contains("as expected"), "{text}");

    // Nothing was sent: the SMTP check logs in and quits.
    assert!(!smtp.mails.exists(), "the doctor sent a mail");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_broken_deployment_names_each_fault() {
    let smtp_port = closed_port().port();
    let scratch = tempfile::tempdir().unwrap();
    let echo_ca = scratch.path().join("echo-ca.pem");
    let echo = start_echo(&echo_ca).await;
    let echo_url = echo.url.clone();
    let clickhouse = format!("http://{}", closed_port());
    let stale = Arc::new(std::sync::Mutex::new(None));
    let stale_path = stale.clone();
    let mut gw = TestGateway::start(move |c, pki| {
        let d = pki.dir.parent().unwrap();
        let list = d.join("threats.txt");
        std::fs::write(&list, "203.0.113.66\n").unwrap();
        *stale_path.lock().unwrap() = Some(list.clone());
        c.threat_intel.lists = vec![list];
        c.egress.fixed = vec![FixedEgress {
            name: "city-fixed-ip".into(),
            hosts: vec!["*.c4th.test".into()],
            source: FIXED_SOURCE.parse().unwrap(),
        }];
        c.inspect.upstream_ca = echo_ca.display().to_string();
        c.log.clickhouse.enabled = true;
        c.log.clickhouse.url = clickhouse;
        c.log.clickhouse.create_table = false;
        c.alerts.smtp_host = "localhost".into();
        c.alerts.smtp_port = smtp_port;
        c.alerts.smtp_from = "komugate@school.example".into();
        c.alerts.smtp_to = vec!["ict@school.example".into()];
        c.doctor.echo_url = echo_url;
        // The city registered another address: the NAT is not in place.
        c.doctor.expected_egress = vec!["198.51.100.7".parse().unwrap()];
    })
    .await;
    // The threat list has not been updated for 20 days.
    let list = stale.lock().unwrap().clone().unwrap();
    std::fs::File::options()
        .write(true)
        .open(&list)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(20 * 86_400))
        .unwrap();
    let config = running_config(&gw);
    // And the gateway itself is down (its files stay).
    let running = gw.running.take().unwrap();
    running.shutdown(Duration::from_secs(2)).await;

    let report = diagnose(&config, Duration::from_secs(5)).await;
    let text = report.render_text();
    assert_eq!(status_of(&report, "config"), [Status::Ok], "{text}");
    assert_eq!(status_of(&report, "lists"), [Status::Warn], "{text}");
    assert!(text.contains("threats.txt (20"), "{text}");
    assert_eq!(status_of(&report, "gateway"), [Status::Fail], "{text}");
    assert_eq!(status_of(&report, "clickhouse"), [Status::Fail], "{text}");
    assert_eq!(status_of(&report, "smtp"), [Status::Fail], "{text}");
    let fixed = report.area("egress").nth(1).expect("the fixed route");
    assert_eq!(fixed.status, Status::Fail, "{text}");
    assert!(
        fixed.detail.contains(&format!("seen as {FIXED_SOURCE}"))
            && fixed.detail.contains("198.51.100.7"),
        "{text}"
    );
    // Every failure says how to fix it.
    for c in report.checks.iter().filter(|c| c.status == Status::Fail) {
        assert!(c.fix.is_some(), "no fix for {c:?}");
    }
    drop((echo, gw));
}
