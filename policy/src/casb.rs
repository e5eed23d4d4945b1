//! CASB and DLP data: the built-in cloud-app catalog (`catalog/apps.toml`),
//! tenant-restriction headers, app categories and tenancy, and the DLP
//! content patterns (Japanese My Number with its check digit, keyword lists,
//! regular expressions). Pure: no I/O.

use crate::pattern::HostPattern;
use crate::Action;
use aho_corasick::AhoCorasick;

/// The built-in catalog (versioned data file).
pub const BUILTIN_CATALOG: &str = include_str!("../catalog/apps.toml");

/// App categories; the names used in the catalog and in `app_category` conditions.
pub const APP_CATEGORIES: &[&str] = &[
    "storage",
    "mail",
    "collaboration",
    "ai",
    "transfer",
    "school",
    "identity",
    "developer",
];

/// Bit of a category name in a rule's `app_category` set.
pub fn category_bit(name: &str) -> Option<u16> {
    APP_CATEGORIES
        .iter()
        .position(|c| *c == name)
        .map(|i| 1u16 << i)
}

/// Certification / attestation names accepted in `certifications`.
pub const CERTIFICATIONS: &[&str] = &[
    "ISMAP", "ISO27001", "ISO27017", "ISO27018", "ISO27701", "SOC2", "CSMOS",
];

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CatalogFile {
    pub version: String,
    #[serde(default)]
    pub tenant_restriction: Vec<CatalogTr>,
    #[serde(default)]
    pub app: Vec<CatalogApp>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CatalogTr {
    pub name: String,
    pub hosts: Vec<String>,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CatalogApp {
    pub name: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub vendor: String,
    pub category: String,
    #[serde(default)]
    pub tenant_provider: Option<String>,
    #[serde(default)]
    pub own: bool,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub tenant_hosts: Vec<String>,
    #[serde(default)]
    pub upload_paths: Vec<String>,
    #[serde(default)]
    pub download_paths: Vec<String>,
    #[serde(default)]
    pub download_params: Vec<String>,
    #[serde(default)]
    pub sync_paths: Vec<String>,
    #[serde(default)]
    pub sync_user_agents: Vec<String>,
    #[serde(default)]
    pub certifications: Vec<String>,
}

pub(crate) fn parse_catalog(text: &str) -> Result<CatalogFile, String> {
    let c: CatalogFile = toml::from_str(text).map_err(|e| format!("built-in app catalog: {e}"))?;
    for a in &c.app {
        if category_bit(&a.category).is_none() {
            return Err(format!(
                "built-in app catalog: app `{}` has unknown category `{}`",
                a.name, a.category
            ));
        }
    }
    Ok(c)
}

/// The built-in catalog's version string.
pub fn catalog_version() -> String {
    parse_catalog(BUILTIN_CATALOG)
        .map(|c| c.version)
        .unwrap_or_else(|_| "invalid".into())
}

/// Validates a path pattern (`/x/*`, `*/upload*`).
pub(crate) fn check_path_pattern(p: &str) -> Result<(), String> {
    if p.is_empty() || !(p.starts_with('/') || p.starts_with('*')) {
        return Err(format!(
            "invalid path pattern `{p}` (start with `/` or `*`, e.g. \"*/upload*\")"
        ));
    }
    Ok(())
}

/// Validates a `key=value` query parameter pattern.
pub(crate) fn check_param(p: &str) -> Result<(), String> {
    match p.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(()),
        _ => Err(format!(
            "invalid query parameter `{p}` (use key=value, e.g. \"download=1\")"
        )),
    }
}

/// Validates a tenant host template (`{tenant}.sharepoint.com`).
pub(crate) fn check_tenant_host(t: &str) -> Result<(), String> {
    if !t.contains("{tenant}") {
        return Err(format!(
            "tenant host `{t}` must contain `{{tenant}}` (e.g. \"{{tenant}}.sharepoint.com\")"
        ));
    }
    HostPattern::parse(&t.replace("{tenant}", "x")).map(|_| ())
}

/// Case-insensitive whole-string wildcard match (`*` = any run; `?` is
/// literal: in URL paths it starts the query).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    crate::pattern::wildcard_match(
        pattern.as_bytes(),
        text.as_bytes(),
        crate::pattern::QuestionMark::Literal,
    )
}

/// One compiled tenant-restriction entry: hosts and the headers to set.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TenantRestriction {
    pub name: String,
    #[serde(skip)]
    pub(crate) patterns: Vec<HostPattern>,
    /// Every header name of the entry (client copies are removed).
    pub header_names: Vec<String>,
    /// (name, value) to add; headers whose value needed an unset setting are left out.
    pub headers: Vec<(String, String)>,
}

