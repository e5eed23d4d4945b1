//! Output formats for search results: table, JSON lines, CSV (UTF-8 with
//! BOM, RFC 4180 quoting) and Excel `.xlsx` (header row, auto-filter, frozen
//! header, real date-time cells, column widths; a result larger than one
//! sheet continues on further sheets). All of them stream: the xlsx writer
//! uses rust_xlsxwriter's constant-memory worksheets.
//!
//! CSV and xlsx are read by people: times in the display zone (named in the
//! first heading), categories by their Japanese labels. Two columns keep
//! the machine-readable values (UTC time, category ids) for scripts; the
//! last two say whether the user was signed in on the device (OpenID
//! Connect, else the registry's user) and the signed-in user's groups.

use std::io::{self, Write};
use std::path::PathBuf;

use rust_xlsxwriter::{ExcelDateTime, Format, Workbook, Worksheet};

use super::record::{format_rfc3339_ms, format_with_offset, LogRecord};
use crate::local_time::LocalZone;

/// Rows per Excel sheet, header included (the format's limit).
pub const EXCEL_MAX_ROWS: u32 = 1_048_576;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
    Csv,
    Xlsx,
}

impl std::str::FromStr for OutputFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "table" => Ok(OutputFormat::Table),
            "json" | "jsonl" | "ndjson" => Ok(OutputFormat::Json),
            "csv" => Ok(OutputFormat::Csv),
            "xlsx" | "excel" => Ok(OutputFormat::Xlsx),
            _ => Err(format!(
                "unknown format {s:?}: use table, json, csv or xlsx"
            )),
        }
    }
}

/// Column headers of table, CSV and xlsx output (Japanese + English so both
/// the board's staff and the vendor can read them).
pub const COLUMNS: [(&str, f64); 25] = [
    ("日時 time", 20.0),
    ("端末 device", 14.0),
    ("利用者 user", 14.0),
    ("グループ groups", 18.0),
    ("拠点 site", 16.0),
    ("送信元 client", 20.0),
    ("メソッド method", 10.0),
    ("URL", 50.0),
    ("ホスト host", 28.0),
    ("判定 action", 9.0),
    ("ルール rule", 24.0),
    ("カテゴリ categories", 18.0),
    ("アプリ app", 12.0),
    ("IPS", 8.0),
    ("状態 status", 8.0),
    ("送信 bytes_up", 12.0),
    ("受信 bytes_down", 12.0),
    ("時間 duration_ms", 10.0),
    ("出口 egress", 18.0),
    ("エラー error", 24.0),
    ("受付 listener", 8.0),
    ("日時UTC time_utc", 26.0),
    ("カテゴリID category_ids", 18.0),
    ("サインイン signed_in", 10.0),
    ("利用者グループ user_groups", 18.0),
];

/// Index of the local time column (its heading names the zone).
const TIME_COLUMN: usize = 0;

/// The first heading: `日時 time (JST, Asia/Tokyo)`.
fn time_heading(zone: &LocalZone) -> String {
    format!("{} ({})", COLUMNS[TIME_COLUMN].0, zone.label())
}

/// `ギャンブル,フィッシング詐欺`: the Japanese label of each category id
/// (an id without a label stays as it is).
fn category_labels_ja(ids: &[String]) -> String {
    ids.iter()
        .map(|id| komugate_categories::category_label_ja(id))
        .collect::<Vec<_>>()
        .join(",")
}

/// A record's cells, in [`COLUMNS`] order, times in `offset_min`.
pub fn text_fields(r: &LogRecord, offset_min: i32) -> [String; 25] {
    // "YYYY-MM-DD HH:MM:SS.mmm" in local time; the header names the offset.
    let t = format_with_offset(r.time_ms, offset_min, true).replace('T', " ");
    [
        t.get(..23).unwrap_or(&t).to_string(),
        r.device.clone(),
        r.user.clone(),
        r.groups.join(","),
        r.site.clone(),
        r.client.clone(),
        r.method.clone(),
        r.target.clone(),
        r.host.clone(),
        r.action.clone(),
        r.rule.clone(),
        category_labels_ja(&r.categories),
        r.app.clone(),
        r.ips.clone(),
        r.status.to_string(),
        r.bytes_up.to_string(),
        r.bytes_down.to_string(),
        r.duration_ms.to_string(),
        r.egress.clone(),
        r.error.clone(),
        r.listener.clone(),
        format_rfc3339_ms(r.time_ms),
        r.categories.join(","),
        if r.signed_in { "はい yes" } else { "" }.to_string(),
        r.user_groups.join(","),
    ]
}

/// Where results go.
pub enum Sink<W: Write> {
    Table {
        out: W,
        offset_min: i32,
        header_done: bool,
    },
    Json {
        out: W,
    },
    Csv {
        out: Box<csv::Writer<W>>,
        offset_min: i32,
    },
    Xlsx(Box<XlsxSink<W>>),
}

