//! The device/user registry: a CSV exported from the ID-management system.
//!
//! ```text
//! device_id,user,groups
//! PC-0001,tanaka.hanako,教職員;テレワーク
//! ```
//! UTF-8 (with or without a BOM) or CP932 / Shift_JIS (what Japanese Excel
//! saves as "CSV"), detected by [`decode_csv`]; a file mixing the two is
//! refused with the lines that differ. A header row names the columns
//! (`device_id`, `user`, `groups`; order free, extra columns ignored), RFC
//! 4180 quoting (`"a,b"`, `""` for a quote), groups separated by `;`.
//! Yearly personnel moves are an edit of this file followed by a reload.
//!
//! The registry is authoritative for groups: when a policy has a
//! `[registry]`, a device's groups are its row's and nothing else (groups
//! written into its certificate are ignored), see `Policy::device_groups`.

use crate::diag::{suggest, Diagnostic};
use std::collections::HashMap;
use std::path::Path;

/// Maximum number of groups a policy can define.
pub const MAX_GROUPS: usize = 256;

/// Set of group indices (bitset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GroupBits(pub [u64; 4]);

impl GroupBits {
    #[inline]
    pub fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    #[inline]
    pub fn contains(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    #[inline]
    pub fn intersects(&self, o: &GroupBits) -> bool {
        (self.0[0] & o.0[0]) | (self.0[1] & o.0[1]) | (self.0[2] & o.0[2]) | (self.0[3] & o.0[3])
            != 0
    }
    #[inline]
    pub fn union_with(&mut self, o: &GroupBits) {
        for i in 0..4 {
            self.0[i] |= o.0[i];
        }
    }
    pub fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }
    pub fn is_subset(&self, o: &GroupBits) -> bool {
        (0..4).all(|i| self.0[i] & !o.0[i] == 0)
    }
    /// The set indices, ascending: set bits only (testing all 256 bits was
    /// ~1,800 instructions per decision with no group at all).
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                Some(w * 64 + b)
            })
        })
    }
}

#[derive(Clone, Debug)]
pub struct DeviceEntry {
    pub user: String,
    pub groups: GroupBits,
    pub line: usize,
}

#[derive(Clone, Debug, Default)]
pub struct Registry {
    pub devices: HashMap<String, DeviceEntry>,
    /// The CSV file, when the policy has a `[registry]`.
    pub path: Option<std::path::PathBuf>,
    /// The policy has a `[registry]`: it alone gives devices their groups.
    pub configured: bool,
}

/// How a registry CSV's bytes are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CsvEncoding {
    Utf8,
    /// UTF-8 starting with a byte order mark (what Excel's "CSV UTF-8" writes).
    Utf8Bom,
    /// CP932 (Windows-31J, Shift_JIS with the Microsoft extensions).
    Cp932,
}

impl CsvEncoding {
    /// `utf-8`, `utf-8-bom`, `cp932`: the names forms and the CLI use.
    pub fn name(self) -> &'static str {
        match self {
            CsvEncoding::Utf8 => "utf-8",
            CsvEncoding::Utf8Bom => "utf-8-bom",
            CsvEncoding::Cp932 => "cp932",
        }
    }

    pub fn parse(name: &str) -> Option<CsvEncoding> {
        match name.to_ascii_lowercase().as_str() {
            "utf-8" | "utf8" => Some(CsvEncoding::Utf8),
            "utf-8-bom" | "utf8-bom" | "utf-8-sig" => Some(CsvEncoding::Utf8Bom),
            "cp932" | "shift_jis" | "shift-jis" | "sjis" | "windows-31j" => {
                Some(CsvEncoding::Cp932)
            }
            _ => None,
        }
    }
}

