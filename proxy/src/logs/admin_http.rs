//! `GET /admin/logs?since=-1d&host=*.example.com&format=csv` on the admin
//! listener: the same filters as `komugate logs search` (`since`, `until`,
//! `device`, `user`, `group`, `site`, `host`, `url_contains`, `action`,
//! `rule`, `category`, `app`, `ips`, `limit`, `utc_offset`) and
//! `format=json|csv|xlsx` (default json: one JSON object per line). It reads
//! ClickHouse when `[log.clickhouse]` is enabled (every replica's records),
//! else this gateway's files ([`super::store`]).
//! Requires an API token (`Authorization: Bearer …`, see
//! `crate::admin::authorize`); the audit entry names the token.

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;

use super::export::{OutputFormat, Sink};
use crate::gateway::Gateway;

/// Default and maximum rows per response (the body is built in memory).
pub const DEFAULT_LIMIT: u64 = 10_000;
pub const MAX_LIMIT: u64 = 1_000_000;

fn reply(status: StatusCode, msg: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(msg.into() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn percent_decode(s: &str) -> String {
    String::from_utf8_lossy(&crate::common::percent_decode_form(s.as_bytes())).into_owned()
}

/// Parses `a=1&b=x%20y` into pairs.
pub fn parse_query_string(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

pub(crate) fn token_ok(expected: &str, req_header: Option<&HeaderValue>) -> bool {
    let Some(got) = req_header
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (expected.as_bytes(), got.trim().as_bytes());
    // Constant time in the token's length.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves the search for a request already authorized with the API token
/// named `token_name` (see `crate::admin::authorize`).
pub async fn handle<B>(gw: &Gateway, req: &Request<B>, token_name: &str) -> Response<Full<Bytes>> {
    if req.method() != http::Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "use GET");
    }
    let params = parse_query_string(req.uri().query().unwrap_or(""));
    let get = |k: &str| {
        params
            .iter()
            .rev()
            .find(|(n, _)| n == k || n.replace('-', "_") == k)
            .map(|(_, v)| v.as_str())
    };
    const KNOWN: [&str; 16] = [
        "since",
        "until",
        "device",
        "user",
        "group",
        "site",
        "host",
        "url_contains",
        "action",
        "rule",
        "category",
        "app",
        "ips",
        "limit",
        "format",
        "utc_offset",
    ];
    if let Some((k, _)) = params
        .iter()
        .find(|(k, _)| !KNOWN.contains(&k.replace('-', "_").as_str()))
    {
        return reply(
            StatusCode::BAD_REQUEST,
            format!("unknown parameter {k:?}; known: {}", KNOWN.join(", ")),
        );
    }
    // `utc_offset` takes a zone name too (Asia/Tokyo, UTC, +09:00); without
    // it, the zone the block page and console use.
    let zone = match get("utc_offset") {
        Some(z) => match crate::local_time::LocalZone::parse(z) {
            Ok(z) => z,
            Err(e) => return reply(StatusCode::BAD_REQUEST, format!("utc_offset: {e}")),
        },
        None => gw.config.block_page.time_zone.clone(),
    };
    let offset = zone.offset_minutes();
    let limit = match get("limit").map(str::parse::<u64>) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            return reply(
                StatusCode::BAD_REQUEST,
                format!("limit must be 1..={MAX_LIMIT}"),
            )
        }
    };
    let format = match get("format").unwrap_or("json").parse::<OutputFormat>() {
        Ok(OutputFormat::Table) => OutputFormat::Json,
        Ok(f) => f,
        Err(e) => return reply(StatusCode::BAD_REQUEST, e),
    };
    let q = match super::cli::build_query(
        get("since"),
        get("until"),
        offset,
        [
            get("device"),
            get("user"),
            get("group"),
            get("site"),
            get("host"),
            get("url_contains"),
            get("action"),
            get("rule"),
            get("category"),
            get("app"),
            get("ips"),
        ],
        Some(limit),
    ) {
        Ok(q) => q,
        Err(e) => return reply(StatusCode::BAD_REQUEST, e),
    };
    // Personal data: audited (who, filters, format) before anything is read.
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let actor = match req.extensions().get::<crate::pac::Peer>() {
        Some(peer) => format!("token {token_name} from {}", peer.0),
        None => format!("token {token_name}"),
    };
    let Some(audit) = gw.access_log.audit() else {
        return reply(
            StatusCode::FORBIDDEN,
            "log search needs the audit log: set [log] audit_log in the gateway configuration",
        );
    };
    if let Err(e) = audit.append(super::audit::AuditEvent::LogSearch {
        actor,
        via: "admin-api".into(),
        query: query.join(" "),
        format: format!("{format:?}").to_ascii_lowercase(),
        out: None,
    }) {
        tracing::error!("log search refused: cannot write the audit log: {e}");
        return reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("log search refused: it cannot be audited ({e})"),
        );
    }
    let store = match super::store::for_config(&gw.config) {
        Ok(s) => s,
        Err(e) => return reply(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let result =
        tokio::task::spawn_blocking(move || -> std::io::Result<(Vec<u8>, super::SearchStats)> {
            let mut sink = Sink::new(format, Vec::new(), &zone)?;
            let stats = store.search(&q, &mut |r| sink.write(&r).map(|_| true))?;
            Ok((sink.finish()?, stats))
        })
        .await;
    let (body, stats) = match result {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("log search failed: {e}"),
            )
        }
        Err(e) => {
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("log search failed: {e}"),
            )
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    let (ctype, name) = match format {
        OutputFormat::Csv => ("text/csv; charset=utf-8", Some("komugate-logs.csv")),
        OutputFormat::Xlsx => (
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            Some("komugate-logs.xlsx"),
        ),
        _ => ("application/x-ndjson", None),
    };
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    if let Some(n) = name {
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{n}\"")) {
            r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
        }
    }
    for (k, v) in [
        ("komugate-records", stats.records_matched.to_string()),
        ("komugate-limit-reached", stats.limit_reached.to_string()),
        (
            "komugate-segments-opened",
            stats.segments_opened.to_string(),
        ),
        (
            "komugate-segments-skipped",
            stats.segments_skipped_by_index.to_string(),
        ),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings() {
        let p = parse_query_string(
            "host=*.example.com&url-contains=a%2Fb+c&x=%E5%B1%B1&bad=%zz&end=%4",
        );
        assert_eq!(p[0], ("host".into(), "*.example.com".into()));
        assert_eq!(p[1], ("url-contains".into(), "a/b c".into()));
        assert_eq!(p[2].1, "山");
        assert_eq!(p[3].1, "%zz");
        assert_eq!(p[4].1, "%4");
    }

    #[test]
    fn tokens() {
        let h = HeaderValue::from_static("Bearer s3cret");
        assert!(token_ok("s3cret", Some(&h)));
        assert!(!token_ok("s3cre", Some(&h)));
        assert!(!token_ok("s3cret", None));
    }
}
