//! Edits of the policy document as toml_edit operations: each changes only
//! the values it is about, so comments, blank lines, key order and the
//! layout of everything else stay as the administrators wrote them.
//!
//! An edit that cannot apply (no such group, entry already listed, a value
//! that is not a CIDR …) is an [`EditError`] naming the form field, in
//! Japanese and English; the document is then left as it was.

use toml_edit::{Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value};

/// Allow or deny list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListKind {
    Allow,
    Deny,
}

impl ListKind {
    pub fn key(self) -> &'static str {
        match self {
            ListKind::Allow => "allow",
            ListKind::Deny => "deny",
        }
    }
    pub fn parse(s: &str) -> Option<ListKind> {
        match s {
            "allow" => Some(ListKind::Allow),
            "deny" => Some(ListKind::Deny),
            _ => None,
        }
    }
}

/// Whose list: the board-wide `[categories]`, a `[[group]]`'s or a
/// `[[policy]]`'s; or one device's or one site's, which are entries of
/// the board-wide list with a `devices = ["<id>"]` / `locations =
/// ["<site>"]` condition.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "scope", content = "name", rename_all = "lowercase")]
pub enum ListScope {
    Global,
    Group(String),
    Policy(String),
    Device(String),
    Site(String),
}

impl ListScope {
    /// `global`, `group:<name>`, `policy:<name>`, `device:<id>` or
    /// `site:<name>` (form values).
    pub fn parse(s: &str) -> Option<ListScope> {
        if s == "global" {
            return Some(ListScope::Global);
        }
        let (kind, name) = s.split_once(':').filter(|(_, n)| !n.is_empty())?;
        let name = name.to_string();
        match kind {
            "group" => Some(ListScope::Group(name)),
            "policy" => Some(ListScope::Policy(name)),
            "device" => Some(ListScope::Device(name)),
            "site" => Some(ListScope::Site(name)),
            _ => None,
        }
    }
    pub fn as_form(&self) -> String {
        match self {
            ListScope::Global => "global".into(),
            ListScope::Group(g) => format!("group:{g}"),
            ListScope::Policy(p) => format!("policy:{p}"),
            ListScope::Device(d) => format!("device:{d}"),
            ListScope::Site(s) => format!("site:{s}"),
        }
    }

    /// The scope whose table holds this scope's entries.
    fn owner(&self) -> ListScope {
        match self {
            ListScope::Device(_) | ListScope::Site(_) => ListScope::Global,
            s => s.clone(),
        }
    }

    /// The entry condition the scope writes (`devices` or `locations`
    /// with one value), if any.
    fn condition(&self) -> Option<(&'static str, &str)> {
        match self {
            ListScope::Device(d) => Some(("devices", d)),
            ListScope::Site(s) => Some(("locations", s)),
            _ => None,
        }
    }

    /// The scope of a list element found in the list of `self` (the
    /// board-wide list's elements may name one device or one site);
    /// `None` for an element with another condition, written by hand.
    pub fn of_element(&self, v: &Value) -> Option<ListScope> {
        let (devices, locations) = element_conditions(v);
        match (devices.as_slice(), locations.as_slice()) {
            ([], []) => Some(self.clone()),
            ([d], []) if *self == ListScope::Global => Some(ListScope::Device(d.clone())),
            ([], [s]) if *self == ListScope::Global => Some(ListScope::Site(s.clone())),
            _ => None,
        }
    }
}

/// The `device(s)` and `location(s)` values of a list element.
fn element_conditions(v: &Value) -> (Vec<String>, Vec<String>) {
    let Some(t) = v.as_inline_table() else {
        return (Vec::new(), Vec::new());
    };
    let values = |singular: &str, plural: &str| -> Vec<String> {
        let mut out = Vec::new();
        for k in [singular, plural] {
            match t.get(k) {
                Some(Value::String(s)) => out.push(s.value().clone()),
                Some(Value::Array(a)) => {
                    out.extend(a.iter().filter_map(|x| x.as_str()).map(str::to_string))
                }
                _ => {}
            }
        }
        out
    };
    (values("device", "devices"), values("location", "locations"))
}

