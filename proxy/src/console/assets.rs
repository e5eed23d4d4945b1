//! Static files of the console, embedded in the binary (no CDN: the
//! console works without internet). Versions and licences of the vendored
//! files: `assets/VENDORED.md`.

use http::{header, HeaderValue, Response, StatusCode};

use super::respond::{full, security_headers, Body};

/// htmx from the npm registry, `htmx.org` 2.0.11 (0BSD).
pub const HTMX_VERSION: &str = "2.0.11";
const HTMX: &str = include_str!("assets/htmx.min.js");
/// uPlot from the npm registry, `uplot` 1.6.32 (MIT): the dashboard's charts.
pub const UPLOT_VERSION: &str = "1.6.32";
const UPLOT_JS: &str = include_str!("assets/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("assets/uPlot.min.css");
/// The dashboard's own script (feeds uPlot).
const DASHBOARD_JS: &str = include_str!("assets/dashboard.js");
pub const CSS: &str = include_str!("assets/console.css");
/// The monthly report's layout and print rules (A4).
pub const REPORT_CSS: &str = include_str!("assets/report.css");

/// `/console/assets/<name>`, or `None` for an unknown name.
pub fn get(name: &str) -> Option<Response<Body>> {
    let (body, content_type) = match name {
        "htmx.min.js" => (HTMX, "text/javascript; charset=utf-8"),
        "uPlot.iife.min.js" => (UPLOT_JS, "text/javascript; charset=utf-8"),
        "uPlot.min.css" => (UPLOT_CSS, "text/css; charset=utf-8"),
        "dashboard.js" => (DASHBOARD_JS, "text/javascript; charset=utf-8"),
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "report.css" => (REPORT_CSS, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::OK;
    security_headers(r.headers_mut());
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Same binary, same files: a browser may keep them for a day.
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400"),
    );
    Some(r)
}
