//! Who is at the device beyond its certificate: the user signed in through
//! OpenID Connect (name and the provider's groups) and the device's
//! posture (facts the client reports). Rules match them with `users`,
//! `user_groups`, `signed_in` and `posture`; a device with no signed-in
//! user matches only rules without `users` / `user_groups` (and those with
//! `signed_in = false`).

use serde::{Deserialize, Serialize};

/// The signed-in user and posture of the device a request comes from.
#[derive(Clone, Copy, Debug, Default)]
pub struct Subject<'a> {
    /// The signed-in user's name (from the ID token), if any.
    pub user: Option<&'a str>,
    /// The user's groups from the ID token's group claim.
    pub user_groups: &'a [String],
    /// The latest valid posture report, if any.
    pub posture: Option<&'a Posture>,
    /// Now, in seconds since the epoch (posture ages are measured from it).
    pub now: u64,
}

/// Posture facts as reported (and signed) by the device's client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posture {
    /// `windows`, `macos`, `linux`, ...
    pub os: String,
    /// e.g. `10.0.22631` or `12`.
    pub os_version: String,
    pub disk_encryption: bool,
    pub firewall: bool,
    /// The reporting client's version, e.g. `0.1.0`.
    pub client_version: String,
    /// When the OS was last updated, seconds since the epoch (0 = unknown).
    pub last_os_update: u64,
}

/// What a rule requires of the device's posture (`posture = { ... }`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PostureReq {
    pub disk_encryption: Option<bool>,
    pub firewall: Option<bool>,
    pub os_updated_within_days: Option<u64>,
    pub os: Option<Vec<String>>,
    pub min_os_version: Option<Vec<u64>>,
    pub min_client_version: Option<Vec<u64>>,
}

/// A rule's conditions on the user and posture.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SubjectConds {
    /// Lowercase user names.
    pub users: Option<Vec<String>>,
    pub user_groups: Option<Vec<String>>,
    pub signed_in: Option<bool>,
    pub posture: Option<PostureReq>,
}

/// Why the device's posture does not satisfy a rule (the block page says it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PostureFailure {
    /// The rule that would have applied.
    pub rule: String,
    pub ja: String,
    pub en: String,
}

pub(crate) enum Miss {
    /// Not this user (or not signed in): the rule simply does not apply.
    Subject,
    /// The posture falls short: (ja, en).
    Posture(String, String),
}

/// `"10.0.22631"` → `[10, 0, 22631]`; `None` unless dotted numbers.
pub fn parse_version(v: &str) -> Option<Vec<u64>> {
    let v = v.trim().trim_start_matches('v');
    if v.is_empty() {
        return None;
    }
    v.split('.').map(|p| p.parse().ok()).collect()
}

fn version_at_least(have: &str, want: &[u64]) -> bool {
    let Some(have) = parse_version(have) else {
        return false;
    };
    let n = have.len().max(want.len());
    let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    for i in 0..n {
        match at(&have, i).cmp(&at(want, i)) {
            std::cmp::Ordering::Greater => return true,
            std::cmp::Ordering::Less => return false,
            std::cmp::Ordering::Equal => {}
        }
    }
    true
}

fn dotted(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(".")
}

impl SubjectConds {
    pub fn is_empty(&self) -> bool {
        *self == SubjectConds::default()
    }

    pub fn check(&self, s: &Subject<'_>) -> Result<(), Miss> {
        if let Some(want) = self.signed_in {
            if s.user.is_some() != want {
                return Err(Miss::Subject);
            }
        }
        if let Some(users) = &self.users {
            let Some(u) = s.user else {
                return Err(Miss::Subject);
            };
            if !users.iter().any(|x| x.eq_ignore_ascii_case(u)) {
                return Err(Miss::Subject);
            }
        }
        if let Some(groups) = &self.user_groups {
            if s.user.is_none() || !groups.iter().any(|g| s.user_groups.contains(g)) {
                return Err(Miss::Subject);
            }
        }
        match &self.posture {
            Some(req) => req.check(s),
            None => Ok(()),
        }
    }
}