/// One change an administrator asks for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Edit {
    /// Adds `entry` (a domain, or domain/path) to a list; with `until`
    /// (`YYYY-MM-DD`) the entry applies through that day only.
    AddListEntry {
        scope: ListScope,
        kind: ListKind,
        entry: String,
        until: Option<String>,
        note: Option<String>,
    },
    RemoveListEntry {
        scope: ListScope,
        kind: ListKind,
        entry: String,
    },
    /// Blocks (or stops blocking) a category for one `[[policy]]`.
    /// `rule_blocked`: some blocking rule of the policy names the category
    /// (then "off" must hide it from the rules, and "on" only un-hides it).
    SetCategory {
        policy: String,
        category: String,
        blocked: bool,
        rule_blocked: bool,
    },
    /// Adds a site (`original` = None) or changes one; renaming a site
    /// renames it in every `location(s)` condition too.
    UpsertSite {
        original: Option<String>,
        name: String,
        cidrs: Vec<String>,
        beacon_key: Option<String>,
        assertion: bool,
    },
    /// The block page's contact; `None` or empty removes a field.
    SetContact {
        name: Option<String>,
        phone: Option<String>,
        email: Option<String>,
        url: Option<String>,
    },
}

/// Why an edit cannot apply, for the form field `field`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EditError {
    pub field: String,
    pub ja: String,
    pub en: String,
}

impl EditError {
    pub fn new(field: &str, ja: impl Into<String>, en: impl Into<String>) -> EditError {
        EditError {
            field: field.to_string(),
            ja: ja.into(),
            en: en.into(),
        }
    }
}

impl std::fmt::Display for EditError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.en)
    }
}

impl Edit {
    /// One line for the audit log and the version list (English).
    pub fn summary(&self) -> String {
        let scope = |s: &ListScope| match s {
            ListScope::Global => "board-wide".to_string(),
            ListScope::Group(g) => format!("group {g}"),
            ListScope::Policy(p) => format!("policy {p}"),
            ListScope::Device(d) => format!("device {d}"),
            ListScope::Site(s) => format!("site {s}"),
        };
        match self {
            Edit::AddListEntry {
                scope: s,
                kind,
                entry,
                until,
                ..
            } => format!(
                "add {entry} to the {} {} list{}",
                scope(s),
                kind.key(),
                until
                    .as_ref()
                    .map(|u| format!(" until {u}"))
                    .unwrap_or_default()
            ),
            Edit::RemoveListEntry {
                scope: s,
                kind,
                entry,
            } => format!("remove {entry} from the {} {} list", scope(s), kind.key()),
            Edit::SetCategory {
                policy,
                category,
                blocked,
                ..
            } => format!(
                "{} category {category} for policy {policy}",
                if *blocked { "block" } else { "stop blocking" }
            ),
            Edit::UpsertSite { original, name, .. } => match original {
                None => format!("add site {name}"),
                Some(o) if o != name => format!("change site {o} (renamed {name})"),
                Some(_) => format!("change site {name}"),
            },
            Edit::SetContact { .. } => "change the block page contact".into(),
        }
    }

    /// The same line in Japanese, for the console's pages and version list.
    pub fn summary_ja(&self) -> String {
        let scope = |s: &ListScope| match s {
            ListScope::Global => "全体".to_string(),
            ListScope::Group(g) => format!("グループ「{g}」"),
            ListScope::Policy(p) => format!("ポリシー「{p}」"),
            ListScope::Device(d) => format!("端末「{d}」"),
            ListScope::Site(s) => format!("拠点「{s}」"),
        };
        let list = |k: &ListKind| match k {
            ListKind::Allow => "許可リスト",
            ListKind::Deny => "拒否リスト",
        };
        match self {
            Edit::AddListEntry {
                scope: s,
                kind,
                entry,
                until,
                ..
            } => format!(
                "{}の{}に {entry} を追加{}",
                scope(s),
                list(kind),
                until
                    .as_ref()
                    .map(|u| format!("（{u} まで）"))
                    .unwrap_or_default()
            ),
            Edit::RemoveListEntry {
                scope: s,
                kind,
                entry,
            } => format!("{}の{}から {entry} を削除", scope(s), list(kind)),
            Edit::SetCategory {
                policy,
                category,
                blocked,
                ..
            } => format!(
                "ポリシー「{policy}」でカテゴリ {category} を{}",
                if *blocked {
                    "ブロック"
                } else {
                    "ブロックしない"
                }
            ),
            Edit::UpsertSite { original, name, .. } => match original {
                None => format!("拠点「{name}」を追加"),
                Some(o) if o != name => format!("拠点「{o}」を変更（名前を「{name}」に）"),
                Some(_) => format!("拠点「{name}」を変更"),
            },
            Edit::SetContact { .. } => "ブロック画面の問い合わせ先を変更".into(),
        }
    }

