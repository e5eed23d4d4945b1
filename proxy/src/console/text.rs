//! The console's wording, Japanese first, with English. Templates call
//! `t("key")`; an unknown key is a render error (caught by the tests that
//! render every page in both languages).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Ja,
    En,
}

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Lang::Ja => "ja",
            Lang::En => "en",
        }
    }

    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "ja" => Some(Lang::Ja),
            "en" => Some(Lang::En),
            _ => None,
        }
    }
}

/// (key, Japanese, English); the device, certificate and unblock pages'
/// wording is in `text_devices`.
const TEXT: &[(&str, &str, &str)] = &[
    ("console", "管理コンソール", "admin console"),
    ("nav_dashboard", "状況", "Dashboard"),
    ("nav_logs", "ログ検索", "Log search"),
    ("nav_explain", "判定の理由", "Why blocked?"),
    ("nav_audit", "監査ログ", "Audit log"),
    ("nav_report", "月次報告", "Monthly report"),
    ("role_viewer", "閲覧者", "viewer"),
    ("role_operator", "運用担当", "operator"),
    ("role_admin", "管理者", "admin"),
    ("signin", "サインイン", "Sign in"),
    ("signout", "サインアウト", "Sign out"),
    ("account", "アカウント名", "Account"),
    ("signin_or", "または", "or"),
    ("oidc_signin", "{label} でサインイン", "Sign in with {label}"),
    ("oidc_signed_in", "サインインしました。ダッシュボードへ移動します。", "Signed in; going to the dashboard."),
    ("continue", "続ける", "Continue"),
    ("err_oidc_off", "組織のアカウントでのサインインは設定されていません（[admin.oidc] を設定してください）。", "Sign-in with an organisation account is not configured (set [admin.oidc])."),
    ("err_oidc_unavailable", "組織のアカウントでのサインインを開始できません。システム担当者に連絡してください（{detail}）。", "Sign-in with your organisation account cannot start; tell the system administrator ({detail})."),
    ("err_oidc_state", "このサインインは無効です（使用済み、開始から10分以上経過、または別のブラウザで開始されたもの）。もう一度サインインしてください。", "This sign-in is not valid (already used, started more than 10 minutes ago, or started in another browser). Sign in again."),
    ("err_oidc_failed", "組織のアカウントでのサインインに失敗しました。もう一度お試しください。続く場合はシステム担当者に連絡してください（{detail}）。", "Sign-in with your organisation account failed. Try again; if it keeps failing, tell the system administrator ({detail})."),
    ("err_oidc_no_role", "{name} さんは、このコンソールの利用を認められたグループに入っていないため、サインインできません（グループ: {groups}）。利用が必要な場合は、システム担当者にグループへの追加を依頼してください。", "{name} is in no group allowed to use this console (groups: {groups}), so cannot sign in. Ask the system administrator to add you to a group if you need access."),
    ("no_groups", "なし", "none"),
    ("password", "パスワード", "Password"),
    ("times_in", "時刻の表示:", "Times shown in"),
    ("back", "戻る", "Back"),
    ("now", "現在時刻", "Now"),
    ("health", "稼働状態", "Health"),
    ("healthy", "正常", "healthy"),
    ("draining", "停止処理中", "draining"),
    ("policy_generation", "ポリシー世代", "Policy generation"),
    ("builtin_policy", "設定ファイルの簡易リスト", "built-in lists of the configuration"),
    ("reloads", "再読み込み", "Reloads"),
    ("ok", "成功", "ok"),
    ("failed", "失敗", "failed"),
    ("connections_open", "接続中のクライアント接続", "Open client connections"),
    ("tunnels_open", "中継中のトンネル", "Open tunnels"),
    ("devices_connected", "接続中の端末", "Devices connected"),
    ("threat_intel", "脅威情報", "threat intel"),
    ("requests", "リクエスト", "requests"),
    ("blocks", "ブロック", "blocks"),
    ("last_24h", "過去 24 時間（1 分ごとの件数）", "Last 24 hours (per minute)"),
    ("last_7d", "過去 7 日間（1 時間ごとの件数）", "Last 7 days (per hour)"),
    ("chart_title", "リクエストとブロックの推移", "Requests and blocks over time"),
    ("charts_need_js", "グラフの表示には JavaScript が必要です。件数は下の表をご覧ください。", "The charts need JavaScript; the figures are in the tables below."),
    ("err_charts", "グラフのデータを読み込めません:", "Cannot load the chart data:"),
    ("figures_gateway_wide", "グラフと過去 24 時間の件数は、共有ログストアから集計した全ゲートウェイ（全レプリカ）の値です。", "The charts and the last-24-hour figures are the whole gateway's (every replica), counted in the shared log store."),
    ("figures_local", "グラフと過去 24 時間の件数は、このゲートウェイ自身のログから集計した値です（複数台構成では共有ログストアを設定すると全台の値になります）。", "The charts and the last-24-hour figures are counted from this gateway's own logs (with several replicas, configure the shared log store for the whole gateway's)."),
    ("gateway_state", "このゲートウェイの状態", "This gateway"),
    ("log_spilled", "ログの退避", "log records spilled"),
    ("ship_errors", "ログ転送の失敗", "log shipping failures"),
    ("last_reload", "最後の再読み込み", "Last reload"),
    ("reload_running", "再読み込み中", "reloading now"),
    ("reload_none", "起動後はまだありません", "none since start"),
    ("last_24h_figures", "過去 24 時間", "Last 24 hours"),
    ("devices_active", "利用中の端末（過去 5 分）", "Devices active (last 5 minutes)"),
    ("devices_day", "利用した端末（過去 24 時間）", "Devices seen (last 24 hours)"),
    ("security_events", "セキュリティイベント", "Security events"),
    ("top_blocked_categories", "ブロックの多いカテゴリ（過去 24 時間）", "Most blocked categories (last 24 hours)"),
    ("top_blocked_hosts", "ブロックの多いホスト（過去 24 時間）", "Most blocked hosts (last 24 hours)"),
    ("usage_per_site", "拠点別の利用（過去 24 時間）", "Usage per site (last 24 hours)"),
    ("devices", "端末数", "Devices"),
    ("no_site", "（拠点なし）", "(no site)"),
    ("none", "なし", "none"),
    ("list_freshness", "カテゴリリストの鮮度", "Category list freshness"),
    ("list_changed", "更新日時", "Changed"),
    ("list_age", "経過", "Age"),
    ("hours", "時間", "hours"),
    ("stale", "3 日以上更新なし", "not updated for 3 days"),
    ("unknown", "不明", "unknown"),
    ("no_lists", "ポリシーにカテゴリリストはありません。", "The policy has no category lists."),
    ("list_updates", "カテゴリリストの更新", "Category list updates"),
    ("list_file", "ファイル", "File"),
    ("list_applied", "最終適用", "Last applied"),
    ("list_result", "最終結果", "Last result"),
    ("list_entries", "件数", "Entries"),
    ("since", "開始日時", "From"),
    ("until", "終了日時", "Until"),
    ("device", "端末", "Device"),
    ("user", "利用者", "User"),
    ("group", "グループ", "Group"),
    ("site", "拠点", "Site"),
    ("host", "ホスト", "Host"),
    ("category", "カテゴリ", "Category"),
    ("action", "判定", "Action"),
    ("any", "すべて", "any"),
    ("action_allow", "許可", "allowed"),
    ("action_block", "ブロック", "blocked"),
    ("action_error", "エラー", "error"),
    ("rule", "ルール", "Rule"),
    ("app", "アプリ", "App"),
    ("url_contains", "URL に含む文字列", "URL contains"),
    ("ips", "IPS シグネチャ", "IPS signature"),
    ("search", "検索", "Search"),
    ("results_page", "ページ", "Page"),
    ("records", "件", "records"),
    ("export_csv", "CSV で出力", "Export CSV"),
    ("export_xlsx", "Excel で出力", "Export Excel"),
    ("time", "日時", "Time"),
    ("details", "詳細", "Details"),
    ("no_records", "該当する記録はありません。", "No matching records."),
    ("prev_page", "← 前のページ", "← Previous"),
    ("next_page", "次のページ →", "Next →"),
    ("record", "アクセス記録の詳細", "Access record"),
    ("why", "理由", "Why?"),
    ("why_this", "この判定の理由を調べる", "Why this decision?"),
    ("back_to_results", "検索結果に戻る", "Back to the results"),
    ("from_address", "接続元 IP アドレス", "Client IP address"),
    ("method", "メソッド", "Method"),
    ("signed_in_user", "サインイン中の利用者（空欄 = サインインなし）", "Signed-in user (empty = nobody signed in)"),
    ("user_groups", "利用者のグループ（カンマ区切り）", "User's groups (comma-separated)"),
    ("user_groups_short", "利用者のグループ", "User's groups"),
    ("signed_in_mark", "（サインイン中）", " (signed in)"),
    ("not_signed_in", "サインインなし（端末だけのルール）", "nobody signed in (device-only rules)"),
    ("explain_go", "判定を調べる", "Explain"),
    ("verdict", "判定", "Decision"),
    ("request", "リクエスト", "Request"),
    ("location", "場所", "Location"),
    ("policy", "ポリシー", "Policy"),
    ("deciding_rule", "決め手のルール", "Deciding rule"),
    ("message", "メッセージ", "Message"),
    ("audit_type", "種類", "Type"),
    ("audit_contains", "含む文字列", "Contains"),
    ("audit_actor", "実施者", "Who"),
    ("audit_detail", "内容", "Detail"),
    ("verify_chain", "改ざん検査（ハッシュチェーンの検証）", "Verify the hash chain"),
    ("chain_ok", "監査ログは改ざんされていません。", "The audit log is intact."),
    ("chain_broken", "監査ログに不整合があります。", "The audit log has problems."),
    ("entries", "件数", "entries"),
    ("latest_first", "新しい順", "Latest first"),
    // Messages built in the code.
    ("title_error", "エラー", "Error"),
    ("title_forbidden", "権限がありません", "Not allowed"),
    ("title_not_found", "ページが見つかりません", "Page not found"),
    ("err_signin", "アカウント名またはパスワードが正しくありません。", "Wrong account name or password."),
    ("err_rate_limited", "サインインの失敗が続いたため、一時的に受け付けを停止しています。{secs} 秒後にもう一度お試しください。", "Too many failed sign-ins: try again in {secs} seconds."),
    ("err_csrf", "フォームの確認用トークンがないか、古くなっています。ページを開き直してからもう一度送信してください。", "The form's check token is missing or stale: reload the page and send it again."),
    ("err_forbidden", "このページには「{role}」以上の権限が必要です。管理者に依頼してください。", "This page needs the {role} role or higher; ask an administrator."),
    ("err_not_found", "「{path}」というページはありません。", "There is no page {path}."),
    ("err_session_expired", "一定時間操作がなかったため、サインアウトしました。もう一度サインインしてください。", "You were signed out after a period without activity; sign in again."),
    ("err_accounts", "アカウント情報を読み込めません: {detail}", "Cannot read the accounts: {detail}"),
    ("err_audit", "監査ログに記録できないため、この操作は実行しませんでした: {detail}", "Not done: it cannot be written to the audit log: {detail}"),
    ("err_no_audit", "監査ログが設定されていないため、ログ検索はできません（[log] audit_log を設定してください）。", "Log search needs the audit log: set [log] audit_log."),
    ("err_no_audit_signin", "監査ログが設定されていないため、コンソールにはサインインできません（[log] audit_log を設定してください）。", "Console sign-in needs the audit log: set [log] audit_log."),
    ("err_busy", "他の検索・出力が実行中です。しばらく待ってからもう一度お試しください。", "Other searches or exports are running; try again shortly."),
    ("err_time", "{field}「{value}」を日時として読み取れません。2026-04-01 08:00 のように入力してください。", "{field} {value:?} is not a date and time; enter it like 2026-04-01 08:00."),
    ("err_time_order", "開始日時は終了日時より前にしてください。", "The start must be before the end."),
    ("err_field", "「{field}」の値が長すぎるか、使えない文字を含んでいます（{max} 文字まで、制御文字は使えません）。", "{field} is too long or holds control characters (at most {max} characters)."),
    ("err_page", "ページ番号は 1 から {max} までの数で指定してください。", "The page must be a number from 1 to {max}."),
    ("err_search", "検索に失敗しました: {detail}", "The search failed: {detail}"),
    ("err_record", "この記録はもう見つかりません（検索条件か記録が変わりました）。", "This record is no longer found (the filters or the logs changed)."),
    ("err_format", "出力形式は csv か xlsx を指定してください。", "The export format must be csv or xlsx."),
    ("err_explain_input", "接続元 IP アドレスと URL を入力してください。", "Enter the client IP address and the URL."),
    ("err_explain", "判定できません: {detail}", "Cannot explain: {detail}"),
    ("err_explain_builtin", "ポリシーファイルが設定されていないため、判定は設定ファイルの簡易リストによります（[policy] file を設定すると詳しい理由を表示できます）。", "No policy file is configured ([policy] file); decisions come from the configuration's simple lists."),
    ("err_form_read", "フォームを読み取れません（64 KB を超えているか、送信が途中で切れました）。", "The form could not be read (over 64 KB, or cut off)."),
    ("err_form_utf8", "フォームの文字コードが UTF-8 ではありません。", "The form is not UTF-8."),
    ("err_month", "対象月「{value}」を読み取れません。2026-11 のように年と月を指定してください（月は 01〜12）。", "The month {value:?} is not understood; give it like 2026-11 (month 01 to 12)."),
    ("err_report_format", "月次報告の出力形式は html か xlsx を指定してください。", "The report's format must be html or xlsx."),
    ("err_report", "月次報告を作成できません: {detail}", "Cannot build the monthly report: {detail}"),
    ("err_dashboard", "状況の集計に失敗しました: {detail}", "Counting the dashboard's figures failed: {detail}"),
    ("err_audit_read", "監査ログを読み込めません: {detail}", "Cannot read the audit log: {detail}"),
];

