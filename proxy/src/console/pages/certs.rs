//! Device certificates: the ones expiring within 30 days and every one
//! issued, issuing one as a `.pfx` or a CSV's worth as a zip of `.pfx`
//! (password shown once on the page, the file downloadable once), and
//! revoking a lost laptop's certificate, applied at once by a reload (the
//! revoked-serials list is part of the reloaded state; every replica reads
//! the same list at its reload).

use http::{Response, StatusCode};

use super::Ctx;
use crate::console::form::Upload;
use crate::console::respond::{self, Body};
use crate::logs::audit::ReloadSource;
use crate::pki::delivery::{self, DeliveryError};

/// A `.pfx` or zip between "issue" and its download.
pub struct Download {
    filename: String,
    content_type: &'static str,
    bytes: Vec<u8>,
}

const EXPIRING_DAYS: i64 = 30;
/// Certificates listed at most.
const SHOWN: usize = 500;

fn days(ctx: &Ctx) -> u32 {
    ctx.query
        .get("days")
        .and_then(|d| d.parse::<u32>().ok())
        .filter(|d| (1..=crate::pki::MAX_DEVICE_DAYS).contains(d))
        .unwrap_or(crate::pki::DEFAULT_DEVICE_DAYS)
}

/// `GET /console/certs`.
pub fn page(ctx: &Ctx) -> Response<Body> {
    page_with(ctx, StatusCode::OK, None, None)
}

fn page_with(
    ctx: &Ctx,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
) -> Response<Body> {
    let (dir, list) = crate::pki_audit::gateway_pki(&ctx.gw.config);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (records, error) = match crate::pki::inventory::list(&dir, &list) {
        Ok(r) => (r, error),
        Err(e) => (Vec::new(), error.or(Some(format!("{e:#}")))),
    };
    let row = |r: &crate::pki::inventory::CertRecord| {
        let date = ctx.local_time(r.not_after * 1000);
        serde_json::json!({
            "device": r.device, "serial": r.serial,
            "not_after": date.get(..10).unwrap_or(&date),
            "revoked": r.revoked, "expired": r.expired(now),
        })
    };
    let expiring: Vec<_> = records
        .iter()
        .filter(|r| r.expiring_within(EXPIRING_DAYS, now))
        .map(row)
        .collect();
    let all: Vec<_> = records.iter().rev().take(SHOWN).map(row).collect();
    let can_issue = dir.join("device-ca.key").exists();
    ctx.page_with_status(
        status,
        "certs.html",
        serde_json::json!({
            "expiring": expiring, "all": all, "total": records.len(),
            "notice": notice, "error": error, "can_issue": can_issue,
            "can_revoke": !ctx.gw.config.tls.revoked_serials.is_empty(),
            "default_days": crate::pki::DEFAULT_DEVICE_DAYS,
        }),
    )
}

fn issued_page(
    ctx: &Ctx,
    download: Download,
    password: &str,
    devices: &[String],
) -> Response<Body> {
    let filename = download.filename.clone();
    let token = ctx.console.downloads.put(&ctx.session.user, download);
    let mut r = ctx.page(
        "issued.html",
        serde_json::json!({
            "token": token, "password": password, "filename": filename,
            "devices": devices, "count": devices.len(),
        }),
    );
    // Never kept by a browser or a proxy: the password is on this page.
    respond::security_headers(r.headers_mut());
    r
}

fn refused(ctx: &Ctx, e: &DeliveryError) -> Response<Body> {
    let status = match e {
        DeliveryError::Other(_) => StatusCode::INTERNAL_SERVER_ERROR,
        DeliveryError::Revoked { .. } => StatusCode::CONFLICT,
        _ => StatusCode::BAD_REQUEST,
    };
    page_with(ctx, status, None, Some(e.ja()))
}

async fn audited(
    ctx: &Ctx<'_>,
    records: &[crate::pki::inventory::CertRecord],
    to: &str,
) -> Result<(), String> {
    let Some(audit) = ctx.gw.access_log.audit() else {
        return Err(ctx.fill("err_no_audit", &[]));
    };
    crate::pki_audit::record_delivery(audit.path(), &ctx.actor(), records, to)
        .map_err(|e| ctx.fill("err_audit", &[("detail", &format!("{e:#}"))]))
}

