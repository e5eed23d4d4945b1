//! Alerts: security events and gateway faults, aggregated per kind, sent to
//! a webhook (Teams / Slack incoming webhooks) and by e-mail (SMTP, STARTTLS).
//!
//! ```text
//! flow::entry (every finished record) ─┐
//! fault sites (reload, list update…) ──┴─try_send─▶ bounded channel ─▶ notifier task
//!                                                                      (aggregate, send)
//! ```
//!
//! The data path never waits on a notifier: [`Alerts::raise`] is a
//! `try_send`; when the queue is full the event is dropped and counted
//! (`komugate_alerts_dropped_total`). The notifier sends at most one
//! message per kind per `interval_minutes`: the first event of a kind
//! waits `gather_secs` for more of its kind, then one message goes out
//! with the count; events until the interval is over go into the next
//! message. Messages are Japanese first with English beside, times in
//! Japan time (the board's staff read them).

pub mod faults;
mod mail;
mod message;
mod webhook;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use prometheus::{IntCounter, IntCounterVec, Opts};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::AlertsConfig;
use crate::record::AccessRecord;

pub use mail::Mailer;
pub use message::Message;
pub use webhook::Client;

/// What an alert is about; one aggregation window per kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    IpsDrop,
    ThreatIntel,
    DlpBlock,
    MalwareCategory,
    ReloadFailed,
    ListUpdateFailed,
    LogSpill,
    ClickhouseUnreachable,
    CertificateExpiring,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::IpsDrop,
        Kind::ThreatIntel,
        Kind::DlpBlock,
        Kind::MalwareCategory,
        Kind::ReloadFailed,
        Kind::ListUpdateFailed,
        Kind::LogSpill,
        Kind::ClickhouseUnreachable,
        Kind::CertificateExpiring,
    ];

    /// Metric label and `kind` field of the webhook payload.
    pub fn id(self) -> &'static str {
        match self {
            Kind::IpsDrop => "ips_drop",
            Kind::ThreatIntel => "threat_intel",
            Kind::DlpBlock => "dlp_block",
            Kind::MalwareCategory => "malware_category",
            Kind::ReloadFailed => "reload_failed",
            Kind::ListUpdateFailed => "list_update_failed",
            Kind::LogSpill => "log_spill",
            Kind::ClickhouseUnreachable => "clickhouse_unreachable",
            Kind::CertificateExpiring => "certificate_expiring",
        }
    }

    /// (Japanese, English) title.
    pub fn title(self) -> (&'static str, &'static str) {
        match self {
            Kind::IpsDrop => ("IPS による通信の遮断", "IPS dropped traffic"),
            Kind::ThreatIntel => ("脅威情報リストの宛先への通信", "Threat-intel destination"),
            Kind::DlpBlock => ("DLP による送信の遮断", "DLP blocked an upload"),
            Kind::MalwareCategory => (
                "マルウェア・フィッシングサイトへのアクセス",
                "Malware / phishing site blocked",
            ),
            Kind::ReloadFailed => ("設定の再読み込みに失敗", "Reload failed"),
            Kind::ListUpdateFailed => ("リスト更新に失敗", "List update failed"),
            Kind::LogSpill => ("ログ書き込みの遅延 (退避中)", "Access log spilling to disk"),
            Kind::ClickhouseUnreachable => {
                ("ClickHouse に接続できません", "ClickHouse unreachable")
            }
            Kind::CertificateExpiring => (
                "証明書の有効期限が 30 日以内",
                "Certificate or CA expires within 30 days",
            ),
        }
    }
}

/// One event: its kind, when, and a one-line detail (no personal data
/// beyond what the access log holds; never matched DLP content).
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: Kind,
    pub at: SystemTime,
    pub detail: String,
}

/// The security events a finished access record stands for.
pub fn events_of(record: &AccessRecord) -> Vec<(Kind, String)> {
    let mut out = Vec::new();
    let who = match (&record.device, &record.user) {
        (Some(d), Some(u)) => format!("{d} ({u})"),
        (Some(d), None) => d.clone(),
        _ => record.client.clone(),
    };
    let line = |what: &str| format!("{who} → {}: {what}", record.target);
    if record.rule == "threat-intel" {
        out.push((Kind::ThreatIntel, line("threat-intel")));
    } else if record.ips_events.iter().any(|e| e.action == "drop") {
        let e = record.ips_events.iter().find(|e| e.action == "drop");
        let msg = e.map(|e| e.msg.as_str()).unwrap_or("");
        out.push((Kind::IpsDrop, line(msg)));
    }
    if record.decision == "block" {
        if let Some(pattern) = record.rule.strip_prefix("dlp:") {
            out.push((Kind::DlpBlock, line(&format!("DLP {pattern}"))));
        }
        let bad: Vec<&str> = record
            .categories
            .iter()
            .map(String::as_str)
            .filter(|c| matches!(*c, "malware" | "phishing"))
            .collect();
        if !bad.is_empty() {
            out.push((Kind::MalwareCategory, line(&bad.join(", "))));
        }
    }
    out
}

/// The handle the data path and the fault sites hold.
#[derive(Clone)]
pub struct Alerts {
    tx: Option<mpsc::Sender<Event>>,
    events: IntCounterVec,
    dropped: IntCounter,
    sent: IntCounterVec,
}

