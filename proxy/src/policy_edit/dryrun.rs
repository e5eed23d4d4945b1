//! The dry run of a policy change: the access records of the last days
//! decided by the policy before and after the change, and what would
//! change — how many requests, from how many devices, to which hosts, in
//! both directions (newly blocked, newly allowed).
//!
//! Fast by grouping: a decision depends on the requester's groups (and the
//! device only when a rule or a list entry names devices), the location,
//! what the policy sees of the host (its categories, app, the rules' host
//! patterns and scoped list entries that cover it:
//! [`komugate_policy::Policy::host_key`], so the thousands of hosts no
//! list or rule names are one class), scheme and port, the method only
//! when a rule names methods, the path only when a rule or a list looks at
//! paths for that host (then the host itself counts), and the time only
//! through rule time windows, weekdays and list-entry expiry
//! ([`komugate_policy::Policy::time_class`]). Each distinct combination is
//! evaluated once by both policies; the rest of the records reuse it. The
//! segment blocks are dictionary-encoded, so a block's rows map to their
//! combination by small integer ids; segments are shared among threads.
//!
//! What the dry run cannot know (documented for the staff):
//! - only what was logged: a tunnel that was not inspected has no paths,
//!   so path rules and URL entries are decided on `host:port` alone;
//! - the groups are the registry's current ones (without a `[registry]`,
//!   the groups the record carries, i.e. the certificate's), and the
//!   location the one the record's client address gives today (or the
//!   beacon site it was logged with);
//! - time windows and expiry dates are evaluated at each record's time;
//! - rules on signed-in users and device posture (`users`, `user_groups`,
//!   `signed_in`, posture) see no signed-in user: sessions are not logged
//!   in a form the dry run can replay;
//! - CASB (upload/download, DLP), IPS and firewall verdicts on non-web
//!   flows are not re-evaluated: only the web decision (allow / block);
//! - the baseline is the old policy's decision now, not the logged one
//!   (lists may have been updated since), so only the edit's effect shows;
//! - only this gateway's local log directory is read.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, UNIX_EPOCH};

use komugate_policy::{Action, HostKey, Location, Policy, Request, Scheme, SubjectKey};

use crate::logs::layout;
use crate::logs::record::LogRecord;
use crate::logs::segment::{Block, Columns, SegmentReader, StrCol};

/// What to read and how much to report.
#[derive(Clone, Debug)]
pub struct DryRunOptions {
    pub since_ms: i64,
    /// Exclusive.
    pub until_ms: i64,
    /// Worker threads (at least 1).
    pub threads: usize,
    /// Hosts listed per direction.
    pub top: usize,
    /// Example requests kept per direction.
    pub samples: usize,
}

impl DryRunOptions {
    /// The last `days` days up to now, on every core.
    pub fn last_days(days: u32) -> DryRunOptions {
        let now = crate::logs::record::now_ms();
        DryRunOptions {
            since_ms: now - days as i64 * 86_400_000,
            until_ms: now + 1,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            top: 10,
            samples: 10,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HostCount {
    pub host: String,
    pub requests: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RuleChange {
    pub old_rule: String,
    pub new_rule: String,
    pub requests: u64,
}

/// One example request whose decision changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Sample {
    pub time_ms: i64,
    pub device: String,
    pub client: String,
    pub method: String,
    pub target: String,
    pub old_rule: String,
    pub new_rule: String,
}

/// One direction of change (newly blocked or newly allowed).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Direction {
    pub requests: u64,
    /// Distinct device ids among them.
    pub devices: u64,
    /// Distinct client addresses among the requests without a device
    /// (the anonymous in-site listener).
    pub anonymous_clients: u64,
    pub top_hosts: Vec<HostCount>,
    /// Which rule decided before and after, most requests first.
    pub rules: Vec<RuleChange>,
    pub samples: Vec<Sample>,
}

/// What a dry run found.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DryRunReport {
    pub since_ms: i64,
    pub until_ms: i64,
    /// Records in the time range.
    pub records: u64,
    /// Distinct cases evaluated by both policies.
    pub evaluated: u64,
    pub newly_blocked: Direction,
    pub newly_allowed: Direction,
    pub segments: u64,
    pub live_files: u64,
    pub elapsed_ms: u64,
    /// Files that could not be read (the run went on).
    pub errors: Vec<String>,
}

impl DryRunReport {
    /// One line for the audit log.
    pub fn summary(&self) -> String {
        format!(
            "dry run over {} records: {} newly blocked ({} devices), {} newly allowed ({} devices)",
            self.records,
            self.newly_blocked.requests,
            self.newly_blocked.devices,
            self.newly_allowed.requests,
            self.newly_allowed.devices
        )
    }
}

/// Runs `old` and `new` over the records of `log_dir` in the options' range.
pub fn dry_run(
    old: &Policy,
    new: &Policy,
    log_dir: &Path,
    opts: &DryRunOptions,
) -> io::Result<DryRunReport> {
    if !log_dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "log directory {} does not exist (the folder of [log] access_log)",
                log_dir.display()
            ),
        ));
    }
    let started = Instant::now();
    let segments = segment_files(log_dir, opts.since_ms);
    let next = AtomicUsize::new(0);
    let errors = Mutex::new(Vec::new());
    let threads = opts.threads.clamp(1, 64).min(segments.len().max(1));
    let mut parts: Vec<Acc> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut w = Worker::new(old, new, opts);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = segments.get(i) else { break };
                        if let Err(e) = w.segment(path) {
                            errors
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(format!("{}: {e}", path.display()));
                        }
                    }
                    w.finish()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("dry-run worker panicked"))
            .collect()
    });
    // Records not compacted yet (the last hour or so), on this thread.
    let mut w = Worker::new(old, new, opts);
    let mut live_files = 0;
    for f in layout::unsealed_files(log_dir) {
        live_files += 1;
        if let Err(e) = w.jsonl(&f) {
            errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!("{}: {e}", f.display()));
        }
    }
    parts.push(w.finish());
    let mut report = merge(parts, opts);
    report.segments = segments.len() as u64;
    report.live_files = live_files;
    report.errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Runs `old` and `new` over records in memory (tests, small samples).
