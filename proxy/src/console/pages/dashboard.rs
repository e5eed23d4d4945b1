//! The dashboard. Two kinds of figures, each labelled on the page:
//!
//! - **from the log store** ([`crate::aggregate::LogAggregates`]): requests
//!   and blocks per minute over 24 h and per hour over 7 days (uPlot
//!   charts fed by `/console/dashboard/data`), the most blocked categories
//!   and hosts, usage per site, devices active in the last 5 minutes, IPS /
//!   threat-intel / DLP events of the last 24 h. With a shared store these
//!   are the whole gateway's (every replica); with the local one, this
//!   gateway's. Ranges start on the hour so closed segments are counted
//!   once and kept.
//! - **from this process**: health, policy generation and the last reload,
//!   devices connected to this replica now, open connections, the age of
//!   each category list file in force.
//!
//! The status part refreshes itself every 30 s (htmx), the charts every
//! 60 s (their own script).

use std::time::SystemTime;

use http::{Response, StatusCode};

use super::Ctx;
use crate::aggregate::{GroupQuery, Grouped, Key, KeyValue, Measure};
use crate::console::activity::sum;
use crate::console::respond::{self, Body};
use crate::logs::query::current_ms;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
/// "Active now": a device with a record in the last this long.
const ACTIVE_MS: i64 = 5 * MINUTE;
/// A list file older than this is shown as stale (the alert rule's 3 days).
const STALE_MS: i64 = 3 * DAY;
const TOP: usize = 10;

fn floor(t: i64, unit: i64) -> i64 {
    t.div_euclid(unit) * unit
}

/// The figures from the store, in the order the page asks for them.
struct StoreFigures {
    cats: Grouped,
    hosts: Grouped,
    sites: Grouped,
    day_total: Grouped,
    active: Grouped,
}

/// The page's queries at `now`: the last 24 h by category, host and site,
/// its total, and the devices active now.
fn figure_queries(now: i64) -> Vec<GroupQuery> {
    let day_since = floor(now - DAY, HOUR);
    let until = floor(now, MINUTE) + MINUTE;
    let day = GroupQuery::total(day_since, until);
    vec![
        day.clone()
            .by(&[Key::Category])
            .blocked()
            .top(Measure::Blocks, TOP + 1),
        day.clone()
            .by(&[Key::Host])
            .blocked()
            .top(Measure::Blocks, TOP),
        day.clone().by(&[Key::Site]).with_devices(),
        day.clone().with_devices(),
        GroupQuery::total(now - ACTIVE_MS, until).with_devices(),
    ]
}

/// The charts' ranges at `now` as (since, until, bucket width): 24 h by
/// minute and 7 days by hour.
fn chart_ranges(now: i64) -> [(i64, i64, i64); 2] {
    [
        (floor(now - DAY, HOUR), floor(now, MINUTE) + MINUTE, MINUTE),
        (floor(now - 7 * DAY, HOUR), floor(now, HOUR) + HOUR, HOUR),
    ]
}

fn chart_query((since, until, width): (i64, i64, i64), offset_ms: i64) -> GroupQuery {
    GroupQuery::total(since, until).by(&[Key::Time {
        width_ms: width,
        offset_ms,
    }])
}

/// Counts the dashboard's figures and charts once, in the background, when
/// the console starts: a local store keeps each closed segment's counts,
/// so the first person to open the dashboard finds the week counted
/// (otherwise that first view reads every segment of the week).
pub async fn warm_up(
    aggregates: std::sync::Arc<dyn crate::aggregate::LogAggregates>,
    offset_min: i32,
) {
    if aggregates.source().kind != "local" {
        return;
    }
    let now = current_ms();
    let offset_ms = offset_min as i64 * MINUTE;
    let mut queries = figure_queries(now);
    queries.extend(chart_ranges(now).map(|r| chart_query(r, offset_ms)));
    let started = std::time::Instant::now();
    match aggregates.grouped_many(queries).await {
        Ok(_) => tracing::info!(
            "dashboard counts ready in {:.1} s",
            started.elapsed().as_secs_f64()
        ),
        Err(e) => tracing::warn!("dashboard warm-up: {}", e.0),
    }
}

async fn store_figures(ctx: &Ctx<'_>, now: i64) -> Result<StoreFigures, String> {
    let answers = ctx
        .console
        .aggregates
        .grouped_many(figure_queries(now))
        .await
        .map_err(|e| e.0)?;
    let [cats, hosts, sites, day_total, active]: [Grouped; 5] = answers
        .try_into()
        .map_err(|_| "the log store gave a wrong number of answers".to_string())?;
    Ok(StoreFigures {
        cats,
        hosts,
        sites,
        day_total,
        active,
    })
}

fn text(k: &[KeyValue]) -> String {
    k.first().map(|v| v.text().to_string()).unwrap_or_default()
}

/// Each category list file in force: its category, entries and age.
fn list_ages(ctx: &Ctx, now: i64) -> Vec<serde_json::Value> {
    let generation = ctx.gw.current();
    let mut out = Vec::new();
    for src in &generation.runtime.policy.import_report().sources {
        for l in &src.lists {
            let modified = std::fs::metadata(&l.path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as i64);
            let (ja, en) = crate::report::category_labels(&l.category);
            out.push(serde_json::json!({
                "category": l.category,
                "label": if ctx.lang == crate::console::text::Lang::Ja { ja } else { en },
                "file": l.path.display().to_string(),
                "entries": l.entries,
                "changed": modified.map(|m| ctx.local_time(m)).unwrap_or_default(),
                "age_hours": modified.map(|m| (now - m).max(0) / HOUR),
                "stale": modified.is_none_or(|m| now - m > STALE_MS),
            }));
        }
    }
    out
}