/// Why a CSV's bytes are not text komugate can read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Line `utf8_line` is UTF-8 and line `other_line` is not: two files
    /// pasted together from different sources.
    Mixed { utf8_line: usize, other_line: usize },
    /// Line `line` is neither UTF-8 nor CP932.
    Invalid { line: usize },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Mixed { utf8_line, other_line } => write!(
                f,
                "mixed text encodings: line {utf8_line} is UTF-8 but line {other_line} is not; save the whole file once as UTF-8 or as CP932 (Shift_JIS)"
            ),
            DecodeError::Invalid { line } => write!(
                f,
                "line {line} is neither UTF-8 nor CP932 (Shift_JIS); save the file as CSV UTF-8 or CSV from Excel"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

/// 1-based number of the line holding byte `offset`.
fn line_of(bytes: &[u8], offset: usize) -> usize {
    bytes[..offset.min(bytes.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Decodes a CSV file: UTF-8 with a BOM, UTF-8, else CP932. UTF-8 is tried
/// first because CP932 text is practically never valid UTF-8, while the
/// reverse (UTF-8 read as CP932) often "succeeds" as mojibake. A file with
/// UTF-8 lines and non-UTF-8 lines is [`DecodeError::Mixed`].
pub fn decode_csv(bytes: &[u8]) -> Result<(String, CsvEncoding), DecodeError> {
    const BOM: &[u8] = b"\xef\xbb\xbf";
    if let Some(rest) = bytes.strip_prefix(BOM) {
        return match std::str::from_utf8(rest) {
            Ok(t) => Ok((t.to_string(), CsvEncoding::Utf8Bom)),
            Err(e) => Err(DecodeError::Mixed {
                utf8_line: 1,
                other_line: line_of(rest, e.valid_up_to()),
            }),
        };
    }
    let first_bad = match std::str::from_utf8(bytes) {
        Ok(t) => return Ok((t.to_string(), CsvEncoding::Utf8)),
        Err(e) => e.valid_up_to(),
    };
    // A line before the first invalid byte that holds UTF-8 multi-byte text.
    let mut offset = 0;
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        let end = offset + line.len();
        if !line.is_ascii() {
            if let Ok(text) = std::str::from_utf8(line) {
                if !text.is_empty() {
                    return Err(DecodeError::Mixed {
                        utf8_line: i + 1,
                        other_line: line_of(bytes, first_bad),
                    });
                }
            }
        }
        offset = end + 1;
    }
    match encoding_rs::SHIFT_JIS.decode_without_bom_handling_and_without_replacement(bytes) {
        Some(text) => Ok((text.into_owned(), CsvEncoding::Cp932)),
        None => {
            // The first line CP932 cannot decode.
            let mut line_no = 1;
            for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
                if encoding_rs::SHIFT_JIS
                    .decode_without_bom_handling_and_without_replacement(line)
                    .is_none()
                {
                    line_no = i + 1;
                    break;
                }
            }
            Err(DecodeError::Invalid { line: line_no })
        }
    }
}

/// Encodes CSV text for export. `Err` names the first character CP932
/// cannot hold (e.g. an emoji in a user name) and its line.
pub fn encode_csv(text: &str, encoding: CsvEncoding) -> Result<Vec<u8>, (usize, char)> {
    match encoding {
        CsvEncoding::Utf8 => Ok(text.as_bytes().to_vec()),
        CsvEncoding::Utf8Bom => {
            let mut out = b"\xef\xbb\xbf".to_vec();
            out.extend_from_slice(text.as_bytes());
            Ok(out)
        }
        CsvEncoding::Cp932 => {
            let (bytes, _, unmappable) = encoding_rs::SHIFT_JIS.encode(text);
            if unmappable {
                for (i, line) in text.lines().enumerate() {
                    for c in line.chars() {
                        let mut buf = [0u8; 4];
                        let (_, _, bad) = encoding_rs::SHIFT_JIS.encode(c.encode_utf8(&mut buf));
                        if bad {
                            return Err((i + 1, c));
                        }
                    }
                }
            }
            Ok(bytes.into_owned())
        }
    }
}

/// One registry row with group names (canonical names, policy order).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RegistryRow {
    pub device: String,
    pub user: String,
    pub groups: Vec<String>,
    /// Line in the CSV it came from (0 when it did not come from a file).
    pub line: usize,
}

/// What applying a new registry changes, by device.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RegistryChanges {
    pub added: Vec<RegistryRow>,
    /// (before, after): the user or the groups changed.
    pub moved: Vec<(RegistryRow, RegistryRow)>,
    pub removed: Vec<RegistryRow>,
    pub unchanged: usize,
}

