//! The block page and the gateway's own error pages: Japanese first,
//! English beneath. Every value is HTML-escaped.

use std::time::SystemTime;

use bytes::Bytes;
use http::{header, Response, StatusCode};

use crate::local_time::LocalZone;

/// What the user is told when a request is refused.
pub struct BlockInfo<'a> {
    pub target: &'a str,
    pub rule: &'a str,
    pub message: Option<&'a str>,
    /// Category ids, comma-separated (shown with their Japanese labels).
    pub category: Option<&'a str>,
    pub device: Option<&'a str>,
    /// Already in the display zone ([`PageContext::now`]).
    pub time: &'a str,
    pub contact: Option<&'a str>,
    /// The 「アクセス許可を申請」 part: the form, or the outcome of the
    /// requester's last request for this host. `None`: not offered.
    pub unblock: Option<crate::unblock::View>,
}

/// What every block page shows besides the refusal itself: whom to
/// contact, the display zone, the policy generation (a header).
#[derive(Debug, Clone)]
pub struct PageContext {
    pub contact: Option<String>,
    pub zone: LocalZone,
    pub generation: u64,
    /// Unblock requests, when the gateway takes them.
    pub unblock: Option<std::sync::Arc<crate::unblock::UnblockRequests>>,
}

impl PageContext {
    /// The time of the refusal as people read it (JST by default).
    pub fn now(&self) -> String {
        self.zone.format_ja(SystemTime::now())
    }
}

