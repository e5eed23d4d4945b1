//! The monthly report as an Excel workbook: one sheet per table, Japanese
//! headers with English beside, charts drawn by rust_xlsxwriter (requests
//! and blocks per day and per site, the most blocked categories, cloud-app
//! usage). Text that a spreadsheet could take for a formula is stored with
//! Excel's quote prefix (shown as typed, never run).

use rust_xlsxwriter::{Chart, ChartType, Format, Workbook, Worksheet, XlsxError};

use super::MonthlyReport;
use crate::logs::export::looks_like_formula;

fn err(e: XlsxError) -> String {
    format!("cannot build the Excel workbook: {e}")
}

struct Formats {
    bold: Format,
    title: Format,
    quoted: Format,
}

/// A text cell, neutralised if it starts like a formula.
fn text(ws: &mut Worksheet, f: &Formats, row: u32, col: u16, s: &str) -> Result<(), XlsxError> {
    if s.is_empty() {
        return Ok(());
    }
    if looks_like_formula(s) {
        ws.write_string_with_format(row, col, s, &f.quoted)?;
    } else {
        ws.write_string(row, col, s)?;
    }
    Ok(())
}

fn header(ws: &mut Worksheet, f: &Formats, cols: &[(&str, f64)]) -> Result<(), XlsxError> {
    for (c, (h, width)) in cols.iter().enumerate() {
        ws.write_string_with_format(0, c as u16, *h, &f.bold)?;
        ws.set_column_width(c as u16, *width)?;
    }
    ws.set_freeze_panes(1, 0)?;
    Ok(())
}

/// A chart of `series` (value columns) over the category column `cat_col`
/// of rows `1..=rows` of `sheet`.
fn chart(
    kind: ChartType,
    title: &str,
    sheet: &str,
    rows: u32,
    cat_col: u16,
    series: &[(u16, &str)],
) -> Chart {
    let mut ch = Chart::new(kind);
    ch.title().set_name(title);
    for (col, name) in series {
        ch.add_series()
            .set_name(*name)
            .set_categories((sheet, 1, cat_col, rows.max(1), cat_col))
            .set_values((sheet, 1, *col, rows.max(1), *col));
    }
    ch.set_width(720).set_height(360);
    ch
}

fn site_name(s: &str) -> &str {
    if s.is_empty() {
        "（拠点なし none）"
    } else {
        s
    }
}

/// The workbook's bytes.
pub fn workbook(r: &MonthlyReport) -> Result<Vec<u8>, String> {
    build(r).map_err(err)
}