impl PostureReq {
    fn check(&self, s: &Subject<'_>) -> Result<(), Miss> {
        let Some(p) = s.posture else {
            return Err(Miss::Posture(
                "この端末の状態（ディスク暗号化、OS の更新など）が報告されていません。komugate クライアントが動いているか確認してください。".into(),
                "this device has not reported its posture (disk encryption, OS updates...); check that the komugate client is running".into(),
            ));
        };
        if let Some(os) = &self.os {
            if !os.iter().any(|o| o.eq_ignore_ascii_case(&p.os)) {
                return Err(Miss::Posture(
                    format!(
                        "この端末の OS（{}）はこの利用先に使えません（使える OS: {}）。",
                        p.os,
                        os.join(", ")
                    ),
                    format!(
                        "this device's OS ({}) is not one allowed here ({})",
                        p.os,
                        os.join(", ")
                    ),
                ));
            }
        }
        if self.disk_encryption == Some(true) && !p.disk_encryption {
            return Err(Miss::Posture(
                "この端末のディスク暗号化（BitLocker など）が有効になっていません。".into(),
                "disk encryption (BitLocker or similar) is not enabled on this device".into(),
            ));
        }
        if self.firewall == Some(true) && !p.firewall {
            return Err(Miss::Posture(
                "この端末のファイアウォールが有効になっていません。".into(),
                "the host firewall is not enabled on this device".into(),
            ));
        }
        if let Some(days) = self.os_updated_within_days {
            let age_days = s.now.saturating_sub(p.last_os_update) / 86_400;
            if p.last_os_update == 0 || age_days > days {
                let (ja, en) = if p.last_os_update == 0 {
                    ("不明".to_string(), "unknown".to_string())
                } else {
                    (format!("{age_days} 日前"), format!("{age_days} days ago"))
                };
                return Err(Miss::Posture(
                    format!("この端末の OS の最終更新が {ja} です（{days} 日以内に更新されている必要があります）。Windows Update を実行してください。"),
                    format!("the OS was last updated {en} (must be within {days} days); run the OS update"),
                ));
            }
        }
        if let Some(min) = &self.min_os_version {
            if !version_at_least(&p.os_version, min) {
                return Err(Miss::Posture(
                    format!(
                        "この端末の OS のバージョン（{}）が古すぎます（{} 以上が必要です）。",
                        p.os_version,
                        dotted(min)
                    ),
                    format!(
                        "the OS version {} is older than the required {}",
                        p.os_version,
                        dotted(min)
                    ),
                ));
            }
        }
        if let Some(min) = &self.min_client_version {
            if !version_at_least(&p.client_version, min) {
                return Err(Miss::Posture(
                    format!("komugate クライアントのバージョン（{}）が古すぎます（{} 以上が必要です）。", p.client_version, dotted(min)),
                    format!("the komugate client {} is older than the required {}", p.client_version, dotted(min)),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("10.0.22631", &[10, 0, 19045]));
        assert!(!version_at_least("10.0.9", &[10, 0, 19045]));
        assert!(version_at_least("12", &[12, 0]));
        assert!(!version_at_least("beta", &[1]));
        assert_eq!(parse_version("v0.1.0"), Some(vec![0, 1, 0]));
    }

    #[test]
    fn posture_reasons() {
        let req = PostureReq {
            disk_encryption: Some(true),
            os_updated_within_days: Some(30),
            ..Default::default()
        };
        let now = 1_800_000_000;
        let mut p = Posture {
            os: "windows".into(),
            os_version: "10.0.22631".into(),
            disk_encryption: true,
            firewall: true,
            client_version: "0.1.0".into(),
            last_os_update: now - 3 * 86_400,
        };
        fn s(posture: Option<&Posture>, now: u64) -> Subject<'_> {
            Subject {
                posture,
                now,
                ..Default::default()
            }
        }
        assert!(req.check(&s(Some(&p), now)).is_ok());
        p.last_os_update = now - 45 * 86_400;
        match req.check(&s(Some(&p), now)) {
            Err(Miss::Posture(ja, _)) => assert!(ja.contains("45 日前"), "{ja}"),
            _ => panic!("old update accepted"),
        }
        p.disk_encryption = false;
        match req.check(&s(Some(&p), now)) {
            Err(Miss::Posture(ja, _)) => assert!(ja.contains("ディスク暗号化"), "{ja}"),
            _ => panic!("no encryption accepted"),
        }
        assert!(matches!(req.check(&s(None, now)), Err(Miss::Posture(..))));
    }
}
