//! Wording of the device, registry, certificate and unblock-request pages
//! (key, Japanese, English), and the Japanese for the registry's and the
//! CSV decoder's errors.

use komugate_policy::DecodeError;

pub const TEXT: &[(&str, &str, &str)] = &[
    ("nav_devices", "端末と利用者", "Devices"),
    ("nav_certs", "端末証明書", "Certificates"),
    ("nav_unblock", "許可申請", "Access requests"),
    ("device_id", "端末 ID", "Device ID"),
    ("groups", "グループ", "Groups"),
    ("last_site", "最終拠点", "Last site"),
    ("last_seen", "最終利用", "Last seen"),
    ("cert_expiry", "証明書の期限", "Certificate expiry"),
    ("revoked", "失効", "Revoked"),
    ("revoked_yes", "失効済み", "revoked"),
    ("no_cert", "証明書なし", "no certificate"),
    ("offsite", "拠点外", "off-site"),
    ("not_seen", "この起動以降なし", "not since start"),
    ("devices_search", "端末 ID・利用者・グループで検索", "Search by device, user or group"),
    ("devices_count", "{shown} 台を表示（台帳の全 {total} 台）", "{shown} shown ({total} in the registry)"),
    ("registry_file", "端末台帳", "Registry"),
    ("registry_none", "ポリシーに [registry] がないため、端末台帳はありません。グループは端末証明書から決まります。", "The policy has no [registry]: groups come from the device certificates."),
    ("registry_rule", "グループは端末台帳だけで決まります（端末証明書に書かれたグループは使いません）。台帳から外したグループは、次の再読み込みで外れます。", "Groups come from the registry alone (groups written in device certificates are not used). A group removed from the registry is gone at the next reload."),
    ("move_title", "グループの変更（異動）", "Change groups (personnel move)"),
    ("move_target", "端末 ID または利用者", "Device ID or user"),
    ("move_groups", "新しいグループ（; 区切り）", "New groups (separated by ;)"),
    ("move_go", "変更する", "Change"),
    ("move_done", "{n} 台のグループを変更し、ポリシーを再読み込みしました（世代 {generation}）。", "Changed the groups of {n} device(s) and reloaded the policy (generation {generation})."),
    ("import_title", "端末台帳 CSV の取り込み", "Import the registry CSV"),
    ("import_hint", "UTF-8（BOM あり・なし）または Excel の CSV（Shift_JIS / CP932）。取り込む前に変更内容を確認できます。", "UTF-8 (with or without BOM) or Excel CSV (Shift_JIS / CP932). You see the changes before they are applied."),
    ("import_file", "CSV ファイル", "CSV file"),
    ("import_preview", "変更内容を確認", "Preview changes"),
    ("import_apply", "この内容で反映する", "Apply these changes"),
    ("import_cancel", "やめる", "Cancel"),
    ("import_encoding", "文字コード", "Encoding"),
    ("import_added", "追加", "Added"),
    ("import_moved", "変更（異動）", "Changed (moved)"),
    ("import_removed", "削除", "Removed"),
    ("import_unchanged", "変更なし: {n} 台", "Unchanged: {n}"),
    ("import_nothing", "現在の台帳と同じ内容です。反映するものはありません。", "Same as the registry in force: nothing to apply."),
    ("import_done", "端末台帳を反映し、ポリシーを再読み込みしました（追加 {added}、変更 {moved}、削除 {removed}、世代 {generation}）。", "Applied the registry and reloaded the policy (added {added}, changed {moved}, removed {removed}; generation {generation})."),
    ("before", "変更前", "Before"),
    ("after", "変更後", "After"),
    ("export_title", "端末台帳の書き出し", "Export the registry"),
    ("export_utf8", "CSV（UTF-8 BOM 付き）", "CSV (UTF-8 with BOM)"),
    ("export_cp932", "CSV（Shift_JIS / Excel 用）", "CSV (Shift_JIS, for Excel)"),
    ("err_registry_none", "ポリシーに [registry]（端末台帳）がないため、この操作はできません。ポリシーに [registry] path = \"registry.csv\" を追加してください。", "The policy has no [registry] (device registry), so this cannot be done; add [registry] path = \"registry.csv\" to the policy."),
    ("err_registry_lines", "端末台帳 CSV に誤りがあります。何も反映していません。", "The registry CSV has errors; nothing was applied."),
    ("err_registry_too_large", "ファイルが大きすぎます（{size}）。端末台帳 CSV は {max} までです。ファイルが正しいか確認してください。何も反映していません。", "The file is too large ({size}); a registry CSV may be at most {max}. Check that it is the right file; nothing was applied."),
    ("err_registry_empty_file", "ファイルが選ばれていないか、空です。", "No file was chosen, or it is empty."),
    ("err_registry_changed", "端末台帳が、確認画面を表示した後に変更されています（別の担当者または ID 管理システム）。何も反映していません。もう一度取り込んで内容を確認してください。", "The registry changed after the preview was shown (another administrator or the ID-management system); nothing was applied. Import again and check the changes."),
    ("err_registry_preview_gone", "確認画面の有効期限（15 分）が切れたか、既に反映済みです。もう一度取り込んでください。", "The preview expired (15 minutes) or was already applied; import again."),
    ("err_registry_write", "端末台帳を書き込めませんでした（{detail}）。何も反映していません。", "Cannot write the registry ({detail}); nothing was applied."),
    ("err_registry_reload", "新しい台帳でポリシーを読み込めなかったため、元の台帳に戻しました（{detail}）。", "The policy did not load with the new registry, so the previous registry was restored ({detail})."),
    ("err_move_unknown", "「{target}」という端末 ID・利用者は台帳にありません。", "No device or user \"{target}\" in the registry."),
    ("err_move_group", "「{group}」というグループはポリシーにありません（使えるグループ: {groups}）。", "The policy has no group \"{group}\" (groups: {groups})."),
    ("err_export_cp932", "{line} 行目の文字「{char}」は Shift_JIS で表せません。UTF-8 で書き出してください。", "Line {line} holds \"{char}\", which Shift_JIS cannot hold; export as UTF-8."),
    ("certs_expiring", "30 日以内に期限が切れる証明書", "Certificates expiring within 30 days"),
    ("certs_all", "発行済みの証明書", "Issued certificates"),
    ("certs_none_expiring", "30 日以内に期限が切れる証明書はありません。", "No certificate expires within 30 days."),
    ("serial", "シリアル番号", "Serial"),
    ("issue_title", "端末証明書の発行（.pfx）", "Issue a device certificate (.pfx)"),
    ("issue_hint", "Windows の証明書インポートや Intune の「PKCS のインポートされた証明書」で使える .pfx を作ります。パスワードは一度だけ表示されます。", "Makes a .pfx that Windows' certificate import and Intune's PKCS imported certificates take. The password is shown once."),
    ("issue_days", "有効日数", "Valid days"),
    ("issue_go", "発行する", "Issue"),
    ("bulk_title", "CSV から一括発行（.pfx の zip）", "Bulk issue from a CSV (zip of .pfx)"),
    ("bulk_hint", "device_id 列のある CSV（端末台帳そのままで可）。すべての行を確認してから発行します。", "A CSV with a device_id column (the registry itself will do). Every row is checked before anything is issued."),
    ("issued_title", "証明書を発行しました", "Certificate issued"),
    ("issued_password", ".pfx のパスワード（この画面でのみ表示。保存されません）", "Password of the .pfx (shown only on this page, not stored)"),
    ("issued_download", "ダウンロード（1 回限り・10 分以内）", "Download (once, within 10 minutes)"),
    ("issued_count", "{n} 台分", "{n} device(s)"),
    ("err_download_gone", "このダウンロードは使用済みか、有効期限（10 分）が切れています。もう一度発行してください。", "This download was already used or expired (10 minutes); issue again."),
    ("revoke_title", "証明書の失効（紛失・盗難）", "Revoke a certificate (lost, stolen)"),
    ("revoke_reason", "理由", "Reason"),
    ("revoke_go", "失効させる", "Revoke"),
    ("revoke_done", "シリアル {serial} を失効させ、再読み込みしました。この端末の接続は切断され、以後つながりません。", "Revoked serial {serial} and reloaded: the device's connections are closed and it can no longer connect."),
    ("revoke_already", "シリアル {serial} は既に失効しています。", "Serial {serial} was already revoked."),
    ("crl_link", "失効リスト (CRL)", "Revocation list (CRL)"),
    ("err_pki_none", "端末 CA の鍵 {path} が見つからないため、証明書を発行できません（[tls] device_ca の隣に device-ca.key が必要です）。", "The device CA key {path} is missing, so no certificate can be issued (device-ca.key must sit next to [tls] device_ca)."),
    ("err_revoked_list_none", "[tls] revoked_serials が設定されていないため、失効させることができません。設定ファイルに revoked_serials = \"pki/revoked-serials.txt\" を追加してください。", "[tls] revoked_serials is not set, so nothing can be revoked; add revoked_serials = \"pki/revoked-serials.txt\" to the configuration."),
    ("err_revoke", "失効できませんでした: {detail}", "Cannot revoke: {detail}"),
    ("unblock_pending", "未処理の申請", "Waiting requests"),
    ("unblock_decided", "処理済みの申請", "Decided requests"),
    ("unblock_none", "未処理の申請はありません。", "No request is waiting."),
    ("unblock_host", "アクセス先", "Host"),
    ("unblock_reason", "申請理由", "Reason"),
    ("unblock_requester", "申請者（端末・アドレス）", "Requester (device or address)"),
    ("unblock_scope", "許可する範囲", "Allow for"),
    ("unblock_until", "期限（空欄は無期限）", "Until (empty: no end)"),
    ("unblock_approve", "許可する（試算してから反映）", "Approve (dry run, then apply)"),
    ("unblock_reject", "却下する", "Reject"),
    ("unblock_message", "申請者へのメッセージ", "Message to the requester"),
    ("unblock_state", "結果", "Outcome"),
    ("unblock_state_approved", "許可", "approved"),
    ("unblock_state_rejected", "却下", "rejected"),
    ("unblock_approved", "申請 {id} を許可し、{host} を{scope}の許可リストに加えてポリシーを再読み込みしました。過去 7 日間のログでの試算: {dry_run}", "Approved request {id}: {host} added to the allow list of {scope} and the policy reloaded. Dry run over the last 7 days: {dry_run}"),
    ("unblock_rejected", "申請 {id} を却下しました。申請者には次にページを開いたときにメッセージが表示されます。", "Rejected request {id}; the requester sees the message the next time they open the page."),
    ("err_unblock_gone", "申請 {id} は見つからないか、既に処理されています（別の担当者が処理した可能性があります）。", "Request {id} does not exist or was already decided (perhaps by another operator)."),
    ("err_unblock_scope", "許可する範囲を一覧から選んでください（申請した端末、そのグループ、その拠点、または全体）。", "Choose whom to allow it for from the list (the requesting device, its groups, its site, or everyone)."),
    ("err_reload_after", "変更は保存しましたが、再読み込みに失敗しました: {detail}", "The change was saved but the reload failed: {detail}"),
];

