//! Downloaded feeds: the policy's category lists (`[[categories.source]]`
//! with `url`), and the configuration's IPS rules (`[[ips.feed]]`, Suricata
//! format: a `.rules` file or a tar / tar.gz of them such as ET Open's
//! `emerging.rules.tar.gz`) and threat-intel lists (`[[threat_intel.feed]]`).
//! All take the same path ([`Feed`]); for IPS rules "invalid" means rules
//! the engine cannot load, and the entries are the rules it loads.
//!
//! For every feed in force, every `refresh`:
//!
//! 1. **Download** with the gateway's own egress (DNS, destination guard,
//!    `https` verified against the webpki roots plus `[inspect]
//!    upstream_ca`), sending `If-None-Match` / `If-Modified-Since` from the
//!    last accepted download; a `304` is a no-op. Redirects are followed
//!    (at most 5, never from `https` to `http`). The body is streamed to a
//!    temporary file next to `path` and cut off at `max_bytes`.
//! 2. **Verify**: SHA-256 (`sha256`, or the first word of the file at
//!    `sha256_url`); a squidguard source is a tar or tar.gz unpacked into a
//!    staging directory next to `path` (absolute paths, `..`, symlinks,
//!    hard links and device entries refuse the whole archive; at most
//!    20 × `max_bytes` unpacked; a single top-level directory such as UT1's
//!    `blacklists/` is stripped); `only` categories must be present; the
//!    list is parsed with `komugate_categories` and refused when invalid
//!    lines / all lines > `max_invalid_ratio`, when it has no entries, or
//!    when it has fewer than (1 − `max_shrink`) × the entries in force.
//! 3. **Swap** (under the reload lock, so no reload reads a half-swapped
//!    tree): `path` → `path.prev`, staging → `path`; then the ordinary
//!    reload path ([`Gateway::reload`] with [`ReloadSource::ListUpdate`]).
//!    If that reload fails (e.g. a rule names a category the new archive no
//!    longer has), the files are rolled back (`path.prev` → `path`) and the
//!    policy reloaded again, so files and running state agree.
//!
//! Every outcome is logged, counted in `komugate_list_updates_total{kind,result}`
//! (`applied`, `not_modified`, `download_error`, `refused_size`,
//! `refused_sha256`, `refused_archive`, `refused_invalid`, `refused_shrink`,
//! `refused_empty`, `rolled_back`, `error`; `kind` is `categories`, `ips` or
//! `threat_intel`), its age in `komugate_list_last_success_timestamp_seconds`,
//! shown by `GET /admin/lists` and,
//! except `not_modified`, written to the audit log (a `note` for refusals,
//! the `policy_reload` entries for swaps). `POST /admin/lists/update`
//! checks every source (or `?url=`) now and answers with the outcomes.
//!
//! An IPS or threat-intel feed is also rolled back when the reload could
//! not load the rules / lists with it.
//!
//! **First start**: a feed whose `path` does not exist yet is loaded as
//! an empty list (its categories declared so rules validate; `policy check`
//! warns), and the updater downloads it at once. Until that download is in
//! force those categories match nothing: the gateway fails open for them
//! for the first seconds (documented trade-off: a gateway that cannot start
//! because a list server is down would fail closed for everyone).
//!
//! **Schedule across restarts**: the validators and the time of the last
//! accepted check are kept in `<path>.update.json`; the next check is due
//! `refresh` after it (at once without that file). After a download error
//! the next try is in min(`refresh`, 15 min); after a refusal, in `refresh`.

mod admin;
mod archive;
mod download;
mod feed;
mod stage;
mod state;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use serde::Serialize;

use crate::common::unix_now;
use crate::gateway::Gateway;
use crate::logs::audit::{AuditEvent, ReloadSource};
use download::{download, fetch_checksum, Fetched};
use stage::{entries_in_force, roll_back, stage_and_parse, swap_in};
use state::{read_state, sibling, write_state, Persisted};

pub use admin::admin;
/// Archive unpacking with its size and path checks (also the fuzzing entry point).
pub use archive::unpack;
pub use feed::{feeds, feeds_of, Feed, FeedKind};
pub use state::last_accepted_check;