impl Alerts {
    /// The handle and, when a channel is configured, the receiving end for
    /// [`run`].
    pub fn new(
        config: &AlertsConfig,
        registry: &prometheus::Registry,
    ) -> (Alerts, Option<mpsc::Receiver<Event>>) {
        let events = IntCounterVec::new(
            Opts::new(
                "komugate_alerts_events_total",
                "Alert events raised, by kind",
            ),
            &["kind"],
        )
        .expect("metric");
        let dropped = IntCounter::new(
            "komugate_alerts_dropped_total",
            "Alert events dropped because the notifier queue was full",
        )
        .expect("metric");
        let sent = IntCounterVec::new(
            Opts::new(
                "komugate_alerts_sent_total",
                "Alert messages sent, by channel and result",
            ),
            &["channel", "result"],
        )
        .expect("metric");
        // Two gateways in one process (tests) share nothing; ignore a duplicate registration.
        let _ = registry.register(Box::new(events.clone()));
        let _ = registry.register(Box::new(dropped.clone()));
        let _ = registry.register(Box::new(sent.clone()));
        let (tx, rx) = if config.enabled() {
            let (tx, rx) = mpsc::channel(config.queue.max(1));
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        (
            Alerts {
                tx,
                events,
                dropped,
                sent,
            },
            rx,
        )
    }

    /// Raises one event; never waits.
    pub fn raise(&self, kind: Kind, detail: impl Into<String>) {
        self.events.with_label_values(&[kind.id()]).inc();
        let Some(tx) = &self.tx else { return };
        let event = Event {
            kind,
            at: SystemTime::now(),
            detail: detail.into(),
        };
        if tx.try_send(event).is_err() {
            self.dropped.inc();
        }
    }

    /// The security events of a finished access record (called from the
    /// one place records are finished).
    pub fn observe(&self, record: &AccessRecord) {
        for (kind, detail) in events_of(record) {
            self.raise(kind, detail);
        }
    }
}

/// Events of one kind not yet sent.
struct Pending {
    count: u64,
    first: SystemTime,
    last: SystemTime,
    /// The first few details (a message lists at most these).
    samples: Vec<String>,
}

const SAMPLES: usize = 5;

/// The notifier: aggregates events per kind and sends the messages; ends
/// when every handle is gone or on `stop`, sending what is pending first.
pub async fn run(
    alerts: Alerts,
    config: AlertsConfig,
    client: Client,
    mailer: Option<Mailer>,
    mut rx: mpsc::Receiver<Event>,
    stop: tokio_util::sync::CancellationToken,
) {
    let gather = Duration::from_secs(config.gather_secs);
    let interval = Duration::from_secs(config.interval_minutes * 60);
    let host = hostname();
    let mut pending: BTreeMap<Kind, Pending> = BTreeMap::new();
    // When each kind may send next.
    let mut due: BTreeMap<Kind, Instant> = BTreeMap::new();
    let mut last_sent: BTreeMap<Kind, Instant> = BTreeMap::new();
    loop {
        let next = due.values().min().copied();
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let mut flush_all = false;
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => {
                    let p = pending.entry(ev.kind).or_insert_with(|| Pending {
                        count: 0,
                        first: ev.at,
                        last: ev.at,
                        samples: Vec::new(),
                    });
                    p.count += 1;
                    p.last = ev.at;
                    if p.samples.len() < SAMPLES {
                        p.samples.push(ev.detail);
                    }
                    due.entry(ev.kind).or_insert_with(|| {
                        let earliest = Instant::now() + gather;
                        match last_sent.get(&ev.kind) {
                            Some(t) => earliest.max(*t + interval),
                            None => earliest,
                        }
                    });
                    continue;
                }
                None => flush_all = true,
            },
            _ = sleep => {}
            _ = stop.cancelled() => flush_all = true,
        }
        let now = Instant::now();
        let ready: Vec<Kind> = due
            .iter()
            .filter(|(_, t)| flush_all || **t <= now)
            .map(|(k, _)| *k)
            .collect();
        for kind in ready {
            due.remove(&kind);
            let Some(p) = pending.remove(&kind) else {
                continue;
            };
            last_sent.insert(kind, now);
            let msg = Message {
                kind,
                count: p.count,
                first: p.first,
                last: p.last,
                samples: p.samples,
                host: host.clone(),
            };
            if client.configured() {
                let result = client.send(&msg).await;
                let label = if result.is_ok() { "ok" } else { "error" };
                alerts.sent.with_label_values(&["webhook", label]).inc();
                if let Err(e) = result {
                    tracing::warn!(kind = kind.id(), "alert not delivered to the webhook: {e}");
                }
            }
            if let Some(mailer) = &mailer {
                let result = mailer.send(&msg).await;
                let label = if result.is_ok() { "ok" } else { "error" };
                alerts.sent.with_label_values(&["mail", label]).inc();
                if let Err(e) = result {
                    tracing::warn!(kind = kind.id(), "alert mail not delivered: {e}");
                }
            }
        }
        if flush_all {
            return;
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "komugate".into())
}