impl<W: Write> Sink<W> {
    /// `zone`: the zone of displayed times (JSON stays in UTC).
    pub fn new(format: OutputFormat, mut out: W, zone: &LocalZone) -> io::Result<Sink<W>> {
        let offset_min = zone.offset_minutes();
        Ok(match format {
            OutputFormat::Table => Sink::Table {
                out,
                offset_min,
                header_done: false,
            },
            OutputFormat::Json => Sink::Json { out },
            OutputFormat::Csv => {
                out.write_all("\u{feff}".as_bytes())?;
                let mut w = csv::WriterBuilder::new()
                    .terminator(csv::Terminator::CRLF)
                    .from_writer(out);
                let mut header: Vec<String> = COLUMNS.iter().map(|c| c.0.to_string()).collect();
                header[TIME_COLUMN] = time_heading(zone);
                w.write_record(&header).map_err(csv_err)?;
                Sink::Csv {
                    out: Box::new(w),
                    offset_min,
                }
            }
            OutputFormat::Xlsx => Sink::Xlsx(Box::new(XlsxSink::new(out, zone, EXCEL_MAX_ROWS)?)),
        })
    }

    pub fn write(&mut self, r: &LogRecord) -> io::Result<()> {
        match self {
            Sink::Table {
                out,
                offset_min,
                header_done,
            } => {
                if !*header_done {
                    writeln!(
                        out,
                        "{:<29} {:<14} {:<7} {:<5} {:<20} {:<6} target",
                        "time", "device", "action", "status", "rule", "method"
                    )?;
                    *header_done = true;
                }
                let f = text_fields(r, *offset_min);
                let dev = if r.device.is_empty() { "-" } else { &r.device };
                writeln!(
                    out,
                    "{:<29} {:<14} {:<7} {:<5} {:<20} {:<6} {}",
                    format_with_offset(r.time_ms, *offset_min, true),
                    dev,
                    f[9],
                    f[14],
                    f[10],
                    f[6],
                    f[7]
                )
            }
            Sink::Json { out } => {
                serde_json::to_writer(&mut *out, r)?;
                out.write_all(b"\n")
            }
            Sink::Csv { out, offset_min } => out
                .write_record(text_fields(r, *offset_min).map(neutralise_formula))
                .map_err(csv_err),
            Sink::Xlsx(x) => x.write(r),
        }
    }

    /// Finishes the output (the xlsx file is assembled here).
    pub fn finish(self) -> io::Result<W> {
        match self {
            Sink::Table { mut out, .. } | Sink::Json { mut out } => {
                out.flush()?;
                Ok(out)
            }
            Sink::Csv { out, .. } => out
                .into_inner()
                .map_err(|e| io::Error::other(e.to_string())),
            Sink::Xlsx(x) => x.finish(),
        }
    }
}

/// A spreadsheet opening the CSV would run a cell starting with `=`, `+`,
/// `-`, `@`, tab or carriage return as a formula (`=cmd|' /C calc'!A0`):
/// such a cell gets a leading `'`, which shows the text as typed.
pub fn neutralise_formula(cell: String) -> String {
    if looks_like_formula(&cell) {
        format!("'{cell}")
    } else {
        cell
    }
}

/// Would a spreadsheet take this text for a formula? (`=`, `+`, `-`, `@`,
/// tab or carriage return first.) In xlsx such text gets Excel's quote
/// prefix: the cell shows it as typed and stays text when edited.
pub fn looks_like_formula(cell: &str) -> bool {
    matches!(
        cell.as_bytes().first(),
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r')
    )
}

fn csv_err(e: csv::Error) -> io::Error {
    match e.into_kind() {
        csv::ErrorKind::Io(e) => e,
        k => io::Error::other(format!("{k:?}")),
    }
}

fn xlsx_err(e: rust_xlsxwriter::XlsxError) -> io::Error {
    io::Error::other(format!("xlsx: {e}"))
}

/// Streams rows into constant-memory worksheets.
pub struct XlsxSink<W: Write> {
    out: W,
    wb: Workbook,
    offset_min: i32,
    time_heading: String,
    rows_per_sheet: u32,
    sheet: usize,
    row: u32,
    sheets: usize,
    date: Format,
    header: Format,
    quoted: Format,
    _tmp: Option<PathBuf>,
}

impl<W: Write> XlsxSink<W> {
    /// `rows_per_sheet` includes the header row (tests use small values).
    pub fn new(out: W, zone: &LocalZone, rows_per_sheet: u32) -> io::Result<XlsxSink<W>> {
        let mut s = XlsxSink {
            out,
            wb: Workbook::new(),
            offset_min: zone.offset_minutes(),
            time_heading: time_heading(zone),
            rows_per_sheet: rows_per_sheet.clamp(2, EXCEL_MAX_ROWS),
            sheet: 0,
            row: 0,
            sheets: 0,
            date: Format::new().set_num_format("yyyy-mm-dd hh:mm:ss"),
            header: Format::new().set_bold(),
            quoted: Format::new().set_quote_prefix(),
            _tmp: None,
        };
        s.new_sheet()?;
        Ok(s)
    }