/// Retry delay after a download error (bounded by `refresh`).
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(15 * 60);
/// Longest time the scheduler sleeps before looking at the policy again.
const TICK: Duration = Duration::from_secs(30);
/// A whole download (headers and body) must finish within this.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Updater state shared with the admin API.
pub struct ListUpdates {
    results: IntCounterVec,
    last_success: IntGaugeVec,
    status: Mutex<HashMap<String, SourceStatus>>,
    /// One update at a time (scheduled and admin-triggered).
    running: tokio::sync::Mutex<()>,
}

/// What `GET /admin/lists` shows for a source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceStatus {
    pub kind: &'static str,
    pub url: String,
    pub path: PathBuf,
    pub checks: u64,
    pub last_check: Option<String>,
    pub last_result: Option<String>,
    pub last_detail: Option<String>,
    pub last_applied: Option<String>,
    pub entries_in_force: usize,
    #[serde(skip)]
    next_due: Option<SystemTime>,
}

/// The outcome of one check of one source.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateOutcome {
    pub url: String,
    pub path: PathBuf,
    /// The `result` label of `komugate_list_updates_total`.
    pub result: &'static str,
    pub detail: String,
    /// Entries in the download (when it got that far).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Entries in force after the check (IPS / threat-intel feeds, when known).
    #[serde(skip)]
    in_force: Option<usize>,
}

