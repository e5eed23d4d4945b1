//! What a decision depends on, for callers that evaluate many similar
//! requests and want to evaluate each distinct case once (the dry run of a
//! policy change over weeks of access logs). Two requests that agree on
//! everything these functions and [`crate::Request`]'s host, scheme, port
//! and location give are decided alike by [`crate::Policy::evaluate`].

use std::time::SystemTime;

use crate::eval::unix_ms;
use crate::pattern::local_day_minute;
use crate::registry::GroupBits;
use crate::{ListMasks, Policy, Scheme};
use komugate_categories::CategorySet;

/// The requester as the policy sees it: the groups (the registry's, or
/// without a `[registry]` the certificate's) and, only when some rule
/// names devices, the device.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SubjectKey {
    groups: GroupBits,
    device: Option<String>,
}

/// What a decision reads of the request's host: its categories, its app
/// (and whether the instance is the board's own), which rules' `hosts`
/// patterns and which scoped list entries cover it. Two requests that
/// differ only in hosts with equal keys are decided alike (same action,
/// same rule), so a dry run evaluates one host per key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostKey {
    cats: CategorySet,
    app: Option<usize>,
    app_own: bool,
    rule_hosts: Vec<u32>,
    scoped: Vec<u32>,
}

/// The times at which a policy's decisions can change: rule time windows
/// (minutes of the day), whether rules look at the weekday, and list
/// entries' expiry instants.
#[derive(Clone, Debug, Default)]
pub(crate) struct TimeProfile {
    pub minutes: Vec<u16>,
    pub days: bool,
    pub expiries: Vec<i64>,
}

impl TimeProfile {
    pub fn of(policy: &Policy) -> TimeProfile {
        let mut p = TimeProfile::default();
        for r in &policy.rules {
            if let Some(w) = r.time {
                p.minutes.extend([w.start, w.end]);
            }
            // Without `days` a window applies every day (an overnight one
            // too), so the weekday only matters when some rule names days.
            if r.days.is_some() {
                p.days = true;
            }
        }
        for l in policy.lists() {
            p.expiries.extend(l.expiring.iter().map(|(t, _)| *t));
            p.expiries.extend(l.scoped.iter().filter_map(|e| e.until));
        }
        p.minutes.sort_unstable();
        p.minutes.dedup();
        p.expiries.sort_unstable();
        p.expiries.dedup();
        p
    }
}

impl Policy {
    /// Every allow and deny list, in a fixed order.
    pub(crate) fn lists(&self) -> impl Iterator<Item = &ListMasks> {
        [&self.allow_global, &self.deny_global]
            .into_iter()
            .chain(self.group_lists.iter().flat_map(|(_, a, d)| [a, d]))
            .chain(self.policies.iter().flat_map(|g| [&g.allow, &g.deny]))
    }

    /// Whether some web rule or scoped list entry names devices
    /// (`device`/`devices`): then the device itself, not only its groups,
    /// can change a decision.
    pub fn rules_use_devices(&self) -> bool {
        self.rules.iter().any(|r| r.devices.is_some())
            || self
                .lists()
                .any(|l| l.scoped.iter().any(|e| e.devices.is_some()))
    }

    /// What the policy sees of `host` in a request with `scheme` and `path`
    /// (see [`HostKey`]).
    pub fn host_key(&self, scheme: Scheme, host: &str, path: &str) -> HostKey {
        let v = self.host_view(scheme, host, path);
        let rule_hosts = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.hosts
                    .as_ref()
                    .is_some_and(|h| h.iter().any(|p| p.matches(&v.host)))
            })
            .map(|(i, _)| i as u32)
            .collect();
        let scoped = match &v.list_host {
            Some(h) => self
                .lists()
                .flat_map(|l| l.scoped.iter())
                .enumerate()
                .filter(|(_, e)| e.covers(h))
                .map(|(i, _)| i as u32)
                .collect(),
            None => Vec::new(),
        };
        HostKey {
            cats: v.cats,
            app: v.app,
            app_own: v.app_own,
            rule_hosts,
            scoped,
        }
    }

    /// Whether some web rule names methods (`method`/`methods`).
    pub fn rules_use_methods(&self) -> bool {
        self.rules.iter().any(|r| r.methods.is_some())
    }

    /// Whether the path (or, for adblock patterns, the scheme) of a request
    /// to `host` can change its decision: a rule with `paths`, or list
    /// entries that look at paths for this host.
    pub fn path_matters(&self, host: &str) -> bool {
        self.rules.iter().any(|r| r.paths.is_some()) || self.matcher.path_matters(host)
    }

    /// The requester's key (see [`SubjectKey`]).
    pub fn subject_key(&self, device: Option<&str>, cert_groups: &[String]) -> SubjectKey {
        SubjectKey {
            groups: self.device_groups(device, cert_groups).groups,
            device: device
                .filter(|_| self.rules_use_devices())
                .map(str::to_string),
        }
    }

    /// A number equal for two instants that no rule time window, weekday
    /// condition or list-entry expiry tells apart (0 for a policy with none).
    pub fn time_class(&self, t: SystemTime) -> u64 {
        let p = &self.time_profile;
        if p.minutes.is_empty() && !p.days && p.expiries.is_empty() {
            return 0;
        }
        let (day, minute) = local_day_minute(t, self.tz_offset);
        let bucket = p.minutes.partition_point(|m| *m <= minute) as u64;
        let day = if p.days { day as u64 + 1 } else { 0 };
        let ms = unix_ms(t);
        let expired = p.expiries.partition_point(|e| *e <= ms) as u64;
        (expired << 32) | (day << 16) | bucket
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, UNIX_EPOCH};

    use crate::{Policy, Request, Scheme};

    const DOC: &str = r#"
timezone = "+09:00"
[[group]]
name = "teachers"
[[site]]
name = "school"
cidrs = ["10.0.0.0/8"]
[categories]
allow = [{ entry = "temp.example", until = "2026-03-31" }]
[[rule]]
name = "night"
hosts = ["night.example"]
time = "22:00-06:00"
action = "block"
"#;

    fn at(ms: u64) -> std::time::SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn time_classes_split_where_decisions_change() {
        let p = Policy::from_str(DOC, Path::new("/tmp/p.toml")).unwrap();
        // 2026-03-31 12:00 JST and 13:00 JST: same window, same day, same expiry state.
        let noon = 1_774_926_000_000u64;
        assert_eq!(p.time_class(at(noon)), p.time_class(at(noon + 3_600_000)));
        // 23:00 JST is inside the night window.
        assert_ne!(
            p.time_class(at(noon)),
            p.time_class(at(noon + 11 * 3_600_000))
        );
        let req = |t| Request {
            device: None,
            cert_groups: &[],
            client_ip: "10.1.1.1".parse().unwrap(),
            location: None,
            scheme: Scheme::Https,
            method: "GET",
            host: "temp.example",
            port: 443,
            path: "/",
            time: at(t),
        };
        // The expiring allow entry applies through 2026-03-31 JST only.
        let before = p.evaluate(&req(noon));
        assert_eq!(before.rule, "allow-list");
        let after = p.evaluate(&req(noon + 12 * 3_600_000));
        assert_eq!(after.rule, "default");
        assert_ne!(
            p.time_class(at(noon)),
            p.time_class(at(noon + 12 * 3_600_000))
        );
    }
}
