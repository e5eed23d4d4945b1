//! The dashboard: the gateway's state now (health, policy generation,
//! reloads, counters since start, open connections and tunnels). The page
//! refreshes its figures itself every 30 s (htmx).

use http::Response;
use prometheus::core::Collector;

use super::Ctx;
use crate::console::respond::Body;

/// Sum of a metric's samples whose label `label` (if given) has `value`.
fn sum(c: &dyn Collector, label: Option<(&str, &str)>) -> f64 {
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
        .sum()
}

pub fn page(ctx: &Ctx) -> Response<Body> {
    let gw = ctx.gw;
    let m = &gw.metrics;
    let generation = gw.current();
    let now = crate::logs::query::current_ms();
    ctx.page(
        "dashboard.html",
        serde_json::json!({
            "now": ctx.local_time(now),
            "draining": gw.shutdown.is_cancelled(),
            "generation": generation.number(),
            "builtin": generation.runtime.builtin,
            "reloads_ok": sum(&m.policy_reloads, Some(("result", "ok"))) as u64,
            "reloads_failed": sum(&m.policy_reloads, Some(("result", "error"))) as u64,
            "requests": sum(&m.requests_total, None) as u64,
            "blocks": sum(&m.requests_total, Some(("decision", "block"))) as u64,
            "connections": sum(&m.connections_open, None) as u64,
            "tunnels": m.tunnels_open.get(),
        }),
    )
}