impl ListUpdates {
    pub fn new(registry: &prometheus::Registry) -> ListUpdates {
        let results = IntCounterVec::new(
            Opts::new(
                "komugate_list_updates_total",
                "Checks of downloaded feeds (category lists, IPS rules, threat-intel lists) by kind and result",
            ),
            &["kind", "result"],
        )
        .expect("metric");
        let last_success = IntGaugeVec::new(
            Opts::new(
                "komugate_list_last_success_timestamp_seconds",
                "Unix time of the last check that left a downloaded feed current (applied or not modified)",
            ),
            &["kind", "url"],
        )
        .expect("metric");
        // Two gateways in one process (tests) share nothing; ignore a duplicate registration.
        let _ = registry.register(Box::new(results.clone()));
        let _ = registry.register(Box::new(last_success.clone()));
        ListUpdates {
            results,
            last_success,
            status: Mutex::new(HashMap::new()),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Status of every source seen so far.
    pub fn status(&self) -> Vec<SourceStatus> {
        let map = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<SourceStatus> = map.values().cloned().collect();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }

    fn key(src: &Feed) -> String {
        format!("{}\n{}", src.url, src.path.display())
    }
}

fn now_text() -> String {
    crate::logs::record::format_rfc3339_ms(crate::logs::record::now_ms())
}

/// Starts the scheduler (nothing to do until there are feeds).
pub fn spawn(gw: Arc<Gateway>) {
    tokio::spawn(async move {
        loop {
            let now = SystemTime::now();
            let mut next = now + TICK;
            for src in feeds(&gw) {
                let due = next_due(&gw, &src);
                if due <= now {
                    if gw.shutdown.is_cancelled() {
                        return;
                    }
                    let _ = check_now(&gw, &src).await;
                    next = SystemTime::now();
                    break; // re-read the policy: the update may have changed it
                }
                next = next.min(due);
            }
            let wait = next
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
                .min(TICK);
            tokio::select! {
                _ = gw.shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    });
}

fn next_due(gw: &Gateway, src: &Feed) -> SystemTime {
    let key = ListUpdates::key(src);
    if let Some(due) = gw
        .list_updates
        .status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .and_then(|s| s.next_due)
    {
        return due;
    }
    match read_state(src) {
        Some(p) => UNIX_EPOCH + Duration::from_secs(p.checked_unix) + src.refresh,
        None => UNIX_EPOCH,
    }
}

/// Checks every remote source now (or those whose url is `only_url`), one
/// after the other; for `POST /admin/lists/update` and tests.
pub async fn update_all(gw: &Arc<Gateway>, only_url: Option<&str>) -> Vec<UpdateOutcome> {
    let mut out = Vec::new();
    for src in feeds(gw) {
        if only_url.is_some_and(|u| u != src.url) {
            continue;
        }
        out.push(check_now(gw, &src).await);
    }
    out
}

/// One check of one source: download, verify, swap, reload; records the outcome.
pub async fn check_now(gw: &Arc<Gateway>, src: &Feed) -> UpdateOutcome {
    let lists = &gw.list_updates;
    let _one = lists.running.lock().await;
    // The source as the policy in force now describes it (entries may have
    // changed while waiting for the lock).
    let src = feeds(gw)
        .into_iter()
        .find(|s| s.url == src.url && s.path == src.path)
        .unwrap_or_else(|| src.clone());
    let outcome = run(gw, &src).await;
    let kind = src.kind.label();
    lists
        .results
        .with_label_values(&[kind, outcome.result])
        .inc();
    let ok = matches!(outcome.result, "applied" | "not_modified");
    if ok {
        lists
            .last_success
            .with_label_values(&[kind, &src.url])
            .set(unix_now() as i64);
    }
    match outcome.result {
        "applied" | "not_modified" => {
            tracing::info!(url = %src.url, path = %src.path.display(), result = outcome.result, "list update: {}", outcome.detail)
        }
        "rolled_back" | "error" => {
            tracing::error!(url = %src.url, path = %src.path.display(), result = outcome.result, "list update failed; the lists in force stay: {}", outcome.detail);
            gw.alerts.raise(
                crate::alerts::Kind::ListUpdateFailed,
                format!("{} ({}): {}", src.url, outcome.result, outcome.detail),
            );
        }
        _ => {
            tracing::warn!(url = %src.url, path = %src.path.display(), result = outcome.result, "list update refused; the lists in force stay: {}", outcome.detail);
            gw.alerts.raise(
                crate::alerts::Kind::ListUpdateFailed,
                format!("{} ({}): {}", src.url, outcome.result, outcome.detail),
            );
        }
    }
    if outcome.result != "not_modified" {
        if let Some(audit) = gw.access_log.audit() {
            let message = format!(
                "{} {} -> {}: {}: {}",
                src.describe(),
                src.path.display(),
                outcome.result,
                if ok { "in force" } else { "current lists kept" },
                outcome.detail
            );
            if let Err(e) = audit.append(AuditEvent::Note {
                actor: "list-update".into(),
                message,
            }) {
                tracing::error!("cannot write the audit log: {e}");
            }
        }
    }
    let retry = match outcome.result {
        "applied" | "not_modified" => src.refresh,
        "download_error" | "error" => src.refresh.min(RETRY_AFTER_ERROR),
        _ => src.refresh,
    };
    let entries_now = match &src.kind {
        FeedKind::Categories => feeds(gw)
            .iter()
            .find(|s| s.url == src.url && s.path == src.path)
            .map(|s| s.entries)
            .unwrap_or(src.entries),
        _ => outcome.in_force.unwrap_or(0),
    };
    let mut map = lists.status.lock().unwrap_or_else(|e| e.into_inner());
    let st = map.entry(ListUpdates::key(&src)).or_default();
    let entries_now = match (&src.kind, outcome.in_force) {
        (FeedKind::Categories, _) | (_, Some(_)) => entries_now,
        _ => st.entries_in_force,
    };
    st.kind = kind;
    st.url = src.url.clone();
    st.path = src.path.clone();
    st.checks += 1;
    st.last_check = Some(now_text());
    st.last_result = Some(outcome.result.to_string());
    st.last_detail = Some(outcome.detail.clone());
    if outcome.result == "applied" {
        st.last_applied = st.last_check.clone();
    }
    st.entries_in_force = entries_now;
    st.next_due = Some(SystemTime::now() + retry);
    outcome
}

/// Refusal / failure with its metric label.
struct Stop(&'static str, String);

async fn run(gw: &Arc<Gateway>, src: &Feed) -> UpdateOutcome {
    let mut outcome = UpdateOutcome {
        url: src.url.clone(),
        path: src.path.clone(),
        result: "error",
        detail: String::new(),
        entries: None,
        generation: None,
        in_force: None,
    };
    let tmp = Temps::new(&src.path);
    match update(gw, src, &tmp, &mut outcome).await {
        Ok(()) => {}
        Err(Stop(result, detail)) => {
            outcome.result = result;
            outcome.detail = detail;
        }
    }
    outcome
}

/// Temporary download file and staging directory next to `path`; removed on drop.
struct Temps {
    download: PathBuf,
    staging: PathBuf,
}

impl Temps {
    fn new(path: &Path) -> Temps {
        let n = format!("{}-{}", std::process::id(), crate::logs::record::now_ms());
        let name = path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "list".into());
        let dir = path.parent().unwrap_or(Path::new("."));
        Temps {
            download: dir.join(format!(".{name}.download-{n}")),
            staging: dir.join(format!(".{name}.staging-{n}")),
        }
    }
}

impl Drop for Temps {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.download);
        let _ = std::fs::remove_dir_all(&self.staging);
        let _ = std::fs::remove_file(&self.staging);
    }
}

async fn update(
    gw: &Arc<Gateway>,
    src: &Feed,
    tmp: &Temps,
    outcome: &mut UpdateOutcome,
) -> Result<(), Stop> {
    if let Some(dir) = src.path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Stop("error", format!("cannot create {}: {e}", dir.display())))?;
    }
    let state = read_state(src);
    let validators = state
        .as_ref()
        .map(|s| (s.etag.clone(), s.last_modified.clone()))
        .unwrap_or_default();

