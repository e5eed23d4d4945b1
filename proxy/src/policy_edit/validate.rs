//! Validation of an edited policy: the same compile as `komugate policy
//! check` (so the same errors), each diagnostic given in Japanese too and,
//! when it is on a line the edit changed, tied to the form field that
//! line's key comes from.

use std::path::Path;

use komugate_policy::{Diagnostic, Policy};

/// One validation problem, ready to show next to a form field.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The form field it belongs to (`cidrs`, `name`, `entry` …), if the
    /// problem is on a line the edit changed.
    pub field: Option<String>,
    pub line: usize,
    pub column: usize,
    /// As `komugate policy check` prints it (`file:line:column: message`).
    pub en: String,
    pub ja: String,
}

/// Compiles `text` as the policy file `file` (relative paths resolve
/// against it, as in force). `changed_lines`: 1-based lines of `text` the
/// edit added or changed.
pub fn validate(text: &str, file: &Path, changed_lines: &[usize]) -> Result<Policy, Vec<Problem>> {
    Policy::from_str(text, file).map_err(|errors| {
        errors
            .iter()
            .map(|d| problem(d, text, file, changed_lines))
            .collect()
    })
}

fn problem(d: &Diagnostic, text: &str, file: &Path, changed: &[usize]) -> Problem {
    let field = (d.file == file && changed.contains(&d.line))
        .then(|| text.lines().nth(d.line.wrapping_sub(1)))
        .flatten()
        .and_then(field_of_line);
    Problem {
        field,
        line: d.line,
        column: d.column,
        en: d.to_string(),
        ja: japanese(&d.message),
    }
}

/// The form field whose value a line holds, from its key.
fn field_of_line(line: &str) -> Option<String> {
    let key = line.trim_start().split(['=', ' ']).next()?.trim();
    let field = match key {
        "cidrs" => "cidrs",
        "name" => "name",
        "beacon_key" => "beacon_key",
        "assertion" => "cidrs",
        "allow" | "deny" => "entry",
        "block_categories" | "ignore_categories" => "category",
        "phone" | "email" | "url" => key,
        // An element of a multi-line list.
        k if k.starts_with('"') || k.starts_with('{') => "entry",
        _ => return None,
    };
    Some(field.to_string())
}

/// The `…` quoted parts of a message, in order.
fn quoted(msg: &str) -> Vec<&str> {
    msg.split('`').skip(1).step_by(2).collect()
}

/// The Japanese wording of a diagnostic (the checks an everyday edit can
/// fail); anything else is given as written, after a Japanese lead.
pub fn japanese(msg: &str) -> String {
    let q = quoted(msg);
    let at = |i: usize| q.get(i).copied().unwrap_or("");
    let hint = msg
        .split_once("did you mean `")
        .and_then(|(_, r)| r.split('`').next())
        .map(|s| format!("（「{s}」の誤りではありませんか）"))
        .unwrap_or_default();
    if msg.starts_with("invalid CIDR") {
        return format!(
            "「{}」は CIDR として読み取れません。203.0.113.16/29 のように入力してください。",
            at(0)
        );
    }
    if msg.starts_with("CIDR `") && msg.contains("host bits") {
        return format!(
            "CIDR「{}」はネットワークアドレスではありません{hint}。",
            at(0)
        );
    }
    if msg.starts_with("CIDR `") && msg.contains("already used by site") {
        return format!("CIDR「{}」は拠点「{}」で既に使われています。", at(0), at(1));
    }
    if msg.starts_with("duplicate site name") {
        return format!(
            "拠点名「{}」が重複しています。別の名前にしてください。",
            at(0)
        );
    }
    if msg.starts_with("unknown category") {
        return format!("カテゴリ「{}」はありません{hint}。", at(0));
    }
    if msg.starts_with("unknown site") || msg.starts_with("unknown location") {
        return format!("拠点「{}」はありません{hint}。", at(0));
    }
    if msg.starts_with("unknown group") {
        return format!("グループ「{}」はありません{hint}。", at(0));
    }
    if msg.starts_with("invalid list entry") {
        let why = msg.split_once("`: ").map(|(_, r)| r).unwrap_or("");
        return format!("リストの項目「{}」が正しくありません（{why}）。", at(0));
    }
    if msg.starts_with("`beacon_key`") {
        return "ビーコンの公開鍵が正しくありません。komugate pki beacon-key が出力した値（Base64、32 バイト）を貼り付けてください。".into();
    }
    if msg.contains("has no `cidrs`") {
        return "拠点にアドレス範囲 (CIDR) がありません。CIDR を入力するか、拠点証明（ビーコン）で判定する拠点にしてください。".into();
    }
    if msg.starts_with("TOML syntax error") {
        return format!("ポリシーファイルの書式 (TOML) が正しくありません: {msg}");
    }
    if msg.starts_with("`until`") {
        return "有効期限は 2026-03-31 のような日付で指定してください。".into();
    }
    if msg.contains("in both `block_categories` and `ignore_categories`") {
        return "同じカテゴリが block_categories と ignore_categories の両方にあります。".into();
    }
    format!("ポリシーの検証でエラーになりました: {msg}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_in_japanese_next_to_their_field() {
        let text = "[[site]]\nname = \"A\"\ncidrs = [\"203.0.113.300/29\"]\n\n[[site]]\nname = \"A\"\ncidrs = [\"198.51.100.0/29\"]\n";
        let errs = validate(text, Path::new("/nonexistent/policy.toml"), &[6, 7]).unwrap_err();
        let dup = errs
            .iter()
            .find(|p| p.ja.contains("重複"))
            .expect("duplicate");
        assert_eq!(dup.field.as_deref(), Some("name"));
        assert!(dup.en.contains("duplicate site name `A`"), "{}", dup.en);
        let cidr = errs
            .iter()
            .find(|p| p.ja.contains("CIDR として"))
            .expect("cidr");
        // Line 3 was not changed by the edit: reported, but not at a field.
        assert_eq!(cidr.field, None);
        assert_eq!(cidr.line, 3);
    }

    #[test]
    fn suggestions_carry_over() {
        assert_eq!(
            japanese("unknown category `gamblng`; did you mean `gambling`?"),
            "カテゴリ「gamblng」はありません（「gambling」の誤りではありませんか）。"
        );
    }
}
