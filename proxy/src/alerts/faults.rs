//! Faults found by watching, not raised at a call site: the access log
//! spilling to disk (the writer is behind), ClickHouse inserts failing,
//! and certificates or CAs that expire within 30 days.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use prometheus::{IntCounter, IntCounterVec};
use tokio_util::sync::CancellationToken;

use super::{Alerts, Kind};

/// Certificates are checked at start and then twice a day.
const CERT_CHECK: Duration = Duration::from_secs(12 * 3600);
const SPILL_CHECK: Duration = Duration::from_secs(10);
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86400);

/// `(what, path)` of every certificate the gateway serves or trusts.
pub type Certificates = Vec<(&'static str, PathBuf)>;

/// The certificates among `certs` that expire before `now + 30 days`, as
/// one line each (unreadable files count too: they would fail at the next start).
pub fn expiring(certs: &Certificates, now: SystemTime) -> Vec<String> {
    let mut out = Vec::new();
    for (what, path) in certs {
        let der = match crate::pki::load_certs(path).map(|c| c.into_iter().next()) {
            Ok(Some(first)) => first,
            Ok(None) | Err(_) => {
                out.push(format!("{what} {}: cannot be read", path.display()));
                continue;
            }
        };
        let Ok((_, x)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
            out.push(format!("{what} {}: not a certificate", path.display()));
            continue;
        };
        let not_after = x.validity().not_after.timestamp();
        let limit = (now + EXPIRY_WARNING)
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(i64::MAX);
        if not_after < limit {
            out.push(format!(
                "{what} {}: 有効期限 / expires {}",
                path.display(),
                x.validity().not_after
            ));
        }
    }
    out
}

/// Watches until `stop`.
pub async fn watch(
    alerts: Alerts,
    spilled: IntCounter,
    ship_errors: IntCounterVec,
    certs: Certificates,
    stop: CancellationToken,
) {
    let mut seen_spilled = spilled.get();
    // The ClickHouse shipper counts its failed inserts under its target name.
    let clickhouse = ship_errors.with_label_values(&["clickhouse"]);
    let mut seen_clickhouse = clickhouse.get();
    let mut next_cert_check = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_cert_check {
            for line in expiring(&certs, SystemTime::now()) {
                alerts.raise(Kind::CertificateExpiring, line);
            }
            next_cert_check += CERT_CHECK;
        }
        let now_spilled = spilled.get();
        if now_spilled > seen_spilled {
            alerts.raise(
                Kind::LogSpill,
                format!(
                    "{} 件のアクセス記録をディスクに退避 / {} access records spilled to disk",
                    now_spilled - seen_spilled,
                    now_spilled - seen_spilled
                ),
            );
            seen_spilled = now_spilled;
        }
        let now_clickhouse = clickhouse.get();
        if now_clickhouse > seen_clickhouse {
            alerts.raise(
                Kind::ClickhouseUnreachable,
                format!(
                    "{} 回の挿入に失敗 (記録はディスクに保持、復旧後に再送) / {} inserts failed (records kept on disk, resent when it is back)",
                    now_clickhouse - seen_clickhouse,
                    now_clickhouse - seen_clickhouse
                ),
            );
            seen_clickhouse = now_clickhouse;
        }
        tokio::select! {
            _ = tokio::time::sleep(SPILL_CHECK) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_within_30_days_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::pki::generate_ca("expiry test CA").unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca.cert_pem()).unwrap();
        let certs: Certificates = vec![
            ("inspection CA", path),
            ("server", dir.path().join("missing.pem")),
        ];
        // Fresh CA: only the missing file is reported.
        let now = SystemTime::now();
        let found = expiring(&certs, now);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("missing.pem: cannot be read"));
        // Twenty years on, the CA is within 30 days of its end (or past it).
        let later = now + Duration::from_secs(20 * 365 * 86400);
        let found = expiring(&certs, later);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("inspection CA ") && found[0].contains("expires"),
            "{found:?}"
        );
    }
}
