//! What `policy check` and `policy explain` say to people, one table per
//! language ([`EN`], the default, and [`JA`] for `--lang ja`). A sentence
//! with values is a function of the table, so every language keeps its own
//! word order; nothing outside this file chooses words by language.
//!
//! Diagnostics (`file:line:column: …`) stay in English: they name TOML
//! keys and values exactly as written.

use std::fmt::Write as _;

use crate::compile::Summary;
use crate::eval::{Decision, Location};
use crate::{Action, TunnelMode};

/// One language's words.
pub struct Wording {
    /// Explain: one label per line, padded so the values line up.
    pub request: &'static str,
    pub location: &'static str,
    pub device: &'static str,
    pub user: &'static str,
    /// After the user's name when signed in through OpenID Connect.
    pub signed_in: &'static str,
    pub user_groups: &'static str,
    pub posture: &'static str,
    pub groups: &'static str,
    pub categories: &'static str,
    pub app: &'static str,
    pub policy: &'static str,
    pub rule: &'static str,
    pub action: &'static str,
    pub message: &'static str,
    pub egress: &'static str,
    pub tunnel: &'static str,
    pub none: &'static str,
    pub unknown: &'static str,
    pub default_egress: &'static str,
    pub egress_source: fn(pool: &str, source: &str) -> String,
    pub site: fn(&str) -> String,
    pub offsite: &'static str,
    pub allow: &'static str,
    pub block: &'static str,
    pub inspect: &'static str,
    pub bypass: &'static str,
    /// A category id as shown (the Japanese label beside the id in `JA`).
    pub category: fn(&str) -> String,
    /// Check: the first line for a valid policy.
    pub check_ok: fn(file: &str, generation: &str) -> String,
    pub check_counts: fn(&Summary) -> String,
    pub check_policies: &'static str,
    pub check_categories: &'static str,
    pub check_lists: fn(files: usize, domains: usize, urls: usize, invalid: usize) -> String,
    pub check_warning: &'static str,
    /// Check: the last line for an invalid policy.
    pub check_failed: fn(file: &str, errors: usize) -> String,
}

pub static EN: Wording = Wording {
    request: "request:    ",
    location: "location:   ",
    device: "device:     ",
    user: "user:       ",
    signed_in: " (signed in)",
    user_groups: "user groups: ",
    posture: "posture:    ",
    groups: "groups:     ",
    categories: "categories: ",
    app: "app:        ",
    policy: "policy:     ",
    rule: "rule:       ",
    action: "action:     ",
    message: "message:    ",
    egress: "egress:     ",
    tunnel: "tunnel:     ",
    none: "(none)",
    unknown: "(unknown)",
    default_egress: "default",
    egress_source: |pool, source| format!("{pool} (source {source})"),
    site: |s| format!("site {s}"),
    offsite: "offsite",
    allow: "allow",
    block: "block",
    inspect: "inspect",
    bypass: "bypass",
    category: |id| id.to_string(),
    check_ok: |file, generation| format!("{file}: OK (generation {generation})"),
    check_counts: |s| {
        format!(
            "{} sites, {} groups, {} devices, {} apps, {} egress pools, {} rules",
            s.sites, s.groups, s.devices, s.apps, s.egress_pools, s.rules
        )
    },
    check_policies: "policies: ",
    check_categories: "categories: ",
    check_lists: |files, domains, urls, invalid| {
        format!(
            "lists: {files} files, {domains} domains, {urls} urls, {invalid} invalid lines skipped"
        )
    },
    check_warning: "warning: ",
    check_failed: |file, n| format!("{file}: {n} error(s); the policy was not accepted"),
};

pub static JA: Wording = Wording {
    request: "リクエスト:   ",
    location: "場所:         ",
    device: "端末:         ",
    user: "利用者:       ",
    signed_in: "（サインイン中）",
    user_groups: "利用者グループ: ",
    posture: "端末の状態:   ",
    groups: "グループ:     ",
    categories: "カテゴリ:     ",
    app: "アプリ:       ",
    policy: "ポリシー:     ",
    rule: "ルール:       ",
    action: "判定:         ",
    message: "メッセージ:   ",
    egress: "送信元:       ",
    tunnel: "トンネル:     ",
    none: "(なし)",
    unknown: "(不明)",
    default_egress: "既定",
    egress_source: |pool, source| format!("{pool} (送信元アドレス {source})"),
    site: |s| format!("拠点 {s}"),
    offsite: "校外",
    allow: "許可",
    block: "ブロック",
    inspect: "通信内容を検査する",
    bypass: "検査しない (そのまま中継)",
    category: |id| match komugate_categories::category_label(id) {
        Some(label) => format!("{} ({id})", label.ja),
        None => id.to_string(),
    },
    check_ok: |file, generation| format!("{file}: 問題ありません (世代 {generation})"),
    check_counts: |s| {
        format!(
            "拠点 {} 件、グループ {} 件、端末 {} 台、アプリ {} 件、送信元プール {} 件、ルール {} 件",
            s.sites, s.groups, s.devices, s.apps, s.egress_pools, s.rules
        )
    },
    check_policies: "ポリシー: ",
    check_categories: "カテゴリ: ",
    check_lists: |files, domains, urls, invalid| {
        format!("リスト: ファイル {files} 個、ドメイン {domains} 件、URL {urls} 件、読み飛ばした不正な行 {invalid} 行")
    },
    check_warning: "注意: ",
    check_failed: |file, n| {
        format!("{file}: エラーが {n} 件あるため、このポリシーは受け付けられませんでした。上の各行の ファイル:行:列 の箇所を直して、もう一度 check してください。")
    },
};