/// A CSV decoding error in Japanese.
pub fn decode_error_ja(e: &DecodeError) -> String {
    match e {
        DecodeError::Mixed { utf8_line, other_line } => format!(
            "文字コードが混在しています。{utf8_line} 行目は UTF-8 ですが、{other_line} 行目は UTF-8 ではありません。ファイル全体を「CSV UTF-8」または「CSV（Shift_JIS）」のどちらか一方で保存し直してください。何も反映していません。"
        ),
        DecodeError::Invalid { line } => format!(
            "{line} 行目が UTF-8 でも Shift_JIS（CP932）でもありません。Excel で「CSV UTF-8」または「CSV」として保存し直してください。何も反映していません。"
        ),
    }
}

/// A registry diagnostic (line, column, English message) in Japanese for
/// the problems people make when editing the CSV by hand.
pub fn registry_problem_ja(line: usize, column: usize, message: &str) -> String {
    let quoted = |s: &str| -> String { s.split('`').nth(1).unwrap_or("").to_string() };
    let what = if message.starts_with("unknown group") {
        let hint = message
            .split("did you mean ")
            .nth(1)
            .map(|h| {
                format!(
                    "（「{}」の誤りではありませんか）",
                    h.trim_matches(|c| c == '`' || c == '?')
                )
            })
            .unwrap_or_default();
        format!("ポリシーにないグループ「{}」です{hint}。", quoted(message))
    } else if message.starts_with("duplicate device") {
        format!(
            "端末 ID「{}」が重複しています（{}）。",
            quoted(message),
            message
                .split('(')
                .nth(1)
                .unwrap_or("")
                .trim_end_matches(')')
                .replace("first defined on line", "最初は")
                .to_string()
                + " 行目"
        )
    } else if message.starts_with("expected") && message.contains("fields") {
        "列が足りません（device_id,user,groups の 3 列が必要です）。".to_string()
    } else if message.starts_with("empty device_id") {
        "端末 ID が空です。".to_string()
    } else if message.contains("quote") {
        format!("引用符（\"）の使い方が正しくありません（{message}）。")
    } else if message.contains("header row") {
        "1 行目は見出し行「device_id,user,groups」にしてください。".to_string()
    } else {
        message.to_string()
    };
    if column > 0 {
        format!("{line} 行目 {column} 列: {what}")
    } else {
        format!("{line} 行目: {what}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_problems_in_japanese() {
        assert_eq!(
            registry_problem_ja(4, 28, "unknown group `teacher` for device `PC-3`; did you mean `teachers`?"),
            "4 行目 28 列: ポリシーにないグループ「teacher」です（「teachers」の誤りではありませんか）。"
        );
        assert_eq!(
            registry_problem_ja(6, 1, "duplicate device `PC-1` (first defined on line 2)"),
            "6 行目 1 列: 端末 ID「PC-1」が重複しています（最初は 2 行目）。"
        );
        assert!(decode_error_ja(&DecodeError::Mixed {
            utf8_line: 2,
            other_line: 3
        })
        .contains("3 行目"));
    }
}