    /// Applies the edit to `doc`; on `Err` the document is unchanged.
    pub fn apply(&self, doc: &mut DocumentMut) -> Result<(), EditError> {
        let mut work = doc.clone();
        match self {
            Edit::AddListEntry {
                scope,
                kind,
                entry,
                until,
                note,
            } => add_entry(
                &mut work,
                scope,
                *kind,
                entry,
                until.as_deref(),
                note.as_deref(),
            )?,
            Edit::RemoveListEntry { scope, kind, entry } => {
                remove_entry(&mut work, scope, *kind, entry)?
            }
            Edit::SetCategory {
                policy,
                category,
                blocked,
                rule_blocked,
            } => set_category(&mut work, policy, category, *blocked, *rule_blocked)?,
            Edit::UpsertSite {
                original,
                name,
                cidrs,
                beacon_key,
                assertion,
            } => upsert_site(
                &mut work,
                original.as_deref(),
                name,
                cidrs,
                beacon_key.as_deref(),
                *assertion,
            )?,
            Edit::SetContact {
                name,
                phone,
                email,
                url,
            } => set_contact(&mut work, name, phone, email, url)?,
        }
        *doc = work;
        Ok(())
    }
}

/// The `[[name]]` table whose `name = …` is `wanted`.
fn named_table<'d>(doc: &'d mut DocumentMut, array: &str, wanted: &str) -> Option<&'d mut Table> {
    doc.get_mut(array)?
        .as_array_of_tables_mut()?
        .iter_mut()
        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(wanted))
}

/// The table holding the list of `scope`, created for the board-wide one.
fn list_table<'d>(doc: &'d mut DocumentMut, scope: &ListScope) -> Result<&'d mut Table, EditError> {
    match scope {
        ListScope::Site(s) => {
            let known = doc
                .get("site")
                .and_then(|a| a.as_array_of_tables())
                .is_some_and(|a| {
                    a.iter()
                        .any(|t| t.get("name").and_then(|n| n.as_str()) == Some(s.as_str()))
                });
            if !known {
                return Err(EditError::new(
                    "scope",
                    format!("拠点「{s}」はポリシーにありません（拠点の一覧を確認してください）。"),
                    format!("there is no site `{s}` in the policy"),
                ));
            }
            list_table(doc, &ListScope::Global)
        }
        ListScope::Device(d) => {
            if d.trim().is_empty() || d.chars().any(char::is_control) {
                return Err(EditError::new(
                    "scope",
                    "端末 ID が空か、使えない文字を含んでいます。",
                    "the device id is empty or holds control characters",
                ));
            }
            list_table(doc, &ListScope::Global)
        }
        ListScope::Global => {
            if doc.get("categories").is_none() {
                doc.insert("categories", Item::Table(Table::new()));
            }
            doc.get_mut("categories")
                .and_then(|i| i.as_table_mut())
                .ok_or_else(|| {
                    EditError::new(
                        "scope",
                        "[categories] が表形式ではないため編集できません。ファイルを確認してください。",
                        "[categories] is not a table; check the file.",
                    )
                })
        }
        ListScope::Group(g) => named_table(doc, "group", g).ok_or_else(|| {
            EditError::new(
                "scope",
                format!("グループ「{g}」はポリシーにありません。"),
                format!("there is no group `{g}` in the policy"),
            )
        }),
        ListScope::Policy(p) => named_table(doc, "policy", p).ok_or_else(|| {
            EditError::new(
                "scope",
                format!("ポリシー「{p}」はありません。"),
                format!("there is no policy `{p}`"),
            )
        }),
    }
}

/// Whether the list element `v` is `entry` for exactly `scope` (a
/// device's entry is not the board-wide one of the same domain).
fn is_entry(v: &Value, entry: &str, scope: &ListScope) -> bool {
    entry_of(v) == Some(entry) && scope.owner().of_element(v).as_ref() == Some(scope)
}

/// The entry text of an array element: `"x"` or `{ entry = "x", … }`.
fn entry_of(v: &Value) -> Option<&str> {
    v.as_str().or_else(|| {
        v.as_inline_table()
            .and_then(|t| t.get("entry"))
            .and_then(|e| e.as_str())
    })
}