impl TenantRestriction {
    pub fn matches(&self, host: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(host))
    }
}

/// Fills `{name}` placeholders from the tenant settings; `None` if a name is unset.
pub(crate) fn fill_template(t: &str, vars: &[(&str, Option<String>)]) -> Option<String> {
    let mut out = String::new();
    let mut rest = t;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let j = after.find('}')?;
        let key = &after[..j];
        let v = vars.iter().find(|(k, _)| *k == key)?.1.as_ref()?;
        out.push_str(v);
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    Some(out)
}

// ---------------------------------------------------------------- DLP

#[derive(Clone, Debug)]
pub(crate) enum DlpKind {
    MyNumber,
    Keywords,
    Regex(regex::Regex),
}

#[derive(Clone, Debug)]
pub struct DlpPattern {
    pub name: String,
    pub action: Action,
    pub(crate) kind: DlpKind,
}

/// Compiled DLP patterns: one Aho-Corasick automaton for every keyword list.
#[derive(Clone, Debug, Default)]
pub struct Dlp {
    pub patterns: Vec<DlpPattern>,
    keywords: Option<AhoCorasick>,
    /// keyword index in the automaton -> pattern index
    keyword_owner: Vec<usize>,
}

impl Dlp {
    pub(crate) fn build(
        patterns: Vec<DlpPattern>,
        keywords: Vec<(usize, String)>,
    ) -> Result<Dlp, String> {
        let keyword_owner = keywords.iter().map(|(i, _)| *i).collect();
        let ac = if keywords.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .ascii_case_insensitive(true)
                    .build(keywords.iter().map(|(_, k)| k.as_str()))
                    .map_err(|e| format!("keyword automaton: {e}"))?,
            )
        };
        Ok(Dlp {
            patterns,
            keywords: ac,
            keyword_owner,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Adds to `found` (without duplicates) the index of every pattern
    /// that matches `text`.
    pub fn scan(&self, text: &str, found: &mut Vec<usize>) {
        let add = |i: usize, found: &mut Vec<usize>| {
            if !found.contains(&i) {
                found.push(i);
            }
        };
        if let Some(ac) = &self.keywords {
            for m in ac.find_overlapping_iter(text) {
                if let Some(&owner) = self.keyword_owner.get(m.pattern().as_usize()) {
                    add(owner, found);
                }
            }
        }
        let mut my_number: Option<bool> = None;
        for (i, p) in self.patterns.iter().enumerate() {
            if found.contains(&i) {
                continue;
            }
            let hit = match &p.kind {
                DlpKind::Keywords => false,
                DlpKind::MyNumber => *my_number.get_or_insert_with(|| contains_my_number(text)),
                DlpKind::Regex(r) => r.is_match(text),
            };
            if hit {
                add(i, found);
            }
        }
    }
}

/// The check digit of a Japanese individual number (マイナンバー) from its
/// first 11 digits, as defined by 行政手続における特定の個人を識別するための
/// 番号の利用等に関する法律施行令 第八条 / 総務省令第八十五号 第五条:
/// with Pn the n-th digit counted from the right of the 11 digits
/// (n = 1..11) and Qn = n + 1 for n ≤ 6, n − 5 for n ≥ 7,
/// r = Σ Pn·Qn mod 11; the check digit is 0 if r ≤ 1, else 11 − r.
pub fn my_number_check_digit(first11: &[u8; 11]) -> u8 {
    let mut sum: u32 = 0;
    for n in 1..=11usize {
        let p = first11[11 - n] as u32;
        let q = if n <= 6 { n as u32 + 1 } else { n as u32 - 5 };
        sum += p * q;
    }
    let r = sum % 11;
    if r <= 1 {
        0
    } else {
        (11 - r) as u8
    }
}

/// Is `s` (12 digits; ASCII or full-width, spaces / hyphens between the
/// 4-digit groups allowed) a valid My Number?
pub fn is_valid_my_number(s: &str) -> bool {
    let digits: Vec<u8> = s
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '\u{3000}' | 'ー' | '－'))
        .map(digit_value)
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_default();
    valid12(&digits)
}

fn valid12(d: &[u8]) -> bool {
    if d.len() != 12 {
        return false;
    }
    let mut first = [0u8; 11];
    first.copy_from_slice(&d[..11]);
    my_number_check_digit(&first) == d[11]
}

fn digit_value(c: char) -> Option<u8> {
    match c {
        '0'..='9' => Some(c as u8 - b'0'),
        '０'..='９' => Some((c as u32 - '０' as u32) as u8),
        _ => None,
    }
}

