//! The device/user registry: a CSV exported from the ID-management system.
//!
//! ```text
//! device_id,user,groups
//! PC-0001,tanaka.hanako,教職員;テレワーク
//! ```
//! UTF-8 with an optional BOM, a header row naming the columns (`device_id`,
//! `user`, `groups`; order free, extra columns ignored), RFC 4180 quoting
//! (`"a,b"`, `""` for a quote), groups separated by `;`. Yearly personnel moves
//! are an edit of this file followed by a reload.

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
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..MAX_GROUPS).filter(move |i| self.contains(*i))
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
    fn csv_fields() {
        let f = split_csv(r#"a,"b,c","d""e",,f"#).unwrap();
        let v: Vec<&str> = f.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(v, ["a", "b,c", "d\"e", "", "f"]);
        assert_eq!(f[1].1, 3);
        assert!(split_csv(r#"a,"b"#).is_err());
        assert!(split_csv(r#"a,b"c"#).is_err());
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