pub fn dry_run_records(
    old: &Policy,
    new: &Policy,
    records: &[LogRecord],
    opts: &DryRunOptions,
) -> DryRunReport {
    let started = Instant::now();
    let mut w = Worker::new(old, new, opts);
    for chunk in records.chunks(crate::logs::segment::BLOCK_ROWS) {
        let batch = JsonBatch::of(chunk);
        w.rows(&batch);
    }
    let mut r = merge(vec![w.finish()], opts);
    r.elapsed_ms = started.elapsed().as_millis() as u64;
    r
}

/// Segment files that may hold records from `since_ms` on (day folders
/// before the day before are skipped).
fn segment_files(dir: &Path, since_ms: i64) -> Vec<PathBuf> {
    let q = crate::logs::Query {
        since_ms: Some(since_ms),
        ..Default::default()
    };
    crate::logs::search::list_segments(dir, &q)
}

/// The columns the dry run reads.
#[derive(Clone, Copy)]
enum Col {
    Device,
    Groups,
    ClientIp,
    Site,
    Method,
    Host,
    /// The target relative to the host (segments) or whole (live files).
    Rest,
}

/// The segment columns [`Col`] reads (the rest of a block is skipped).
const COLUMNS_READ: [StrCol; 7] = [
    StrCol::Device,
    StrCol::Groups,
    StrCol::ClientIp,
    StrCol::Site,
    StrCol::Method,
    StrCol::Host,
    StrCol::TargetRest,
];

const COLUMNS: Columns = Columns::only(&COLUMNS_READ);

/// A batch of rows with dictionary-encoded string columns.
trait Rows {
    fn len(&self) -> usize;
    fn time(&self, row: usize) -> i64;
    fn id(&self, c: Col, row: usize) -> u32;
    fn value(&self, c: Col, id: u32) -> &str;
}

fn str_col(c: Col) -> StrCol {
    match c {
        Col::Device => StrCol::Device,
        Col::Groups => StrCol::Groups,
        Col::ClientIp => StrCol::ClientIp,
        Col::Site => StrCol::Site,
        Col::Method => StrCol::Method,
        Col::Host => StrCol::Host,
        Col::Rest => StrCol::TargetRest,
    }
}

impl Rows for Block {
    fn len(&self) -> usize {
        self.rows
    }
    fn time(&self, row: usize) -> i64 {
        self.time[row]
    }
    fn id(&self, c: Col, row: usize) -> u32 {
        self.col(str_col(c)).ids[row]
    }
    fn value(&self, c: Col, id: u32) -> &str {
        self.col(str_col(c)).value(id)
    }
}

/// Live-file records encoded like a segment block.
struct JsonBatch {
    time: Vec<i64>,
    ids: [Vec<u32>; 7],
    values: [Vec<String>; 7],
}

impl JsonBatch {
    fn of(records: &[LogRecord]) -> JsonBatch {
        let mut maps: [HashMap<String, u32>; 7] = Default::default();
        let mut b = JsonBatch {
            time: Vec::with_capacity(records.len()),
            ids: Default::default(),
            values: Default::default(),
        };
        for r in records {
            b.time.push(r.time_ms);
            let host = if r.host.is_empty() {
                crate::logs::record::host_of(&r.target)
            } else {
                r.host.clone()
            };
            let ip = client_ip_text(&r.client);
            let fields: [&str; 7] = [
                &r.device,
                &r.groups.join("\u{1f}"),
                ip,
                &r.site,
                &r.method,
                &host,
                &r.target,
            ];
            for (k, v) in fields.iter().enumerate() {
                let id = match maps[k].get(*v) {
                    Some(id) => *id,
                    None => {
                        let id = b.values[k].len() as u32;
                        maps[k].insert(v.to_string(), id);
                        b.values[k].push(v.to_string());
                        id
                    }
                };
                b.ids[k].push(id);
            }
        }
        b
    }
}