/// Does `text` contain a valid My Number: 12 digits not part of a longer
/// digit run, written `123456789018`, `1234 5678 9018` or `1234-5678-9018`
/// (ASCII or full-width digits)?
pub fn contains_my_number(text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if digit_value(chars[i]).is_none() || (i > 0 && digit_value(chars[i - 1]).is_some()) {
            i += 1;
            continue;
        }
        // Collect digits from i, allowing one separator after the 4th and 8th digit.
        let mut digits = Vec::with_capacity(12);
        let mut j = i;
        let mut sep: Option<char> = None;
        while j < chars.len() && digits.len() < 13 {
            match digit_value(chars[j]) {
                Some(d) => {
                    digits.push(d);
                    j += 1;
                }
                None => {
                    let c = chars[j];
                    let is_sep = matches!(c, ' ' | '-' | '\u{3000}' | '－');
                    let at_group = digits.len() == 4 || digits.len() == 8;
                    let next_digit = chars.get(j + 1).and_then(|c| digit_value(*c)).is_some();
                    if is_sep && at_group && next_digit && sep.is_none_or(|s| s == c) {
                        sep = Some(c);
                        j += 1;
                    } else {
                        break;
                    }
                }
            }
        }
        // A separated number must use the separator at both group boundaries.
        let separated_ok = match sep {
            None => true,
            Some(_) => {
                let n_seps = chars[i..j]
                    .iter()
                    .filter(|c| digit_value(**c).is_none())
                    .count();
                n_seps == 2
            }
        };
        if digits.len() == 12 && separated_ok && valid12(&digits) {
            return true;
        }
        i = j.max(i + 1);
    }
    false
}

pub(crate) fn dlp_my_number(name: String, action: Action) -> DlpPattern {
    DlpPattern {
        name,
        action,
        kind: DlpKind::MyNumber,
    }
}

pub(crate) fn dlp_keywords(name: String, action: Action) -> DlpPattern {
    DlpPattern {
        name,
        action,
        kind: DlpKind::Keywords,
    }
}

pub(crate) fn dlp_regex(name: String, action: Action, re: &str) -> Result<DlpPattern, String> {
    let r = regex::RegexBuilder::new(re)
        .size_limit(4 << 20)
        .build()
        .map_err(|e| {
            let text = e.to_string();
            let last = text
                .lines()
                .map(str::trim)
                .rfind(|l| !l.is_empty())
                .unwrap_or("")
                .to_string();
            format!(
                "invalid regex `{re}`: {}",
                last.trim_start_matches("error: ")
            )
        })?;
    Ok(DlpPattern {
        name,
        action,
        kind: DlpKind::Regex(r),
    })
}

/// `[casb]` settings and the compiled CASB data of a policy.
#[derive(Clone, Debug)]
pub struct CasbSettings {
    /// Catalog version in use ("" when the built-in catalog is off).
    pub catalog_version: String,
    /// A body larger than this to a storage / transfer / AI app is an upload.
    pub upload_threshold: u64,
    /// Bodies are inspected (buffered) up to this many bytes.
    pub inspect_max_bytes: u64,
    /// What happens to a body over `inspect_max_bytes` that needed inspection.
    pub over_cap: Action,
    pub dlp: Dlp,
    pub tenant_restrictions: Vec<TenantRestriction>,
}

pub const DEFAULT_UPLOAD_THRESHOLD: u64 = 1 << 20;
pub const DEFAULT_INSPECT_MAX_BYTES: u64 = 8 << 20;

impl Default for CasbSettings {
    fn default() -> Self {
        CasbSettings {
            catalog_version: String::new(),
            upload_threshold: DEFAULT_UPLOAD_THRESHOLD,
            inspect_max_bytes: DEFAULT_INSPECT_MAX_BYTES,
            over_cap: Action::Allow,
            dlp: Dlp::default(),
            tenant_restrictions: Vec::new(),
        }
    }
}