pub async fn page(ctx: &Ctx<'_>) -> Response<Body> {
    let gw = ctx.gw;
    let m = &gw.metrics;
    let generation = gw.current();
    let now = current_ms();
    let store = ctx.console.aggregates.source();
    let figures = store_figures(ctx, now).await;
    let last_reload = match gw.reload_lock.try_lock() {
        Ok(g) => match &*g {
            None => serde_json::json!({"none": true}),
            Some(r) => serde_json::json!({
                "at": ctx.local_time(r.at_ms),
                "ok": r.result.is_ok(),
                "error": r.result.as_ref().err(),
            }),
        },
        Err(_) => serde_json::json!({"running": true}),
    };
    let mut v = serde_json::json!({
        "now": ctx.local_time(now),
        "draining": gw.shutdown.is_cancelled(),
        "generation": generation.number(),
        "builtin": generation.runtime.builtin,
        "reloads_ok": sum(&m.policy_reloads, Some(("result", "ok"))),
        "reloads_failed": sum(&m.policy_reloads, Some(("result", "error"))),
        "last_reload": last_reload,
        "connections": sum(&m.connections_open, None),
        "devices": gw.devices_connected(),
        "tunnels": m.tunnels_open.get(),
        "spilled": gw.access_log.log_metrics().spilled.get(),
        "ship_errors": sum(&gw.access_log.log_metrics().ship_errors, None),
        "lists": list_ages(ctx, now),
        "downloads": gw.list_updates.status().iter().map(|s| serde_json::json!({
            "path": s.path.display().to_string(),
            "applied": s.last_applied.clone().unwrap_or_default(),
            "result": s.last_result.clone().unwrap_or_default(),
            "entries": s.entries_in_force,
        })).collect::<Vec<_>>(),
        "source": store,
    });
    match figures {
        Ok(f) => {
            let t = f.day_total.total;
            let problems: Vec<&String> = [&f.cats, &f.hosts, &f.sites, &f.day_total, &f.active]
                .iter()
                .flat_map(|g| g.problems.iter())
                .collect();
            v["store"] = serde_json::json!({
                "requests": t.requests,
                "blocks": t.blocks,
                "ips_events": t.ips_events,
                "threat_intel": t.threat_intel,
                "dlp_blocks": t.dlp_blocks,
                "devices_day": t.devices,
                "devices_active": f.active.total.devices,
                "categories": f.cats.rows.iter().filter(|r| !text(&r.key).is_empty()).take(TOP).map(|r| {
                    let id = text(&r.key);
                    let (ja, en) = crate::report::category_labels(&id);
                    serde_json::json!({"id": id, "ja": ja, "en": en, "blocks": r.counts.blocks})
                }).collect::<Vec<_>>(),
                "hosts": f.hosts.rows.iter().map(|r| serde_json::json!({"host": text(&r.key), "blocks": r.counts.blocks})).collect::<Vec<_>>(),
                "sites": f.sites.rows.iter().map(|r| serde_json::json!({
                    "site": text(&r.key), "requests": r.counts.requests, "blocks": r.counts.blocks, "devices": r.counts.devices,
                })).collect::<Vec<_>>(),
                "problems": problems,
            });
        }
        Err(e) => v["store_error"] = e.into(),
    }
    ctx.page("dashboard.html", v)
}

/// `/console/dashboard/data`: the chart series as uPlot takes them (x in
/// Unix seconds, one array per series), every bucket present.
pub async fn data(ctx: &Ctx<'_>) -> Response<Body> {
    let now = current_ms();
    let [day, week] = chart_ranges(now);
    let offset_ms = ctx.console.offset_min as i64 * MINUTE;
    let answers = ctx
        .console
        .aggregates
        .grouped_many(vec![
            chart_query(day, offset_ms),
            chart_query(week, offset_ms),
        ])
        .await;
    let answers = match answers {
        Ok(a) => a,
        Err(e) => {
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": ctx.fill("err_dashboard", &[("detail", &e.0)])}),
            )
        }
    };
    let series = |g: &Grouped, (since, until, width): (i64, i64, i64)| {
        let mut x = Vec::new();
        let mut requests = Vec::new();
        let mut blocks = Vec::new();
        let mut rows = g.rows.iter().peekable();
        let mut t = Key::bucket(width, offset_ms, since);
        while t < until {
            let mut c = (0, 0);
            while let Some(r) = rows.peek() {
                let k = r.key.first().map(KeyValue::time).unwrap_or(i64::MAX);
                if k < t {
                    rows.next();
                } else {
                    if k == t {
                        c = (r.counts.requests, r.counts.blocks);
                    }
                    break;
                }
            }
            x.push(t / 1000);
            requests.push(c.0);
            blocks.push(c.1);
            t += width;
        }
        serde_json::json!({"x": x, "requests": requests, "blocks": blocks})
    };
    json(
        StatusCode::OK,
        serde_json::json!({
            "day": series(&answers[0], day),
            "week": series(&answers[1], week),
            "offset_min": ctx.console.offset_min,
            "gateway_wide": ctx.console.aggregates.source().gateway_wide,
        }),
    )
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = respond::text(status, v.to_string());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
