//! The dashboard: the gateway's state now (health, policy generation,
//! reloads, open connections, devices connected, IPS / threat-intel / DLP
//! events, category list updates, the most blocked hosts and categories of
//! the last day) and requests / blocks over the last 24
//! hours and 7 days as bar charts (inline SVG drawn by the template, no
//! chart script). The figures are this gateway process's (on Kubernetes,
//! one pod's). The page refreshes itself every 30 s (htmx).

use http::Response;

use super::Ctx;
use crate::console::activity::{sum, totals, Bucket};
use crate::console::respond::Body;

/// Chart height in SVG units.
const CHART_HEIGHT: u64 = 100;

/// Bars scaled to the chart, with their labels.
fn chart(ctx: &Ctx, buckets: &[Bucket], label_every: usize, with_date: bool) -> serde_json::Value {
    let max = buckets.iter().map(|b| b.requests).max().unwrap_or(0).max(1);
    let scale = |v: u64| v * CHART_HEIGHT / max;
    let bars: Vec<serde_json::Value> = buckets
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let time = ctx.local_time(b.start_ms);
            let label = if with_date {
                &time[5..13]
            } else {
                &time[11..16]
            };
            serde_json::json!({
                "x": i * 4,
                "h": scale(b.requests),
                "hb": scale(b.blocks),
                "title": format!("{time} {} / {}", b.requests, b.blocks),
                "label": (i % label_every == 0).then(|| label.to_string()),
            })
        })
        .collect();
    serde_json::json!({
        "bars": bars, "width": buckets.len() * 4, "max": max,
        "requests": buckets.iter().map(|b| b.requests).sum::<u64>(),
        "blocks": buckets.iter().map(|b| b.blocks).sum::<u64>(),
    })
}

pub async fn page(ctx: &Ctx<'_>) -> Response<Body> {
    let gw = ctx.gw;
    let m = &gw.metrics;
    let generation = gw.current();
    let now = totals(gw);
    let activity = &ctx.console.activity;
    let day = activity.buckets(now, 86_400_000, 600_000);
    let week = activity.buckets(now, 7 * 86_400_000, 3_600_000);
    let top = ctx
        .console
        .top_blocked
        .get(crate::logs::cli::log_dir(&gw.config), &ctx.console.searches)
        .await;
    let lists: Vec<serde_json::Value> = gw
        .list_updates
        .status()
        .iter()
        .map(|s| {
            serde_json::json!({
                "path": s.path.display().to_string(),
                "applied": s.last_applied.clone().unwrap_or_default(),
                "result": s.last_result.clone().unwrap_or_default(),
                "entries": s.entries_in_force,
            })
        })
        .collect();
    ctx.page(
        "dashboard.html",
        serde_json::json!({
            "now": ctx.local_time(now.at_ms),
            "draining": gw.shutdown.is_cancelled(),
            "generation": generation.number(),
            "builtin": generation.runtime.builtin,
            "reloads_ok": sum(&m.policy_reloads, Some(("result", "ok"))),
            "reloads_failed": sum(&m.policy_reloads, Some(("result", "error"))),
            "requests": now.requests,
            "blocks": now.blocks,
            "connections": sum(&m.connections_open, None),
            "devices": gw.devices_connected(),
            "tunnels": m.tunnels_open.get(),
            "ips_events": sum(&m.ips_events, None),
            "threat_intel_blocks": sum(&m.threat_intel_blocks, None),
            "dlp_matches": sum(&m.casb.dlp_matches, None),
            "day": chart(ctx, &day, 18, false),
            "week": chart(ctx, &week, 24, true),
            "lists": lists,
            "top": top.as_deref(),
        }),
    )
}