    // 1. download
    let fetched = tokio::time::timeout(
        DOWNLOAD_TIMEOUT,
        download(
            gw,
            &src.url,
            &validators,
            src.max_bytes,
            Some(&tmp.download),
        ),
    )
    .await
    .map_err(|_| {
        Stop(
            "download_error",
            format!("the download did not finish within {DOWNLOAD_TIMEOUT:?}"),
        )
    })??;
    let Fetched::Body {
        sha256,
        bytes,
        etag,
        last_modified,
    } = fetched
    else {
        let mut p = state.unwrap_or_default();
        p.url = src.url.clone();
        p.checked_unix = unix_now();
        write_state(src, &p);
        outcome.result = "not_modified";
        outcome.detail = "the server says the list is unchanged (304)".into();
        return Ok(());
    };

    // 2. verify
    let expected = match (&src.sha256, &src.sha256_url) {
        (Some(h), _) => Some(h.clone()),
        (None, Some(url)) => Some(fetch_checksum(gw, url).await?),
        (None, None) => None,
    };
    if let Some(expected) = &expected {
        if expected != &sha256 {
            return Err(Stop("refused_sha256", format!("SHA-256 mismatch: expected {expected}, the download ({bytes} bytes) has {sha256}")));
        }
    }
    let (checked, in_force) = {
        let (src, download, staging) = (src.clone(), tmp.download.clone(), tmp.staging.clone());
        tokio::task::spawn_blocking(move || {
            let in_force = entries_in_force(&src);
            let parsed = stage_and_parse(&src, &download, &staging);
            crate::memory::release_thread_cache();
            parsed.map(|c| (c, in_force))
        })
        .await
        .map_err(|e| Stop("error", format!("the verification task failed: {e}")))??
    };
    if !matches!(src.kind, FeedKind::Categories) {
        outcome.in_force = Some(in_force);
    }
    outcome.entries = Some(checked.entries);
    let invalid_ratio = checked.invalid as f64 / (checked.entries + checked.invalid).max(1) as f64;
    if invalid_ratio > src.max_invalid_ratio {
        return Err(Stop(
            "refused_invalid",
            format!(
                "{} of {} lines are invalid ({:.2}% > max_invalid_ratio {:.2}%){}",
                checked.invalid,
                checked.entries + checked.invalid,
                invalid_ratio * 100.0,
                src.max_invalid_ratio * 100.0,
                checked
                    .first_error
                    .as_deref()
                    .map(|e| format!("; first: {e}"))
                    .unwrap_or_default()
            ),
        ));
    }
    if checked.entries == 0 {
        return Err(Stop(
            "refused_empty",
            "the download has no list entries".into(),
        ));
    }
    let floor = ((1.0 - src.max_shrink) * in_force as f64).ceil() as usize;
    if src.present && checked.entries < floor {
        return Err(Stop(
            "refused_shrink",
            format!(
                "the feed shrank from {} to {} entries (more than max_shrink {:.0}%; at least {floor} needed)",
                in_force,
                checked.entries,
                src.max_shrink * 100.0
            ),
        ));
    }