impl Wording {
    /// The table for a `--lang` value: `en` or `ja`.
    pub fn for_lang(lang: &str) -> Option<&'static Wording> {
        match lang.to_ascii_lowercase().as_str() {
            "en" => Some(&EN),
            "ja" => Some(&JA),
            _ => None,
        }
    }

    fn location(&self, l: &Location) -> String {
        match l {
            Location::Site(s) => (self.site)(s),
            Location::Offsite => self.offsite.to_string(),
        }
    }

    fn list(&self, items: &[String]) -> String {
        if items.is_empty() {
            self.none.to_string()
        } else {
            items.join(", ")
        }
    }

    /// `policy explain`: one line per fact of the decision.
    pub fn explain(&self, d: &Decision) -> String {
        let mut s = String::new();
        let mut line = |label: &str, value: &str| {
            let _ = writeln!(s, "{label}{value}");
        };
        line(self.request, &d.request);
        line(self.location, &self.location(&d.location));
        line(self.device, d.device.as_deref().unwrap_or(self.none));
        match (&d.user, d.signed_in) {
            (Some(u), true) => line(self.user, &format!("{u}{}", self.signed_in)),
            (u, _) => line(self.user, u.as_deref().unwrap_or(self.unknown)),
        }
        if d.signed_in {
            line(self.user_groups, &self.list(&d.user_groups));
        }
        line(self.groups, &self.list(&d.groups));
        let categories: Vec<String> = d.categories.iter().map(|c| (self.category)(c)).collect();
        line(self.categories, &self.list(&categories));
        line(self.app, d.app.as_deref().unwrap_or(self.none));
        if let Some(p) = &d.policy {
            line(self.policy, p);
        }
        match &d.rule_origin {
            Some(o) => line(self.rule, &format!("{} ({o})", d.rule)),
            None => line(self.rule, &d.rule),
        }
        line(
            self.action,
            match d.action {
                Action::Allow => self.allow,
                Action::Block => self.block,
            },
        );
        if let Some(m) = &d.message {
            line(self.message, m);
        }
        if let Some(p) = &d.posture_failure {
            let why = if std::ptr::eq(self, &JA) {
                &p.ja
            } else {
                &p.en
            };
            line(self.posture, &format!("{} ({})", why, p.rule));
        }
        match &d.egress {
            Some(e) => line(
                self.egress,
                &(self.egress_source)(
                    &e.pool,
                    &e.source
                        .or(e.seen_as)
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                ),
            ),
            None => line(self.egress, self.default_egress),
        }
        if let Some(t) = d.tunnel {
            line(
                self.tunnel,
                if t == TunnelMode::Inspect {
                    self.inspect
                } else {
                    self.bypass
                },
            );
        }
        s
    }

    /// `policy check` of a valid policy: what it holds.
    pub fn summary(&self, sm: &Summary) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}",
            (self.check_ok)(&sm.file.display().to_string(), &sm.digest)
        );
        let _ = writeln!(s, "  {}", (self.check_counts)(sm));
        if !sm.policies.is_empty() {
            let _ = writeln!(s, "  {}{}", self.check_policies, sm.policies.join(", "));
        }
        let categories: Vec<String> = sm.categories.iter().map(|c| (self.category)(c)).collect();
        let _ = writeln!(s, "  {}{}", self.check_categories, categories.join(", "));
        let i = &sm.import;
        let _ = writeln!(
            s,
            "  {}",
            (self.check_lists)(i.files, i.domains, i.urls, i.invalid_lines)
        );
        for src in &i.sources {
            for e in &src.first_errors {
                let _ = writeln!(s, "  {}{e}", self.check_warning);
            }
        }
        for w in &sm.warnings {
            let _ = writeln!(s, "  {}{w}", self.check_warning);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_are_chosen_by_code() {
        assert!(std::ptr::eq(Wording::for_lang("ja").unwrap(), &JA));
        assert!(std::ptr::eq(Wording::for_lang("EN").unwrap(), &EN));
        assert!(Wording::for_lang("fr").is_none());
    }

    #[test]
    fn japanese_categories_carry_their_ids() {
        assert_eq!((JA.category)("gambling"), "ギャンブル (gambling)");
        assert_eq!((JA.category)("board-own-list"), "board-own-list");
        assert_eq!((EN.category)("gambling"), "gambling");
    }
}
