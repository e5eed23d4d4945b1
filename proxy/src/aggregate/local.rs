//! [`LogAggregates`] over this gateway's own log directory: closed
//! segments (skipped by their index when out of range or, for blocked-only
//! counts, holding no block), then the files not compacted yet.
//!
//! Counting runs on a low-priority thread of its own
//! ([`crate::background`]), at most as many at once as the slots given
//! (the console's search slots), never on the proxy's request path. Memory holds one segment block and the groups, never the records.
//! A segment lies wholly inside most ranges asked for (a day, a month): its
//! counts for a query's keys are kept ([`CACHE_GROUPS`] groups at most, the
//! oldest dropped first), so a dashboard refreshing every 30 s reads only
//! the last hour's files again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{
    rank, AggError, AggFuture, AggManyFuture, Counts, GroupQuery, Grouped, Key, KeyValue,
    LogAggregates, Only, Row, Source, MAX_GROUPS,
};
use crate::logs::layout;
use crate::logs::query::Query;
use crate::logs::record::LogRecord;
use crate::logs::segment::{Block, Dict, IndexField, SegmentIndex, SegmentReader, StrCol};

/// Groups kept in the per-segment cache, all entries together.
pub const CACHE_GROUPS: usize = 2_000_000;
/// This gateway's log directory as a [`LogAggregates`].
#[derive(Clone)]
pub struct SegmentStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    slots: Option<Arc<tokio::sync::Semaphore>>,
    cache: Mutex<SegmentCache>,
    /// Counts of the files not compacted yet, read up to an offset.
    live: Mutex<HashMap<(PathBuf, Shape), LiveEntry>>,
}

/// A JSON-lines file counted up to `offset` (whole lines), all its records
/// whatever their time; used for a query whose range holds `min_ms..=max_ms`.
#[derive(Clone, Default)]
struct LiveEntry {
    ino: u64,
    offset: u64,
    acc: Acc,
    min_ms: i64,
    max_ms: i64,
}

/// What the cache is keyed by besides the segment: the query without its range.
type Shape = (Vec<Key>, Only, bool);

#[derive(Default)]
struct SegmentCache {
    entries: HashMap<(PathBuf, Shape), Arc<Acc>>,
    order: VecDeque<((PathBuf, Shape), usize)>,
    groups: usize,
}

impl SegmentCache {
    fn get(&self, k: &(PathBuf, Shape)) -> Option<Arc<Acc>> {
        self.entries.get(k).cloned()
    }

    fn put(&mut self, k: (PathBuf, Shape), acc: Arc<Acc>) {
        let size = acc.groups.len() + 1;
        if size > CACHE_GROUPS || self.entries.contains_key(&k) {
            return;
        }
        while self.groups + size > CACHE_GROUPS {
            let Some((old, n)) = self.order.pop_front() else {
                break;
            };
            self.entries.remove(&old);
            self.groups -= n;
        }
        self.groups += size;
        self.order.push_back((k.clone(), size));
        self.entries.insert(k, acc);
    }
}

/// Per-record flags the measures are made of.
#[derive(Clone, Copy, Default)]
struct Flags {
    block: bool,
    ips: bool,
    threat: bool,
    dlp: bool,
}

fn ips_flags(ips: &str) -> (bool, bool) {
    let mut sid = false;
    let mut ti = false;
    for id in ips.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if id == "threat-intel" {
            ti = true;
        } else {
            sid = true;
        }
    }
    (sid, ti)
}

fn add_flags(c: &mut Counts, f: Flags, n: u64) {
    c.requests += n;
    c.blocks += f.block as u64 * n;
    c.ips_events += f.ips as u64 * n;
    c.threat_intel += f.threat as u64 * n;
    c.dlp_blocks += f.dlp as u64 * n;
}

fn merge_counts(a: &mut Counts, b: &Counts) {
    a.requests += b.requests;
    a.blocks += b.blocks;
    a.ips_events += b.ips_events;
    a.threat_intel += b.threat_intel;
    a.dlp_blocks += b.dlp_blocks;
}

/// A group's counts and (when asked) its distinct devices.
#[derive(Default, Clone)]
struct Cell {
    c: Counts,
    devices: HashSet<Box<str>>,
}