/// The array under `key` (a lone string becomes a one-element array).
fn array_mut<'t>(t: &'t mut Table, key: &str, field: &str) -> Result<&'t mut Array, EditError> {
    if let Some(s) = t.get(key).and_then(|i| i.as_str()).map(str::to_string) {
        let mut a = Array::new();
        a.push(s);
        t.insert(key, toml_edit::value(a));
    }
    if t.get(key).is_none() {
        t.insert(key, toml_edit::value(Array::new()));
    }
    t.get_mut(key)
        .and_then(|i| i.as_array_mut())
        .ok_or_else(|| {
            EditError::new(
                field,
                format!("`{key}` が配列ではないため編集できません。ファイルを確認してください。"),
                format!("`{key}` is not an array; check the file"),
            )
        })
}

/// Appends `v` with the spacing of the existing elements (one per line
/// stays one per line).
fn push_like_siblings(a: &mut Array, mut v: Value) {
    if let Some(last) = a.iter().last() {
        let prefix = last
            .decor()
            .prefix()
            .and_then(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or(" ")
            .to_string();
        v.decor_mut().set_prefix(prefix);
        v.decor_mut().set_suffix("");
    }
    a.push_formatted(v);
}

fn add_entry(
    doc: &mut DocumentMut,
    scope: &ListScope,
    kind: ListKind,
    entry: &str,
    until: Option<&str>,
    note: Option<&str>,
) -> Result<(), EditError> {
    let entry = entry.trim();
    if entry.is_empty() {
        return Err(EditError::new(
            "entry",
            "追加するドメインまたは URL を入力してください。",
            "enter the domain or URL to add",
        ));
    }
    if let Err(e) = check_entry(entry) {
        return Err(EditError::new(
            "entry",
            format!("「{entry}」はリストの項目として使えません（{e}）。example.com や example.com/path のように入力してください。"),
            format!("`{entry}` is not a valid list entry ({e}); write it like example.com or example.com/path"),
        ));
    }
    if let Some(u) = until {
        if let Err(e) = komugate_policy::pattern::parse_date(u) {
            return Err(EditError::new(
                "until",
                format!("有効期限「{u}」は日付として読み取れません。2026-03-31 のように入力してください。"),
                e,
            ));
        }
    }
    if scope.condition().is_some() && entry.contains('/') {
        return Err(EditError::new(
            "entry",
            format!("端末・拠点ごとの許可はドメイン単位です。「{entry}」ではなく example.com のようにドメインを入力してください。"),
            format!("an entry for one device or site is a domain (example.com), not `{entry}`"),
        ));
    }
    let t = list_table(doc, scope)?;
    let a = array_mut(t, kind.key(), "entry")?;
    if a.iter().any(|v| is_entry(v, entry, scope)) {
        return Err(EditError::new(
            "entry",
            format!("「{entry}」は既にこのリストにあります。"),
            format!("`{entry}` is already on this list"),
        ));
    }
    let note = note.map(str::trim).filter(|n| !n.is_empty());
    let v: Value = match (until, note, scope.condition()) {
        (None, None, None) => entry.into(),
        (u, n, cond) => {
            let mut it = InlineTable::new();
            it.insert("entry", entry.into());
            if let Some((key, value)) = cond {
                it.insert(key, Value::Array(string_array(&[value.to_string()])));
            }
            if let Some(u) = u {
                it.insert("until", u.into());
            }
            if let Some(n) = n {
                it.insert("note", n.into());
            }
            it.fmt();
            Value::InlineTable(it)
        }
    };
    push_like_siblings(a, v);
    Ok(())
}

/// The same check `policy check` makes of an inline list entry.
fn check_entry(entry: &str) -> Result<(), String> {
    let mut b = komugate_categories::MatcherBuilder::new();
    let e = entry
        .strip_prefix("https://")
        .or_else(|| entry.strip_prefix("http://"))
        .unwrap_or(entry);
    let e = e
        .strip_prefix("*.")
        .or_else(|| e.strip_prefix('.'))
        .unwrap_or(e);
    if e.contains('/') {
        b.add_url("check", e)
    } else {
        b.add_domain("check", e)
    }
}

fn remove_entry(
    doc: &mut DocumentMut,
    scope: &ListScope,
    kind: ListKind,
    entry: &str,
) -> Result<(), EditError> {
    let t = list_table(doc, scope)?;
    let missing = || {
        EditError::new(
            "entry",
            format!("「{entry}」はこのリストにありません（既に削除されたか、ファイルが変更されています）。"),
            format!("`{entry}` is not on this list (already removed, or the file changed)"),
        )
    };
    let Some(a) = t.get_mut(kind.key()).and_then(|i| i.as_array_mut()) else {
        // A lone string value.
        if scope.condition().is_none() && t.get(kind.key()).and_then(|i| i.as_str()) == Some(entry)
        {
            t.remove(kind.key());
            return Ok(());
        }
        return Err(missing());
    };
    let Some(i) = a.iter().position(|v| is_entry(v, entry, scope)) else {
        return Err(missing());
    };
    a.remove(i);
    if a.is_empty() {
        a.set_trailing("");
        a.set_trailing_comma(false);
    }
    Ok(())
}

/// Removes `value` from the string array `key`; drops the key when empty.
fn remove_string(t: &mut Table, key: &str, value: &str) {
    if let Some(a) = t.get_mut(key).and_then(|i| i.as_array_mut()) {
        a.retain(|v| v.as_str() != Some(value));
        if a.is_empty() {
            t.remove(key);
        }
    } else if t.get(key).and_then(|i| i.as_str()) == Some(value) {
        t.remove(key);
    }
}

/// Adds `value` to the string array `key` (created on one line) unless there.
fn add_string(t: &mut Table, key: &str, value: &str) -> Result<(), EditError> {
    let a = array_mut(t, key, "category")?;
    if !a.iter().any(|v| v.as_str() == Some(value)) {
        push_like_siblings(a, value.into());
    }
    Ok(())
}

fn set_category(
    doc: &mut DocumentMut,
    policy: &str,
    category: &str,
    blocked: bool,
    rule_blocked: bool,
) -> Result<(), EditError> {
    let t = named_table(doc, "policy", policy).ok_or_else(|| {
        EditError::new(
            "policy",
            format!("ポリシー「{policy}」はありません（カテゴリの切り替えには [[policy]] が必要です）。"),
            format!("there is no [[policy]] `{policy}`"),
        )
    })?;
    if blocked {
        remove_string(t, "ignore_categories", category);
        if !rule_blocked {
            add_string(t, "block_categories", category)?;
        }
    } else {
        remove_string(t, "block_categories", category);
        if rule_blocked {
            add_string(t, "ignore_categories", category)?;
        }
    }
    Ok(())
}

fn string_array(values: &[String]) -> Array {
    let mut a = Array::new();
    for v in values {
        a.push(v.as_str());
    }
    a
}

fn upsert_site(
    doc: &mut DocumentMut,
    original: Option<&str>,
    name: &str,
    cidrs: &[String],
    beacon_key: Option<&str>,
    assertion: bool,
) -> Result<(), EditError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(EditError::new(
            "name",
            "拠点名を入力してください。",
            "enter the site's name",
        ));
    }
    for c in cidrs {
        let ok = c.parse::<ipnet::IpNet>().is_ok() || c.parse::<std::net::IpAddr>().is_ok();
        if !ok {
            return Err(EditError::new(
                "cidrs",
                format!("「{c}」は CIDR として読み取れません。203.0.113.16/29 のように入力してください。"),
                format!("`{c}` is not a CIDR (e.g. 203.0.113.16/29)"),
            ));
        }
    }
    if cidrs.is_empty() && !assertion {
        return Err(EditError::new(
            "cidrs",
            "拠点のアドレス範囲 (CIDR) を入力するか、「拠点証明（ビーコン）で判定」を選んでください。",
            "give the site's address ranges (CIDRs) or mark it as recognised by beacon assertions",
        ));
    }
    let exists = |doc: &DocumentMut, n: &str| {
        doc.get("site")
            .and_then(|s| s.as_array_of_tables())
            .is_some_and(|a| {
                a.iter()
                    .any(|t| t.get("name").and_then(|v| v.as_str()) == Some(n))
            })
    };
    if original != Some(name) && exists(doc, name) {
        return Err(EditError::new(
            "name",
            format!("拠点「{name}」は既にあります。別の名前にするか、一覧からその拠点を編集してください。"),
            format!("a site named `{name}` already exists"),
        ));
    }
    let t: &mut Table = match original {
        Some(o) => named_table(doc, "site", o).ok_or_else(|| {
            EditError::new(
                "name",
                format!("拠点「{o}」はありません（ファイルが変更された可能性があります）。"),
                format!("there is no site `{o}` (the file may have changed)"),
            )
        })?,
        None => {
            if doc.get("site").is_none() {
                doc.insert("site", Item::ArrayOfTables(ArrayOfTables::new()));
            }
            let arr = doc
                .get_mut("site")
                .and_then(|i| i.as_array_of_tables_mut())
                .ok_or_else(|| {
                    EditError::new(
                        "name",
                        "site が [[site]] の形式ではないため追加できません。",
                        "`site` is not an array of tables ([[site]])",
                    )
                })?;
            let mut t = Table::new();
            // Right after the last [[site]] (the document sorts by position, stably).
            if let Some(p) = arr.iter().filter_map(|t| t.position()).max() {
                t.set_position(p);
            }
            arr.push(t);
            arr.iter_mut().last().expect("just pushed")
        }
    };
    t.insert("name", toml_edit::value(name));
    if cidrs.is_empty() {
        t.remove("cidrs");
    } else {
        t.insert("cidrs", toml_edit::value(string_array(cidrs)));
    }
    if assertion {
        t.insert("assertion", toml_edit::value(true));
    } else {
        t.remove("assertion");
    }
    match beacon_key.map(str::trim).filter(|k| !k.is_empty()) {
        Some(k) => {
            t.insert("beacon_key", toml_edit::value(k));
        }
        None => {
            t.remove("beacon_key");
        }
    }
    if let Some(o) = original.filter(|o| *o != name) {
        rename_locations(doc.as_table_mut(), o, name);
    }
    Ok(())
}