impl RegistryChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.moved.is_empty() && self.removed.is_empty()
    }
}

/// The changes from `old` to `new` (each sorted by device, as
/// `Policy::registry_rows` gives them).
pub fn diff_registry(old: &[RegistryRow], new: &[RegistryRow]) -> RegistryChanges {
    let before: HashMap<&str, &RegistryRow> = old.iter().map(|r| (r.device.as_str(), r)).collect();
    let after: HashMap<&str, &RegistryRow> = new.iter().map(|r| (r.device.as_str(), r)).collect();
    let mut c = RegistryChanges::default();
    for r in new {
        match before.get(r.device.as_str()) {
            None => c.added.push(r.clone()),
            Some(o) if o.user != r.user || o.groups != r.groups => {
                c.moved.push(((*o).clone(), r.clone()))
            }
            Some(_) => c.unchanged += 1,
        }
    }
    c.removed = old
        .iter()
        .filter(|r| !after.contains_key(r.device.as_str()))
        .cloned()
        .collect();
    c
}

/// `rows` as registry CSV text (header `device_id,user,groups`, CRLF line
/// ends as Excel writes them, fields quoted when they need it).
pub fn write_registry_csv(rows: &[RegistryRow]) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }
    let mut out = String::from("device_id,user,groups\r\n");
    for r in rows {
        out.push_str(&format!(
            "{},{},{}\r\n",
            field(&r.device),
            field(&r.user),
            field(&r.groups.join(";"))
        ));
    }
    out
}