    // 3. swap and reload
    let prev = sibling(&src.path, ".prev");
    {
        let _no_reload_now = gw.reload_lock.lock().await;
        swap_in(&checked.root, &src.path, &prev)
            .map_err(|e| Stop("error", format!("cannot swap the new list in: {e}")))?;
    }
    let source = ReloadSource::ListUpdate {
        url: src.url.clone(),
    };
    let reloaded = match gw.reload(source.clone()).await {
        // Rules or lists the reload could not load are not in force: roll back.
        Ok(r) if !matches!(src.kind, FeedKind::Categories) => match r.security_error {
            Some(e) => Err(e),
            None => Ok(r),
        },
        other => other,
    };
    match reloaded {
        Ok(r) => {
            write_state(
                src,
                &Persisted {
                    url: src.url.clone(),
                    etag,
                    last_modified,
                    sha256: Some(sha256),
                    checked_unix: unix_now(),
                },
            );
            outcome.result = "applied";
            if outcome.in_force.is_some() {
                outcome.in_force = Some(checked.entries);
            }
            outcome.generation = Some(r.generation);
            outcome.detail = format!(
                "{} entries ({} invalid lines skipped), {bytes} bytes; generation {} in force",
                checked.entries, checked.invalid, r.generation
            );
            Ok(())
        }
        Err(error) => {
            let first = error.lines().next().unwrap_or_default().to_string();
            let rolled = {
                let _no_reload_now = gw.reload_lock.lock().await;
                roll_back(&src.path, &prev)
            };
            if let Err(e) = rolled {
                return Err(Stop("error", format!("the policy did not load with the new list ({first}) and the old files could not be put back: {e}")));
            }
            let again = gw.reload(source).await;
            let detail = match again {
                Ok(r) => format!("the policy did not load with the new list: {first}; old list restored (generation {})", r.generation),
                Err(e) => format!(
                    "the policy did not load with the new list: {first}; old list restored on disk, reload after restoring failed too: {}",
                    e.lines().next().unwrap_or_default()
                ),
            };
            Err(Stop("rolled_back", detail))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::archive::{archive_root, unpack};
    use super::*;

    fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    fn dir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("komugate-list-update-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn unpacks_and_strips_the_top_directory() {
        let d = dir("ok");
        std::fs::write(
            d.join("a.tgz"),
            tar_gz(&[
                ("blacklists/adult/domains", b"x.example\n"),
                ("blacklists/README", b"hi"),
            ]),
        )
        .unwrap();
        unpack(&d.join("a.tgz"), &d.join("out"), 1 << 20).unwrap();
        assert_eq!(archive_root(&d.join("out")), d.join("out/blacklists"));
        // a single category is not stripped
        std::fs::write(
            d.join("b.tgz"),
            tar_gz(&[("adult/domains", b"x.example\n")]),
        )
        .unwrap();
        unpack(&d.join("b.tgz"), &d.join("out2"), 1 << 20).unwrap();
        assert_eq!(archive_root(&d.join("out2")), d.join("out2"));
    }

    #[test]
    fn refuses_traversal_links_and_bombs() {
        let d = dir("bad");
        // `..` (written raw: tar::Builder refuses it)
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"../etc/passwd");
        h.set_size(1);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(&[b'x'; 512]);
        raw.extend_from_slice(&[0; 1024]);
        std::fs::write(d.join("dots.tar"), &raw).unwrap();
        let e = unpack(&d.join("dots.tar"), &d.join("o1"), 1 << 20).unwrap_err();
        assert!(e.contains(".."), "{e}");
        assert!(!d.join("etc").exists());

        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..11].copy_from_slice(b"/etc/passwd");
        h.set_size(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(&[0; 1024]);
        std::fs::write(d.join("abs.tar"), &raw).unwrap();
        let e = unpack(&d.join("abs.tar"), &d.join("o2"), 1 << 20).unwrap_err();
        assert!(e.contains("absolute"), "{e}");

        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "adult/domains", "/etc/passwd")
            .unwrap();
        std::fs::write(d.join("link.tar"), b.into_inner().unwrap()).unwrap();
        let e = unpack(&d.join("link.tar"), &d.join("o3"), 1 << 20).unwrap_err();
        assert!(e.contains("link"), "{e}");

        let big = vec![b'a'; 4096];
        std::fs::write(d.join("big.tgz"), tar_gz(&[("adult/domains", &big)])).unwrap();
        let e = unpack(&d.join("big.tgz"), &d.join("o4"), 1000).unwrap_err();
        assert!(e.contains("more than"), "{e}");
    }

    #[test]
    fn swap_and_roll_back() {
        let d = dir("swap");
        let (path, prev, new) = (d.join("ut1"), d.join("ut1.prev"), d.join("staging"));
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("v"), "1").unwrap();
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(new.join("v"), "2").unwrap();
        swap_in(&new, &path, &prev).unwrap();
        assert_eq!(std::fs::read_to_string(path.join("v")).unwrap(), "2");
        assert_eq!(std::fs::read_to_string(prev.join("v")).unwrap(), "1");
        roll_back(&path, &prev).unwrap();
        assert_eq!(std::fs::read_to_string(path.join("v")).unwrap(), "1");
        assert!(!prev.exists());
    }
}