impl Cell {
    fn merge(&mut self, o: &Cell) {
        merge_counts(&mut self.c, &o.c);
        for d in &o.devices {
            if !self.devices.contains(d) {
                self.devices.insert(d.clone());
            }
        }
    }
}

/// Groups being counted.
#[derive(Default, Clone)]
struct Acc {
    groups: HashMap<Vec<KeyValue>, Cell>,
    total: Cell,
    capped: bool,
}

impl Acc {
    fn cell(&mut self, key: Vec<KeyValue>) -> Option<&mut Cell> {
        if self.groups.len() >= MAX_GROUPS && !self.groups.contains_key(&key) {
            self.capped = true;
            return None;
        }
        Some(self.groups.entry(key).or_default())
    }

    fn merge(&mut self, o: &Acc) {
        self.total.merge(&o.total);
        self.capped |= o.capped;
        for (k, c) in &o.groups {
            if let Some(cell) = self.cell(k.clone()) {
                cell.merge(c);
            }
        }
    }

    fn finish(self, q: &GroupQuery, problems: Vec<String>) -> Grouped {
        let devices = |c: &Cell| {
            let mut counts = c.c;
            counts.devices = c.devices.len() as u64;
            counts
        };
        let mut rows: Vec<Row> = self
            .groups
            .iter()
            .map(|(k, c)| Row {
                key: k.clone(),
                counts: devices(c),
            })
            .collect();
        rank(&mut rows, q.top);
        Grouped {
            rows,
            total: devices(&self.total),
            capped: self.capped,
            problems,
        }
    }
}

