//! Alerts through a running gateway to a local webhook receiver: security
//! events from finished access records and faults, aggregated per kind
//! (a burst becomes one message with its count), Japanese first with
//! English beside, times in Japan time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use komugate::logs::audit::ReloadSource;
use komugate_tests::gw::TestGateway;
use komugate_tests::raw::proxy_get;
use komugate_tests::smtp::SmtpServer;
use serde_json::Value;
use tokio::net::TcpListener;

/// An incoming-webhook receiver on 127.0.0.1: records every JSON body.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/webhook/T000/B000",
            listener.local_addr().unwrap()
        );
        let got: Arc<Mutex<Vec<Value>>> = Default::default();
        let got2 = got.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let got = got2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let got = got.clone();
                        async move {
                            let ct = req
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            assert!(ct.starts_with("application/json"), "{ct}");
                            let body = req.into_body().collect().await?.to_bytes();
                            got.lock()
                                .unwrap()
                                .push(serde_json::from_slice(&body).expect("JSON body"));
                            Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(
                                b"ok",
                            ))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver { url, got, task }
    }

    fn messages(&self) -> Vec<Value> {
        self.got.lock().unwrap().clone()
    }
}

const POLICY: &str = r#"
version = 1

[[categories.source]]
format = "domainlist"
category = "malware"
path = "malware.txt"

[[rule]]
name = "malware"
categories = ["malware"]
action = "block"
"#;

#[tokio::test]
async fn a_burst_of_malware_hits_is_one_message_with_its_count() {
    let hook = Receiver::start().await;
    let url = hook.url.clone();
    let gw = TestGateway::start(move |c, pki| {
        let dir = pki.dir.parent().unwrap();
        std::fs::write(dir.join("malware.txt"), "evil.test\n").unwrap();
        std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
        c.policy.file = dir.join("policy.toml").display().to_string();
        c.alerts.webhook_url = url;
        c.alerts.gather_secs = 1;
        c.alerts.interval_minutes = 60;
    })
    .await;
    for i in 0..50 {
        let r = proxy_get(gw.plain(), &format!("http://evil.test/{i}"))
            .await
            .unwrap();
        assert_eq!(r.status, 403);
    }
    let first = komugate_tests::eventually(Duration::from_secs(5), || {
        let m = hook.messages();
        async move { m.first().cloned() }
    })
    .await
    .expect("one webhook message");
    // Nothing else comes for this kind within the interval.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let all = hook.messages();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(first["kind"], "malware_category");
    assert_eq!(first["count"], 50);
    let text = first["text"].as_str().unwrap();
    assert!(
        text.starts_with("[komugate] マルウェア・フィッシングサイトへのアクセス 50件 / Malware / phishing site blocked ×50"),
        "{text}"
    );
    assert!(text.contains(" JST 〜 "), "times in Japan time: {text}");
    assert!(text.contains("→ http://evil.test/0: malware"), "{text}");
    assert_eq!(
        text.matches("\n・").count(),
        5,
        "at most five samples: {text}"
    );
    assert_eq!(
        gw.metric(
            "komugate_alerts_events_total",
            &[("kind", "malware_category")]
        ),
        50.0
    );
    assert_eq!(
        gw.metric(
            "komugate_alerts_sent_total",
            &[("channel", "webhook"), ("result", "ok")]
        ),
        1.0
    );

    // A fault: a policy that does not compile keeps the old one and alerts.
    let dir = gw.pki.parent().unwrap().to_path_buf();
    std::fs::write(dir.join("policy.toml"), "version = 1\n[[rule]]\nname = 1\n").unwrap();
    let running = gw.running.as_ref().unwrap();
    assert!(running.gateway.reload(ReloadSource::Sighup).await.is_err());
    let fault = komugate_tests::eventually(Duration::from_secs(5), || {
        let m = hook.messages();
        async move { m.into_iter().find(|m| m["kind"] == "reload_failed") }
    })
    .await
    .expect("a reload_failed message");
    let text = fault["text"].as_str().unwrap();
    assert!(
        text.starts_with("[komugate] 設定の再読み込みに失敗 1件 / Reload failed ×1"),
        "{text}"
    );
    assert!(text.contains("policy.toml"), "{text}");
    gw.shutdown().await;
}

/// A real SMTP server (aiosmtpd, STARTTLS required, its own CA) gets one
/// mail for a burst, in Japanese and English, over TLS.
#[tokio::test]
async fn alert_mail_over_starttls_to_a_real_smtp_server() {
    let smtp = SmtpServer::start();
    let (port, out) = (smtp.port, smtp.mails.clone());
    let ca_path = smtp.ca_path.display().to_string();
    let gw = TestGateway::start(move |c, pki| {
        let d = pki.dir.parent().unwrap();
        std::fs::write(d.join("malware.txt"), "evil.test\n").unwrap();
        std::fs::write(d.join("policy.toml"), POLICY).unwrap();
        c.policy.file = d.join("policy.toml").display().to_string();
        c.alerts.smtp_host = "localhost".into();
        c.alerts.smtp_port = port;
        c.alerts.smtp_from = "komugate <komugate@azumino-school.ed.jp>".into();
        c.alerts.smtp_to = vec!["ict@azumino-school.ed.jp".into()];
        c.alerts.smtp_ca = ca_path;
        c.alerts.gather_secs = 1;
    })
    .await;
    for i in 0..20 {
        let r = proxy_get(gw.plain(), &format!("http://evil.test/m{i}"))
            .await
            .unwrap();
        assert_eq!(r.status, 403);
    }
    let out2 = out.clone();
    let mails = komugate_tests::eventually(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&out2).unwrap_or_default();
        async move { (!text.is_empty()).then_some(text) }
    })
    .await
    .expect("a mail within 10 s");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 1, "one mail for the burst: {mails}");
    let mail: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(mail["tls"], true, "STARTTLS before the mail");
    assert_eq!(mail["from"], "komugate@azumino-school.ed.jp");
    assert_eq!(mail["to"], serde_json::json!(["ict@azumino-school.ed.jp"]));
    let data = mail["data"].as_str().unwrap();
    assert!(
        data.contains("Subject: [komugate] =?utf-8?b?") && data.contains("/ Malware"),
        "Japanese subject (encoded) with English beside: {data}"
    );
    assert!(
        data.contains("Content-Type: text/plain; charset=utf-8"),
        "{data}"
    );
    assert!(
        gw.metric(
            "komugate_alerts_sent_total",
            &[("channel", "mail"), ("result", "ok")]
        ) == 1.0
    );
    gw.shutdown().await;
}
