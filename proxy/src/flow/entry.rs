//! The log stage: the one place an access record is finished and counted.
//!
//! Every request's record lives in an [`Entry`] from the moment the request
//! arrives. The entry moves with the work (into a response body, a tunnel
//! task) and writes the record when it is dropped: after the last response
//! byte, at the end of a tunnel, or when the client goes away first (status
//! 499, "client closed"). So every request leaves exactly one record.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::egress::tunnel::RelayStats;
use crate::egress::udp::UdpStats;
use crate::gateway::Gateway;
use crate::record::{rfc3339, AccessRecord};
use crate::request::ConnContext;

/// Status recorded when the client went away before it was answered
/// (nginx's "client closed request").
pub const CLIENT_CLOSED: u16 = 499;

/// What kind of traffic a record is counted as (`requests_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http,
    Connect,
    Doh,
    /// A UDP flow (CONNECT-UDP).
    Udp,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Connect => "connect",
            Kind::Doh => "doh",
            Kind::Udp => "udp",
        }
    }
}

/// An access record on its way to the log; written once, on drop.
pub struct Entry {
    gw: Arc<Gateway>,
    /// Boxed: the record is large and the entry moves with every stage's
    /// future; a pointer moves for free, the record would be copied.
    pub record: Box<AccessRecord>,
    pub kind: Kind,
    started: Instant,
    /// Request body bytes sent upstream (counted by the upstream request body).
    up: Option<Arc<AtomicU64>>,
    /// Bytes sent to the client (response body or tunnel).
    pub down: u64,
    /// False once the record has been handed to another entry.
    armed: bool,
}

impl Entry {
    /// A fresh record for a request from `conn`.
    pub fn new(gw: Arc<Gateway>, conn: &ConnContext, method: &str, kind: Kind) -> Entry {
        let record = Box::new(AccessRecord {
            time: rfc3339(SystemTime::now()),
            listener: conn.listener.label(),
            device: conn.device_id().map(str::to_string),
            groups: conn.cert_groups().to_vec(),
            client: conn.client_text.clone(),
            method: method.to_string(),
            ..Default::default()
        });
        Entry {
            gw,
            record,
            kind,
            started: Instant::now(),
            up: None,
            down: 0,
            armed: true,
        }
    }

    /// A counter for the request body bytes sent upstream.
    pub fn count_up(&mut self) -> Arc<AtomicU64> {
        self.up.get_or_insert_with(Default::default).clone()
    }

    /// Moves the record into a new entry that goes with the rest of the
    /// work (a response body, a tunnel task); this one writes nothing.
    pub fn hand_over(&mut self) -> Entry {
        self.armed = false;
        Entry {
            gw: self.gw.clone(),
            record: std::mem::take(&mut self.record),
            kind: self.kind,
            started: self.started,
            up: self.up.take(),
            down: self.down,
            armed: true,
        }
    }

    /// Request body bytes sent upstream so far.
    pub fn bytes_up(&self) -> u64 {
        self.up
            .as_ref()
            .map(|u| u.load(Ordering::Relaxed))
            .unwrap_or(self.record.bytes_up)
    }

    /// Notes why the request or tunnel failed.
    pub fn fail(&mut self, error: String) {
        self.record.error = Some(error);
    }

    /// The end of a tunnel: its byte counts (and whether it was cut at
    /// the shutdown hard stop) go into the record.
    pub fn tunnel_ended(&mut self, stats: RelayStats) {
        if stats.cut && self.record.error.is_none() {
            self.record.error = Some("closed by the gateway: shutdown drain time over".into());
        }
        self.record.bytes_up = stats.up;
        self.down = stats.down;
    }

    /// The end of a UDP flow: payload bytes, datagrams, drops, and why it
    /// ended when that was not the device closing it or the idle timeout.
    pub fn udp_ended(&mut self, stats: &UdpStats) {
        let record = &mut self.record;
        record.bytes_up = stats.bytes_up;
        self.down = stats.bytes_down;
        record.packets_up = stats.packets_up;
        record.packets_down = stats.packets_down;
        record.packets_dropped = stats.dropped_rate
            + stats.dropped_oversized
            + stats.dropped_unknown
            + stats.send_errors;
        let error = if let Some(e) = &stats.malformed {
            Some(format!(
                "malformed capsule stream from the device: {e}; the flow was closed"
            ))
        } else if stats.cut {
            Some("closed by the gateway: shutdown drain time over".to_string())
        } else {
            stats
                .client_error
                .as_ref()
                .map(|e| format!("device stream: {e}"))
        };
        if error.is_some() {
            record.error = error;
        }
    }

    fn write(&mut self) {
        let record = &mut self.record;
        if record.status == 0 {
            // Never answered: the client went away (or the gateway cut the
            // connection at the end of the drain time).
            record.status = CLIENT_CLOSED;
            if record.error.is_none() {
                let cut = crate::egress::tunnel::HARD_STOP
                    .try_with(|t| t.is_cancelled())
                    .unwrap_or(false);
                record.error = Some(if cut {
                    "closed by the gateway: shutdown drain time over".into()
                } else {
                    "client closed the connection before the answer".into()
                });
            }
        }
        if record.decision.is_empty() {
            record.decision = "error";
        }
        if let Some(up) = &self.up {
            record.bytes_up = up.load(Ordering::Relaxed);
        }
        record.bytes_down = self.down;
        record.duration_ms = self.started.elapsed().as_millis() as u64;
        let metrics = &self.gw.metrics;
        if self.kind != Kind::Doh {
            let (up, down) = metrics.bytes_up_down();
            up.inc_by(record.bytes_up);
            down.inc_by(record.bytes_down);
        } else {
            metrics
                .doh_queries
                .with_label_values(&[record.decision])
                .inc();
        }
        metrics.count_request(self.kind.label(), record.decision);
        self.gw.alerts.observe(record);
        self.gw.devices_seen.observe(record);
        self.gw.access_log.submit(std::mem::take(record));
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if self.armed {
            self.write();
        }
    }
}