impl Rows for JsonBatch {
    fn len(&self) -> usize {
        self.time.len()
    }
    fn time(&self, row: usize) -> i64 {
        self.time[row]
    }
    fn id(&self, c: Col, row: usize) -> u32 {
        self.ids[c as usize][row]
    }
    fn value(&self, c: Col, id: u32) -> &str {
        &self.values[c as usize][id as usize]
    }
}

/// The address part of a logged client (`ip:port`, `[v6]:port`, `ip`).
fn client_ip_text(client: &str) -> &str {
    if let Some(rest) = client.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match client.rfind(':') {
        Some(i) if !client[..i].contains(':') => &client[..i],
        _ => client,
    }
}

/// A fast hasher for the small integer keys (FxHash).
#[derive(Default, Clone, Copy)]
struct Fx(u64);
impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.add(*b as u64);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64)
    }
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64)
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i)
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64)
    }
}
impl Fx {
    #[inline]
    fn add(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}
type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

/// What a request asks for, as far as the two policies can tell apart.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct What {
    host: HostId,
    scheme: Scheme,
    port: u16,
    method: Option<String>,
    path: Option<String>,
}

/// A request's host in a case: the host itself when its path matters,
/// else the class of hosts both policies see alike
/// ([`komugate_policy::Policy::host_key`] under the old and the new one).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum HostId {
    Exact(String),
    Class(u32),
}

/// Both policies' decision of one case.
#[derive(Clone, Copy)]
struct Verdict {
    old_block: bool,
    new_block: bool,
    /// Rule-pair index (only for changed verdicts).
    rules: u32,
}

#[derive(Default)]
struct DirAcc {
    requests: u64,
    devices: HashSet<String>,
    anonymous: HashSet<String>,
    hosts: HashMap<String, u64>,
    rules: HashMap<u32, u64>,
    samples: Vec<Sample>,
}

#[derive(Default)]
struct Acc {
    records: u64,
    evaluated: u64,
    blocked: DirAcc,
    allowed: DirAcc,
    rule_pairs: Vec<(String, String)>,
}

struct Worker<'p> {
    old: &'p Policy,
    new: &'p Policy,
    opts: &'p DryRunOptions,
    methods_matter: bool,
    subjects: HashMap<(SubjectKey, SubjectKey), u32>,
    subject_repr: Vec<(Option<String>, Vec<String>)>,
    locations: HashMap<(Location, Location), u32>,
    location_repr: Vec<(Location, Location)>,
    whats: HashMap<What, u32>,
    /// Each case's request and a host to evaluate it with.
    what_repr: Vec<(What, String)>,
    path_matters: HashMap<String, bool>,
    /// Host class by host and scheme (`u32::MAX`: not known yet), and the
    /// classes by their keys.
    host_classes: HashMap<String, [u32; 3]>,
    classes: HashMap<(HostKey, HostKey), u32>,
    verdicts: FxMap<(u32, u32, u32, u64, u64), Verdict>,
    rule_pairs: HashMap<(String, String), u32>,
    acc: Acc,
}

impl<'p> Worker<'p> {
    fn new(old: &'p Policy, new: &'p Policy, opts: &'p DryRunOptions) -> Worker<'p> {
        Worker {
            old,
            new,
            opts,
            methods_matter: old.rules_use_methods() || new.rules_use_methods(),
            subjects: HashMap::new(),
            subject_repr: Vec::new(),
            locations: HashMap::new(),
            location_repr: Vec::new(),
            whats: HashMap::new(),
            what_repr: Vec::new(),
            path_matters: HashMap::new(),
            host_classes: HashMap::new(),
            classes: HashMap::new(),
            verdicts: FxMap::default(),
            rule_pairs: HashMap::new(),
            acc: Acc::default(),
        }
    }

    fn segment(&mut self, path: &Path) -> io::Result<()> {
        let mut r = SegmentReader::open(path)?;
        while let Some(h) = r.next_header()? {
            if h.max_ms < self.opts.since_ms || h.min_ms >= self.opts.until_ms {
                r.skip_block(&h)?;
                continue;
            }
            let b = r.read_block_columns(&h, COLUMNS)?;
            self.rows(&b);
        }
        Ok(())
    }

    fn jsonl(&mut self, path: &Path) -> io::Result<()> {
        use std::io::BufRead;
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut batch = Vec::new();
        let mut reader = io::BufReader::with_capacity(1 << 16, f);
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 || line.last() != Some(&b'\n') {
                break;
            }
            if let Ok(r) = LogRecord::from_json_line(&line) {
                batch.push(r);
            }
            if batch.len() == crate::logs::segment::BLOCK_ROWS {
                self.rows(&JsonBatch::of(&batch));
                batch.clear();
            }
        }
        if !batch.is_empty() {
            self.rows(&JsonBatch::of(&batch));
        }
        Ok(())
    }

    fn subject(&mut self, device: &str, groups: &str) -> u32 {
        let device = (!device.is_empty()).then_some(device);
        let groups: Vec<String> = if groups.is_empty() {
            Vec::new()
        } else {
            groups.split('\u{1f}').map(str::to_string).collect()
        };
        let key = (
            self.old.subject_key(device, &groups),
            self.new.subject_key(device, &groups),
        );
        let next = self.subject_repr.len() as u32;
        *self.subjects.entry(key).or_insert_with(|| {
            self.subject_repr.push((device.map(str::to_string), groups));
            next
        })
    }

