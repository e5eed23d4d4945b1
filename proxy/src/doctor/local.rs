//! Checks that read files only: the policy generation the gateway would
//! build from this configuration, the certificates it serves and trusts,
//! and how old its blocklists, IPS rules and threat lists are.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::report::{Check, Report, Status};
use crate::config::Config;
use crate::gateway::generation::Generation;

const DAY: u64 = 86_400;

pub struct Built {
    pub lists: Vec<PathBuf>,
    pub policy: Option<std::sync::Arc<komugate_policy::Policy>>,
}
const CERT_WARNING_DAYS: i64 = 30;

/// Builds the whole first generation (policy, categories, registry, IPS
/// rules, threat lists) exactly as `komugate serve` would; returns the
/// lists for the age check and the policy file's compiled policy (its
/// egress pools), if there is one.
pub fn generation(config: &Config, report: &mut Report) -> Option<Built> {
    match Generation::first(config) {
        Ok(g) => {
            let policy = &g.runtime.policy;
            let what = if g.runtime.builtin {
                "built-in ([decision] lists)".to_string()
            } else {
                policy.file().display().to_string()
            };
            report.push(
                Check::new(
                    "config",
                    "設定とポリシー / configuration and policy",
                    Status::Ok,
                )
                .detail(format!(
                    "ポリシー {what}: {} files, {} rules, {} groups, {} sites, IPS {} rules, digest {}",
                    policy.source_files().len(),
                    policy.rule_summaries().len(),
                    policy.groups().len(),
                    policy.sites().len(),
                    g.security.report.loaded,
                    policy.generation_digest().chars().take(12).collect::<String>(),
                )),
            );
            Some(Built {
                lists: list_files(config, policy, g.runtime.builtin),
                policy: (!g.runtime.builtin).then(|| g.runtime.policy.clone()),
            })
        }
        Err(e) => {
            report.push(
                Check::new(
                    "config",
                    "設定とポリシー / configuration and policy",
                    Status::Fail,
                )
                .detail(e)
                .fix("エラーの場所 (ファイル:行:列) を直して `komugate policy check` で確認 / fix the place named (file:line:column), then run `komugate policy check`"),
            );
            None
        }
    }
}

/// The lists whose age matters: blocklists the policy loads (not its own
/// TOML files or the registry CSV, which people edit), IPS rules, threat
/// lists and every downloaded feed.
fn list_files(config: &Config, policy: &komugate_policy::Policy, builtin: bool) -> Vec<PathBuf> {
    let edited_by_people =
        |p: &PathBuf| matches!(p.extension().and_then(|e| e.to_str()), Some("toml" | "csv"));
    let mut files: Vec<PathBuf> = if builtin {
        Vec::new()
    } else {
        policy
            .source_files()
            .into_iter()
            .filter(|p| !edited_by_people(p))
            .collect()
    };
    files.extend(config.ips.rules.iter().map(|p| config.data_path(p)));
    files.extend(
        config
            .threat_intel
            .lists
            .iter()
            .map(|p| config.data_path(p)),
    );
    for feed in crate::list_update::feeds_of(config, policy) {
        if !files.iter().any(|f| f.starts_with(&feed.path)) {
            files.push(feed.path.clone());
        }
    }
    files.sort();
    files.dedup();
    files
}

/// Every certificate the gateway serves or trusts: expired or unreadable
/// is a failure, within 30 days a warning.
pub fn certificates(config: &Config, now: SystemTime, report: &mut Report) {
    let certs = [
        (
            "サーバー証明書 / server certificate",
            &config.tls.server_cert,
            true,
        ),
        ("端末 CA / device CA", &config.tls.device_ca, true),
        // Without its key the gateway does not inspect: the CA is optional.
        ("検査用 CA / inspection CA", &config.inspect.ca_cert, false),
    ];
    for (what, path, required) in certs {
        let path = config.data_path(path);
        if !required && !path.exists() {
            continue;
        }
        report.push(certificate(what, &path, now));
    }
}

fn certificate(what: &str, path: &Path, now: SystemTime) -> Check {
    let check = |status| Check::new("certificate", format!("{what} {}", path.display()), status);
    let der = match crate::pki::load_certs(path).map(|c| c.into_iter().next()) {
        Ok(Some(der)) => der,
        Ok(None) => {
            return check(Status::Fail)
                .detail("証明書がありません / no certificate in the file")
                .fix("PEM の証明書を置くか `komugate pki init` / put a PEM certificate there, or run `komugate pki init`")
        }
        Err(e) => {
            return check(Status::Fail)
                .detail(format!("読めません / cannot be read: {e:#}"))
                .fix("パスと権限を確認 / check the path and permissions")
        }
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return check(Status::Fail).detail("証明書として解析できません / not an X.509 certificate");
    };
    let not_after = cert.validity().not_after.timestamp();
    let now_secs = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64;
    let days_left = (not_after - now_secs).div_euclid(DAY as i64);
    let detail = format!(
        "有効期限 {} (残り {days_left} 日) / expires {} ({days_left} days left)",
        cert.validity().not_after,
        cert.validity().not_after
    );
    if not_after <= now_secs {
        check(Status::Fail)
            .detail(detail)
            .fix("証明書を更新 / renew the certificate (`komugate pki` or your CA)")
    } else if days_left < CERT_WARNING_DAYS {
        check(Status::Warn)
            .detail(detail)
            .fix("30 日以内に更新 / renew it within 30 days")
    } else {
        check(Status::Ok).detail(detail)
    }
}

