//! Requests and blocks over time for the dashboard's charts, sampled from
//! the gateway's own counters once a minute (nothing on the data path):
//! the figures are this process's since it started, kept 7 days.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::core::Collector;

use crate::gateway::Gateway;

/// The counters' totals at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub at_ms: i64,
    pub requests: u64,
    pub blocks: u64,
}

/// One bar of a chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Bucket {
    pub start_ms: i64,
    pub requests: u64,
    pub blocks: u64,
}

const KEEP_MS: i64 = 7 * 86_400_000 + 3_600_000;
const SAMPLE_EVERY: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Activity {
    samples: Mutex<VecDeque<Totals>>,
}

/// Sum of a metric's samples whose label `label` (if given) has `value`.
pub fn sum(c: &dyn Collector, label: Option<(&str, &str)>) -> u64 {
    c.collect()
        .iter()
        .flat_map(|mf| mf.get_metric().iter())
        .filter(|m| {
            label.is_none_or(|(name, value)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == name && l.value() == value)
            })
        })
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum::<f64>() as u64
}

/// The request and block counters now.
pub fn totals(gw: &Gateway) -> Totals {
    let m = &gw.metrics;
    Totals {
        at_ms: crate::logs::record::now_ms(),
        requests: sum(&m.requests_total, None),
        blocks: sum(&m.requests_total, Some(("decision", "block"))),
    }
}

impl Activity {
    pub fn record(&self, t: Totals) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.push_back(t);
        while s.front().is_some_and(|f| t.at_ms - f.at_ms > KEEP_MS) {
            s.pop_front();
        }
    }

    /// `span_ms / width_ms` bars ending at `now` (the current totals): what
    /// the counters grew by, given to the bar in which each growth was seen.
    pub fn buckets(&self, now: Totals, span_ms: i64, width_ms: i64) -> Vec<Bucket> {
        let n = (span_ms / width_ms).max(1) as usize;
        let end = now.at_ms.div_euclid(width_ms) * width_ms + width_ms;
        let start = end - n as i64 * width_ms;
        let mut out: Vec<Bucket> = (0..n)
            .map(|i| Bucket {
                start_ms: start + i as i64 * width_ms,
                requests: 0,
                blocks: 0,
            })
            .collect();
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let mut prev: Option<Totals> = None;
        for t in s.iter().copied().chain(std::iter::once(now)) {
            if let Some(p) = prev {
                if t.at_ms >= start && t.at_ms < end {
                    let b = &mut out[((t.at_ms - start) / width_ms) as usize];
                    b.requests += t.requests.saturating_sub(p.requests);
                    b.blocks += t.blocks.saturating_sub(p.blocks);
                }
            }
            prev = Some(t);
        }
        out
    }
}

/// Samples the counters now and every minute until the gateway stops.
pub fn spawn_sampler(gw: Arc<Gateway>, activity: Arc<Activity>) {
    tokio::spawn(async move {
        loop {
            activity.record(totals(&gw));
            tokio::select! {
                _ = gw.shutdown.cancelled() => return,
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_goes_to_the_bar_it_was_seen_in() {
        let a = Activity::default();
        let t = |at_ms, requests, blocks| Totals {
            at_ms,
            requests,
            blocks,
        };
        a.record(t(0, 0, 0));
        a.record(t(60_000, 10, 1));
        a.record(t(120_000, 15, 1));
        let b = a.buckets(t(150_000, 20, 3), 180_000, 60_000);
        assert_eq!(b.len(), 3);
        assert_eq!((b[0].start_ms, b[0].requests, b[0].blocks), (0, 0, 0));
        assert_eq!((b[1].requests, b[1].blocks), (10, 1));
        assert_eq!(
            (b[2].requests, b[2].blocks),
            (10, 2),
            "the current minute included"
        );
    }
}
