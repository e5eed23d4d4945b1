//! Log search: the filters of `komugate logs search` (time range in the
//! display zone) over ClickHouse or the local files ([`crate::logs::store`]),
//! pages of results, a detail view per record, and CSV / xlsx export of the
//! whole result, streamed. Every search runs on a low-priority thread of its
//! own ([`crate::background`]), at most `[admin] max_searches` at once, never
//! on the proxy's request path; every search, detail view and export is
//! audited first.

use std::io::{self, Write};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use super::Ctx;
use crate::console::respond::{self, Body};
use crate::logs::audit::AuditEvent;
use crate::logs::export::{OutputFormat, Sink};
use crate::logs::query::{current_ms, parse_time, Glob, Query};
use crate::logs::LogRecord;

/// Records per result page.
pub const PAGE_SIZE: u64 = 50;
/// Deepest page (a search reads from the oldest record: deeper pages cost more).
pub const MAX_PAGE: u64 = 200;
/// Longest filter value, in characters.
pub const MAX_FIELD_CHARS: usize = 256;
/// How long a search waits for a free slot before "busy".
const QUEUE_WAIT: Duration = Duration::from_secs(10);

/// The text filters: (query parameter, wording key).
const TEXT_FILTERS: [(&str, &str); 11] = [
    ("device", "device"),
    ("user", "user"),
    ("group", "group"),
    ("site", "site"),
    ("host", "host"),
    ("url_contains", "url_contains"),
    ("action", "action"),
    ("rule", "rule"),
    ("category", "category"),
    ("app", "app"),
    ("ips", "ips"),
];

/// A validated search: the query, the form's values, the filters as a query string.
struct Search {
    query: Query,
    form: serde_json::Value,
    link: String,
}

fn datetime_local(ms: i64, offset_min: i32) -> String {
    let s = crate::logs::record::format_with_offset(ms, offset_min, false);
    s.get(..16).unwrap_or(&s).to_string()
}

/// Reads and checks the filters; `Err` is the message to show.
fn parse_search(ctx: &Ctx) -> Result<Search, String> {
    let q = &ctx.query;
    let offset = ctx.console.offset_min;
    let mut form = serde_json::Map::new();
    let mut fields: Vec<Option<String>> = Vec::new();
    for (name, key) in TEXT_FILTERS {
        let v = q.get(name);
        if let Some(v) = v {
            if v.chars().count() > MAX_FIELD_CHARS || v.chars().any(char::is_control) {
                return Err(ctx.fill(
                    "err_field",
                    &[("field", ctx.t(key)), ("max", &MAX_FIELD_CHARS.to_string())],
                ));
            }
        }
        form.insert(name.into(), v.unwrap_or("").into());
        fields.push(v.map(str::to_string));
    }
    if let Some(a) = q.get("action") {
        if !matches!(a, "allow" | "block" | "error") {
            return Err(ctx.fill("err_field", &[("field", ctx.t("action")), ("max", "5")]));
        }
    }
    let now = current_ms();
    let time = |name: &str, key: &str, default: Option<i64>| -> Result<Option<i64>, String> {
        match q.get(name) {
            None => Ok(default),
            Some(v) if v.chars().count() > 64 => Err(ctx.fill(
                "err_time",
                &[("field", ctx.t(key)), ("value", v.get(..64).unwrap_or(""))],
            )),
            Some(v) => parse_time(v, now, offset)
                .map(Some)
                .map_err(|_| ctx.fill("err_time", &[("field", ctx.t(key)), ("value", v)])),
        }
    };
    // To the minute, as the form and the links carry them: the next page,
    // a record's detail and an export read exactly the same records.
    let minute = |t: Option<i64>| t.map(|ms| ms.div_euclid(60_000) * 60_000);
    let since = minute(time("since", "since", Some(now - 86_400_000))?);
    let until = minute(time("until", "until", None)?);
    if let (Some(a), Some(b)) = (since, until) {
        if a >= b {
            return Err(ctx.fill("err_time_order", &[]));
        }
    }
    form.insert(
        "since".into(),
        since
            .map(|t| datetime_local(t, offset))
            .unwrap_or_default()
            .into(),
    );
    form.insert(
        "until".into(),
        until
            .map(|t| datetime_local(t, offset))
            .unwrap_or_default()
            .into(),
    );
    let take = |i: usize| fields[i].clone();
    let query = Query {
        since_ms: since,
        until_ms: until,
        device: take(0),
        user: take(1),
        group: take(2),
        site: take(3),
        host: fields[4].as_deref().map(Glob::new),
        url_contains: take(5),
        action: take(6),
        rule: take(7),
        category: take(8),
        app: take(9),
        ips: take(10),
        skip: 0,
        limit: None,
    };
    // Links keep the filters with the time range made explicit, so the
    // next page or an export reads the same records.
    let mut params = crate::console::form::Params(
        TEXT_FILTERS
            .iter()
            .filter_map(|(n, _)| q.get(n).map(|v| (n.to_string(), v.to_string())))
            .collect(),
    );
    for (name, value) in [("since", since), ("until", until)] {
        if let Some(t) = value {
            params.0.push((name.into(), datetime_local(t, offset)));
        }
    }
    Ok(Search {
        query,
        form: serde_json::Value::Object(form),
        link: params.to_query(&[]),
    })
}