/// Shown when neither the policy nor `[block_page] contact` names anyone.
const DEFAULT_CONTACT: &str =
    "学校の情報担当の先生、または教育委員会の ICT 担当 / your school's ICT teacher or the board's ICT office";

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `ギャンブル (gambling), 賭博 …`: each category id with its Japanese label.
fn category_labels(ids: &str) -> String {
    ids.split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(|id| match komugate_categories::category_label(id) {
            Some(label) => format!("{} ({id})", label.ja),
            None => id.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn render(info: &BlockInfo) -> String {
    let row = |ja: &str, en: &str, v: &str| {
        format!(
            "<tr><th>{ja}<br><small>{en}</small></th><td>{}</td></tr>\n",
            escape(v)
        )
    };
    let mut rows = String::new();
    rows += &row("アクセス先", "Blocked", info.target);
    if let Some(c) = info.category {
        rows += &row("カテゴリ", "Category", &category_labels(c));
    }
    rows += &row("ルール", "Rule", info.rule);
    if let Some(m) = info.message {
        rows += &row("理由", "Reason", m);
    }
    rows += &row("日時", "Time", info.time);
    rows += &row(
        "端末",
        "Device",
        info.device
            .unwrap_or("(校内ネットワーク / in-school network)"),
    );
    rows += &row(
        "お問い合わせ",
        "Contact",
        info.contact.unwrap_or(DEFAULT_CONTACT),
    );
    let unblock = match &info.unblock {
        None => String::new(),
        Some(crate::unblock::View::Form) => format!(
            "<h2>アクセス許可を申請 <small lang=\"en\">Ask for access</small></h2>\n\
<form method=\"post\" action=\"{path}\"><input type=\"hidden\" name=\"url\" value=\"{url}\">\n\
<p><label>理由 (Reason)<br><textarea name=\"reason\" rows=\"3\" cols=\"60\" maxlength=\"{max}\" required></textarea></label></p>\n\
<p><button type=\"submit\">アクセス許可を申請</button></p></form>\n",
            path = crate::unblock::SUBMIT_PATH,
            url = escape(info.target),
            max = crate::unblock::MAX_REASON_CHARS
        ),
        Some(crate::unblock::View::Pending) => "<h2>アクセス許可を申請済みです</h2>\n<p id=\"unblock-pending\">担当者が確認しています。許可されるとこのページを開けるようになります。<br><small lang=\"en\">Your request is waiting for the ICT staff; once allowed, this page opens.</small></p>\n".to_string(),
        Some(crate::unblock::View::Rejected(message)) => format!(
            "<h2>アクセス許可の申請は認められませんでした</h2>\n<p id=\"unblock-rejected\">担当者からのメッセージ: {}<br><small lang=\"en\">Your request was not granted; the message above is from the ICT staff.</small></p>\n",
            escape(message)
        ),
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"ja\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>アクセスがブロックされました / Access blocked</title>\n\
<style>body{{font-family:sans-serif;max-width:46em;margin:2em auto;padding:0 1em;line-height:1.6}}th{{text-align:left;padding-right:1em;vertical-align:top}}small{{color:#555}}</style></head>\n\
<body>\n<h1>このページへのアクセスはブロックされました</h1>\n<p>学校のセキュリティポリシーにより、このアクセスは許可されていません。</p>\n\
<table>\n{rows}</table>\n\
<h2>次にすること</h2>\n<ol>\n\
<li>授業や校務でこのページが必要なときは、上の「お問い合わせ」の担当者に連絡して、利用の許可を申請してください。</li>\n\
<li>連絡するときは、この画面の「アクセス先」「日時」「端末」を伝えてください (画面を撮影して送ると確実です)。</li>\n\
<li>担当者が確認して許可すると、このページを開けるようになります。誤ってブロックされていると思うときも、同じ連絡先にお知らせください。</li>\n\
</ol>\n\
{unblock}\
<h2 lang=\"en\">Access to this page was blocked</h2>\n<p lang=\"en\">The school board's security policy does not allow this request. \
If you need this page for teaching or school work, ask the contact above for access and tell them the address, time and device shown here \
(a photo of this screen is easiest). Once they allow it, the page opens. Tell them too if you think it was blocked by mistake.</p>\n\
</body></html>\n"
    )
}

/// A 403 with the block page and the `komugate-rule` header.
pub fn blocked_response<B: From<Bytes>>(info: &BlockInfo) -> Response<B> {
    let mut resp = Response::new(B::from(Bytes::from(render(info))));
    *resp.status_mut() = StatusCode::FORBIDDEN;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    // Header values must be visible ASCII: non-ASCII rule names (日本語) are
    // percent-encoded rather than dropped.
    let encoded: String = info
        .rule
        .bytes()
        .map(|b| {
            if b.is_ascii_graphic() && b != b'%' || b == b' ' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    if let Ok(v) = http::HeaderValue::from_str(&encoded) {
        h.insert("komugate-rule", v);
    }
    resp
}

/// A gateway error page (400, 502, 504 ...) with a Japanese and English explanation.
pub fn error_response<B: From<Bytes>>(status: StatusCode, ja: &str, en: &str) -> Response<B> {
    let body = format!(
        "<!DOCTYPE html>\n<html lang=\"ja\"><head><meta charset=\"utf-8\"><title>{code}</title></head><body>\n<h1>{code}</h1>\n<p>{}</p>\n<p lang=\"en\">{}</p>\n</body></html>\n",
        escape(ja),
        escape(en),
        code = status
    );
    let mut resp = Response::new(B::from(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_page_is_japanese_first_and_escaped() {
        let html = render(&BlockInfo {
            target: "http://x.example/<script>",
            rule: "c4th only in school",
            message: Some("C4th は校内からのみ利用できます"),
            category: Some("gambling"),
            device: Some("laptop-001"),
            time: "2026-11-29T08:00:00Z",
            contact: None,
            unblock: Some(crate::unblock::View::Form),
        });
        let ja = html.find("ブロックされました").unwrap();
        let next = html.find("次にすること").unwrap();
        let en = html.find("Access to this page was blocked").unwrap();
        assert!(ja < next && next < en);
        assert!(html.contains("ギャンブル (gambling)"), "{html}");
        assert!(
            html.contains("教育委員会の ICT 担当"),
            "the default contact: {html}"
        );
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("laptop-001"));
        assert!(html.contains("C4th は校内からのみ利用できます"));
    }

    #[test]
    fn categories_show_their_japanese_label_beside_the_id() {
        assert_eq!(
            category_labels("gambling, phishing,board-list"),
            "ギャンブル (gambling), フィッシング詐欺 (phishing), board-list"
        );
        let page = PageContext {
            unblock: None,
            contact: Some("教育委員会 学校教育課 0263-00-0000".into()),
            zone: LocalZone::default(),
            generation: 1,
        };
        assert!(page.now().ends_with(" JST"), "{}", page.now());
    }

    #[test]
    fn non_ascii_rule_names_are_encoded_in_the_header() {
        let resp: Response<Bytes> = blocked_response(&BlockInfo {
            target: "t",
            rule: "百問繚乱",
            message: None,
            category: None,
            device: None,
            time: "t",
            contact: None,
            unblock: Some(crate::unblock::View::Form),
        });
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(resp.headers()["komugate-rule"]
            .to_str()
            .unwrap()
            .starts_with("%E7"));
    }
}