/// Splits one CSV line into (field, char column) pairs.
fn split_csv(line: &str) -> Result<Vec<(String, usize)>, (usize, String)> {
    let mut out = Vec::new();
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    loop {
        let col = i + 1;
        let mut field = String::new();
        if i < chars.len() && chars[i] == '"' {
            i += 1;
            loop {
                if i >= chars.len() {
                    return Err((col, "unterminated quoted field".into()));
                }
                if chars[i] == '"' {
                    if i + 1 < chars.len() && chars[i + 1] == '"' {
                        field.push('"');
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                field.push(chars[i]);
                i += 1;
            }
            if i < chars.len() && chars[i] != ',' {
                return Err((i + 1, "unexpected character after closing quote".into()));
            }
        } else {
            while i < chars.len() && chars[i] != ',' {
                if chars[i] == '"' {
                    return Err((
                        i + 1,
                        "quote inside an unquoted field (quote the whole field)".into(),
                    ));
                }
                field.push(chars[i]);
                i += 1;
            }
        }
        out.push((field, col));
        if i >= chars.len() {
            return Ok(out);
        }
        i += 1; // skip ','
    }
}

/// Parses the registry; `group_index` maps a group name (or alias) to its index.
pub(crate) fn parse_registry(
    file: &Path,
    text: &str,
    group_index: &HashMap<String, usize>,
    group_names: &[String],
    diags: &mut Vec<Diagnostic>,
) -> Registry {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reg = Registry::default();
    let mut cols: Option<(usize, usize, usize)> = None;
    for (n, raw) in text.lines().enumerate() {
        let lineno = n + 1;
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = match split_csv(line) {
            Ok(f) => f,
            Err((col, msg)) => {
                diags.push(Diagnostic::new(file, lineno, col, msg));
                continue;
            }
        };
        let Some((ci, cu, cg)) = cols else {
            let find = |names: &[&str]| {
                fields
                    .iter()
                    .position(|(f, _)| names.contains(&f.trim().to_ascii_lowercase().as_str()))
            };
            match (
                find(&["device_id", "device", "deviceid"]),
                find(&["user", "user_id", "userid"]),
                find(&["groups", "group"]),
            ) {
                (Some(a), Some(b), Some(c)) => cols = Some((a, b, c)),
                _ => {
                    diags.push(Diagnostic::new(
                        file,
                        lineno,
                        1,
                        format!(
                            "expected a header row `device_id,user,groups`, found `{}`",
                            line.trim()
                        ),
                    ));
                    return reg;
                }
            }
            continue;
        };
        let need = ci.max(cu).max(cg) + 1;
        if fields.len() < need {
            diags.push(Diagnostic::new(
                file,
                lineno,
                1,
                format!(
                    "expected {need} fields (device_id,user,groups), found {}",
                    fields.len()
                ),
            ));
            continue;
        }
        let (dev, dcol) = (&fields[ci].0, fields[ci].1);
        let dev = dev.trim();
        if dev.is_empty() {
            diags.push(Diagnostic::new(file, lineno, dcol, "empty device_id"));
            continue;
        }
        let mut groups = GroupBits::default();
        let (gfield, gcol) = (&fields[cg].0, fields[cg].1);
        let mut ok = true;
        for g in gfield.split(';') {
            let g = g.trim();
            if g.is_empty() {
                continue;
            }
            match group_index.get(g) {
                Some(i) => groups.insert(*i),
                None => {
                    ok = false;
                    diags.push(Diagnostic::new(
                        file,
                        lineno,
                        gcol,
                        format!(
                            "unknown group `{g}` for device `{dev}`{}",
                            suggest(g, group_names.iter().map(|s| s.as_str()))
                        ),
                    ));
                }
            }
        }
        if let Some(prev) = reg.devices.get(dev) {
            diags.push(Diagnostic::new(
                file,
                lineno,
                dcol,
                format!(
                    "duplicate device `{dev}` (first defined on line {})",
                    prev.line
                ),
            ));
            continue;
        }
        if ok {
            reg.devices.insert(
                dev.to_string(),
                DeviceEntry {
                    user: fields[cu].0.trim().to_string(),
                    groups,
                    line: lineno,
                },
            );
        }
    }
    if cols.is_none() {
        diags.push(Diagnostic::new(
            file,
            1,
            1,
            "registry is empty: expected a header row `device_id,user,groups`",
        ));
    }
    reg
}

/// Parses a device registry CSV on its own, with `groups` as the known
/// group names (a group's index is its position): the devices by id with
/// their user and group indexes, or every error. Entry point for fuzzing
/// and tests; a policy's `[registry]` goes through the same parser.
pub fn parse_registry_csv(
    file: &Path,
    text: &str,
    groups: &[&str],
) -> Result<Vec<(String, String, Vec<usize>)>, crate::PolicyErrors> {
    let group_names: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    let group_index: HashMap<String, usize> = group_names
        .iter()
        .enumerate()
        .map(|(i, g)| (g.clone(), i))
        .collect();
    let mut diags = Vec::new();
    let reg = parse_registry(file, text, &group_index, &group_names, &mut diags);
    if !diags.is_empty() {
        return Err(crate::PolicyErrors(diags));
    }
    let mut devices: Vec<(String, String, Vec<usize>)> = reg
        .devices
        .into_iter()
        .map(|(id, d)| (id, d.user, d.groups.iter().collect()))
        .collect();
    devices.sort();
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn group_bits_iterate_the_set_indices_in_order() {
        let mut g = GroupBits::default();
        assert_eq!(g.iter().count(), 0);
        for i in [255, 0, 64, 63, 200, 1] {
            g.insert(i);
        }
        assert_eq!(g.iter().collect::<Vec<_>>(), [0, 1, 63, 64, 200, 255]);
    }

    #[test]
    fn csv_fields() {
        let f = split_csv(r#"a,"b,c","d""e",,f"#).unwrap();
        let v: Vec<&str> = f.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(v, ["a", "b,c", "d\"e", "", "f"]);
        assert_eq!(f[1].1, 3);
        assert!(split_csv(r#"a,"b"#).is_err());
        assert!(split_csv(r#"a,b"c"#).is_err());
    }

    fn cp932(text: &str) -> Vec<u8> {
        encode_csv(text, CsvEncoding::Cp932).unwrap()
    }

    #[test]
    fn csv_encodings_detected() {
        let text = "device_id,user,groups\r\nPC-1,田中 花子,教職員;テレワーク\r\n";
        for (bytes, enc) in [
            (text.as_bytes().to_vec(), CsvEncoding::Utf8),
            (
                encode_csv(text, CsvEncoding::Utf8Bom).unwrap(),
                CsvEncoding::Utf8Bom,
            ),
            (cp932(text), CsvEncoding::Cp932),
        ] {
            assert_eq!(decode_csv(&bytes).unwrap(), (text.to_string(), enc));
        }
        // CP932 is not UTF-8: the bytes really differ.
        assert_ne!(cp932(text), text.as_bytes());
        // NEC special characters (①) and IBM extensions (髙) of CP932.
        let ext = "device_id,user,groups\nPC-1,髙橋①,\n";
        assert_eq!(decode_csv(&cp932(ext)).unwrap().0, ext);
    }

    #[test]
    fn mixed_and_invalid_encodings_name_the_lines() {
        let mut mixed = "device_id,user,groups\nPC-1,田中,教職員\n"
            .as_bytes()
            .to_vec();
        mixed.extend(cp932("PC-2,鈴木,教職員\n"));
        assert_eq!(
            decode_csv(&mixed).unwrap_err(),
            DecodeError::Mixed {
                utf8_line: 2,
                other_line: 3
            }
        );
        // A BOM promises UTF-8 for the whole file.
        let mut bom = b"\xef\xbb\xbfdevice_id,user,groups\n".to_vec();
        bom.extend(cp932("PC-2,鈴木,教職員\n"));
        assert_eq!(
            decode_csv(&bom).unwrap_err(),
            DecodeError::Mixed {
                utf8_line: 1,
                other_line: 2
            }
        );
        // 0x82 0xFF: a CP932 lead byte with an impossible trail byte.
        let bad = b"device_id,user,groups\nPC-1,a,\nPC-2,\x82\xff,\n";
        assert_eq!(
            decode_csv(bad).unwrap_err(),
            DecodeError::Invalid { line: 3 }
        );
        assert!(DecodeError::Invalid { line: 3 }
            .to_string()
            .contains("line 3"));
        // An emoji has no CP932 form: exporting it says where it is.
        assert_eq!(
            encode_csv("a\nPC-1,😀,\n", CsvEncoding::Cp932).unwrap_err(),
            (2, '😀')
        );
    }

    #[test]
    fn diff_and_export() {
        let row = |d: &str, u: &str, g: &[&str]| RegistryRow {
            device: d.into(),
            user: u.into(),
            groups: g.iter().map(|s| s.to_string()).collect(),
            line: 0,
        };
        let old = [
            row("PC-1", "tanaka", &["教職員", "テレワーク"]),
            row("PC-2", "suzuki", &["教職員"]),
            row("PC-3", "sato", &["事務局"]),
        ];
        let new = [
            row("PC-1", "tanaka", &["教職員"]),
            row("PC-3", "sato", &["事務局"]),
            row("PC-4", "ito, akira", &["事務局"]),
        ];
        let c = diff_registry(&old, &new);
        assert_eq!(c.added, [new[2].clone()]);
        assert_eq!(c.moved, [(old[0].clone(), new[0].clone())]);
        assert_eq!(c.removed, [old[1].clone()]);
        assert_eq!(c.unchanged, 1);
        let csv = write_registry_csv(&new);
        assert!(csv.contains("PC-4,\"ito, akira\",事務局\r\n"), "{csv}");
        let back = parse_registry_csv(Path::new("r.csv"), &csv, &["教職員", "事務局"]).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(
            back[2],
            ("PC-4".to_string(), "ito, akira".to_string(), vec![1])
        );
    }

    #[test]
    fn registry_csv_on_its_own() {
        let file = Path::new("registry.csv");
        let text = "\u{feff}device_id,user,groups\r\nPC-1,\"Sato, A\",teachers;admins\nPC-2,b,\n";
        let devices = parse_registry_csv(file, text, &["teachers", "admins"]).unwrap();
        assert_eq!(
            devices,
            [
                ("PC-1".to_string(), "Sato, A".to_string(), vec![0, 1]),
                ("PC-2".to_string(), "b".to_string(), vec![]),
            ]
        );
        let errors = parse_registry_csv(
            file,
            "device_id,user,groups\nPC-1,a,nurses\n",
            &["teachers"],
        )
        .unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert!(errors.0[0].to_string().contains("unknown group `nurses`"));
    }
}