/// Renames site `old` in every `location`/`locations` value below `t`.
fn rename_locations(t: &mut dyn toml_edit::TableLike, old: &str, new: &str) {
    for (k, item) in t.iter_mut() {
        let is_loc = k == "location" || k == "locations";
        match item {
            Item::Table(sub) => rename_locations(sub, old, new),
            Item::ArrayOfTables(a) => {
                for sub in a.iter_mut() {
                    rename_locations(sub, old, new);
                }
            }
            Item::Value(v) => rename_in_value(v, is_loc, old, new),
            Item::None => {}
        }
    }
}

fn rename_in_value(v: &mut Value, is_loc: bool, old: &str, new: &str) {
    match v {
        Value::String(s) if is_loc && s.value() == old => {
            let decor = s.decor().clone();
            let mut n = toml_edit::Formatted::new(new.to_string());
            *n.decor_mut() = decor;
            *s = n;
        }
        // A location list's names, or the inline tables in any array (list
        // entries with `locations`).
        Value::Array(a) => {
            for e in a.iter_mut() {
                rename_in_value(e, is_loc, old, new);
            }
        }
        Value::InlineTable(it) => {
            for (k, e) in it.iter_mut() {
                let loc = k == "location" || k == "locations";
                rename_in_value(e, loc, old, new);
            }
        }
        _ => {}
    }
}