/// Audits a look at the logs (`format`: page, record, csv, xlsx).
fn audit_search(ctx: &Ctx, s: &Search, format: &str) -> Result<(), String> {
    ctx.audit(AuditEvent::LogSearch {
        actor: ctx.actor(),
        via: "console".into(),
        query: s.link.replace('&', " "),
        format: format.into(),
        out: None,
    })
}

/// Waits for a search slot.
async fn slot(ctx: &Ctx<'_>) -> Result<tokio::sync::OwnedSemaphorePermit, String> {
    match tokio::time::timeout(QUEUE_WAIT, ctx.console.searches.clone().acquire_owned()).await {
        Ok(Ok(p)) => Ok(p),
        _ => Err(ctx.fill("err_busy", &[])),
    }
}

/// Records number `skip .. skip + take` of the result (and whether there are more).
async fn fetch(
    ctx: &Ctx<'_>,
    query: &Query,
    skip: u64,
    take: u64,
) -> Result<(Vec<LogRecord>, bool), String> {
    let permit = slot(ctx).await?;
    let store = crate::logs::store::for_config(&ctx.gw.config)
        .map_err(|e| ctx.fill("err_search", &[("detail", &e)]))?;
    let mut q = query.clone();
    q.skip = skip;
    q.limit = Some(take + 1);
    let result = crate::background::run("komugate-search", move || {
        let _permit = permit;
        let mut rows = Vec::new();
        store
            .search(&q, &mut |r| {
                rows.push(r);
                Ok(true)
            })
            .map(|_| {
                let more = rows.len() as u64 > take;
                rows.truncate(take as usize);
                (rows, more)
            })
    })
    .await;
    match result {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ctx.fill("err_search", &[("detail", &e.to_string())])),
        Err(e) => Err(ctx.fill("err_search", &[("detail", &e.to_string())])),
    }
}

fn page_number(ctx: &Ctx) -> Result<u64, String> {
    match ctx.query.get("page") {
        None => Ok(1),
        Some(p) => p
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| ctx.fill("err_page", &[("max", &MAX_PAGE.to_string())])),
    }
}

pub async fn search_page(ctx: &Ctx<'_>) -> Response<Body> {
    let search = match parse_search(ctx) {
        Ok(s) => s,
        Err(e) => {
            return ctx.page_with_status(
                StatusCode::BAD_REQUEST,
                "logs.html",
                serde_json::json!({"f": form_echo(ctx), "searched": true, "error": e}),
            )
        }
    };
    let can_export = ctx.session.role >= crate::console::accounts::Role::Operator;
    let outcome = match page_number(ctx) {
        Err(e) => Err(e),
        Ok(page) => match audit_search(ctx, &search, "page") {
            Err(e) => Err(e),
            Ok(()) => fetch(ctx, &search.query, (page - 1) * PAGE_SIZE, PAGE_SIZE)
                .await
                .map(|r| (page, r)),
        },
    };
    let (page, rows, more) = match outcome {
        Ok((page, (rows, more))) => (page, rows, more),
        Err(e) => {
            return ctx.page_with_status(
                StatusCode::BAD_REQUEST,
                "logs.html",
                serde_json::json!({"f": search.form, "searched": true, "error": e}),
            )
        }
    };
    let first = (page - 1) * PAGE_SIZE;
    let en = ctx.lang == crate::console::text::Lang::En;
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            serde_json::json!({
                "n": first + i as u64,
                "time": ctx.local_time(r.time_ms),
                "device": r.device, "user": r.user, "site": r.site,
                "action": r.action, "host": r.host, "rule": r.rule,
                "categories": category_cell(&r.categories, en),
                "explain": explain_query(r),
            })
        })
        .collect();
    ctx.page(
        "logs.html",
        serde_json::json!({
            "f": search.form, "searched": true, "rows": rows, "page": page,
            "more": more, "query": search.link, "can_export": can_export,
        }),
    )
}