impl SegmentStore {
    /// The store over log directory `dir`; `slots` bounds the counts
    /// running at once (shared with the log searches).
    pub fn new(dir: PathBuf, slots: Option<Arc<tokio::sync::Semaphore>>) -> SegmentStore {
        SegmentStore {
            inner: Arc::new(Inner {
                dir,
                slots,
                cache: Mutex::new(SegmentCache::default()),
                live: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Answers `qs` on this thread (the gateway uses [`LogAggregates::grouped_many`]).
    pub fn count(&self, qs: &[GroupQuery]) -> Result<Vec<Grouped>, AggError> {
        for q in qs {
            q.check()?;
        }
        self.inner.count(qs)
    }
}

impl LogAggregates for SegmentStore {
    fn source(&self) -> Source {
        Source {
            kind: "local".into(),
            gateway_wide: false,
            detail: self.inner.dir.display().to_string(),
        }
    }

    fn grouped(&self, q: GroupQuery) -> AggFuture {
        let many = self.grouped_many(vec![q]);
        Box::pin(async move { many.await?.pop().ok_or_else(|| AggError::new("no answer")) })
    }

    fn grouped_many(&self, qs: Vec<GroupQuery>) -> AggManyFuture {
        let inner = self.inner.clone();
        Box::pin(async move {
            for q in &qs {
                q.check()?;
            }
            let permit = crate::aggregate::wait_for_slot(&inner.slots).await?;
            crate::background::run("komugate-count", move || {
                let _permit = permit;
                inner.count(&qs)
            })
            .await
            .map_err(|e| AggError::new(format!("the count stopped: {e}")))?
        })
    }
}

/// How one query reads one segment.
enum Use {
    Skip,
    Cached(Arc<Acc>),
    /// Scan it; keep the result for the cache when the segment lies wholly in the range.
    Scan {
        keep: bool,
    },
}

impl Inner {
    fn count(&self, qs: &[GroupQuery]) -> Result<Vec<Grouped>, AggError> {
        if !self.dir.is_dir() {
            return Err(AggError::new(format!(
                "log directory {} does not exist: check [log] access_log in the configuration (or --dir)",
                self.dir.display()
            )));
        }
        let mut accs: Vec<Acc> = qs.iter().map(|_| Acc::default()).collect();
        let mut problems = Vec::new();
        let Some(since) = qs.iter().map(|q| q.since_ms).min() else {
            return Ok(Vec::new());
        };
        let listing = Query {
            since_ms: Some(since),
            ..Query::default()
        };
        let with_categories = qs.iter().any(|q| q.by.contains(&Key::Category));
        for seg in crate::logs::search::list_segments(&self.dir, &listing) {
            let idx = SegmentIndex::read(&seg.with_extension("idx")).ok();
            let uses: Vec<Use> = qs
                .iter()
                .map(|q| self.segment_use(&seg, idx.as_ref(), q))
                .collect();
            let mut parts: Vec<Option<Acc>> = uses
                .iter()
                .map(|u| matches!(u, Use::Scan { .. }).then(Acc::default))
                .collect();
            if parts.iter().any(Option::is_some) {
                if let Err(e) = scan_segment(&seg, qs, &mut parts, with_categories) {
                    problems.push(format!("{}: {e}", seg.display()));
                    continue;
                }
            }
            for (i, (u, part)) in uses.into_iter().zip(parts).enumerate() {
                match (u, part) {
                    (Use::Cached(a), _) => accs[i].merge(&a),
                    (Use::Scan { keep }, Some(part)) => {
                        accs[i].merge(&part);
                        if keep {
                            let key = (seg.clone(), shape(&qs[i]));
                            self.cache
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .put(key, Arc::new(part));
                        }
                    }
                    _ => {}
                }
            }
        }
        let unsealed = layout::unsealed_files(&self.dir);
        for file in &unsealed {
            if let Err(e) = self.count_live(file, qs, &mut accs) {
                problems.push(format!("{}: {e}", file.display()));
            }
        }
        // Files compacted or removed since: their entries go.
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(p, _), _| unsealed.contains(p));
        Ok(accs
            .into_iter()
            .zip(qs)
            .map(|(a, q)| a.finish(q, problems.clone()))
            .collect())
    }

    /// Counts a JSON-lines file for every query: from the kept entry on
    /// (only the lines added since are read), or from the start when the
    /// file is new or was replaced. A query whose range does not hold all
    /// the file's records reads it whole with its range instead.
    fn count_live(&self, path: &Path, qs: &[GroupQuery], accs: &mut [Acc]) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut entries: Vec<LiveEntry> = {
            let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            qs.iter()
                .map(|q| {
                    live.get(&(path.to_path_buf(), shape(q)))
                        .filter(|e| e.ino == meta.ino() && e.offset <= meta.len())
                        .cloned()
                        .unwrap_or(LiveEntry {
                            ino: meta.ino(),
                            min_ms: i64::MAX,
                            max_ms: i64::MIN,
                            ..LiveEntry::default()
                        })
                })
                .collect()
        };
        let unbounded: Vec<GroupQuery> = qs
            .iter()
            .map(|q| GroupQuery {
                since_ms: i64::MIN,
                until_ms: i64::MAX,
                ..q.clone()
            })
            .collect();
        let from = entries.iter().map(|e| e.offset).min().unwrap_or(0);
        read_lines(path, from, |pos, end, rec| {
            for (e, q) in entries.iter_mut().zip(&unbounded) {
                if e.offset <= pos {
                    if let Some(rec) = rec {
                        count_record(rec, q, &mut e.acc);
                        e.min_ms = e.min_ms.min(rec.time_ms);
                        e.max_ms = e.max_ms.max(rec.time_ms);
                    }
                    e.offset = end;
                }
            }
        })?;
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        for ((e, q), acc) in entries.into_iter().zip(qs).zip(accs.iter_mut()) {
            let inside = e.min_ms > e.max_ms || (e.min_ms >= q.since_ms && e.max_ms < q.until_ms);
            if inside {
                acc.merge(&e.acc);
            } else {
                read_lines(path, 0, |_, _, rec| {
                    if let Some(rec) = rec {
                        count_record(rec, q, acc)
                    }
                })?;
            }
            live.insert((path.to_path_buf(), shape(q)), e);
        }
        Ok(())
    }

    fn segment_use(&self, seg: &Path, idx: Option<&SegmentIndex>, q: &GroupQuery) -> Use {
        let Some(i) = idx else {
            // No usable index: read the segment, keep nothing.
            return Use::Scan { keep: false };
        };
        if i.count == 0 || i.max_ms < q.since_ms || i.min_ms >= q.until_ms {
            return Use::Skip;
        }
        if q.only == Only::Blocked && !i.any(IndexField::Action, |v| v == b"block") {
            return Use::Skip;
        }
        let keep = i.min_ms >= q.since_ms && i.max_ms < q.until_ms;
        if keep {
            let key = (seg.to_path_buf(), shape(q));
            if let Some(a) = self
                .cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
            {
                return Use::Cached(a);
            }
        }
        Use::Scan { keep }
    }
}

fn shape(q: &GroupQuery) -> Shape {
    (q.by.clone(), q.only, q.distinct_devices)
}

/// A block's per-dictionary-entry verdicts: decided once per value, not per row.
struct BlockView<'a> {
    b: &'a Block,
    block: Vec<bool>,
    dlp: Vec<bool>,
    inspected: Vec<bool>,
    connect: Vec<bool>,
    ips: Vec<(bool, bool)>,
    /// Per categories-dictionary entry, the interned category indexes.
    cats: Vec<Vec<i64>>,
    cat_names: Vec<String>,
}

fn per_value<T>(d: &Dict, f: impl Fn(&str) -> T) -> Vec<T> {
    (0..d.len() as u32).map(|id| f(d.value(id))).collect()
}

impl<'a> BlockView<'a> {
    fn new(b: &'a Block, with_categories: bool) -> BlockView<'a> {
        let mut cat_names: Vec<String> = Vec::new();
        let mut cats = Vec::new();
        if with_categories {
            let mut interned: HashMap<String, i64> = HashMap::new();
            let d = b.col(StrCol::Categories);
            for id in 0..d.len() as u32 {
                let v = d.value(id);
                let names: Vec<&str> = if v.is_empty() {
                    vec![""]
                } else {
                    v.split('\u{1f}').collect()
                };
                let ids = names
                    .into_iter()
                    .map(|n| {
                        *interned.entry(n.to_string()).or_insert_with(|| {
                            cat_names.push(n.to_string());
                            cat_names.len() as i64 - 1
                        })
                    })
                    .collect();
                cats.push(ids);
            }
        }
        BlockView {
            b,
            block: per_value(b.col(StrCol::Action), |v| v == "block"),
            dlp: per_value(b.col(StrCol::Rule), |v| v.starts_with("dlp:")),
            inspected: per_value(b.col(StrCol::Rule), |v| v.ends_with("(inspected)")),
            connect: per_value(b.col(StrCol::Method), |v| v == "CONNECT"),
            ips: per_value(b.col(StrCol::Ips), ips_flags),
            cats,
            cat_names,
        }
    }

    fn id(&self, c: StrCol, row: usize) -> usize {
        self.b.col(c).ids[row] as usize
    }

    fn key_value(&self, k: &Key, v: i64) -> KeyValue {
        let text = |c: StrCol| KeyValue::Text(self.b.col(c).value(v as u32).to_string());
        match k {
            Key::Site => text(StrCol::Site),
            Key::Host => text(StrCol::Host),
            Key::App => text(StrCol::App),
            Key::Category => KeyValue::Text(self.cat_names[v as usize].clone()),
            Key::Time { .. } => KeyValue::Time(v),
        }
    }
}

/// A group inside one block: key slots as dictionary ids / bucket starts.
#[derive(Default)]
struct BlockCell {
    c: Counts,
    devices: HashSet<u32>,
}

/// Reads a segment once for the queries whose `parts` slot is `Some`.
fn scan_segment(
    path: &Path,
    qs: &[GroupQuery],
    parts: &mut [Option<Acc>],
    with_categories: bool,
) -> io::Result<()> {
    let mut r = SegmentReader::open(path)?;
    while let Some(h) = r.next_header()? {
        let wanted = |q: &GroupQuery| h.max_ms >= q.since_ms && h.min_ms < q.until_ms;
        if !qs
            .iter()
            .zip(parts.iter())
            .any(|(q, p)| p.is_some() && wanted(q))
        {
            r.skip_block(&h)?;
            continue;
        }
        let b = r.read_block(&h)?;
        let v = BlockView::new(&b, with_categories);
        for (q, part) in qs.iter().zip(parts.iter_mut()) {
            if let Some(acc) = part {
                if wanted(q) {
                    count_block(&v, q, acc);
                }
            }
        }
    }
    Ok(())
}

fn count_block(v: &BlockView, q: &GroupQuery, acc: &mut Acc) {
    let b = v.b;
    let mut groups: HashMap<[i64; 3], BlockCell> = HashMap::new();
    let mut total = BlockCell::default();
    let mut keys: Vec<[i64; 3]> = Vec::new();
    let devices = b.col(StrCol::Device);
    for row in 0..b.rows {
        let t = b.time[row];
        if t < q.since_ms || t >= q.until_ms {
            continue;
        }
        let rule = v.id(StrCol::Rule, row);
        if v.inspected[rule] && v.connect[v.id(StrCol::Method, row)] {
            continue;
        }
        let block = v.block[v.id(StrCol::Action, row)];
        if q.only == Only::Blocked && !block {
            continue;
        }
        let (ips, threat) = v.ips[v.id(StrCol::Ips, row)];
        let f = Flags {
            block,
            ips,
            threat,
            dlp: v.dlp[rule],
        };
        let device = devices.ids[row];
        let has_device = q.distinct_devices && !devices.value(device).is_empty();
        add_flags(&mut total.c, f, 1);
        if has_device {
            total.devices.insert(device);
        }
        if q.by.is_empty() {
            continue;
        }
        keys.clear();
        keys.push([0; 3]);
        for (slot, k) in q.by.iter().enumerate() {
            match k {
                Key::Site => keys
                    .iter_mut()
                    .for_each(|x| x[slot] = v.id(StrCol::Site, row) as i64),
                Key::Host => keys
                    .iter_mut()
                    .for_each(|x| x[slot] = v.id(StrCol::Host, row) as i64),
                Key::App => keys
                    .iter_mut()
                    .for_each(|x| x[slot] = v.id(StrCol::App, row) as i64),
                Key::Time {
                    width_ms,
                    offset_ms,
                } => {
                    let bucket = Key::bucket(*width_ms, *offset_ms, t);
                    keys.iter_mut().for_each(|x| x[slot] = bucket);
                }
                Key::Category => {
                    let cats = &v.cats[v.id(StrCol::Categories, row)];
                    let mut out = Vec::with_capacity(keys.len() * cats.len());
                    for x in &keys {
                        for &c in cats {
                            let mut y = *x;
                            y[slot] = c;
                            out.push(y);
                        }
                    }
                    keys = out;
                }
            }
        }
        for k in &keys {
            let cell = groups.entry(*k).or_default();
            add_flags(&mut cell.c, f, 1);
            if has_device {
                cell.devices.insert(device);
            }
        }
    }
    let names = |ids: &HashSet<u32>| -> HashSet<Box<str>> {
        ids.iter().map(|&d| Box::from(devices.value(d))).collect()
    };
    acc.total.merge(&Cell {
        c: total.c,
        devices: names(&total.devices),
    });
    for (k, bc) in groups {
        let key: Vec<KeyValue> =
            q.by.iter()
                .enumerate()
                .map(|(slot, key)| v.key_value(key, k[slot]))
                .collect();
        if let Some(cell) = acc.cell(key) {
            cell.merge(&Cell {
                c: bc.c,
                devices: names(&bc.devices),
            });
        }
    }
}

/// The group keys of one record (several with [`Key::Category`]).
fn record_keys(q: &GroupQuery, r: &LogRecord) -> Vec<Vec<KeyValue>> {
    let mut keys: Vec<Vec<KeyValue>> = vec![Vec::with_capacity(q.by.len())];
    for k in &q.by {
        let one = |s: &str| KeyValue::Text(s.to_string());
        match k {
            Key::Site => keys.iter_mut().for_each(|x| x.push(one(&r.site))),
            Key::Host => keys.iter_mut().for_each(|x| x.push(one(&r.host))),
            Key::App => keys.iter_mut().for_each(|x| x.push(one(&r.app))),
            Key::Time {
                width_ms,
                offset_ms,
            } => {
                let b = KeyValue::Time(Key::bucket(*width_ms, *offset_ms, r.time_ms));
                keys.iter_mut().for_each(|x| x.push(b.clone()));
            }
            Key::Category => {
                let none = [String::new()];
                let cats: &[String] = if r.categories.is_empty() {
                    &none
                } else {
                    &r.categories
                };
                keys = keys
                    .iter()
                    .flat_map(|x| {
                        cats.iter().map(move |c| {
                            let mut y = x.clone();
                            y.push(one(c));
                            y
                        })
                    })
                    .collect();
            }
        }
    }
    keys
}

fn count_record(r: &LogRecord, q: &GroupQuery, acc: &mut Acc) {
    if r.time_ms < q.since_ms || r.time_ms >= q.until_ms {
        return;
    }
    if r.method == "CONNECT" && r.rule.ends_with("(inspected)") {
        return;
    }
    let block = r.action == "block";
    if q.only == Only::Blocked && !block {
        return;
    }
    let (ips, threat) = ips_flags(&r.ips);
    let f = Flags {
        block,
        ips,
        threat,
        dlp: r.rule.starts_with("dlp:"),
    };
    let device =
        (q.distinct_devices && !r.device.is_empty()).then(|| Box::<str>::from(r.device.as_str()));
    add_flags(&mut acc.total.c, f, 1);
    if let Some(d) = &device {
        acc.total.devices.insert(d.clone());
    }
    if q.by.is_empty() {
        return;
    }
    for key in record_keys(q, r) {
        if let Some(cell) = acc.cell(key) {
            add_flags(&mut cell.c, f, 1);
            if let Some(d) = &device {
                cell.devices.insert(d.clone());
            }
        }
    }
}

/// Calls `f(start, end, record)` for each whole line of `path` from byte
/// `from` on (`None` for a line that is no record); a line still being
/// written is left for the next time.
fn read_lines(
    path: &Path,
    from: u64,
    mut f: impl FnMut(u64, u64, Option<&LogRecord>),
) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        // Rotated or compacted since the listing: its records are in a
        // segment now (counted, or newer than the listing).
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(from))?;
    let mut r = BufReader::with_capacity(1 << 16, file);
    let mut line = Vec::new();
    let mut pos = from;
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line)? as u64;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok(());
        }
        f(pos, pos + n, LogRecord::from_json_line(&line).ok().as_ref());
        pos += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::segment::SegmentWriter;

    fn rec(i: i64, site: &str, action: &str, cats: &[&str]) -> LogRecord {
        LogRecord {
            time_ms: 1_800_000_000_000 + i * 1000,
            listener: "mtls".into(),
            device: format!("D{}", i % 3),
            site: site.into(),
            method: "GET".into(),
            target: format!("http://h{}.test/", i % 2),
            host: format!("h{}.test", i % 2),
            action: action.into(),
            rule: if i % 5 == 0 {
                "dlp:mynumber".into()
            } else {
                "r".into()
            },
            categories: cats.iter().map(|c| c.to_string()).collect(),
            ips: if i % 4 == 0 {
                "2001,threat-intel".into()
            } else {
                String::new()
            },
            ..Default::default()
        }
    }

    fn sample() -> Vec<LogRecord> {
        let mut v = Vec::new();
        for i in 0..40 {
            let (site, action, cats): (&str, &str, &[&str]) = match i % 4 {
                0 => ("北小", "block", &["gambling", "adult"]),
                1 => ("北小", "allow", &[]),
                2 => ("南中", "allow", &["news"]),
                _ => ("南中", "block", &["gambling"]),
            };
            v.push(rec(i, site, action, cats));
        }
        // The tunnel record of an inspected CONNECT is not counted.
        let mut t = rec(1, "北小", "allow", &[]);
        t.method = "CONNECT".into();
        t.rule = "inspect (inspected)".into();
        v.push(t);
        v
    }

    /// The same answer from a segment (block path) and from a live file
    /// (record path), and the answer the definitions give.
    #[tokio::test]
    async fn segments_and_live_files_count_alike() {
        let recs = sample();
        let q = GroupQuery::total(0, i64::MAX / 2)
            .by(&[Key::Site, Key::Category])
            .with_devices();
        let mut answers = Vec::new();
        for as_segment in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            if as_segment {
                let day = dir.path().join("segments/2027-01-15");
                std::fs::create_dir_all(&day).unwrap();
                let mut w = SegmentWriter::create(&day.join("a.seg"), 3).unwrap();
                for r in &recs {
                    w.push(r).unwrap();
                }
                std::fs::write(day.join("a.idx"), w.finish().unwrap()).unwrap();
            } else {
                let text: String = recs
                    .iter()
                    .map(|r| serde_json::to_string(r).unwrap() + "\n")
                    .collect();
                std::fs::write(dir.path().join("access.log"), text).unwrap();
            }
            let store = SegmentStore::new(dir.path().to_path_buf(), None);
            let g = store.grouped(q.clone()).await.unwrap();
            // Twice: the second answer comes from the cache for the segment.
            assert_eq!(store.grouped(q.clone()).await.unwrap(), g);
            answers.push(g);
        }
        assert_eq!(answers[0], answers[1]);
        let g = &answers[0];
        assert_eq!(g.total.requests, 40);
        assert_eq!(g.total.blocks, 20);
        assert_eq!(g.total.ips_events, 10);
        assert_eq!(g.total.threat_intel, 10);
        assert_eq!(g.total.dlp_blocks, 8);
        assert_eq!(g.total.devices, 3);
        let row = |site: &str, cat: &str| {
            g.rows
                .iter()
                .find(|r| r.key == [KeyValue::Text(site.into()), KeyValue::Text(cat.into())])
                .map(|r| r.counts)
                .unwrap_or_default()
        };
        assert_eq!(row("北小", "gambling").requests, 10);
        assert_eq!(row("北小", "adult").blocks, 10);
        assert_eq!(row("北小", "").requests, 10);
        assert_eq!(row("南中", "gambling").blocks, 10);
        assert_eq!(row("南中", "news").blocks, 0);
        assert_eq!(row("南中", "news").requests, 10);
        assert_eq!(g.rows.len(), 5);
    }

    #[tokio::test]
    async fn top_blocked_hosts_and_time_buckets() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = sample()
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect();
        std::fs::write(dir.path().join("access.log"), text).unwrap();
        let store = SegmentStore::new(dir.path().to_path_buf(), None);
        let g = store
            .grouped(
                GroupQuery::total(0, i64::MAX / 2)
                    .by(&[Key::Host])
                    .blocked()
                    .top(super::super::Measure::Blocks, 1),
            )
            .await
            .unwrap();
        assert_eq!(g.rows.len(), 1);
        assert_eq!(g.total.requests, 20);
        // Blocks are at i % 4 in {0, 3}: h0 (even i) has 10, h1 has 10; the tie goes to the smaller key.
        assert_eq!(g.rows[0].key, [KeyValue::Text("h0.test".into())]);
        let start = 1_800_000_000_000;
        let g = store
            .grouped(GroupQuery::total(start, start + 20_000).by(&[Key::Time {
                width_ms: 10_000,
                offset_ms: 0,
            }]))
            .await
            .unwrap();
        let per: Vec<(i64, u64)> = g
            .rows
            .iter()
            .map(|r| (r.key[0].time(), r.counts.requests))
            .collect();
        assert_eq!(per, vec![(start, 10), (start + 10_000, 10)]);
    }

    /// The live file is read from where the last count stopped; a line
    /// being written waits; a range that cuts the file reads it whole.
    #[tokio::test]
    async fn live_files_are_counted_incrementally() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("access.log");
        let line = |i: i64| serde_json::to_string(&rec(i, "北小", "allow", &[])).unwrap() + "\n";
        let mut text: String = (0..10).map(line).collect();
        std::fs::write(&live, &text).unwrap();
        let store = SegmentStore::new(dir.path().to_path_buf(), None);
        let all = GroupQuery::total(0, i64::MAX / 2).by(&[Key::Site]);
        let count = |q: GroupQuery| {
            let store = store.clone();
            async move { store.grouped(q).await.unwrap().total.requests }
        };
        assert_eq!(count(all.clone()).await, 10);
        let eleventh = line(10);
        text.push_str(&(10..15).map(line).collect::<String>());
        text.push_str("not json\n");
        text.push_str(&eleventh[..20]);
        std::fs::write(&live, &text).unwrap();
        assert_eq!(count(all.clone()).await, 15, "the partial line waits");
        text.push_str(&eleventh[20..]);
        std::fs::write(&live, &text).unwrap();
        assert_eq!(count(all.clone()).await, 16);
        // Records 0..5 are before this range: the file is read with it.
        let start = 1_800_000_000_000 + 5_000;
        assert_eq!(
            count(GroupQuery::total(start, i64::MAX / 2).by(&[Key::Site])).await,
            11
        );
        assert_eq!(count(all).await, 16, "the kept count is still right");
    }

    #[tokio::test]
    async fn a_missing_directory_is_a_clear_error() {
        let store = SegmentStore::new(PathBuf::from("/nonexistent/komugate-logs"), None);
        let e = store.grouped(GroupQuery::total(0, 1)).await.unwrap_err();
        assert!(
            e.0.contains("/nonexistent/komugate-logs") && e.0.contains("[log] access_log"),
            "{e}"
        );
    }
}
