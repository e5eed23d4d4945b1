//! Closed-hour segment files (`.seg`) and their sidecar indexes (`.idx`).
//!
//! # Segment format (`KGSEG\0\x01\n`)
//!
//! A segment holds the records of one closed live file (normally one hour)
//! as a sequence of independently compressed *blocks* of at most
//! [`BLOCK_ROWS`] records, so reading needs memory for one block only:
//!
//! ```text
//! magic    8 bytes  "KGSEG\0\x01\n"
//! block*   u32 LE compressed length | u32 LE rows | i64 LE min time ms |
//!          i64 LE max time ms | zstd frame (the block body)
//! ```
//!
//! The block body is column-major, so zstd sees long runs of similar bytes:
//!
//! ```text
//! varint rows
//! 16 string columns, each: varint dict size, dict entries (varint length +
//!     UTF-8 bytes, in first-seen order), u8 id width (1, 2 or 4), then one
//!     little-endian id per row
//! time      zigzag varint of the first time, then zigzag varint deltas (ms)
//! port      u16 LE per row (client source port)
//! status    u16 LE per row
//! bytes_up, bytes_down, duration_ms: one varint per row each
//! 2 trailing string columns, as above: the signed-in user's groups
//!     (joined) and `1` when the user was signed in (OpenID Connect)
//! ```
//!
//! The trailing columns came later: a block that ends after the numbers
//! (written before them) reads as records without a signed-in user.
//!
//! The string columns are dictionary-encoded per block ([`StrCol`]):
//! devices, users, groups, sites, hosts, rules, categories repeat a great
//! deal, so a row costs a byte or two per column before compression. The
//! client address is split into a dictionary-encoded IP and a raw port. The
//! target is stored relative to its host: `host:443` becomes `"\x02:443"`
//! and `https://host/path` becomes `"\x04/path"`, so CONNECT targets share
//! one dictionary entry. Groups and categories are joined with U+001F.
//!
//! # Index format (`KGIDX\0\x02\n`; version 1 is still read)
//!
//! `magic`, then one zstd frame: varint record count, zigzag varint min and
//! max time (ms), then for each [`IndexField`] (device, user, group, site,
//! host, rule, category, app, action, ips): varint count and the sorted
//! distinct values (varint length + bytes). A search reads the index first
//! and does not open a segment whose time range or value lists cannot
//! match. Values are scanned in place (no allocation per value), so checking
//! 8,760 indexes (a year of hours) is quick.
//!
//! Version 2 adds which of those values each block holds, so a search for a
//! value present in the hour (a rare host) decompresses only its blocks:
//!
//! ```text
//! varint block count
//! per block: varint rows, then per field one set of positions in the
//!     field's sorted list: u8 0 + varint count + varint deltas (sorted), or
//!     u8 1 + a bitmap of ceil(values / 8) bytes — whichever is shorter
//! ```
//!
//! The sets hold positions, not patterns, so any filter the segment-level
//! list can answer (exact values, host globs of every shape) is answered per
//! block the same way. A version-1 index (no block sets) admits every block
//! of a segment it admits: logs written before version 2 read as before.
//!
//! Both files are written to a `.tmp` name, fsynced and renamed, index
//! first: a `.seg` that exists is complete.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use super::record::{host_of, LogRecord};

pub const SEG_MAGIC: &[u8; 8] = b"KGSEG\0\x01\n";
/// The index version written now (with per-block value sets).
pub const IDX_MAGIC: &[u8; 8] = b"KGIDX\0\x02\n";
/// The first index version (segment-level value lists only), still read.
pub const IDX_MAGIC_V1: &[u8; 8] = b"KGIDX\0\x01\n";
/// Rows per block: bounds reader memory and lets blocks be skipped by time
/// and by the index's block sets. Small enough that a rare value costs a
/// few milliseconds of decompression (segments of index version 1 have
/// 65,536-row blocks), large enough for per-block dictionaries to pay.
pub const BLOCK_ROWS: usize = 16_384;
/// The most rows a block may claim when read (any writer's block size).
const MAX_BLOCK_ROWS: usize = 1 << 20;
const SEP: char = '\u{1f}';

/// The dictionary-encoded string columns of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum StrCol {
    Listener = 0,
    Device,
    User,
    Groups,
    Site,
    ClientIp,
    Method,
    Host,
    TargetRest,
    Action,
    Rule,
    Categories,
    App,
    Ips,
    Egress,
    Error,
}
pub const STR_COLS: usize = 16;
/// Trailing string columns, after the numeric ones (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum TailCol {
    UserGroups = 0,
    SignedIn,
}
pub const TAIL_COLS: usize = 2;

/// Fields listed in the sidecar index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum IndexField {
    Device = 0,
    User,
    Group,
    Site,
    Host,
    Rule,
    Category,
    App,
    Action,
    Ips,
}
pub const INDEX_FIELDS: usize = 10;

/// The string column each [`IndexField`] lists, in `IndexField` order;
/// `true` for columns holding several values joined with U+001F.
const INDEXED: [(StrCol, bool); INDEX_FIELDS] = [
    (StrCol::Device, false),
    (StrCol::User, false),
    (StrCol::Groups, true),
    (StrCol::Site, false),
    (StrCol::Host, false),
    (StrCol::Rule, false),
    (StrCol::Categories, true),
    (StrCol::App, false),
    (StrCol::Action, false),
    (StrCol::Ips, false),
];

/// Block set encodings (see the module docs).
const SET_LIST: u8 = 0;
const SET_BITMAP: u8 = 1;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("corrupt log segment: {what}"),
    )
}

/// A cursor over a byte slice with bounds-checked reads.
struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cur<'a> {
    fn varint(&mut self) -> io::Result<u64> {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let byte = *self
                .b
                .get(self.i)
                .ok_or_else(|| corrupt("truncated varint"))?;
            self.i += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte < 0x80 {
                return Ok(v);
            }
            shift += 7;
            if shift > 63 {
                return Err(corrupt("varint too long"));
            }
        }
    }
    fn bytes(&mut self, n: usize) -> io::Result<&'a [u8]> {
        let end = self
            .i
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| corrupt("truncated"))?;
        let s = &self.b[self.i..end];
        self.i = end;
        Ok(s)
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.bytes(1)?[0])
    }
}

