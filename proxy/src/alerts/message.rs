//! The text of one alert message: Japanese first, English beside, times in
//! Japan time.

use std::fmt::Write as _;
use std::time::SystemTime;

use super::Kind;
use crate::local_time::LocalZone;

/// One message: `count` events of `kind` between `first` and `last`.
#[derive(Clone, Debug)]
pub struct Message {
    pub kind: Kind,
    pub count: u64,
    pub first: SystemTime,
    pub last: SystemTime,
    /// The first few events' details.
    pub samples: Vec<String>,
    /// The gateway that raised them.
    pub host: String,
}

impl Message {
    /// The subject line (also the first line of the text).
    pub fn subject(&self) -> String {
        let (ja, en) = self.kind.title();
        format!("[komugate] {ja} {}件 / {en} ×{}", self.count, self.count)
    }

    /// The whole text (plain, for mail bodies and webhook `text`).
    pub fn text(&self) -> String {
        let zone = LocalZone::default();
        let mut t = String::new();
        let _ = writeln!(t, "{}", self.subject());
        let _ = writeln!(
            t,
            "件数 / count: {} ({} 〜 {})",
            self.count,
            zone.format_ja(self.first),
            zone.format_ja(self.last)
        );
        let _ = writeln!(t, "ゲートウェイ / gateway: {}", self.host);
        if !self.samples.is_empty() {
            let _ = writeln!(t, "内容 (最初の {} 件) / first events:", self.samples.len());
            for s in &self.samples {
                let _ = writeln!(t, "・{s}");
            }
        }
        let _ = writeln!(
            t,
            "詳細はアクセスログ・監査ログで確認してください。 / See the access and audit logs for details."
        );
        t
    }

    /// JSON for an incoming webhook: `text` is what Slack and Teams
    /// (Office 365 connector / Workflows "post to a channel") show; the
    /// other fields are for receivers that parse them.
    pub fn webhook_json(&self) -> serde_json::Value {
        serde_json::json!({
            "text": self.text(),
            "summary": self.subject(),
            "kind": self.kind.id(),
            "count": self.count,
            "gateway": self.host,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn japanese_first_english_beside_in_japan_time() {
        let m = Message {
            kind: Kind::DlpBlock,
            count: 3,
            first: UNIX_EPOCH + Duration::from_secs(1_711_897_200), // 2024-04-01 00:00 JST
            last: UNIX_EPOCH + Duration::from_secs(1_711_897_200 + 61),
            samples: vec!["PC-T-0001 → outlook.office.com: DLP my-number".into()],
            host: "gw-1".into(),
        };
        let text = m.text();
        assert!(
            text.starts_with("[komugate] DLP による送信の遮断 3件 / DLP blocked an upload ×3\n"),
            "{text}"
        );
        assert!(
            text.contains("2024年4月1日 00:00:00 JST 〜 2024年4月1日 00:01:01 JST"),
            "{text}"
        );
        assert!(text.contains("・PC-T-0001 → outlook.office.com: DLP my-number"));
        let j = m.webhook_json();
        assert_eq!(j["text"], text);
        assert_eq!(j["count"], 3);
        assert_eq!(j["kind"], "dlp_block");
    }
}