/// How old each list is: its modification time, or the last accepted
/// update check (an unchanged download leaves the file's time alone).
pub fn list_ages(files: &[PathBuf], max_age_days: u64, now: SystemTime, report: &mut Report) {
    if files.is_empty() {
        report.push(
            Check::new("lists", "リスト / lists", Status::Skip)
                .detail("ブロックリストも IPS ルールもありません / no blocklists, IPS rules or threat lists configured"),
        );
        return;
    }
    let mut missing = Vec::new();
    let mut stale = Vec::new();
    let mut oldest: Option<(u64, &PathBuf)> = None;
    for path in files {
        let Some(age) = age_secs(path, now) else {
            missing.push(path.display().to_string());
            continue;
        };
        if oldest.is_none_or(|(a, _)| age > a) {
            oldest = Some((age, path));
        }
        if age > max_age_days * DAY {
            stale.push(format!("{} ({} 日 / days)", path.display(), age / DAY));
        }
    }
    let subject = format!("リストの鮮度 / list ages ({} files)", files.len());
    let check = if !missing.is_empty() {
        Check::new("lists", subject, Status::Fail)
            .detail(format!(
                "ありません / missing: {}",
                first_few(&missing)
            ))
            .fix("リストの更新 (`[[ips.feed]]`、カテゴリーの取得) が動いているか確認 / check that the list updates run and the paths are right")
    } else if !stale.is_empty() {
        Check::new("lists", subject, Status::Warn)
            .detail(format!(
                "{max_age_days} 日より古い / older than {max_age_days} days: {}",
                first_few(&stale)
            ))
            .fix("更新のログ (komugate_list_updates_total, 監査ログ) を確認 / check the update log (komugate_list_updates_total, the audit log)")
    } else {
        let (age, path) = oldest.expect("at least one file was read");
        Check::new("lists", subject, Status::Ok).detail(format!(
            "最も古いもの / oldest: {} ({} 時間 / hours)",
            path.display(),
            age / 3600
        ))
    };
    report.push(check);
}

fn first_few(items: &[String]) -> String {
    let mut s = items.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > 5 {
        s.push_str(&format!(" … (+{})", items.len() - 5));
    }
    s
}

fn age_secs(path: &Path, now: SystemTime) -> Option<u64> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    let mut newest = modified.duration_since(UNIX_EPOCH).ok()?.as_secs();
    // A download that found the list unchanged leaves the file alone but
    // records the check, next to the list or to the directory it unpacked.
    if let Some(checked) = path
        .ancestors()
        .find_map(crate::list_update::last_accepted_check)
    {
        newest = newest.max(checked);
    }
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(now.saturating_sub(newest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_ages_warn_on_old_and_fail_on_missing() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("fresh.txt");
        let old = dir.path().join("old.txt");
        std::fs::write(&fresh, "a.example\n").unwrap();
        std::fs::write(&old, "b.example\n").unwrap();
        let ten_days_ago = SystemTime::now() - Duration::from_secs(10 * DAY);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(ten_days_ago)
            .unwrap();
        let now = SystemTime::now();

        let mut r = Report::default();
        list_ages(std::slice::from_ref(&fresh), 8, now, &mut r);
        assert_eq!(r.checks[0].status, Status::Ok);

        let mut r = Report::default();
        list_ages(&[fresh.clone(), old.clone()], 8, now, &mut r);
        assert_eq!(r.checks[0].status, Status::Warn);
        assert!(
            r.checks[0].detail.contains("old.txt (10"),
            "{:?}",
            r.checks[0]
        );

        let mut r = Report::default();
        list_ages(&[fresh, dir.path().join("gone.txt")], 8, now, &mut r);
        assert_eq!(r.checks[0].status, Status::Fail);
        assert!(r.checks[0].detail.contains("gone.txt"));
    }

    #[test]
    fn certificate_expiry_is_judged_against_now() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::pki::generate_ca("doctor test CA").unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca.cert_pem()).unwrap();
        assert_eq!(
            certificate("CA", &path, SystemTime::now()).status,
            Status::Ok
        );
        let in_years = |y: u64| SystemTime::now() + Duration::from_secs(y * 365 * DAY);
        // Far in the future the CA has expired.
        let late = certificate("CA", &path, in_years(200));
        assert_eq!(late.status, Status::Fail, "{late:?}");
        let missing = certificate("CA", &dir.path().join("none.pem"), SystemTime::now());
        assert_eq!(missing.status, Status::Fail);
        assert!(missing.detail.contains("cannot be read"), "{missing:?}");
    }
}