/// Encodes the target relative to the host (see the module docs).
fn target_rest(target: &str, host: &str) -> String {
    if host.is_empty() {
        return target.to_string();
    }
    for (tag, prefix) in [('\u{2}', ""), ('\u{3}', "http://"), ('\u{4}', "https://")] {
        if let Some(rest) = target.strip_prefix(prefix) {
            if rest.len() >= host.len()
                && rest.is_char_boundary(host.len())
                && rest[..host.len()] == *host
            {
                let mut s = String::with_capacity(1 + rest.len() - host.len());
                s.push(tag);
                s.push_str(&rest[host.len()..]);
                return s;
            }
        }
    }
    target.to_string()
}

/// The target again from its host-relative form (see the module docs).
pub(crate) fn target_from_rest(rest: &str, host: &str) -> String {
    let mut chars = rest.chars();
    let prefix = match chars.next() {
        Some('\u{2}') => "",
        Some('\u{3}') => "http://",
        Some('\u{4}') => "https://",
        _ => return rest.to_string(),
    };
    let tail = &rest[1..];
    let mut s = String::with_capacity(prefix.len() + host.len() + tail.len());
    s.push_str(prefix);
    s.push_str(host);
    s.push_str(tail);
    s
}

fn split_client(client: &str) -> (&str, u16) {
    match client.rfind(':') {
        Some(i)
            if !client[..i].is_empty()
                && (client.starts_with('[') || !client[..i].contains(':')) =>
        {
            match client[i + 1..].parse::<u16>() {
                Ok(p) if p != 0 => (&client[..i], p),
                _ => (client, 0),
            }
        }
        _ => (client, 0),
    }
}

#[derive(Default)]
struct DictCol {
    map: HashMap<Box<str>, u32>,
    values: Vec<Box<str>>,
    ids: Vec<u32>,
}

impl DictCol {
    fn push(&mut self, v: &str) {
        if let Some(&id) = self.map.get(v) {
            self.ids.push(id);
        } else {
            let id = self.values.len() as u32;
            let b: Box<str> = v.into();
            self.map.insert(b.clone(), id);
            self.values.push(b);
            self.ids.push(id);
        }
    }
    fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, self.values.len() as u64);
        for v in &self.values {
            put_varint(out, v.len() as u64);
            out.extend_from_slice(v.as_bytes());
        }
        let width: u8 = if self.values.len() <= 256 {
            1
        } else if self.values.len() <= 65_536 {
            2
        } else {
            4
        };
        out.push(width);
        for &id in &self.ids {
            out.extend_from_slice(&id.to_le_bytes()[..width as usize]);
        }
    }
    fn clear(&mut self) {
        self.map.clear();
        self.values.clear();
        self.ids.clear();
    }
}

/// The distinct values of one indexed field in a whole segment, numbered
/// in first-seen order (sorted only when the index is written).
#[derive(Default)]
struct FieldValues {
    map: HashMap<Box<str>, u32>,
    values: Vec<Box<str>>,
}

impl FieldValues {
    fn id(&mut self, v: &str) -> u32 {
        if let Some(&id) = self.map.get(v) {
            return id;
        }
        let id = self.values.len() as u32;
        let b: Box<str> = v.into();
        self.map.insert(b.clone(), id);
        self.values.push(b);
        id
    }

    /// Position of each first-seen id in the sorted list, and the sorted ids.
    fn ranks(&self) -> (Vec<u32>, Vec<u32>) {
        let mut order: Vec<u32> = (0..self.values.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| self.values[a as usize].cmp(&self.values[b as usize]));
        let mut rank = vec![0u32; order.len()];
        for (pos, &id) in order.iter().enumerate() {
            rank[id as usize] = pos as u32;
        }
        (rank, order)
    }
}

/// What one written block holds, for the index: rows, and per field the
/// first-seen ids of its values (sorted, distinct).
struct BlockValues {
    rows: u32,
    ids: Vec<Vec<u32>>,
}

/// Builds one segment file.
pub struct SegmentWriter {
    out: BufWriter<File>,
    cols: Vec<DictCol>,
    tail: Vec<DictCol>,
    time: Vec<i64>,
    port: Vec<u16>,
    status: Vec<u16>,
    up: Vec<u64>,
    down: Vec<u64>,
    dur: Vec<u64>,
    index: Vec<FieldValues>,
    blocks: Vec<BlockValues>,
    count: u64,
    min_ms: i64,
    max_ms: i64,
    level: i32,
    body: Vec<u8>,
    scratch: String,
    block_rows: usize,
}