    fn location(&mut self, ip: &str, site: &str) -> u32 {
        let ip: Option<IpAddr> = ip.parse().ok();
        let old_here = ip
            .map(|ip| self.old.locate(ip))
            .unwrap_or(Location::Offsite);
        let logged =
            (!site.is_empty() && site != "offsite").then(|| Location::Site(site.to_string()));
        // A site established by a beacon assertion cannot be found from the
        // address: keep it (in the new policy only if the site still exists).
        let asserted = logged.as_ref().is_some_and(|l| {
            *l != old_here
                && self
                    .old
                    .sites()
                    .iter()
                    .any(|s| s.name == site && s.assertion)
        });
        let key = if asserted {
            let in_new = self.new.sites().iter().any(|s| s.name == site);
            (
                Location::Site(site.to_string()),
                if in_new {
                    Location::Site(site.to_string())
                } else {
                    Location::Offsite
                },
            )
        } else {
            let new_here = ip
                .map(|ip| self.new.locate(ip))
                .unwrap_or(Location::Offsite);
            (old_here, new_here)
        };
        let next = self.location_repr.len() as u32;
        *self.locations.entry(key.clone()).or_insert_with(|| {
            self.location_repr.push(key);
            next
        })
    }

    /// Whether the path of a request to `host` can change either decision.
    fn path_matters(&mut self, host: &str) -> bool {
        match self.path_matters.get(host) {
            Some(m) => *m,
            None => {
                let m = self.old.path_matters(host) || self.new.path_matters(host);
                self.path_matters.insert(host.to_string(), m);
                m
            }
        }
    }

    fn what(
        &mut self,
        method: &str,
        host: &str,
        scheme: Scheme,
        port: u16,
        path: Option<&str>,
    ) -> u32 {
        let host_id = match path {
            Some(_) => HostId::Exact(host.to_string()),
            None => HostId::Class(self.host_class(host, scheme)),
        };
        let w = What {
            host: host_id,
            scheme,
            port,
            method: self.methods_matter.then(|| method.to_string()),
            path: path.map(str::to_string),
        };
        let next = self.what_repr.len() as u32;
        if let Some(id) = self.whats.get(&w) {
            return *id;
        }
        self.whats.insert(w.clone(), next);
        self.what_repr.push((w, host.to_string()));
        next
    }

    /// The class of `host` requested with `scheme` (path not mattering):
    /// hosts both policies see alike share one.
    fn host_class(&mut self, host: &str, scheme: Scheme) -> u32 {
        let slot = scheme as usize;
        if let Some(c) = self.host_classes.get(host).map(|c| c[slot]) {
            if c != u32::MAX {
                return c;
            }
        }
        // The path the evaluation uses when the path does not matter.
        let path = default_path(scheme);
        let key = (
            self.old.host_key(scheme, host, path),
            self.new.host_key(scheme, host, path),
        );
        let next = self.classes.len() as u32;
        let c = *self.classes.entry(key).or_insert(next);
        match self.host_classes.get_mut(host) {
            Some(cs) => cs[slot] = c,
            None => {
                let mut cs = [u32::MAX; 3];
                cs[slot] = c;
                self.host_classes.insert(host.to_string(), cs);
            }
        }
        c
    }

    fn evaluate(&mut self, s: u32, l: u32, w: u32, time_ms: i64) -> Verdict {
        self.acc.evaluated += 1;
        let (device, groups) = &self.subject_repr[s as usize];
        let (old_loc, new_loc) = &self.location_repr[l as usize];
        let (what, host) = &self.what_repr[w as usize];
        let path = what.path.as_deref().unwrap_or(default_path(what.scheme));
        let method = what.method.as_deref().unwrap_or(match what.scheme {
            Scheme::Connect => "CONNECT",
            _ => "GET",
        });
        let time = UNIX_EPOCH + Duration::from_millis(time_ms.max(0) as u64);
        let req = |loc: &Location| Request {
            device: device.as_deref(),
            cert_groups: groups,
            client_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            location: Some(loc.clone()),
            scheme: what.scheme,
            method,
            host,
            port: what.port,
            path,
            time,
        };
        // decide_as: the verdict without the request's description, which
        // the dry run never shows (about a third of an evaluation).
        let subject = komugate_policy::Subject::default();
        let a = self.old.decide_as(&req(old_loc), &subject);
        let b = self.new.decide_as(&req(new_loc), &subject);
        let old_block = a.action == Action::Block;
        let new_block = b.action == Action::Block;
        let mut rules = 0;
        if old_block != new_block {
            let next = self.acc.rule_pairs.len() as u32;
            rules = *self
                .rule_pairs
                .entry((a.rule.clone(), b.rule.clone()))
                .or_insert_with(|| {
                    self.acc.rule_pairs.push((a.rule, b.rule));
                    next
                });
        }
        Verdict {
            old_block,
            new_block,
            rules,
        }
    }