impl CasbSettings {
    /// The tenant-restriction entries for `host` (lowercase).
    pub fn tenant_restrictions_for<'a>(
        &'a self,
        host: &'a str,
    ) -> impl Iterator<Item = &'a TenantRestriction> + 'a {
        self.tenant_restrictions
            .iter()
            .filter(move |t| t.matches(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block page, console and reports show app categories by their
    /// Japanese label; "other" is what an app without a category gets.
    #[test]
    fn every_app_category_has_a_japanese_label() {
        for c in APP_CATEGORIES.iter().chain(&["other"]) {
            let label = komugate_categories::category_label(c);
            assert!(
                label.is_some(),
                "categories/labels.tsv has no row for app category {c}"
            );
        }
    }

    fn digits(s: &str) -> [u8; 11] {
        let mut a = [0u8; 11];
        for (i, c) in s.bytes().take(11).enumerate() {
            a[i] = c - b'0';
        }
        a
    }

    #[test]
    fn my_number_published_examples() {
        // The sample number used in the 地方公共団体情報システム機構 / 総務省
        // explanatory material and widely reproduced: 1234 5678 9018.
        assert_eq!(my_number_check_digit(&digits("12345678901")), 8);
        assert!(is_valid_my_number("123456789018"));
        assert!(is_valid_my_number("1234 5678 9018"));
        assert!(is_valid_my_number("1234-5678-9018"));
        assert!(is_valid_my_number("１２３４５６７８９０１８"));
        // Worked by hand from the formula: Σ Qn = 47, 47 mod 11 = 3 -> 8.
        assert!(is_valid_my_number("111111111118"));
        // r ≤ 1 -> check digit 0: all zeros (r = 0).
        assert!(is_valid_my_number("000000000000"));
        // 0000000000 1 x: P1 = 1, Q1 = 2 -> r = 2 -> 9.
        assert_eq!(my_number_check_digit(&digits("00000000001")), 9);
        // P2 = 1 (Q2 = 3), P1 = 0 -> r = 3 -> 8; P7 = 1 (Q7 = 2) -> 9.
        assert_eq!(my_number_check_digit(&digits("00000000010")), 8);
        assert_eq!(my_number_check_digit(&digits("00001000000")), 9);
        // r = 1 -> 0: P11 = 1 (Q = 6) and P5 = 1 (Q = 6) → 12 mod 11 = 1.
        assert_eq!(my_number_check_digit(&digits("10000010000")), 0);
    }

    #[test]
    fn my_number_invalid_check_digits() {
        for d in 0..=9u8 {
            let s = format!("12345678901{d}");
            assert_eq!(is_valid_my_number(&s), d == 8, "{s}");
        }
        assert!(!is_valid_my_number("12345678901"));
        assert!(!is_valid_my_number("1234567890180"));
        assert!(!is_valid_my_number("12345678901a"));
    }

    #[test]
    fn my_number_in_text() {
        assert!(contains_my_number("個人番号: 123456789018 です"));
        assert!(contains_my_number("番号 1234-5678-9018。"));
        assert!(contains_my_number("{\"n\":\"1234 5678 9018\"}"));
        assert!(contains_my_number("１２３４５６７８９０１８"));
        assert!(!contains_my_number("個人番号: 123456789017 です"));
        // Part of a longer digit run (a phone or account number): not a My Number.
        assert!(!contains_my_number("9123456789018"));
        assert!(!contains_my_number("1234567890189"));
        // Mixed separators are not a written My Number.
        assert!(!contains_my_number("1234-5678 9018"));
        assert!(contains_my_number("x 111111111117 y 123456789018"));
    }

    #[test]
    fn dlp_scan() {
        let pats = vec![
            dlp_my_number("mynumber".into(), Action::Block),
            dlp_keywords("records".into(), Action::Block),
            dlp_regex("student-id".into(), Action::Allow, r"S\d{6}").unwrap(),
        ];
        let dlp = Dlp::build(pats, vec![(1, "指導要録".into()), (1, "成績一覧".into())]).unwrap();
        let mut f = Vec::new();
        dlp.scan("2024年度 成績一覧 S123456", &mut f);
        f.sort();
        assert_eq!(f, vec![1, 2]);
        let mut f = Vec::new();
        dlp.scan("nothing here 123456789017", &mut f);
        assert!(f.is_empty());
        dlp.scan("123456789018", &mut f);
        assert_eq!(f, vec![0]);
    }

    #[test]
    fn glob() {
        assert!(glob_match(
            "*/_layouts/15/download.aspx*",
            "/sites/a/_layouts/15/Download.aspx"
        ));
        assert!(glob_match(
            "/2/files/upload*",
            "/2/files/upload_session/start"
        ));
        assert!(!glob_match("/2/files/upload*", "/x/2/files/upload"));
        assert!(glob_match(
            "*/_api/v2.*/drives/*:/content*",
            "/_api/v2.0/drives/b!x/root:/a.docx:/content"
        ));
    }

    #[test]
    fn templates() {
        let vars = [("a", Some("x".to_string())), ("b", None)];
        assert_eq!(fill_template("{a}", &vars).as_deref(), Some("x"));
        assert_eq!(
            fill_template("restrict-msa", &vars).as_deref(),
            Some("restrict-msa")
        );
        assert_eq!(fill_template("{b}", &vars), None);
        assert_eq!(fill_template("{c}", &vars), None);
    }
}