/// `POST /console/certs/issue` (`device`, `days`).
pub async fn issue(ctx: &Ctx<'_>) -> Response<Body> {
    let device = ctx.query.get("device").unwrap_or("").to_string();
    let days = days(ctx);
    let (dir, list) = crate::pki_audit::gateway_pki(&ctx.gw.config);
    let d = device.clone();
    let result = tokio::task::spawn_blocking(move || delivery::issue_pfx(&dir, &list, &d, days))
        .await
        .unwrap_or_else(|e| Err(DeliveryError::Other(anyhow::anyhow!("{e}"))));
    let pfx = match result {
        Ok(p) => p,
        Err(e) => return refused(ctx, &e),
    };
    if let Err(e) = audited(ctx, std::slice::from_ref(&pfx.record), "a console download").await {
        return page_with(ctx, StatusCode::INTERNAL_SERVER_ERROR, None, Some(e));
    }
    issued_page(
        ctx,
        Download {
            filename: format!("{device}.pfx"),
            content_type: "application/x-pkcs12",
            bytes: pfx.bytes,
        },
        &pfx.password,
        &[device],
    )
}

/// `POST /console/certs/bulk` (multipart: `file`, `days`).
pub async fn bulk(ctx: &Ctx<'_>, files: &[Upload]) -> Response<Body> {
    let Some(file) = files
        .iter()
        .find(|f| f.field == "file" && !f.bytes.is_empty())
    else {
        return page_with(
            ctx,
            StatusCode::BAD_REQUEST,
            None,
            Some(ctx.fill("err_registry_empty_file", &[])),
        );
    };
    let days = days(ctx);
    let (dir, list) = crate::pki_audit::gateway_pki(&ctx.gw.config);
    let bytes = file.bytes.clone();
    let result =
        tokio::task::spawn_blocking(move || delivery::issue_bulk(&dir, &list, &bytes, days))
            .await
            .unwrap_or_else(|e| Err(DeliveryError::Other(anyhow::anyhow!("{e}"))));
    let bulk = match result {
        Ok(b) => b,
        Err(e) => return refused(ctx, &e),
    };
    if let Err(e) = audited(ctx, &bulk.records, "a console download (zip)").await {
        return page_with(ctx, StatusCode::INTERNAL_SERVER_ERROR, None, Some(e));
    }
    let devices: Vec<String> = bulk.records.iter().map(|r| r.device.clone()).collect();
    issued_page(
        ctx,
        Download {
            filename: "device-certificates.zip".into(),
            content_type: "application/zip",
            bytes: bulk.zip,
        },
        &bulk.password,
        &devices,
    )
}

/// `GET /console/certs/download?token=T`: once.
pub fn download(ctx: &Ctx) -> Response<Body> {
    let token = ctx.query.get("token").unwrap_or("");
    match ctx.console.downloads.take(token, &ctx.session.user) {
        Some(d) => respond::download(d.content_type, &d.filename, respond::full(d.bytes)),
        None => page_with(
            ctx,
            StatusCode::GONE,
            None,
            Some(ctx.fill("err_download_gone", &[])),
        ),
    }
}

/// `POST /console/certs/revoke` (`serial`, `reason`): into the list, then a
/// reload closes the device's connections.
pub async fn revoke(ctx: &Ctx<'_>) -> Response<Body> {
    let config = &ctx.gw.config;
    if config.tls.revoked_serials.is_empty() {
        return page_with(
            ctx,
            StatusCode::CONFLICT,
            None,
            Some(ctx.fill("err_revoked_list_none", &[])),
        );
    }
    let Some(audit) = ctx.gw.access_log.audit() else {
        return page_with(
            ctx,
            StatusCode::CONFLICT,
            None,
            Some(ctx.fill("err_no_audit", &[])),
        );
    };
    let (_, list) = crate::pki_audit::gateway_pki(config);
    let serial = ctx.query.get("serial").unwrap_or("").to_string();
    let reason: String = ctx
        .query
        .get("reason")
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    let reason = if reason.is_empty() {
        "lost".to_string()
    } else {
        reason
    };
    let (audit_path, actor) = (audit.path().to_path_buf(), ctx.actor());
    let target = crate::pki_audit::RevokeTarget::Serial(serial);
    let result = tokio::task::spawn_blocking(move || {
        crate::pki_audit::revoke(&list, &target, &reason, &audit_path, &actor)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))
    .and_then(|r| r);
    let (serial, new) = match result {
        Ok(r) => r,
        Err(e) => {
            return page_with(
                ctx,
                StatusCode::BAD_REQUEST,
                None,
                Some(ctx.fill("err_revoke", &[("detail", &format!("{e:#}"))])),
            )
        }
    };
    if !new {
        return page_with(
            ctx,
            StatusCode::OK,
            Some(ctx.fill("revoke_already", &[("serial", &serial)])),
            None,
        );
    }
    match ctx
        .gw
        .reload(ReloadSource::Console { actor: ctx.actor() })
        .await
    {
        Ok(_) => page_with(
            ctx,
            StatusCode::OK,
            Some(ctx.fill("revoke_done", &[("serial", &serial)])),
            None,
        ),
        Err(e) => page_with(
            ctx,
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            Some(ctx.fill(
                "err_reload_after",
                &[("detail", e.lines().next().unwrap_or(""))],
            )),
        ),
    }
}