    fn rows<R: Rows>(&mut self, b: &R) {
        let mut subj: FxMap<(u32, u32), u32> = FxMap::default();
        let mut loc: FxMap<(u32, u32), u32> = FxMap::default();
        let mut what: FxMap<(u32, u32, u64), u32> = FxMap::default();
        let mut host_paths: FxMap<u32, bool> = FxMap::default();
        let mut minute = i64::MIN;
        let mut classes = (0, 0);
        for row in 0..b.len() {
            let t = b.time(row);
            if t < self.opts.since_ms || t >= self.opts.until_ms {
                continue;
            }
            self.acc.records += 1;
            let ids = (b.id(Col::Device, row), b.id(Col::Groups, row));
            let s = match subj.get(&ids) {
                Some(s) => *s,
                None => {
                    let s = self.subject(b.value(Col::Device, ids.0), b.value(Col::Groups, ids.1));
                    subj.insert(ids, s);
                    s
                }
            };
            let ids = (b.id(Col::ClientIp, row), b.id(Col::Site, row));
            let l = match loc.get(&ids) {
                Some(l) => *l,
                None => {
                    let l = self.location(b.value(Col::ClientIp, ids.0), b.value(Col::Site, ids.1));
                    loc.insert(ids, l);
                    l
                }
            };
            // The request: by (host, scheme, port) unless the path matters
            // for the host (then by the whole target), and the method only
            // when a rule names methods.
            let (m, h, rest_id) = (
                b.id(Col::Method, row),
                b.id(Col::Host, row),
                b.id(Col::Rest, row),
            );
            let method = b.value(Col::Method, m);
            let host = b.value(Col::Host, h);
            let pm = match host_paths.get(&h) {
                Some(pm) => *pm,
                None => {
                    let pm = self.path_matters(host);
                    host_paths.insert(h, pm);
                    pm
                }
            };
            let rest = b.value(Col::Rest, rest_id);
            let (scheme, port, path) = split_rest(method, rest);
            let local = (
                if self.methods_matter { m } else { u32::MAX },
                h,
                if pm {
                    (1u64 << 63) | rest_id as u64
                } else {
                    ((scheme as u64) << 16) | port as u64
                },
            );
            let w = match what.get(&local) {
                Some(w) => *w,
                None => {
                    let w = self.what(method, host, scheme, port, pm.then_some(path));
                    what.insert(local, w);
                    w
                }
            };
            // Expiry instants and time windows fall on minute boundaries.
            if t.div_euclid(60_000) != minute {
                minute = t.div_euclid(60_000);
                let at = UNIX_EPOCH + Duration::from_millis(t.max(0) as u64);
                classes = (self.old.time_class(at), self.new.time_class(at));
            }
            let key = (s, l, w, classes.0, classes.1);
            let v = match self.verdicts.get(&key) {
                Some(v) => *v,
                None => {
                    let v = self.evaluate(s, l, w, t);
                    self.verdicts.insert(key, v);
                    v
                }
            };
            if v.old_block != v.new_block {
                self.changed(b, row, v);
            }
        }
    }

    fn changed<R: Rows>(&mut self, b: &R, row: usize, v: Verdict) {
        let dir = if v.new_block {
            &mut self.acc.blocked
        } else {
            &mut self.acc.allowed
        };
        dir.requests += 1;
        let device = b.value(Col::Device, b.id(Col::Device, row));
        let ip = b.value(Col::ClientIp, b.id(Col::ClientIp, row));
        if device.is_empty() {
            if !dir.anonymous.contains(ip) {
                dir.anonymous.insert(ip.to_string());
            }
        } else if !dir.devices.contains(device) {
            dir.devices.insert(device.to_string());
        }
        let host = b.value(Col::Host, b.id(Col::Host, row));
        match dir.hosts.get_mut(host) {
            Some(n) => *n += 1,
            None => {
                dir.hosts.insert(host.to_string(), 1);
            }
        }
        *dir.rules.entry(v.rules).or_default() += 1;
        if dir.samples.len() < self.opts.samples {
            let (old_rule, new_rule) = self.acc.rule_pairs[v.rules as usize].clone();
            dir.samples.push(Sample {
                time_ms: b.time(row),
                device: device.to_string(),
                client: ip.to_string(),
                method: b.value(Col::Method, b.id(Col::Method, row)).to_string(),
                target: crate::logs::segment::target_from_rest(
                    b.value(Col::Rest, b.id(Col::Rest, row)),
                    host,
                ),
                old_rule,
                new_rule,
            });
        }
    }

    fn finish(self) -> Acc {
        self.acc
    }
}

/// The path a case is evaluated with when the path does not matter.
fn default_path(scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::Connect => "",
        _ => "/",
    }
}

