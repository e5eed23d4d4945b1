//! The monthly report as HTML: the console's `report.html` template, with
//! its charts as inline SVG (printable, no script). The same page is
//! written as a standalone file by `komugate report monthly --format html`
//! (stylesheets inlined, no console navigation).

use super::MonthlyReport;

/// Chart height in SVG units.
const CHART_HEIGHT: u64 = 100;
/// Width of one day's bar pair.
const DAY_WIDTH: usize = 14;

fn scale(v: u64, max: u64) -> u64 {
    v * CHART_HEIGHT / max.max(1)
}

/// The template's values for `r` (merged into the page layout's).
pub fn values(r: &MonthlyReport) -> serde_json::Value {
    let max = r.days.iter().map(|d| d.requests).max().unwrap_or(0);
    let bars: Vec<serde_json::Value> = r
        .days
        .iter()
        .enumerate()
        .map(|(i, d)| {
            serde_json::json!({
                "x": i * DAY_WIDTH,
                "h": scale(d.requests, max),
                "hb": scale(d.blocks, max),
                "day": d.date.get(8..10).unwrap_or(""),
                "title": format!("{} {} / {}", d.date, d.requests, d.blocks),
            })
        })
        .collect();
    let cat_max = r
        .top_categories
        .first()
        .map(|c| c.counts.blocks)
        .unwrap_or(0);
    let cat_bars: Vec<serde_json::Value> = r
        .top_categories
        .iter()
        .enumerate()
        .map(|(i, c)| {
            serde_json::json!({
                "y": i * 12,
                "w": c.counts.blocks * 300 / cat_max.max(1),
                "label": format!("{} ({})", c.label_ja, c.label_en),
                "n": c.counts.blocks,
            })
        })
        .collect();
    let mut v = serde_json::to_value(r).unwrap_or_default();
    v["chart"] = serde_json::json!({
        "bars": bars,
        "width": r.days.len() * DAY_WIDTH,
        "max": max,
    });
    v["cat_chart"] = serde_json::json!({
        "bars": cat_bars,
        "height": r.top_categories.len().max(1) * 12,
    });
    v["block_rate"] = percent(r.total.blocks, r.total.requests).into();
    v
}

/// `12.3` (%), one decimal.
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "0.0".into();
    }
    format!("{:.1}", part as f64 * 100.0 / whole as f64)
}

/// The report as a file of its own: the page without the console's
/// navigation, its stylesheets inlined.
pub fn standalone(r: &MonthlyReport, lang: crate::console::text::Lang) -> Result<String, String> {
    let mut v = values(r);
    v["lang"] = lang.code().into();
    v["zone"] = r.zone.clone().into();
    v["version"] = env!("CARGO_PKG_VERSION").into();
    v["standalone"] = true.into();
    v["inline_css"] = format!(
        "{}\n{}",
        crate::console::assets::CSS,
        crate::console::assets::REPORT_CSS
    )
    .into();
    crate::console::templates::render("report.html", &v)
}
