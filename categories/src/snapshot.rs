//! Snapshot file: `magic(8) | version u32 | reserved u32 | payload_len u64 |
//! crc32(payload) u32 | payload`, all little endian. The payload is the
//! matcher's arrays, length-prefixed, in a fixed order.

use std::io::{Read, Write};
use std::path::Path;

use crate::matcher::{compile_patterns, compile_regexes, Matcher, PatternSrc, UrlEntry};
use crate::set::MAX_CATEGORIES;
use crate::table::Table;
use crate::{CategoryError, CategoryId, CategorySet, Usage};

pub(crate) const MAGIC: &[u8; 8] = b"KMGCAT\x00\x1a";
/// 3: url entry paths are stored in [`crate::normalize_path`] form.
pub(crate) const VERSION: u32 = 3;
const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 4;

pub(crate) fn file_has_magic(path: &Path) -> Result<bool, CategoryError> {
    let mut f = std::fs::File::open(path).map_err(|source| CategoryError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut m = [0u8; 8];
    match f.read_exact(&mut m) {
        Ok(()) => Ok(&m == MAGIC),
        Err(_) => Ok(false),
    }
}

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn u64s(&mut self, v: &[u64]) {
        self.u64(v.len() as u64);
        self.0.reserve(v.len() * 8);
        for x in v {
            self.0.extend_from_slice(&x.to_le_bytes());
        }
    }
    fn u32s(&mut self, v: &[u32]) {
        self.u64(v.len() as u64);
        for x in v {
            self.0.extend_from_slice(&x.to_le_bytes());
        }
    }
    fn table(&mut self, t: &Table) {
        self.u64(t.len as u64);
        self.bytes(&t.arena);
        self.u64s(&t.slots);
    }
}

struct R<'a> {
    b: &'a [u8],
}

type Res<T> = Result<T, String>;

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        if n > self.b.len() {
            return Err("truncated payload".into());
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    fn u8(&mut self) -> Res<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Res<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| "bad u32")?,
        ))
    }
    fn u64(&mut self) -> Res<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| "bad u64")?,
        ))
    }
    fn len(&mut self, elem: usize) -> Res<usize> {
        let n = self.u64()?;
        let fits = matches!(n.checked_mul(elem as u64), Some(t) if t <= self.b.len() as u64);
        if !fits {
            return Err("length field exceeds payload".into());
        }
        Ok(n as usize)
    }
    fn bytes(&mut self) -> Res<Vec<u8>> {
        let n = self.len(1)?;
        Ok(self.take(n)?.to_vec())
    }
    fn string(&mut self) -> Res<String> {
        String::from_utf8(self.bytes()?).map_err(|_| "string is not UTF-8".into())
    }
    fn u64s(&mut self) -> Res<Vec<u64>> {
        let n = self.len(8)?;
        let raw = self.take(n * 8)?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect())
    }
    fn u32s(&mut self) -> Res<Vec<u32>> {
        let n = self.len(4)?;
        let raw = self.take(n * 4)?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap_or([0; 4])))
            .collect())
    }
    fn table(&mut self) -> Res<Table> {
        let len = self.u64()? as usize;
        let arena = self.bytes()?;
        let slots = self.u64s()?;
        Ok(Table { arena, slots, len })
    }
}

impl Matcher {
    /// Writes a compact snapshot (see [`Matcher::read_snapshot`]).
    pub fn write_snapshot<W2: Write>(&self, mut w: W2) -> Result<(), CategoryError> {
        let mut p = W(Vec::with_capacity(self.heap_bytes() + 1024));
        p.u32(self.names.len() as u32);
        for (n, u) in self.names.iter().zip(&self.usage) {
            p.bytes(n.as_bytes());
            p.u8(match u {
                None => 0,
                Some(Usage::Black) => 1,
                Some(Usage::White) => 2,
            });
        }
        p.u64(self.palette.len() as u64);
        for s in &self.palette {
            for x in s.words() {
                p.u64(x);
            }
        }
        p.table(&self.domains);
        p.table(&self.exceptions);
        p.table(&self.url_hosts);
        p.u32s(&self.url_ranges);
        p.u64(self.url_entries.len() as u64);
        for e in &self.url_entries {
            p.u32(e.off);
            p.u32(e.len);
            p.u32(e.set);
        }
        p.bytes(&self.url_arena);
        p.u8(self.expressions_enabled as u8);
        p.u64(self.expr_src.len() as u64);
        for (c, r) in &self.expr_src {
            p.u32(*c as u32);
            p.bytes(r.as_bytes());
        }
        p.u64s(&self.filter);
        p.u8(self.tags);
        p.u64(self.pattern_src.len() as u64);
        for ps in &self.pattern_src {
            p.u32(ps.cat as u32);
            p.u8(ps.exception as u8 | (ps.important as u8) << 1 | (ps.regex as u8) << 2);
            p.bytes(ps.text.as_bytes());
            p.bytes(ps.literal.as_bytes());
        }
        let payload = p.0;
        let mut head = Vec::with_capacity(HEADER_LEN);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        head.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        head.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        let io = |source| CategoryError::Io {
            path: "<snapshot writer>".into(),
            source,
        };
        w.write_all(&head).map_err(io)?;
        w.write_all(&payload).map_err(io)?;
        w.flush().map_err(io)?;
        Ok(())
    }