/// (scheme, port, path) of a logged request.
fn split_target<'t>(method: &str, target: &'t str) -> (Scheme, u16, &'t str) {
    if method.eq_ignore_ascii_case("CONNECT") || !target.contains("://") {
        let port = target
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(443);
        return (Scheme::Connect, port, "");
    }
    let (scheme, rest) = target.split_once("://").unwrap_or(("http", target));
    let scheme = if scheme.eq_ignore_ascii_case("https") {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let default = if scheme == Scheme::Https { 443 } else { 80 };
    let port = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            p.parse().unwrap_or(default)
        }
        _ => default,
    };
    (scheme, port, if path.is_empty() { "/" } else { path })
}

/// (scheme, port, path) of a segment's host-relative target (see
/// `logs::segment`: `\u{2}:443` a tunnel, `\u{3}`/`\u{4}` + `[:port]/path`
/// http / https), or of a whole target.
fn split_rest<'t>(method: &str, rest: &'t str) -> (Scheme, u16, &'t str) {
    let (scheme, tail) = match rest.as_bytes().first() {
        Some(2) => {
            let port = rest[1..]
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .unwrap_or(443);
            return (Scheme::Connect, port, "");
        }
        Some(3) => (Scheme::Http, &rest[1..]),
        Some(4) => (Scheme::Https, &rest[1..]),
        _ => return split_target(method, rest),
    };
    let default = if scheme == Scheme::Https { 443 } else { 80 };
    let (port, path) = match tail.strip_prefix(':') {
        Some(p) => {
            let end = p.find(['/', '?']).unwrap_or(p.len());
            (p[..end].parse().unwrap_or(default), &p[end..])
        }
        None => (default, tail),
    };
    if method.eq_ignore_ascii_case("CONNECT") {
        return (Scheme::Connect, port, "");
    }
    (scheme, port, if path.is_empty() { "/" } else { path })
}

fn merge(parts: Vec<Acc>, opts: &DryRunOptions) -> DryRunReport {
    let mut r = DryRunReport {
        since_ms: opts.since_ms,
        until_ms: opts.until_ms,
        ..Default::default()
    };
    let mut blocked = DirMerge::default();
    let mut allowed = DirMerge::default();
    for p in parts {
        r.records += p.records;
        r.evaluated += p.evaluated;
        blocked.add(p.blocked, &p.rule_pairs);
        allowed.add(p.allowed, &p.rule_pairs);
    }
    r.newly_blocked = blocked.finish(opts);
    r.newly_allowed = allowed.finish(opts);
    r
}

#[derive(Default)]
struct DirMerge {
    requests: u64,
    devices: HashSet<String>,
    anonymous: HashSet<String>,
    hosts: HashMap<String, u64>,
    rules: HashMap<(String, String), u64>,
    samples: Vec<Sample>,
}

impl DirMerge {
    fn add(&mut self, d: DirAcc, pairs: &[(String, String)]) {
        self.requests += d.requests;
        self.devices.extend(d.devices);
        self.anonymous.extend(d.anonymous);
        for (h, n) in d.hosts {
            *self.hosts.entry(h).or_default() += n;
        }
        for (i, n) in d.rules {
            if let Some(p) = pairs.get(i as usize) {
                *self.rules.entry(p.clone()).or_default() += n;
            }
        }
        self.samples.extend(d.samples);
    }

