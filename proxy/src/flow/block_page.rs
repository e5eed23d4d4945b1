//! The block page and the gateway's own error pages: Japanese first,
//! English beneath. Every value is HTML-escaped.

use bytes::Bytes;
use http::{header, Response, StatusCode};

/// What the user is told when a request is refused.
pub struct BlockInfo<'a> {
    pub target: &'a str,
    pub rule: &'a str,
    pub message: Option<&'a str>,
    pub category: Option<&'a str>,
    pub device: Option<&'a str>,
    pub time: &'a str,
    pub contact: Option<&'a str>,
}

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
        rows += &row("カテゴリ", "Category", c);
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
    let contact = info
        .contact
        .unwrap_or("教育委員会 ICT 担当 / the board's ICT office");
    rows += &row("お問い合わせ", "Contact", contact);
    format!(
        "<!DOCTYPE html>\n<html lang=\"ja\"><head><meta charset=\"utf-8\"><title>アクセスがブロックされました / Access blocked</title>\n\
<style>body{{font-family:sans-serif;max-width:46em;margin:2em auto;padding:0 1em}}th{{text-align:left;padding-right:1em;vertical-align:top}}small{{color:#555}}</style></head>\n\
<body>\n<h1>このページへのアクセスはブロックされました</h1>\n<p>学校のセキュリティポリシーにより、このアクセスは許可されていません。業務に必要な場合は下記までご連絡ください。</p>\n\
<h2 lang=\"en\">Access to this page was blocked</h2>\n<p lang=\"en\">The school board's security policy does not allow this request. If you need it for your work, please contact us.</p>\n\
<table>\n{rows}</table>\n</body></html>\n"
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
        });
        let ja = html.find("ブロックされました").unwrap();
        let en = html.find("Access to this page was blocked").unwrap();
        assert!(ja < en);
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("laptop-001"));
        assert!(html.contains("C4th は校内からのみ利用できます"));
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
        });
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(resp.headers()["komugate-rule"]
            .to_str()
            .unwrap()
            .starts_with("%E7"));
    }
}