fn build(r: &MonthlyReport) -> Result<Vec<u8>, XlsxError> {
    let f = Formats {
        bold: Format::new().set_bold(),
        title: Format::new().set_bold().set_font_size(14),
        quoted: Format::new().set_quote_prefix(),
    };
    let mut wb = Workbook::new();

    // Summary.
    let ws = wb.add_worksheet();
    ws.set_name("概要 Summary")?;
    ws.set_column_width(0, 34)?;
    ws.set_column_width(1, 40)?;
    ws.write_string_with_format(
        0,
        0,
        format!("利用状況 月次報告 Monthly report {}", r.month),
        &f.title,
    )?;
    let source = if r.source.gateway_wide {
        format!(
            "全ゲートウェイ共通のログストア shared log store ({}: {})",
            r.source.kind, r.source.detail
        )
    } else {
        format!(
            "このゲートウェイのログ this gateway's own logs ({}: {})",
            r.source.kind, r.source.detail
        )
    };
    let facts: [(&str, String); 3] = [
        (
            "期間 Period",
            format!("{} 〜 {} ({})", r.since_local, r.until_local, r.zone),
        ),
        ("集計元 Source", source),
        (
            "ブロック率 Block rate",
            format!(
                "{}%",
                super::html::percent(r.total.blocks, r.total.requests)
            ),
        ),
    ];
    let mut row = 2;
    for (k, v) in facts {
        ws.write_string_with_format(row, 0, k, &f.bold)?;
        text(ws, &f, row, 1, &v)?;
        row += 1;
    }
    let t = &r.total;
    for (k, v) in [
        ("リクエスト Requests", t.requests),
        ("ブロック Blocks", t.blocks),
        ("IPS イベント IPS events", t.ips_events),
        ("脅威情報 Threat intel", t.threat_intel),
        ("DLP ブロック DLP blocks", t.dlp_blocks),
        ("利用端末 Devices active", t.devices),
    ] {
        ws.write_string_with_format(row, 0, k, &f.bold)?;
        ws.write_number(row, 1, v as f64)?;
        row += 1;
    }
    for p in &r.problems {
        row += 1;
        text(ws, &f, row, 0, &format!("注意 Note: {p}"))?;
    }

    // Per day, with its chart.
    let name = "日別 Daily";
    let ws = wb.add_worksheet();
    ws.set_name(name)?;
    header(
        ws,
        &f,
        &[
            ("日付 Date", 12.0),
            ("リクエスト Requests", 16.0),
            ("ブロック Blocks", 14.0),
        ],
    )?;
    for (i, d) in r.days.iter().enumerate() {
        let row = i as u32 + 1;
        ws.write_string(row, 0, &d.date)?;
        ws.write_number(row, 1, d.requests as f64)?;
        ws.write_number(row, 2, d.blocks as f64)?;
    }
    let ch = chart(
        ChartType::Column,
        "日別のリクエストとブロック Requests and blocks per day",
        name,
        r.days.len() as u32,
        0,
        &[(1, "リクエスト Requests"), (2, "ブロック Blocks")],
    );
    ws.insert_chart(1, 4, &ch)?;

    // Per site.
    let name = "拠点別 Sites";
    let ws = wb.add_worksheet();
    ws.set_name(name)?;
    header(
        ws,
        &f,
        &[
            ("拠点 Site", 24.0),
            ("リクエスト Requests", 16.0),
            ("ブロック Blocks", 14.0),
            ("IPS", 8.0),
            ("脅威情報 Threat intel", 18.0),
            ("DLP", 8.0),
            ("利用端末 Devices", 16.0),
        ],
    )?;
    for (i, s) in r.sites.iter().enumerate() {
        let row = i as u32 + 1;
        text(ws, &f, row, 0, site_name(&s.site))?;
        let c = &s.counts;
        for (col, v) in [
            c.requests,
            c.blocks,
            c.ips_events,
            c.threat_intel,
            c.dlp_blocks,
            c.devices,
        ]
        .into_iter()
        .enumerate()
        {
            ws.write_number(row, col as u16 + 1, v as f64)?;
        }
    }
    if !r.sites.is_empty() {
        let ch = chart(
            ChartType::Bar,
            "拠点別のリクエストとブロック Requests and blocks per site",
            name,
            r.sites.len() as u32,
            0,
            &[(1, "リクエスト Requests"), (2, "ブロック Blocks")],
        );
        ws.insert_chart(1, 8, &ch)?;
    }

    // Per site and category.
    let ws = wb.add_worksheet();
    ws.set_name("拠点・カテゴリ Site×Category")?;
    header(
        ws,
        &f,
        &[
            ("拠点 Site", 24.0),
            ("カテゴリ Category", 24.0),
            ("Category", 20.0),
            ("id", 16.0),
            ("リクエスト Requests", 16.0),
            ("ブロック Blocks", 14.0),
        ],
    )?;
    for (i, sc) in r.site_categories.iter().enumerate() {
        let row = i as u32 + 1;
        text(ws, &f, row, 0, site_name(&sc.site))?;
        text(ws, &f, row, 1, &sc.label_ja)?;
        text(ws, &f, row, 2, &sc.label_en)?;
        text(ws, &f, row, 3, &sc.category)?;
        ws.write_number(row, 4, sc.requests as f64)?;
        ws.write_number(row, 5, sc.blocks as f64)?;
    }
    if !r.site_categories.is_empty() {
        ws.autofilter(0, 0, r.site_categories.len() as u32, 5)?;
    }

    // Most blocked categories and hosts.
    let name = "ブロック上位 Top blocked";
    let ws = wb.add_worksheet();
    ws.set_name(name)?;
    header(
        ws,
        &f,
        &[
            ("カテゴリ Category", 30.0),
            ("ブロック Blocks", 14.0),
            ("", 4.0),
            ("ホスト Host", 36.0),
            ("ブロック Blocks", 14.0),
        ],
    )?;
    for (i, c) in r.top_categories.iter().enumerate() {
        let row = i as u32 + 1;
        text(ws, &f, row, 0, &format!("{} ({})", c.label_ja, c.label_en))?;
        ws.write_number(row, 1, c.counts.blocks as f64)?;
    }
    for (i, h) in r.top_hosts.iter().enumerate() {
        let row = i as u32 + 1;
        text(ws, &f, row, 3, &h.name)?;
        ws.write_number(row, 4, h.counts.blocks as f64)?;
    }
    if !r.top_categories.is_empty() {
        let ch = chart(
            ChartType::Bar,
            "ブロックの多いカテゴリ Most blocked categories",
            name,
            r.top_categories.len() as u32,
            0,
            &[(1, "ブロック Blocks")],
        );
        ws.insert_chart(
            r.top_hosts.len().max(r.top_categories.len()) as u32 + 2,
            0,
            &ch,
        )?;
    }

    // Cloud apps.
    let name = "クラウドアプリ Apps";
    let ws = wb.add_worksheet();
    ws.set_name(name)?;
    header(
        ws,
        &f,
        &[
            ("アプリ App", 20.0),
            ("リクエスト Requests", 16.0),
            ("ブロック Blocks", 14.0),
            ("DLP", 8.0),
            ("利用端末 Devices", 16.0),
        ],
    )?;
    for (i, a) in r.apps.iter().enumerate() {
        let row = i as u32 + 1;
        text(ws, &f, row, 0, &a.name)?;
        let c = &a.counts;
        for (col, v) in [c.requests, c.blocks, c.dlp_blocks, c.devices]
            .into_iter()
            .enumerate()
        {
            ws.write_number(row, col as u16 + 1, v as f64)?;
        }
    }
    if !r.apps.is_empty() {
        let ch = chart(
            ChartType::Pie,
            "クラウドアプリの利用 Cloud app usage (requests)",
            name,
            r.apps.len() as u32,
            0,
            &[(1, "リクエスト Requests")],
        );
        ws.insert_chart(1, 6, &ch)?;
    }

    wb.save_to_buffer()
}