impl SegmentWriter {
    pub fn create(path: &Path, zstd_level: i32) -> io::Result<SegmentWriter> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
        out.write_all(SEG_MAGIC)?;
        Ok(SegmentWriter {
            out,
            cols: (0..STR_COLS).map(|_| DictCol::default()).collect(),
            tail: (0..TAIL_COLS).map(|_| DictCol::default()).collect(),
            time: Vec::new(),
            port: Vec::new(),
            status: Vec::new(),
            up: Vec::new(),
            down: Vec::new(),
            dur: Vec::new(),
            index: (0..INDEX_FIELDS).map(|_| FieldValues::default()).collect(),
            blocks: Vec::new(),
            count: 0,
            min_ms: i64::MAX,
            max_ms: i64::MIN,
            level: zstd_level,
            body: Vec::new(),
            scratch: String::new(),
            block_rows: BLOCK_ROWS,
        })
    }

    /// Smaller blocks, so tests cover many blocks with few records.
    #[cfg(test)]
    pub(crate) fn with_block_rows(mut self, rows: usize) -> SegmentWriter {
        self.block_rows = rows.max(1);
        self
    }

    fn col(&mut self, c: StrCol, v: &str) {
        self.cols[c as usize].push(v);
    }

    fn joined(&mut self, c: StrCol, vs: &[String]) {
        let mut s = std::mem::take(&mut self.scratch);
        s.clear();
        for (i, v) in vs.iter().enumerate() {
            if i > 0 {
                s.push(SEP);
            }
            s.push_str(v);
        }
        self.cols[c as usize].push(&s);
        self.scratch = s;
    }

    pub fn push(&mut self, r: &LogRecord) -> io::Result<()> {
        let host = if r.host.is_empty() {
            host_of(&r.target)
        } else {
            r.host.clone()
        };
        self.col(StrCol::Listener, &r.listener);
        self.col(StrCol::Device, &r.device);
        self.col(StrCol::User, &r.user);
        self.joined(StrCol::Groups, &r.groups);
        self.col(StrCol::Site, &r.site);
        let (ip, port) = split_client(&r.client);
        self.col(StrCol::ClientIp, ip);
        self.col(StrCol::Method, &r.method);
        self.col(StrCol::Host, &host);
        let rest = target_rest(&r.target, &host);
        self.col(StrCol::TargetRest, &rest);
        self.col(StrCol::Action, &r.action);
        self.col(StrCol::Rule, &r.rule);
        self.joined(StrCol::Categories, &r.categories);
        self.col(StrCol::App, &r.app);
        self.col(StrCol::Ips, &r.ips);
        self.col(StrCol::Egress, &r.egress);
        self.col(StrCol::Error, &r.error);
        let groups = r.user_groups.join(&SEP.to_string());
        self.tail[TailCol::UserGroups as usize].push(&groups);
        self.tail[TailCol::SignedIn as usize].push(if r.signed_in { "1" } else { "" });
        self.time.push(r.time_ms);
        self.port.push(port);
        self.status.push(r.status);
        self.up.push(r.bytes_up);
        self.down.push(r.bytes_down);
        self.dur.push(r.duration_ms);
        self.count += 1;
        self.min_ms = self.min_ms.min(r.time_ms);
        self.max_ms = self.max_ms.max(r.time_ms);
        if self.time.len() >= self.block_rows {
            self.flush_block()?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> io::Result<()> {
        let n = self.time.len();
        if n == 0 {
            return Ok(());
        }
        let body = &mut self.body;
        body.clear();
        put_varint(body, n as u64);
        for c in &self.cols {
            c.encode(body);
        }
        let mut prev = 0i64;
        for &t in &self.time {
            put_varint(body, zigzag(t.wrapping_sub(prev)));
            prev = t;
        }
        for &p in &self.port {
            body.extend_from_slice(&p.to_le_bytes());
        }
        for &s in &self.status {
            body.extend_from_slice(&s.to_le_bytes());
        }
        for col in [&self.up, &self.down, &self.dur] {
            for &v in col.iter() {
                put_varint(body, v);
            }
        }
        for c in &self.tail {
            c.encode(body);
        }
        let frame = zstd::bulk::compress(body, self.level)?;
        let (min, max) = self
            .time
            .iter()
            .fold((i64::MAX, i64::MIN), |(a, b), &t| (a.min(t), b.max(t)));
        self.out.write_all(&(frame.len() as u32).to_le_bytes())?;
        self.out.write_all(&(n as u32).to_le_bytes())?;
        self.out.write_all(&min.to_le_bytes())?;
        self.out.write_all(&max.to_le_bytes())?;
        self.out.write_all(&frame)?;
        self.note_block_values(n as u32);
        for c in self.cols.iter_mut().chain(self.tail.iter_mut()) {
            c.clear();
        }
        self.time.clear();
        self.port.clear();
        self.status.clear();
        self.up.clear();
        self.down.clear();
        self.dur.clear();
        Ok(())
    }

    /// Records which indexed values the block just written holds. The
    /// block's dictionaries list each value once, so this costs one lookup
    /// per distinct value, not per row.
    fn note_block_values(&mut self, rows: u32) {
        let mut ids = Vec::with_capacity(INDEX_FIELDS);
        for (field, &(col, multi)) in self.index.iter_mut().zip(INDEXED.iter()) {
            let mut set = Vec::new();
            for v in &self.cols[col as usize].values {
                if multi {
                    set.extend(v.split(SEP).filter(|x| !x.is_empty()).map(|x| field.id(x)));
                } else if !v.is_empty() {
                    set.push(field.id(v));
                }
            }
            set.sort_unstable();
            set.dedup();
            ids.push(set);
        }
        self.blocks.push(BlockValues { rows, ids });
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Writes the last block and syncs the file; returns the encoded index.
    pub fn finish(mut self) -> io::Result<Vec<u8>> {
        self.flush_block()?;
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        let mut body = Vec::new();
        put_varint(&mut body, self.count);
        let (min, max) = if self.count == 0 {
            (0, 0)
        } else {
            (self.min_ms, self.max_ms)
        };
        put_varint(&mut body, zigzag(min));
        put_varint(&mut body, zigzag(max));
        put_varint(&mut body, INDEX_FIELDS as u64);
        let mut ranks = Vec::with_capacity(INDEX_FIELDS);
        for field in &self.index {
            let (rank, order) = field.ranks();
            put_varint(&mut body, order.len() as u64);
            for id in order {
                let v = &field.values[id as usize];
                put_varint(&mut body, v.len() as u64);
                body.extend_from_slice(v.as_bytes());
            }
            ranks.push(rank);
        }
        put_varint(&mut body, self.blocks.len() as u64);
        let mut positions = Vec::new();
        for block in &self.blocks {
            put_varint(&mut body, block.rows as u64);
            for (ids, rank) in block.ids.iter().zip(&ranks) {
                positions.clear();
                positions.extend(ids.iter().map(|&id| rank[id as usize]));
                positions.sort_unstable();
                encode_set(&mut body, &positions, rank.len());
            }
        }
        let mut out = IDX_MAGIC.to_vec();
        out.extend_from_slice(&zstd::bulk::compress(&body, 3)?);
        Ok(out)
    }
}

/// Writes a sorted set of positions among `universe` values, as a delta
/// list or a bitmap, whichever is shorter.
fn encode_set(out: &mut Vec<u8>, positions: &[u32], universe: usize) {
    let mut list = Vec::with_capacity(positions.len() + 4);
    put_varint(&mut list, positions.len() as u64);
    let mut prev = 0u32;
    for &p in positions {
        put_varint(&mut list, (p - prev) as u64);
        prev = p;
    }
    let bitmap_len = universe.div_ceil(8);
    if list.len() <= bitmap_len {
        out.push(SET_LIST);
        out.extend_from_slice(&list);
    } else {
        out.push(SET_BITMAP);
        let start = out.len();
        out.resize(start + bitmap_len, 0);
        for &p in positions {
            out[start + p as usize / 8] |= 1 << (p % 8);
        }
    }
}

/// Where one block's set of one field sits in the index buffer.
#[derive(Debug, Clone, Copy)]
enum BlockSet {
    /// Not described (a field this reader does not know about): admits all.
    Unknown,
    /// `count` delta-coded positions from `start`.
    List { start: usize, count: usize },
    /// A bitmap of the field's values from `start`.
    Bitmap { start: usize, len: usize },
}

/// One block as the index describes it.
#[derive(Debug, Clone)]
struct BlockEntry {
    rows: u32,
    sets: [BlockSet; INDEX_FIELDS],
}

/// A decoded sidecar index; values are scanned in place.
pub struct SegmentIndex {
    buf: Vec<u8>,
    pub count: u64,
    pub min_ms: i64,
    pub max_ms: i64,
    fields: [(usize, usize, usize); INDEX_FIELDS],
    /// Per-block value sets; `None` for a version-1 index.
    blocks: Option<Vec<BlockEntry>>,
}

impl SegmentIndex {
    pub fn read(path: &Path) -> io::Result<SegmentIndex> {
        let raw = std::fs::read(path)?;
        SegmentIndex::decode(&raw)
    }

    pub fn decode(raw: &[u8]) -> io::Result<SegmentIndex> {
        let with_blocks = match raw.get(..8) {
            Some(m) if m == IDX_MAGIC => true,
            Some(m) if m == IDX_MAGIC_V1 => false,
            _ => return Err(corrupt("index magic")),
        };
        let buf = zstd::stream::decode_all(&raw[8..])?;
        let mut idx = SegmentIndex {
            buf: Vec::new(),
            count: 0,
            min_ms: 0,
            max_ms: 0,
            fields: [(0, 0, 0); INDEX_FIELDS],
            blocks: None,
        };
        idx.parse(&buf, with_blocks)?;
        idx.buf = buf;
        Ok(idx)
    }

    /// Reads the header and value lists (and the block sets of version 2),
    /// checking every length so later reads stay in bounds.
    fn parse(&mut self, buf: &[u8], with_blocks: bool) -> io::Result<()> {
        let mut c = Cur { b: buf, i: 0 };
        self.count = c.varint()?;
        self.min_ms = unzigzag(c.varint()?);
        self.max_ms = unzigzag(c.varint()?);
        let nfields = c.varint()? as usize;
        let mut sizes = Vec::with_capacity(nfields.min(64));
        for k in 0..nfields {
            let n = c.varint()? as usize;
            let start = c.i;
            for _ in 0..n {
                let len = c.varint()? as usize;
                c.bytes(len)?;
            }
            // Fields a newer writer added are skipped, not an error.
            if let Some(slot) = self.fields.get_mut(k) {
                *slot = (start, c.i, n);
            }
            sizes.push(n);
        }
        if !with_blocks {
            return Ok(());
        }
        let nblocks = c.varint()? as usize;
        if nblocks as u64 > self.count {
            return Err(corrupt("more index blocks than records"));
        }
        let mut blocks = Vec::with_capacity(nblocks);
        for _ in 0..nblocks {
            let rows = u32::try_from(c.varint()?).map_err(|_| corrupt("block rows"))?;
            let mut sets = [BlockSet::Unknown; INDEX_FIELDS];
            for (k, &n) in sizes.iter().enumerate() {
                let set = match c.u8()? {
                    SET_LIST => {
                        let count = c.varint()? as usize;
                        let start = c.i;
                        let mut p = 0u64;
                        for i in 0..count {
                            let d = c.varint()?;
                            if i > 0 && d == 0 {
                                return Err(corrupt("index block set not increasing"));
                            }
                            p = p.saturating_add(d);
                            if p >= n as u64 {
                                return Err(corrupt("index block set out of range"));
                            }
                        }
                        BlockSet::List { start, count }
                    }
                    SET_BITMAP => {
                        let start = c.i;
                        let len = n.div_ceil(8);
                        c.bytes(len)?;
                        BlockSet::Bitmap { start, len }
                    }
                    _ => return Err(corrupt("index block set kind")),
                };
                if let Some(slot) = sets.get_mut(k) {
                    *slot = set;
                }
            }
            blocks.push(BlockEntry { rows, sets });
        }
        self.blocks = Some(blocks);
        Ok(())
    }

    /// Number of blocks the index describes (`None`: a version-1 index).
    pub fn block_count(&self) -> Option<usize> {
        self.blocks.as_ref().map(Vec::len)
    }

    /// Positions (in the field's sorted list) of the values satisfying
    /// `pred`, ascending.
    pub fn positions(&self, field: IndexField, mut pred: impl FnMut(&[u8]) -> bool) -> Vec<u32> {
        let mut out = Vec::new();
        let mut pos = 0u32;
        self.any(field, |v| {
            if pred(v) {
                out.push(pos);
            }
            pos += 1;
            false
        });
        out
    }

    /// Can block number `block` of the segment (which has `rows` rows)
    /// hold a value of `field` at one of `positions` (ascending)? True
    /// whenever the index cannot tell: a version-1 index, a block it does
    /// not describe, or a row count that disagrees with the segment.
    pub fn block_may_hold(
        &self,
        block: usize,
        rows: u32,
        field: IndexField,
        positions: &[u32],
    ) -> bool {
        let Some(entry) = self.blocks.as_ref().and_then(|b| b.get(block)) else {
            return true;
        };
        if entry.rows != rows {
            return true;
        }
        match entry.sets[field as usize] {
            BlockSet::Unknown => true,
            BlockSet::Bitmap { start, len } => {
                let bits = &self.buf[start..start + len];
                positions.iter().any(|&p| {
                    bits.get(p as usize / 8)
                        .is_some_and(|b| b & (1 << (p % 8)) != 0)
                })
            }
            BlockSet::List { start, count } => {
                // Both ascending: one merge pass.
                let mut c = Cur {
                    b: &self.buf,
                    i: start,
                };
                let mut want = positions.iter().peekable();
                let mut p = 0u64;
                for _ in 0..count {
                    let Ok(d) = c.varint() else { return true };
                    p += d;
                    while want.next_if(|&&w| (w as u64) < p).is_some() {}
                    match want.peek() {
                        None => return false,
                        Some(&&w) if w as u64 == p => return true,
                        Some(_) => {}
                    }
                }
                false
            }
        }
    }

    /// True if any listed value of `field` satisfies `pred`.
    pub fn any(&self, field: IndexField, mut pred: impl FnMut(&[u8]) -> bool) -> bool {
        let (start, end, _) = self.fields[field as usize];
        let mut c = Cur {
            b: &self.buf[..end],
            i: start,
        };
        while c.i < end {
            let Ok(len) = c.varint() else { return true };
            let Ok(v) = c.bytes(len as usize) else {
                return true;
            };
            if pred(v) {
                return true;
            }
        }
        false
    }

    pub fn values(&self, field: IndexField) -> Vec<String> {
        let mut out = Vec::new();
        self.any(field, |v| {
            out.push(String::from_utf8_lossy(v).into_owned());
            false
        });
        out
    }
}

/// One string column of a decoded block.
pub struct Dict {
    text: String,
    offs: Vec<u32>,
    pub ids: Vec<u32>,
}

impl Dict {
    pub fn len(&self) -> usize {
        self.offs.len() - 1
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn value(&self, id: u32) -> &str {
        let i = id as usize;
        match (self.offs.get(i), self.offs.get(i + 1)) {
            (Some(&a), Some(&b)) => self.text.get(a as usize..b as usize).unwrap_or(""),
            _ => "",
        }
    }
    pub fn row(&self, row: usize) -> &str {
        self.value(self.ids[row])
    }

    /// One dictionary-encoded column of `n` rows.
    fn decode(c: &mut Cur<'_>, n: usize) -> io::Result<Dict> {
        let k = c.varint()? as usize;
        let mut text = String::new();
        let mut offs = Vec::with_capacity(k.min(n) + 1);
        offs.push(0u32);
        for _ in 0..k {
            let len = c.varint()? as usize;
            let s = std::str::from_utf8(c.bytes(len)?)
                .map_err(|_| corrupt("dictionary value is not UTF-8"))?;
            text.push_str(s);
            offs.push(text.len() as u32);
        }
        let width = c.u8()? as usize;
        if !matches!(width, 1 | 2 | 4) {
            return Err(corrupt("id width"));
        }
        let raw = c.bytes(n * width)?;
        let ids: Vec<u32> = match width {
            1 => raw.iter().map(|&b| b as u32).collect(),
            2 => raw
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
                .collect(),
            _ => raw
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        };
        if ids.iter().any(|&id| id as usize >= k) {
            return Err(corrupt("id out of dictionary"));
        }
        Ok(Dict { text, offs, ids })
    }

    /// Moves `c` past a column without decoding it; the column read back
    /// has no entries and no ids.
    fn skip(c: &mut Cur<'_>, n: usize) -> io::Result<Dict> {
        let k = c.varint()? as usize;
        for _ in 0..k {
            let len = c.varint()? as usize;
            c.bytes(len)?;
        }
        let width = c.u8()? as usize;
        if !matches!(width, 1 | 2 | 4) {
            return Err(corrupt("id width"));
        }
        c.bytes(n * width)?;
        Ok(Dict {
            text: String::new(),
            offs: vec![0],
            ids: Vec::new(),
        })
    }

    /// A column of `n` empty values (a block written before the column existed).
    fn empty(n: usize) -> Dict {
        Dict {
            text: String::new(),
            offs: vec![0, 0],
            ids: vec![0; n],
        }
    }
}

/// A decoded block of records.
pub struct Block {
    pub rows: usize,
    pub cols: Vec<Dict>,
    pub tail: Vec<Dict>,
    pub time: Vec<i64>,
    pub port: Vec<u16>,
    pub status: Vec<u16>,
    pub up: Vec<u64>,
    pub down: Vec<u64>,
    pub dur: Vec<u64>,
}

/// Which parts of a block to decode: every string column, or some; the
/// numeric columns after the time (port, status, bytes, duration) or not.
#[derive(Clone, Copy, Debug)]
pub struct Columns {
    /// Bit `1 << StrCol as usize` for each string column decoded.
    strings: u32,
    numbers: bool,
}

impl Columns {
    pub const ALL: Columns = Columns {
        strings: (1 << STR_COLS) - 1,
        numbers: true,
    };

    /// Only `cols` and the time.
    pub const fn only(cols: &[StrCol]) -> Columns {
        let mut strings = 0;
        let mut i = 0;
        while i < cols.len() {
            strings |= 1 << cols[i] as usize;
            i += 1;
        }
        Columns {
            strings,
            numbers: false,
        }
    }

    fn has(&self, i: usize) -> bool {
        self.strings & (1 << i) != 0
    }
}

impl Block {
    pub fn decode(body: &[u8]) -> io::Result<Block> {
        Self::decode_columns(body, Columns::ALL)
    }

    /// Decodes `wanted` (and the time). The other string columns are
    /// skipped over unchecked and left empty (no entries, no ids), and
    /// without `numbers` so are `port`, `status`, `up`, `down`, `dur` and
    /// the trailing columns after them (`tail`: none at all):
    /// a reader that needs a few columns of millions of records (the
    /// policy dry run) spends nothing on the rest.
    pub fn decode_columns(body: &[u8], wanted: Columns) -> io::Result<Block> {
        let mut c = Cur { b: body, i: 0 };
        let n = c.varint()? as usize;
        if n > MAX_BLOCK_ROWS {
            return Err(corrupt("block too large"));
        }
        let mut cols = Vec::with_capacity(STR_COLS);
        for col in 0..STR_COLS {
            cols.push(if wanted.has(col) {
                Dict::decode(&mut c, n)?
            } else {
                Dict::skip(&mut c, n)?
            });
        }
        let mut time = Vec::with_capacity(n);
        let mut prev = 0i64;
        for _ in 0..n {
            prev = prev.wrapping_add(unzigzag(c.varint()?));
            time.push(prev);
        }
        if !wanted.numbers {
            return Ok(Block {
                rows: n,
                cols,
                tail: Vec::new(),
                time,
                port: Vec::new(),
                status: Vec::new(),
                up: Vec::new(),
                down: Vec::new(),
                dur: Vec::new(),
            });
        }
        let port = c
            .bytes(n * 2)?
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        let status = c
            .bytes(n * 2)?
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        let mut nums = [
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        ];
        for col in nums.iter_mut() {
            for _ in 0..n {
                col.push(c.varint()?);
            }
        }
        let [up, down, dur] = nums;
        let mut tail = Vec::with_capacity(TAIL_COLS);
        for _ in 0..TAIL_COLS {
            tail.push(if c.i < c.b.len() {
                Dict::decode(&mut c, n)?
            } else {
                Dict::empty(n)
            });
        }
        Ok(Block {
            rows: n,
            cols,
            tail,
            time,
            port,
            status,
            up,
            down,
            dur,
        })
    }

    pub fn col(&self, c: StrCol) -> &Dict {
        &self.cols[c as usize]
    }

    pub fn target(&self, row: usize) -> String {
        target_from_rest(
            self.col(StrCol::TargetRest).row(row),
            self.col(StrCol::Host).row(row),
        )
    }

    /// Materialises one row.
    pub fn record(&self, row: usize) -> LogRecord {
        let s = |c: StrCol| self.col(c).row(row).to_string();
        let list = |c: StrCol| {
            let v = self.col(c).row(row);
            if v.is_empty() {
                Vec::new()
            } else {
                v.split(SEP).map(str::to_string).collect()
            }
        };
        let user_groups = match self.tail[TailCol::UserGroups as usize].row(row) {
            "" => Vec::new(),
            v => v.split(SEP).map(str::to_string).collect(),
        };
        let ip = self.col(StrCol::ClientIp).row(row);
        let client = match self.port[row] {
            0 => ip.to_string(),
            p => format!("{ip}:{p}"),
        };
        LogRecord {
            time_ms: self.time[row],
            listener: s(StrCol::Listener),
            device: s(StrCol::Device),
            user: s(StrCol::User),
            signed_in: self.tail[TailCol::SignedIn as usize].row(row) == "1",
            user_groups,
            groups: list(StrCol::Groups),
            site: s(StrCol::Site),
            client,
            method: s(StrCol::Method),
            target: self.target(row),
            host: s(StrCol::Host),
            action: s(StrCol::Action),
            rule: s(StrCol::Rule),
            categories: list(StrCol::Categories),
            app: s(StrCol::App),
            ips: s(StrCol::Ips),
            status: self.status[row],
            bytes_up: self.up[row],
            bytes_down: self.down[row],
            duration_ms: self.dur[row],
            egress: s(StrCol::Egress),
            error: s(StrCol::Error),
        }
    }
}

/// Header of one block in a segment file.
#[derive(Debug, Clone, Copy)]
pub struct BlockHeader {
    pub rows: u32,
    pub min_ms: i64,
    pub max_ms: i64,
    clen: u32,
}

/// Reads a segment block by block.
pub struct SegmentReader {
    r: BufReader<File>,
    frame: Vec<u8>,
}

impl SegmentReader {
    pub fn open(path: &Path) -> io::Result<SegmentReader> {
        let mut r = BufReader::with_capacity(1 << 16, File::open(path)?);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)
            .map_err(|_| corrupt("missing magic"))?;
        if &magic != SEG_MAGIC {
            return Err(corrupt("not a komugate segment (bad magic)"));
        }
        Ok(SegmentReader {
            r,
            frame: Vec::new(),
        })
    }

    /// The next block's header, or `None` at the end of the file.
    pub fn next_header(&mut self) -> io::Result<Option<BlockHeader>> {
        let mut h = [0u8; 24];
        match self.r.read_exact(&mut h[..1]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        self.r
            .read_exact(&mut h[1..])
            .map_err(|_| corrupt("truncated block header"))?;
        let le4 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let le8 = |b: &[u8]| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        Ok(Some(BlockHeader {
            clen: le4(&h[0..4]),
            rows: le4(&h[4..8]),
            min_ms: le8(&h[8..16]),
            max_ms: le8(&h[16..24]),
        }))
    }

    pub fn skip_block(&mut self, h: &BlockHeader) -> io::Result<()> {
        self.r.seek_relative(h.clen as i64)
    }

    pub fn read_block(&mut self, h: &BlockHeader) -> io::Result<Block> {
        self.read_block_columns(h, Columns::ALL)
    }

    /// [`SegmentReader::read_block`] decoding only `wanted` (see
    /// [`Block::decode_columns`]).
    pub fn read_block_columns(&mut self, h: &BlockHeader, wanted: Columns) -> io::Result<Block> {
        self.frame.resize(h.clen as usize, 0);
        self.r
            .read_exact(&mut self.frame)
            .map_err(|_| corrupt("truncated block"))?;
        let cap = (h.rows as usize)
            .saturating_mul(512)
            .clamp(1 << 16, 256 << 20);
        let body = zstd::bulk::decompress(&self.frame, cap)?;
        let b = Block::decode_columns(&body, wanted)?;
        if b.rows != h.rows as usize {
            return Err(corrupt("row count mismatch"));
        }
        Ok(b)
    }
}

/// Writes `bytes` to `path` atomically (see [`crate::atomic_file`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    crate::atomic_file::write(path, bytes)
}

/// Fsyncs a directory so renames in it are durable.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: i64) -> LogRecord {
        LogRecord {
            time_ms: 1_700_000_000_000 + i * 7,
            listener: "mtls".into(),
            device: format!("T-{:04}", i % 50),
            user: if i % 3 == 0 {
                "山田太郎".into()
            } else {
                String::new()
            },
            groups: vec!["teachers".into(), format!("school-{}", i % 5)],
            client: if i % 2 == 0 {
                format!("10.0.0.{}:{}", i % 200, 40000 + i % 1000)
            } else {
                "[::1]:5".into()
            },
            method: if i % 4 == 0 {
                "GET".into()
            } else {
                "CONNECT".into()
            },
            target: if i % 4 == 0 {
                format!("https://Host{}.example/p?q={i}", i % 9)
            } else {
                format!("host{}.example:443", i % 9)
            },
            host: format!("host{}.example", i % 9),
            action: "allow".into(),
            rule: "default".into(),
            categories: if i % 7 == 0 {
                vec!["social".into()]
            } else {
                vec![]
            },
            status: 200,
            bytes_up: i as u64 * 3,
            bytes_down: i as u64 * 1000,
            duration_ms: 5,
            egress: "127.0.0.1:9".into(),
            signed_in: i % 6 == 0,
            user_groups: if i % 6 == 0 {
                vec!["teachers".into(), format!("grade-{}", i % 4)]
            } else {
                vec![]
            },
            ..Default::default()
        }
    }

    /// Decoding some columns gives those columns as a full decode does.
    #[test]
    fn decodes_only_the_wanted_columns() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join("a.seg");
        let mut w = SegmentWriter::create(&seg, 3).unwrap();
        for i in 0..1000 {
            w.push(&rec(i)).unwrap();
        }
        w.finish().unwrap();
        let wanted = [StrCol::Device, StrCol::Host, StrCol::TargetRest];
        let mut r = SegmentReader::open(&seg).unwrap();
        let h = r.next_header().unwrap().unwrap();
        let some = r.read_block_columns(&h, Columns::only(&wanted)).unwrap();
        let mut r = SegmentReader::open(&seg).unwrap();
        let h = r.next_header().unwrap().unwrap();
        let all = r.read_block(&h).unwrap();
        assert_eq!((some.rows, &some.time), (all.rows, &all.time));
        for row in 0..all.rows {
            for c in wanted {
                assert_eq!(some.col(c).row(row), all.col(c).row(row));
            }
        }
        assert!(some.col(StrCol::Rule).is_empty() && some.up.is_empty());
    }

    #[test]
    fn a_block_written_before_the_user_columns_reads_without_a_signed_in_user() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join("a.seg");
        let mut w = SegmentWriter::create(&seg, 3).unwrap();
        w.push(&rec(0)).unwrap();
        w.finish().unwrap();
        let raw = std::fs::read(&seg).unwrap();
        let clen = u32::from_le_bytes(raw[8..12].try_into().unwrap()) as usize;
        let body = zstd::bulk::decompress(&raw[32..32 + clen], 1 << 20).unwrap();
        let got = Block::decode(&body).unwrap().record(0);
        assert!(got.signed_in);
        assert_eq!(got.user_groups, ["teachers", "grade-0"]);
        // The same block without its trailing columns (one value each,
        // one row: a dictionary count, the value's length and bytes, the
        // id width, one id).
        let tail = 2 * 4 + "teachers\u{1f}grade-0".len() + "1".len();
        let old = Block::decode(&body[..body.len() - tail]).unwrap().record(0);
        assert!(!old.signed_in);
        assert!(old.user_groups.is_empty());
        assert_eq!(old.device, got.device);
        assert_eq!(old.duration_ms, got.duration_ms);
    }

    #[test]
    fn round_trip_blocks_and_index() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join("a.seg");
        let mut w = SegmentWriter::create(&seg, 3).unwrap();
        let n = BLOCK_ROWS as i64 + 100;
        for i in 0..n {
            w.push(&rec(i)).unwrap();
        }
        let idx = w.finish().unwrap();
        let idx = SegmentIndex::decode(&idx).unwrap();
        assert_eq!(idx.count, n as u64);
        assert_eq!(idx.min_ms, rec(0).time_ms);
        assert_eq!(idx.max_ms, rec(n - 1).time_ms);
        assert!(idx.any(IndexField::Host, |h| h == b"host3.example"));
        assert!(!idx.any(IndexField::Host, |h| h == b"nothere.example"));
        assert_eq!(idx.values(IndexField::Group).len(), 6);
        assert_eq!(idx.values(IndexField::User), vec!["山田太郎".to_string()]);

        let mut r = SegmentReader::open(&seg).unwrap();
        let mut i = 0;
        let mut blocks = 0;
        while let Some(h) = r.next_header().unwrap() {
            let b = r.read_block(&h).unwrap();
            blocks += 1;
            for row in 0..b.rows {
                let mut want = rec(i);
                want.host = want.host.to_lowercase();
                let got = b.record(row);
                // The target keeps its original case except for the host part,
                // which is only rewritten when it matched the lower-case host.
                if want.target.contains("Host") {
                    assert_eq!(got.target.to_lowercase(), want.target.to_lowercase());
                    want.target = got.target.clone();
                }
                assert_eq!(got, want, "row {i}");
                i += 1;
            }
        }
        assert_eq!(blocks, 2);
        assert_eq!(i, n);
    }

    #[test]
    fn corrupt_input_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join("a.seg");
        let mut w = SegmentWriter::create(&seg, 3).unwrap();
        for i in 0..100 {
            w.push(&rec(i)).unwrap();
        }
        w.finish().unwrap();
        let good = std::fs::read(&seg).unwrap();
        for cut in [4, 9, 20, 40, good.len() - 3] {
            std::fs::write(&seg, &good[..cut]).unwrap();
            let res = SegmentReader::open(&seg).and_then(|mut r| {
                while let Some(h) = r.next_header()? {
                    r.read_block(&h)?;
                }
                Ok(())
            });
            assert!(res.is_err(), "cut at {cut}");
        }
        assert!(Block::decode(&[5, 0xff, 0xff]).is_err());
        assert!(SegmentIndex::decode(b"KGIDX\0\x01\nxx").is_err());
    }

    /// xorshift: reproducible random cases without a crate.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n.max(1)
        }
        fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
            &v[self.below(v.len() as u64) as usize]
        }
    }

    fn random_host(rng: &mut Rng) -> String {
        const LABELS: [&str; 9] = ["a", "b", "ab", "www", "h1", "h12", "Mail", "cdn", "x-y"];
        const SUFFIXES: [&str; 5] = ["example.jp", "example.com", "ed.jp", "jp", "EXAMPLE.jp"];
        let mut h = String::new();
        for _ in 0..1 + rng.below(3) {
            let label: &&str = rng.pick(&LABELS);
            h.push_str(label);
            h.push('.');
        }
        let suffix: &&str = rng.pick(&SUFFIXES);
        h.push_str(suffix);
        h
    }

    /// Patterns of every shape derived from a host, some matching nothing.
    fn random_glob(rng: &mut Rng, host: &str) -> String {
        let h = host.to_ascii_lowercase();
        let cut = 1 + rng.below(h.len() as u64 - 1) as usize;
        match rng.below(7) {
            0 => host.to_string(),
            1 => match h.find('.') {
                Some(i) => format!("*{}", &h[i..]),
                None => h,
            },
            2 => format!("*{}", &h[cut..]),
            3 => format!("{}*", &h[..cut]),
            4 => format!("*{}*", &h[cut / 2..cut]),
            5 => {
                let mut b = h.into_bytes();
                b[cut] = b'?';
                String::from_utf8(b).unwrap()
            }
            _ => format!("{}*.nowhere", &h[..cut]),
        }
    }

    /// Property: the per-block sets never exclude a block holding a match,
    /// and for a single filter exclude every other block (they are exact).
    #[test]
    fn block_sets_admit_exactly_the_blocks_with_a_match() {
        use crate::logs::query::{Glob, Query};
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut lists, mut bitmaps) = (0, 0);
        let dir = tempfile::tempdir().unwrap();
        for round in 0..60 {
            let pool: Vec<String> = (0..2 + rng.below(60))
                .map(|_| random_host(&mut rng))
                .collect();
            let block_rows = 1 + rng.below(50) as usize;
            let seg = dir.path().join(format!("{round}.seg"));
            let mut w = SegmentWriter::create(&seg, 1)
                .unwrap()
                .with_block_rows(block_rows);
            let n = 1 + rng.below(600) as i64;
            // Hosts drift through the pool, so blocks hold different sets.
            let mut at = 0usize;
            for i in 0..n {
                let mut r = rec(i);
                at = (at + rng.below(3) as usize) % pool.len();
                r.host = pool[(at + rng.below(4) as usize) % pool.len()].clone();
                r.groups = vec![format!("g{}", rng.below(6))];
                w.push(&r).unwrap();
            }
            let idx = SegmentIndex::decode(&w.finish().unwrap()).unwrap();
            for b in idx.blocks.as_ref().unwrap() {
                match b.sets[IndexField::Host as usize] {
                    BlockSet::List { .. } => lists += 1,
                    BlockSet::Bitmap { .. } => bitmaps += 1,
                    BlockSet::Unknown => panic!("host set missing"),
                }
            }
            let mut r = SegmentReader::open(&seg).unwrap();
            let mut blocks = Vec::new();
            while let Some(h) = r.next_header().unwrap() {
                blocks.push(r.read_block(&h).unwrap());
            }
            assert_eq!(idx.block_count(), Some(blocks.len()));
            for _ in 0..12 {
                let host = rng.pick(&pool).clone();
                let pattern = random_glob(&mut rng, &host);
                let group = (rng.below(2) == 0).then(|| format!("g{}", rng.below(7)));
                let q = Query {
                    host: Some(Glob::new(&pattern)),
                    group: group.clone(),
                    ..Query::default()
                };
                let plan = q.plan(&idx);
                for (k, b) in blocks.iter().enumerate() {
                    let holds = !q.matching_rows(b).is_empty();
                    let admitted = plan
                        .as_ref()
                        .is_some_and(|p| p.may_match_block(&idx, k, b.rows as u32));
                    assert!(
                        !holds || admitted,
                        "round {round}: {pattern} {group:?} block {k} has a match"
                    );
                    if group.is_none() {
                        assert_eq!(admitted, holds, "round {round}: {pattern} block {k}");
                    }
                }
            }
        }
        assert!(
            lists > 0 && bitmaps > 0,
            "both encodings ({lists}, {bitmaps})"
        );
    }

    /// An index that does not describe the segment's blocks (another row
    /// count, more blocks than it lists) admits them rather than guess.
    #[test]
    fn block_sets_that_do_not_fit_the_segment_admit_everything() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join("a.seg");
        let mut w = SegmentWriter::create(&seg, 1).unwrap().with_block_rows(10);
        for i in 0..30 {
            let mut r = rec(i);
            r.host = if i == 3 {
                "rare.jp".into()
            } else {
                "common.jp".into()
            };
            w.push(&r).unwrap();
        }
        let idx = SegmentIndex::decode(&w.finish().unwrap()).unwrap();
        let rare = idx.positions(IndexField::Host, |v| v == b"rare.jp");
        assert_eq!(rare.len(), 1);
        assert!(idx.block_may_hold(0, 10, IndexField::Host, &rare));
        assert!(!idx.block_may_hold(1, 10, IndexField::Host, &rare));
        assert!(
            idx.block_may_hold(1, 11, IndexField::Host, &rare),
            "row count differs"
        );
        assert!(
            idx.block_may_hold(3, 10, IndexField::Host, &rare),
            "block not listed"
        );
    }
}