fn set_contact(
    doc: &mut DocumentMut,
    name: &Option<String>,
    phone: &Option<String>,
    email: &Option<String>,
    url: &Option<String>,
) -> Result<(), EditError> {
    if let Some(u) = url.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
        if !(u.starts_with("https://") || u.starts_with("http://"))
            || u.contains(char::is_whitespace)
        {
            return Err(EditError::new(
                "url",
                format!(
                    "「{u}」は URL として使えません。https:// で始まる URL を入力してください。"
                ),
                format!("`{u}` is not an http(s) URL"),
            ));
        }
    }
    if let Some(e) = email.as_deref().map(str::trim).filter(|e| !e.is_empty()) {
        if !e.contains('@') || e.contains(char::is_whitespace) {
            return Err(EditError::new(
                "email",
                format!("「{e}」はメールアドレスとして使えません。"),
                format!("`{e}` is not an email address"),
            ));
        }
    }
    if doc.get("contact").is_none() {
        doc.insert("contact", Item::Table(Table::new()));
    }
    let t = doc
        .get_mut("contact")
        .and_then(|i| i.as_table_mut())
        .ok_or_else(|| {
            EditError::new(
                "name",
                "[contact] が表形式ではないため編集できません。",
                "[contact] is not a table",
            )
        })?;
    for (key, v) in [
        ("name", name),
        ("phone", phone),
        ("email", email),
        ("url", url),
    ] {
        match v.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(s) => match t.get_mut(key).and_then(|i| i.as_value_mut()) {
                // Keep the comment after the value.
                Some(old) => {
                    let decor = old.decor().clone();
                    *old = s.into();
                    *old.decor_mut() = decor;
                }
                None => {
                    t.insert(key, toml_edit::value(s));
                }
            },
            None => {
                t.remove(key);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"# the board's policy
version = 1

[contact]                     # shown on the block page
name = "ICT 担当"
phone = "0263-00-0000"        # office line

[[group]]
name = "教職員"
# teachers' own list
deny = ["games.example"]

[[site]]
name = "A 小学校"
cidrs = ["203.0.113.0/29"]

[[site]]
name = "B 中学校"
cidrs = ["203.0.113.8/29"]

# the categories
[categories]
allow = [
    "azumino.example",
    "city.example",
]

[[ruleset]]
name = "rs"

[[ruleset.rule]]
name = "B only"
location = "B 中学校"
when = { locations = ["A 小学校", "B 中学校"] }
action = "allow"

[[policy]]
name = "全職員"
rulesets = ["rs"]
"#;

    fn run(e: Edit) -> Result<String, EditError> {
        let mut d: DocumentMut = DOC.parse().unwrap();
        e.apply(&mut d)?;
        Ok(d.to_string())
    }

    #[test]
    fn adds_entries_keeping_layout_and_comments() {
        let out = run(Edit::AddListEntry {
            scope: ListScope::Global,
            kind: ListKind::Allow,
            entry: "new.example".into(),
            until: Some("2026-03-31".into()),
            note: Some("申請 #3".into()),
        })
        .unwrap();
        assert!(
            out.contains("    \"city.example\",\n    { entry = \"new.example\", until = \"2026-03-31\", note = \"申請 #3\" },\n]"),
            "{out}"
        );
        assert!(out.contains("# the categories\n[categories]"), "{out}");
        let out = run(Edit::AddListEntry {
            scope: ListScope::Group("教職員".into()),
            kind: ListKind::Deny,
            entry: "more.example".into(),
            until: None,
            note: None,
        })
        .unwrap();
        assert!(
            out.contains("# teachers' own list\ndeny = [\"games.example\", \"more.example\"]"),
            "{out}"
        );
        // Exactly one line differs from the original for a one-line change.
        let changed = DOC.lines().zip(out.lines()).filter(|(a, b)| a != b).count();
        assert_eq!(changed, 1);
    }

    #[test]
    fn refuses_bad_or_duplicate_entries() {
        let e = run(Edit::AddListEntry {
            scope: ListScope::Global,
            kind: ListKind::Allow,
            entry: "city.example".into(),
            until: None,
            note: None,
        })
        .unwrap_err();
        assert_eq!(e.field, "entry");
        assert!(e.ja.contains("既に"), "{}", e.ja);
        let e = run(Edit::AddListEntry {
            scope: ListScope::Group("nobody".into()),
            kind: ListKind::Allow,
            entry: "x.example".into(),
            until: None,
            note: None,
        })
        .unwrap_err();
        assert_eq!(e.field, "scope");
        let e = run(Edit::AddListEntry {
            scope: ListScope::Global,
            kind: ListKind::Allow,
            entry: "x.example".into(),
            until: Some("2026-02-30".into()),
            note: None,
        })
        .unwrap_err();
        assert_eq!(e.field, "until");
    }

    /// Entries for one device or one site are entries of the board-wide
    /// list with a condition; each is its own entry (added, refused as a
    /// duplicate and removed without touching the others of the domain).
    #[test]
    fn device_and_site_entries() {
        let add = |scope: ListScope, until: Option<&str>| Edit::AddListEntry {
            scope,
            kind: ListKind::Allow,
            entry: "games.example".into(),
            until: until.map(str::to_string),
            note: None,
        };
        let mut d: DocumentMut = DOC.parse().unwrap();
        add(ListScope::Device("PC-1".into()), Some("2026-03-31"))
            .apply(&mut d)
            .unwrap();
        add(ListScope::Device("PC-2".into()), None)
            .apply(&mut d)
            .unwrap();
        add(ListScope::Site("A 小学校".into()), None)
            .apply(&mut d)
            .unwrap();
        add(ListScope::Global, None).apply(&mut d).unwrap();
        let out = d.to_string();
        assert!(
            out.contains("    { entry = \"games.example\", devices = [\"PC-1\"], until = \"2026-03-31\" },\n    { entry = \"games.example\", devices = [\"PC-2\"] },\n    { entry = \"games.example\", locations = [\"A 小学校\"] },\n    \"games.example\",\n]"),
            "{out}"
        );
        let e = add(ListScope::Device("PC-1".into()), None)
            .apply(&mut d)
            .unwrap_err();
        assert_eq!(e.field, "entry");
        let e = add(ListScope::Site("Z 小学校".into()), None)
            .apply(&mut d)
            .unwrap_err();
        assert_eq!(e.field, "scope");
        let e = Edit::AddListEntry {
            scope: ListScope::Device("PC-3".into()),
            kind: ListKind::Allow,
            entry: "games.example/path".into(),
            until: None,
            note: None,
        }
        .apply(&mut d)
        .unwrap_err();
        assert_eq!(e.field, "entry");
        Edit::RemoveListEntry {
            scope: ListScope::Device("PC-1".into()),
            kind: ListKind::Allow,
            entry: "games.example".into(),
        }
        .apply(&mut d)
        .unwrap();
        let out = d.to_string();
        assert!(!out.contains("PC-1"), "{out}");
        assert!(
            out.contains("PC-2") && out.contains("\"games.example\",\n"),
            "{out}"
        );
        // Renaming the site renames it in the entry's condition.
        Edit::UpsertSite {
            original: Some("A 小学校".into()),
            name: "A 小".into(),
            cidrs: vec!["203.0.113.0/29".into()],
            beacon_key: None,
            assertion: false,
        }
        .apply(&mut d)
        .unwrap();
        assert!(d.to_string().contains("locations = [\"A 小\"]"), "{d}");
        assert_eq!(
            ListScope::parse("site:A 小"),
            Some(ListScope::Site("A 小".into()))
        );
        assert_eq!(ListScope::parse("device:"), None);
    }

    #[test]
    fn removes_entries() {
        let out = run(Edit::RemoveListEntry {
            scope: ListScope::Global,
            kind: ListKind::Allow,
            entry: "azumino.example".into(),
        })
        .unwrap();
        assert!(!out.contains("azumino.example"), "{out}");
        assert!(out.contains("\"city.example\""), "{out}");
        assert!(run(Edit::RemoveListEntry {
            scope: ListScope::Global,
            kind: ListKind::Deny,
            entry: "azumino.example".into(),
        })
        .is_err());
    }

    #[test]
    fn sites_are_added_after_the_last_and_renamed_everywhere() {
        let out = run(Edit::UpsertSite {
            original: None,
            name: "C 小学校".into(),
            cidrs: vec!["203.0.113.16/29".into()],
            beacon_key: None,
            assertion: false,
        })
        .unwrap();
        let c = out.find("C 小学校").unwrap();
        assert!(
            out.find("B 中学校").unwrap() < c && c < out.find("[categories]").unwrap(),
            "{out}"
        );
        let e = run(Edit::UpsertSite {
            original: None,
            name: "A 小学校".into(),
            cidrs: vec!["203.0.113.16/29".into()],
            beacon_key: None,
            assertion: false,
        })
        .unwrap_err();
        assert_eq!(e.field, "name");
        let e = run(Edit::UpsertSite {
            original: None,
            name: "D".into(),
            cidrs: vec!["203.0.113.300/29".into()],
            beacon_key: None,
            assertion: false,
        })
        .unwrap_err();
        assert_eq!(e.field, "cidrs");
        let out = run(Edit::UpsertSite {
            original: Some("B 中学校".into()),
            name: "B 中".into(),
            cidrs: vec!["203.0.113.8/29".into()],
            beacon_key: None,
            assertion: false,
        })
        .unwrap();
        assert!(!out.contains("B 中学校"), "{out}");
        assert!(out.contains("location = \"B 中\""), "{out}");
        assert!(
            out.contains("locations = [\"A 小学校\", \"B 中\"]"),
            "{out}"
        );
    }

    #[test]
    fn categories_and_contact() {
        let out = run(Edit::SetCategory {
            policy: "全職員".into(),
            category: "games".into(),
            blocked: true,
            rule_blocked: false,
        })
        .unwrap();
        assert!(out.contains("block_categories = [\"games\"]"), "{out}");
        let out = run(Edit::SetCategory {
            policy: "全職員".into(),
            category: "adult".into(),
            blocked: false,
            rule_blocked: true,
        })
        .unwrap();
        assert!(out.contains("ignore_categories = [\"adult\"]"), "{out}");
        let out = run(Edit::SetContact {
            name: Some("学校教育課".into()),
            phone: Some("0263-11-1111".into()),
            email: None,
            url: Some("https://example.jp/".into()),
        })
        .unwrap();
        assert!(
            out.contains("phone = \"0263-11-1111\"        # office line"),
            "{out}"
        );
        assert!(
            out.contains("[contact]                     # shown on the block page"),
            "{out}"
        );
        assert!(out.contains("url = \"https://example.jp/\""), "{out}");
        let e = run(Edit::SetContact {
            name: None,
            phone: None,
            email: Some("not-an-address".into()),
            url: None,
        })
        .unwrap_err();
        assert_eq!(e.field, "email");
    }
}
