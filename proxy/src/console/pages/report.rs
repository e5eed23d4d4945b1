//! The monthly report page (`/console/report?month=2026-11`), printable,
//! and its Excel download (`&format=xlsx`). The figures come from the
//! console's [`crate::aggregate::LogAggregates`] store; viewing or
//! downloading the report is audited like a log search.

use http::{Response, StatusCode};

use super::Ctx;
use crate::console::respond::{self, Body};
use crate::logs::audit::AuditEvent;
use crate::logs::query::current_ms;
use crate::report::{html, xlsx, Month, MonthlyReport};

const XLSX_TYPE: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

pub async fn page(ctx: &Ctx<'_>) -> Response<Body> {
    let offset = ctx.console.offset_min;
    let month = match ctx.query.get("month") {
        None => Month::of(current_ms(), offset),
        Some(m) => match Month::parse(m) {
            Ok(m) => m,
            Err(_) => {
                let shown: String = m.chars().filter(|c| !c.is_control()).take(32).collect();
                return ctx.error(
                    StatusCode::BAD_REQUEST,
                    "title_error",
                    ctx.fill("err_month", &[("value", &shown)]),
                );
            }
        },
    };
    let xlsx = match ctx.query.get("format") {
        None | Some("html") => false,
        Some("xlsx") => true,
        Some(_) => {
            return ctx.error(
                StatusCode::BAD_REQUEST,
                "title_error",
                ctx.fill("err_report_format", &[]),
            )
        }
    };
    let format = if xlsx { "report-xlsx" } else { "report-html" };
    if let Err(e) = ctx.audit(AuditEvent::LogSearch {
        actor: ctx.actor(),
        via: "console".into(),
        query: format!("report monthly month={}", month.label()),
        format: format.into(),
        out: None,
    }) {
        return ctx.error(StatusCode::SERVICE_UNAVAILABLE, "title_error", e);
    }
    let store = ctx.console.aggregates.clone();
    let report =
        match MonthlyReport::build(store.as_ref(), month, offset, &ctx.console.zone_label).await {
            Ok(r) => r,
            Err(e) => {
                return ctx.error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "title_error",
                    ctx.fill("err_report", &[("detail", &e.0)]),
                )
            }
        };
    if xlsx {
        return match xlsx::workbook(&report) {
            Ok(bytes) => respond::download(
                XLSX_TYPE,
                &format!("komugate-report-{}.xlsx", month.label()),
                respond::full(bytes),
            ),
            Err(e) => ctx.error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "title_error",
                ctx.fill("err_report", &[("detail", &e)]),
            ),
        };
    }
    ctx.page("report.html", html::values(&report))
}