    fn finish(self, opts: &DryRunOptions) -> Direction {
        let mut hosts: Vec<HostCount> = self
            .hosts
            .into_iter()
            .map(|(host, requests)| HostCount { host, requests })
            .collect();
        hosts.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.host.cmp(&b.host)));
        hosts.truncate(opts.top);
        let mut rules: Vec<RuleChange> = self
            .rules
            .into_iter()
            .map(|((old_rule, new_rule), requests)| RuleChange {
                old_rule,
                new_rule,
                requests,
            })
            .collect();
        rules.sort_by(|a, b| {
            b.requests
                .cmp(&a.requests)
                .then(a.new_rule.cmp(&b.new_rule))
        });
        rules.truncate(opts.top);
        let mut samples = self.samples;
        samples.sort_by(|a, b| a.time_ms.cmp(&b.time_ms).then(a.target.cmp(&b.target)));
        samples.truncate(opts.samples);
        Direction {
            requests: self.requests,
            devices: self.devices.len() as u64,
            anonymous_clients: self.anonymous.len() as u64,
            top_hosts: hosts,
            rules,
            samples,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = r#"
timezone = "+09:00"
[[group]]
name = "teachers"
[[site]]
name = "school"
cidrs = ["10.0.0.0/8"]
[categories]
deny = ["bad.example"]
[[rule]]
name = "night"
hosts = ["night.example"]
time = "22:00-06:00"
action = "block"
"#;

    /// 2026-03-31 12:00 JST.
    const NOON: i64 = 1_774_926_000_000;

    fn rec(t: i64, device: &str, client: &str, method: &str, target: &str) -> LogRecord {
        LogRecord {
            time_ms: t,
            device: device.into(),
            client: client.into(),
            method: method.into(),
            target: target.into(),
            host: crate::logs::record::host_of(target),
            action: "allow".into(),
            site: "school".into(),
            ..Default::default()
        }
    }

    /// Hand-computed: games.example joins the deny list, bad.example leaves it.
    #[test]
    fn counts_match_a_hand_computed_sample() {
        let new_text = OLD.replace("deny = [\"bad.example\"]", "deny = [\"games.example\"]");
        let old = Policy::from_str(OLD, Path::new("/nonexistent/p.toml")).unwrap();
        let new = Policy::from_str(&new_text, Path::new("/nonexistent/p.toml")).unwrap();
        let records = vec![
            // newly blocked: 3 × the same CONNECT, a GET, a subdomain, an anonymous client
            rec(NOON, "T-1", "10.0.0.5:4000", "CONNECT", "games.example:443"),
            rec(
                NOON + 1,
                "T-1",
                "10.0.0.5:4001",
                "CONNECT",
                "games.example:443",
            ),
            rec(
                NOON + 2,
                "T-1",
                "10.0.0.5:4002",
                "CONNECT",
                "games.example:443",
            ),
            rec(
                NOON + 3,
                "T-1",
                "10.0.0.5:4003",
                "GET",
                "https://games.example/x?y=1",
            ),
            rec(
                NOON + 4,
                "T-2",
                "192.0.2.1:5000",
                "CONNECT",
                "www.games.example:443",
            ),
            rec(
                NOON + 5,
                "",
                "10.1.1.1:6000",
                "GET",
                "http://games.example/",
            ),
            // newly allowed
            rec(
                NOON + 6,
                "T-2",
                "192.0.2.1:5001",
                "CONNECT",
                "bad.example:443",
            ),
            // unchanged: blocked at 23:00 JST by both, allowed at noon by both
            rec(
                NOON + 11 * 3_600_000,
                "T-3",
                "10.0.0.9:7000",
                "CONNECT",
                "night.example:443",
            ),
            rec(
                NOON + 7,
                "T-3",
                "10.0.0.9:7001",
                "CONNECT",
                "night.example:443",
            ),
            rec(
                NOON + 8,
                "T-1",
                "10.0.0.5:4004",
                "CONNECT",
                "other.example:443",
            ),
            // outside the range: not counted
            rec(
                NOON - 10 * 86_400_000,
                "T-9",
                "10.0.0.5:4000",
                "CONNECT",
                "games.example:443",
            ),
        ];
        let opts = DryRunOptions {
            since_ms: NOON - 86_400_000,
            until_ms: NOON + 86_400_000,
            threads: 1,
            top: 10,
            samples: 3,
        };
        let r = dry_run_records(&old, &new, &records, &opts);
        assert_eq!(r.records, 10);
        let b = &r.newly_blocked;
        assert_eq!(b.requests, 6);
        assert_eq!(b.devices, 2, "T-1 and T-2");
        assert_eq!(b.anonymous_clients, 1, "10.1.1.1");
        assert_eq!(
            b.top_hosts,
            vec![
                HostCount {
                    host: "games.example".into(),
                    requests: 5
                },
                HostCount {
                    host: "www.games.example".into(),
                    requests: 1
                },
            ]
        );
        assert_eq!(
            b.rules,
            vec![RuleChange {
                old_rule: "default".into(),
                new_rule: "deny-list".into(),
                requests: 6
            }]
        );
        assert_eq!(b.samples.len(), 3);
        assert_eq!(b.samples[0].target, "games.example:443");
        let a = &r.newly_allowed;
        assert_eq!((a.requests, a.devices, a.anonymous_clients), (1, 1, 0));
        assert_eq!(a.top_hosts[0].host, "bad.example");
        assert_eq!(a.rules[0].old_rule, "deny-list");
        // Ten records, eight cases: the three CONNECTs to games.example
        // from T-1 at school are one case; night.example at noon and at
        // 23:00 are two (the rule's time window tells them apart).
        assert_eq!(r.evaluated, 8);
    }

    /// Hosts the policies see alike are one case: 2,000 records over 55
    /// hosts make few cases, and every count equals deciding each record
    /// on its own with both policies.
    #[test]
    fn grouping_by_host_class_keeps_counts_exact() {
        let new_text = OLD.replace(
            "deny = [\"bad.example\"]",
            "deny = [\"games.example\"]\nallow = [{ entry = \"night.example\", devices = [\"T-2\"] }]",
        );
        let old = Policy::from_str(OLD, Path::new("/nonexistent/p.toml")).unwrap();
        let new = Policy::from_str(&new_text, Path::new("/nonexistent/p.toml")).unwrap();
        let named = [
            "games.example",
            "www.games.example",
            "night.example",
            "bad.example",
        ];
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let records: Vec<LogRecord> = (0..2000)
            .map(|i| {
                let host = match next(4) {
                    0 => named[next(4) as usize].to_string(),
                    _ => format!("h{}.example", next(51)),
                };
                let t = NOON + (next(24) as i64) * 3_600_000 + i;
                let device = format!("T-{}", next(4) + 1);
                let client = format!("10.0.0.{}:{}", next(4) + 1, 4000 + i);
                match next(2) {
                    0 => rec(t, &device, &client, "CONNECT", &format!("{host}:443")),
                    _ => rec(t, &device, &client, "GET", &format!("https://{host}/p/{i}")),
                }
            })
            .collect();
        let opts = DryRunOptions {
            since_ms: NOON - 86_400_000,
            until_ms: NOON + 86_400_000,
            threads: 1,
            top: 100,
            samples: 0,
        };
        let r = dry_run_records(&old, &new, &records, &opts);
        // Each record decided on its own.
        let mut blocked: (u64, HashSet<String>, HashMap<String, u64>) = Default::default();
        let mut allowed = blocked.clone();
        for x in &records {
            let (scheme, port, path) = split_target(&x.method, &x.target);
            let req = Request {
                device: Some(&x.device),
                cert_groups: &[],
                client_ip: client_ip_text(&x.client).parse().unwrap(),
                location: None,
                scheme,
                method: &x.method,
                host: &x.host,
                port,
                path,
                time: UNIX_EPOCH + Duration::from_millis(x.time_ms as u64),
            };
            let subject = komugate_policy::Subject::default();
            let a = old.decide_as(&req, &subject).is_blocked();
            let b = new.decide_as(&req, &subject).is_blocked();
            let dir = match (a, b) {
                (false, true) => &mut blocked,
                (true, false) => &mut allowed,
                _ => continue,
            };
            dir.0 += 1;
            dir.1.insert(x.device.clone());
            *dir.2.entry(x.host.clone()).or_default() += 1;
        }
        for (got, want) in [(&r.newly_blocked, &blocked), (&r.newly_allowed, &allowed)] {
            assert_eq!(got.requests, want.0);
            assert_eq!(got.devices, want.1.len() as u64);
            let hosts: HashMap<String, u64> = got
                .top_hosts
                .iter()
                .map(|h| (h.host.clone(), h.requests))
                .collect();
            assert_eq!(hosts, want.2);
        }
        assert!(blocked.0 > 0 && allowed.0 > 0, "both directions exercised");
        assert_eq!(r.records, 2000);
        // 51 plain hosts are one class; with the named hosts, 4 devices
        // (a list entry names one), 2 schemes and the night window's
        // classes, a few hundred cases at most instead of one per host.
        assert!(r.evaluated < 300, "{} cases", r.evaluated);
    }

    /// The same records read from a log directory (live file and a segment).
    #[test]
    fn reads_segments_and_live_files() {
        let dir = tempfile::tempdir().unwrap();
        let seg_dir = dir.path().join("segments/2026-03-31");
        std::fs::create_dir_all(&seg_dir).unwrap();
        let mut w = crate::logs::segment::SegmentWriter::create(
            &seg_dir.join("20260331T030000.000Z-0000-0.seg"),
            3,
        )
        .unwrap();
        for i in 0..3 {
            w.push(&rec(
                NOON + i,
                "T-1",
                "10.0.0.5:4000",
                "CONNECT",
                "games.example:443",
            ))
            .unwrap();
        }
        let idx = w.finish().unwrap();
        std::fs::write(seg_dir.join("20260331T030000.000Z-0000-0.idx"), idx).unwrap();
        let live = serde_json::to_string(&rec(
            NOON + 9,
            "T-4",
            "10.0.0.6:1",
            "CONNECT",
            "games.example:443",
        ))
        .unwrap();
        std::fs::write(dir.path().join("access.log"), format!("{live}\n")).unwrap();
        let new_text = OLD.replace("bad.example", "games.example");
        let old = Policy::from_str(OLD, Path::new("/nonexistent/p.toml")).unwrap();
        let new = Policy::from_str(&new_text, Path::new("/nonexistent/p.toml")).unwrap();
        let opts = DryRunOptions {
            since_ms: NOON - 86_400_000,
            until_ms: NOON + 86_400_000,
            threads: 2,
            top: 10,
            samples: 10,
        };
        let r = dry_run(&old, &new, dir.path(), &opts).unwrap();
        assert_eq!((r.segments, r.live_files), (1, 1));
        assert_eq!(r.records, 4);
        assert_eq!(r.newly_blocked.requests, 4);
        assert_eq!(r.newly_blocked.devices, 2);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
    }

    #[test]
    fn targets_split() {
        assert_eq!(
            split_target("CONNECT", "example.com:8443"),
            (Scheme::Connect, 8443, "")
        );
        assert_eq!(
            split_target("GET", "https://example.com/a?b"),
            (Scheme::Https, 443, "/a?b")
        );
        assert_eq!(
            split_target("GET", "http://example.com:8080"),
            (Scheme::Http, 8080, "/")
        );
        assert_eq!(
            split_rest("CONNECT", "\u{2}:8443"),
            (Scheme::Connect, 8443, "")
        );
        assert_eq!(split_rest("GET", "\u{4}/a?b"), (Scheme::Https, 443, "/a?b"));
        assert_eq!(split_rest("GET", "\u{3}:8080"), (Scheme::Http, 8080, "/"));
        assert_eq!(split_rest("GET", "https://h/x"), (Scheme::Https, 443, "/x"));
        assert_eq!(client_ip_text("10.0.0.1:5000"), "10.0.0.1");
        assert_eq!(client_ip_text("[::1]:5000"), "::1");
        assert_eq!(client_ip_text("::1"), "::1");
    }
}