    fn new_sheet(&mut self) -> io::Result<()> {
        self.finish_sheet()?;
        let name = if self.sheets == 0 {
            "ログ".to_string()
        } else {
            format!("ログ{}", self.sheets + 1)
        };
        let header = self.header.clone();
        let ws = self.wb.add_worksheet_with_constant_memory();
        ws.set_name(&name).map_err(xlsx_err)?;
        for (c, (title, width)) in COLUMNS.iter().enumerate() {
            let title = if c == TIME_COLUMN {
                self.time_heading.clone()
            } else {
                title.to_string()
            };
            ws.write_string_with_format(0, c as u16, title, &header)
                .map_err(xlsx_err)?;
            ws.set_column_width(c as u16, *width).map_err(xlsx_err)?;
        }
        ws.set_freeze_panes(1, 0).map_err(xlsx_err)?;
        self.sheet = self.sheets;
        self.sheets += 1;
        self.row = 1;
        Ok(())
    }

    fn current(&mut self) -> io::Result<&mut Worksheet> {
        self.wb.worksheet_from_index(self.sheet).map_err(xlsx_err)
    }

    fn finish_sheet(&mut self) -> io::Result<()> {
        if self.sheets == 0 {
            return Ok(());
        }
        let last = self.row.saturating_sub(1).max(1);
        let ws = self.current()?;
        ws.autofilter(0, 0, last, (COLUMNS.len() - 1) as u16)
            .map_err(xlsx_err)?;
        Ok(())
    }

    pub fn write(&mut self, r: &LogRecord) -> io::Result<()> {
        if self.row >= self.rows_per_sheet {
            self.new_sheet()?;
        }
        let row = self.row;
        let local_secs = (r.time_ms + self.offset_min as i64 * 60_000).div_euclid(1000);
        let dt = ExcelDateTime::from_timestamp(local_secs).map_err(xlsx_err)?;
        let f = text_fields(r, self.offset_min);
        let date = self.date.clone();
        let quoted = self.quoted.clone();
        let ws = self.current()?;
        ws.write_datetime_with_format(row, 0, &dt, &date)
            .map_err(xlsx_err)?;
        for (c, v) in f.iter().enumerate().skip(1) {
            let c = c as u16;
            match c {
                14 => ws.write_number(row, c, r.status as f64).map(|_| ()),
                15 => ws.write_number(row, c, r.bytes_up as f64).map(|_| ()),
                16 => ws.write_number(row, c, r.bytes_down as f64).map(|_| ()),
                17 => ws.write_number(row, c, r.duration_ms as f64).map(|_| ()),
                _ if v.is_empty() => Ok(()),
                _ if looks_like_formula(v) => {
                    ws.write_string_with_format(row, c, v, &quoted).map(|_| ())
                }
                _ => ws.write_string(row, c, v).map(|_| ()),
            }
            .map_err(xlsx_err)?;
        }
        self.row += 1;
        Ok(())
    }

    pub fn sheets(&self) -> usize {
        self.sheets
    }

    /// Assembles the workbook in an unlinked temporary file (not in
    /// memory: a month of records is gigabytes) and copies it to the output.
    pub fn finish(mut self) -> io::Result<W> {
        use std::io::{Seek, SeekFrom};
        self.finish_sheet()?;
        let mut file = unlinked_temp_file()?;
        self.wb.save_to_writer(&mut file).map_err(xlsx_err)?;
        file.seek(SeekFrom::Start(0))?;
        io::copy(&mut file, &mut self.out)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A private file in the temporary directory, already removed from it (it
/// disappears when closed, even after a crash).
fn unlinked_temp_file() -> io::Result<std::fs::File> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        ".komugate-export-{}-{}.xlsx",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot create the temporary file {}: {e}", path.display()),
        )
    })?;
    let _ = std::fs::remove_file(&path);
    Ok(file)
}

#[cfg(test)]
mod formula_tests {
    #[test]
    fn formulas_are_neutralised() {
        use super::neutralise_formula as n;
        assert_eq!(n("=cmd|' /C calc'!A0".into()), "'=cmd|' /C calc'!A0");
        assert_eq!(n("+1".into()), "'+1");
        assert_eq!(n("@SUM(A1)".into()), "'@SUM(A1)");
        assert_eq!(n("-2+3".into()), "'-2+3");
        assert_eq!(n("\tcmd".into()), "'\tcmd");
        assert_eq!(n("\rcmd".into()), "'\rcmd");
        assert_eq!(n("a=b".into()), "a=b", "only the first character counts");
        assert_eq!(n("example.com".into()), "example.com");
        assert_eq!(n(String::new()), "");
    }
}