/// A record's categories as staff read them: the Japanese labels (ギャンブル),
/// or the English ones under the English switch; unknown ids as they are.
fn category_cell(ids: &[String], en: bool) -> String {
    ids.iter()
        .map(|id| {
            let (ja, en_label) = crate::report::category_labels(id);
            if en {
                en_label
            } else {
                ja
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The filters as typed (for a form shown again with an error).
fn form_echo(ctx: &Ctx) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for name in TEXT_FILTERS
        .iter()
        .map(|(n, _)| *n)
        .chain(["since", "until"])
    {
        let v: String = ctx
            .query
            .get(name)
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_FIELD_CHARS)
            .collect();
        m.insert(name.into(), v.into());
    }
    serde_json::Value::Object(m)
}

pub async fn record_page(ctx: &Ctx<'_>) -> Response<Body> {
    let bad = |e: String| ctx.error(StatusCode::BAD_REQUEST, "title_error", e);
    let search = match parse_search(ctx) {
        Ok(s) => s,
        Err(e) => return bad(e),
    };
    let Some(n) = ctx
        .query
        .get("n")
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| *n < MAX_PAGE * PAGE_SIZE)
    else {
        return bad(ctx.fill("err_record", &[]));
    };
    if let Err(e) = audit_search(ctx, &search, "record") {
        return bad(e);
    }
    let r = match fetch(ctx, &search.query, n, 1).await {
        Ok((mut rows, _)) if !rows.is_empty() => rows.remove(0),
        Ok(_) => {
            return ctx.error(
                StatusCode::NOT_FOUND,
                "title_error",
                ctx.fill("err_record", &[]),
            )
        }
        Err(e) => return bad(e),
    };
    let en = ctx.lang == crate::console::text::Lang::En;
    let fields: Vec<serde_json::Value> = crate::logs::export::COLUMNS
        .iter()
        .zip(crate::logs::export::text_fields(&r, ctx.console.offset_min))
        .map(|((label, _), value)| {
            // "日時 time": the Japanese or the English half.
            let label = match label.split_once(' ') {
                Some((ja, en_label)) => {
                    if en {
                        en_label
                    } else {
                        ja
                    }
                }
                None => label,
            };
            serde_json::json!({"label": label, "value": value})
        })
        .collect();
    ctx.page(
        "record.html",
        serde_json::json!({
            "fields": fields, "explain_query": explain_query(&r),
            "query": search.link,
        }),
    )
}

/// The explain form's query string with a record's fields filled in: the
/// signed-in user and their groups too, so the user's rules apply.
fn explain_query(r: &LogRecord) -> String {
    let client_ip = r
        .client
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| r.client.clone());
    let mut params = vec![("device".into(), r.device.clone())];
    if r.signed_in {
        params.push(("user".into(), r.user.clone()));
        params.push(("user_groups".into(), r.user_groups.join(",")));
    }
    params.extend([
        ("from".into(), client_ip),
        ("url".into(), r.target.clone()),
        ("method".into(), r.method.clone()),
    ]);
    crate::console::form::Params(params).to_query(&[])
}

/// Bytes written on a blocking thread, sent to the response body in chunks.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 64 * 1024;

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(io::ErrorKind::BrokenPipe, "the client stopped the download")
        })
    }
}

pub async fn export(ctx: &Ctx<'_>) -> Response<Body> {
    let bad = |e: String| ctx.error(StatusCode::BAD_REQUEST, "title_error", e);
    let (format, ext, content_type) = match ctx.query.get("format") {
        Some("csv") => (OutputFormat::Csv, "csv", "text/csv; charset=utf-8"),
        Some("xlsx") => (
            OutputFormat::Xlsx,
            "xlsx",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        ),
        _ => return bad(ctx.fill("err_format", &[])),
    };
    let search = match parse_search(ctx) {
        Ok(s) => s,
        Err(e) => return bad(e),
    };
    if let Err(e) = audit_search(ctx, &search, ext) {
        return bad(e);
    }
    let permit = match slot(ctx).await {
        Ok(p) => p,
        Err(e) => return ctx.error(StatusCode::SERVICE_UNAVAILABLE, "title_error", e),
    };
    let store = match crate::logs::store::for_config(&ctx.gw.config) {
        Ok(s) => s,
        Err(e) => {
            return ctx.error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "title_error",
                ctx.fill("err_search", &[("detail", &e)]),
            )
        }
    };
    let zone = ctx.gw.config.block_page.time_zone.clone();
    let offset = zone.offset_minutes();
    let query = search.query;
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(8);
    // The thread starts now; its output travels in the channel, so the
    // completion future is not needed.
    drop(crate::background::run("komugate-export", move || {
        let _permit = permit;
        let err_tx = tx.clone();
        let run = || -> io::Result<()> {
            let out = ChannelWriter {
                tx,
                buf: Vec::with_capacity(CHUNK),
            };
            let mut sink = Sink::new(format, out, &zone)?;
            store.search(&query, &mut |r| sink.write(&r).map(|_| true))?;
            sink.finish()?.flush()
        };
        if let Err(e) = run() {
            if e.kind() != io::ErrorKind::BrokenPipe {
                tracing::warn!("console export failed: {e}");
                let _ = err_tx.blocking_send(Err(e));
            }
        }
    }));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item.map(Frame::data), rx))
    });
    let name = format!(
        "komugate-logs-{}.{ext}",
        datetime_local(current_ms(), offset)
            .replace([':', '-'], "")
            .replace('T', "-")
    );
    respond::download(content_type, &name, StreamBody::new(stream).boxed())
}