    /// Reads a snapshot written by [`Matcher::write_snapshot`]. Fails with
    /// [`CategoryError::BadSnapshot`] on a wrong magic, an unsupported
    /// version, truncation, a checksum mismatch or inconsistent contents.
    pub fn read_snapshot(path: &Path) -> Result<Matcher, CategoryError> {
        let data = std::fs::read(path).map_err(|source| CategoryError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_snapshot_bytes(&data).map_err(|reason| CategoryError::BadSnapshot {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses snapshot bytes (the `Err` is a human-readable reason).
    pub(crate) fn from_snapshot_bytes(data: &[u8]) -> Result<Matcher, String> {
        if data.len() < HEADER_LEN || &data[..8] != MAGIC {
            return Err("not a komugate category snapshot (bad magic)".into());
        }
        let mut h = R {
            b: &data[8..HEADER_LEN],
        };
        let version = h.u32()?;
        if version != VERSION {
            return Err(format!("snapshot format version {version}, this build reads version {VERSION}; recompile it"));
        }
        let _reserved = h.u32()?;
        let len = h.u64()?;
        let crc = h.u32()?;
        let payload = &data[HEADER_LEN..];
        if payload.len() as u64 != len {
            return Err(format!(
                "payload is {} bytes, header says {len} (truncated?)",
                payload.len()
            ));
        }
        if crc32fast::hash(payload) != crc {
            return Err("checksum mismatch (file corrupted)".into());
        }
        let mut r = R { b: payload };
        let ncat = r.u32()? as usize;
        if ncat > MAX_CATEGORIES {
            return Err("too many categories".into());
        }
        let mut names = Vec::with_capacity(ncat);
        let mut usage = Vec::with_capacity(ncat);
        for _ in 0..ncat {
            names.push(r.string()?);
            usage.push(match r.u8()? {
                0 => None,
                1 => Some(Usage::Black),
                2 => Some(Usage::White),
                _ => return Err("bad usage value".into()),
            });
        }
        let np = r.len(32)?;
        let mut palette = Vec::with_capacity(np);
        for _ in 0..np {
            palette.push(CategorySet::from_words([
                r.u64()?,
                r.u64()?,
                r.u64()?,
                r.u64()?,
            ]));
        }
        let domains = r.table()?;
        let exceptions = r.table()?;
        let url_hosts = r.table()?;
        let url_ranges = r.u32s()?;
        let ne = r.len(12)?;
        let mut url_entries = Vec::with_capacity(ne);
        for _ in 0..ne {
            url_entries.push(UrlEntry {
                off: r.u32()?,
                len: r.u32()?,
                set: r.u32()?,
            });
        }
        let url_arena = r.bytes()?;
        let expressions_enabled = r.u8()? != 0;
        let nx = r.len(12)?;
        let mut expr_src = Vec::with_capacity(nx);
        for _ in 0..nx {
            let c = r.u32()?;
            if c as usize >= ncat {
                return Err("expression category out of range".into());
            }
            expr_src.push((c as CategoryId, r.string()?));
        }
        let filter = r.u64s()?;
        if !filter.is_empty() && !filter.len().is_power_of_two() {
            return Err("bad filter size".into());
        }
        let tags = r.u8()?;
        let npat = r.len(21)?;
        let mut pattern_src = Vec::with_capacity(npat);
        for _ in 0..npat {
            let cat = r.u32()?;
            if cat as usize >= ncat {
                return Err("pattern category out of range".into());
            }
            let flags = r.u8()?;
            pattern_src.push(PatternSrc {
                cat: cat as CategoryId,
                exception: flags & 1 != 0,
                important: flags & 2 != 0,
                regex: flags & 4 != 0,
                text: r.string()?,
                literal: r.string()?,
            });
        }
        if !r.b.is_empty() {
            return Err("trailing bytes in payload".into());
        }
        // Structural validation: lookups index these arrays unchecked-by-logic.
        let np32 = np as u32;
        domains.validate(np32)?;
        exceptions.validate(np32)?;
        url_hosts.validate(url_ranges.len().saturating_sub(1) as u32)?;
        if url_ranges.last().copied().unwrap_or(0) as usize != url_entries.len()
            || url_ranges.windows(2).any(|w| w[0] > w[1])
            || (url_ranges.is_empty() && !url_hosts.is_empty())
        {
            return Err("inconsistent url ranges".into());
        }
        if url_entries
            .iter()
            .any(|e| e.set >= np32 || (e.off as u64 + e.len as u64) > url_arena.len() as u64)
        {
            return Err("url entry out of range".into());
        }
        if palette.iter().any(|s| s.iter().any(|c| c as usize >= ncat)) {
            return Err("category set refers to unknown category".into());
        }
        let regexes = if expressions_enabled {
            Some(compile_regexes(&expr_src).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let patterns = compile_patterns(&pattern_src).map_err(|e| e.to_string())?;
        Ok(Matcher {
            tags,
            pattern_src,
            patterns,
            names,
            usage,
            palette,
            domains,
            exceptions,
            url_hosts,
            url_ranges,
            url_entries,
            url_arena,
            expr_src,
            expressions_enabled,
            regexes,
            filter,
        })
    }
}