/// The wording of `key` in `lang`; `None` for an unknown key.
pub fn lookup(lang: Lang, key: &str) -> Option<&'static str> {
    TEXT.iter()
        .chain(super::text_devices::TEXT)
        .chain(super::text_policy::TEXT)
        .find(|(k, _, _)| *k == key)
        .map(|(_, ja, en)| if lang == Lang::Ja { *ja } else { *en })
}

/// The wording of `key` with `{name}` placeholders filled in.
pub fn fill(lang: Lang, key: &str, args: &[(&str, &str)]) -> String {
    let mut s = lookup(lang, key).unwrap_or(key).to_string();
    for (name, value) in args {
        s = s.replace(&format!("{{{name}:?}}"), &format!("{value:?}"));
        s = s.replace(&format!("{{{name}}}"), value);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_filled() {
        let all: Vec<_> = TEXT
            .iter()
            .chain(super::super::text_devices::TEXT)
            .chain(super::super::text_policy::TEXT)
            .collect();
        for (i, (k, ja, en)) in all.iter().enumerate() {
            assert!(!ja.is_empty() && !en.is_empty(), "{k}");
            assert!(
                all[i + 1..].iter().all(|(k2, _, _)| k2 != k),
                "duplicate key {k}"
            );
        }
        assert_eq!(
            fill(Lang::Ja, "err_page", &[("max", "100")]),
            "ページ番号は 1 から 100 までの数で指定してください。"
        );
        assert_eq!(
            fill(Lang::En, "err_time", &[("field", "From"), ("value", "x")]),
            "From \"x\" is not a date and time; enter it like 2026-04-01 08:00."
        );
    }
}
