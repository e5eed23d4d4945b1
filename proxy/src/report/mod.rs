//! The monthly report for the board's committee: one month (local-time
//! month boundaries, JST by default) of access records counted per school
//! (site) and category — requests, blocks, the most blocked categories and
//! hosts, cloud-app (CASB) usage, IPS / threat-intel / DLP events, devices
//! active — from any [`LogAggregates`] store.
//!
//! - [`MonthlyReport::build`]: the figures (a handful of grouped counts)
//! - [`html`]: the printable page (the console's `/console/report` and
//!   `komugate report monthly --format html`)
//! - [`xlsx`]: the Excel workbook, with charts
//! - [`cli`]: `komugate report monthly`

pub mod cli;
pub mod html;
pub mod xlsx;

use serde::Serialize;

use crate::aggregate::{
    AggError, Counts, GroupQuery, Grouped, Key, KeyValue, LogAggregates, Measure, Source,
};
use crate::logs::record::{days_from_civil, format_with_offset};

/// Most blocked categories listed.
pub const TOP_CATEGORIES: usize = 10;
/// Most blocked hosts listed.
pub const TOP_HOSTS: usize = 20;

/// A calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Month {
    pub year: i64,
    pub month: u32,
}

impl Month {
    /// `2026-11`; `Err` says what is wrong and how to write it.
    pub fn parse(s: &str) -> Result<Month, String> {
        let b = s.trim().as_bytes();
        let bad = || {
            format!(
                "month {:?} is not understood: write it as YYYY-MM, like 2026-11 (月は 2026-11 のように指定してください)",
                s.chars().take(32).collect::<String>()
            )
        };
        if b.len() != 7 || b[4] != b'-' || !b[..4].iter().chain(&b[5..]).all(u8::is_ascii_digit) {
            return Err(bad());
        }
        let year: i64 = s.trim()[..4].parse().map_err(|_| bad())?;
        let month: u32 = s.trim()[5..].parse().map_err(|_| bad())?;
        if !(1..=12).contains(&month) {
            return Err(format!(
                "month {s:?}: the month must be 01 to 12 (月は 01〜12 で指定してください)"
            ));
        }
        if !(2000..=2199).contains(&year) {
            return Err(format!(
                "month {s:?}: the year must be 2000 to 2199 (年は 2000〜2199 で指定してください)"
            ));
        }
        Ok(Month { year, month })
    }

    /// The month holding time `ms` in the zone `offset_min` east of UTC.
    pub fn of(ms: i64, offset_min: i32) -> Month {
        let local_days = (ms + offset_min as i64 * 60_000).div_euclid(86_400_000);
        let (year, month, _) = crate::logs::record::civil_from_days(local_days);
        Month { year, month }
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    pub fn prev(self) -> Month {
        if self.month == 1 {
            Month {
                year: self.year - 1,
                month: 12,
            }
        } else {
            Month {
                year: self.year,
                month: self.month - 1,
            }
        }
    }

    /// Local midnight of the 1st, in Unix ms.
    pub fn start_ms(self, offset_min: i32) -> i64 {
        days_from_civil(self.year, self.month, 1) * 86_400_000 - offset_min as i64 * 60_000
    }

    pub fn label(self) -> String {
        format!("{:04}-{:02}", self.year, self.month)
    }
}

/// One school's month.
#[derive(Debug, Clone, Serialize)]
pub struct SiteRow {
    pub site: String,
    pub counts: Counts,
}

/// One (site, category) pair.
#[derive(Debug, Clone, Serialize)]
pub struct SiteCategoryRow {
    pub site: String,
    pub category: String,
    pub label_ja: String,
    pub label_en: String,
    pub requests: u64,
    pub blocks: u64,
}

/// A labelled count (category, host or app).
#[derive(Debug, Clone, Serialize)]
pub struct Ranked {
    pub name: String,
    pub label_ja: String,
    pub label_en: String,
    pub counts: Counts,
}

/// One day of the month.
#[derive(Debug, Clone, Serialize)]
pub struct Day {
    /// `2026-11-01`, local date.
    pub date: String,
    pub requests: u64,
    pub blocks: u64,
}

/// The figures of one month.
#[derive(Debug, Clone, Serialize)]
pub struct MonthlyReport {
    pub month: String,
    pub since_ms: i64,
    pub until_ms: i64,
    /// `2026-11-01 00:00` and `2026-12-01 00:00` in the report's zone.
    pub since_local: String,
    pub until_local: String,
    pub zone: String,
    pub source: Source,
    pub total: Counts,
    pub sites: Vec<SiteRow>,
    pub site_categories: Vec<SiteCategoryRow>,
    pub top_categories: Vec<Ranked>,
    pub top_hosts: Vec<Ranked>,
    pub apps: Vec<Ranked>,
    pub days: Vec<Day>,
    /// Files that could not be read, groups left out: said on the report.
    pub problems: Vec<String>,
}

fn labelled(name: &str, counts: Counts) -> Ranked {
    let (ja, en) = category_labels(name);
    Ranked {
        name: name.to_string(),
        label_ja: ja,
        label_en: en,
        counts,
    }
}

/// Japanese and English labels of a category id (the id itself when the
/// label table has none; "uncategorised" for none).
pub fn category_labels(id: &str) -> (String, String) {
    if id.is_empty() {
        return ("分類なし".into(), "uncategorised".into());
    }
    match komugate_categories::category_label(id) {
        Some(l) => (l.ja.to_string(), l.en.to_string()),
        None => (id.to_string(), id.to_string()),
    }
}

fn local_minute(ms: i64, offset_min: i32) -> String {
    let s = format_with_offset(ms, offset_min, false).replace('T', " ");
    s.get(..16).unwrap_or(&s).to_string()
}

impl MonthlyReport {
    /// Counts `month` (local month `offset_min` east of UTC) in `store`.
    pub async fn build(
        store: &dyn LogAggregates,
        month: Month,
        offset_min: i32,
        zone: &str,
    ) -> Result<MonthlyReport, AggError> {
        let since = month.start_ms(offset_min);
        let until = month.next().start_ms(offset_min);
        let base = GroupQuery::total(since, until);
        let day_key = Key::Time {
            width_ms: 86_400_000,
            offset_ms: offset_min as i64 * 60_000,
        };
        let answers = store
            .grouped_many(vec![
                base.clone().with_devices(),
                base.clone().by(&[Key::Site]).with_devices(),
                base.clone().by(&[Key::Site, Key::Category]),
                base.clone()
                    .by(&[Key::Category])
                    .blocked()
                    .top(Measure::Blocks, TOP_CATEGORIES + 1),
                base.clone()
                    .by(&[Key::Host])
                    .blocked()
                    .top(Measure::Blocks, TOP_HOSTS),
                base.clone().by(&[Key::App]).with_devices(),
                base.clone().by(&[day_key]),
            ])
            .await?;
        let [total, sites, site_cats, cats, hosts, apps, days]: [Grouped; 7] =
            answers
                .try_into()
                .map_err(|_| AggError::new("the store gave a wrong number of answers"))?;
        let mut problems = Vec::new();
        for g in [&total, &sites, &site_cats, &cats, &hosts, &apps, &days] {
            problems.extend(g.problems.iter().cloned());
            if g.capped {
                problems.push(format!(
                    "more than {} groups: the smallest are left out (件数が多いため一部を省略)",
                    crate::aggregate::MAX_GROUPS
                ));
            }
        }
        problems.sort();
        problems.dedup();
        let text =
            |k: &[KeyValue], i: usize| k.get(i).map(|v| v.text().to_string()).unwrap_or_default();
        // Every day of the month, counted or not.
        let mut day_rows = Vec::new();
        let mut t = since;
        while t < until {
            let c = days
                .rows
                .iter()
                .find(|r| r.key.first().map(KeyValue::time) == Some(t))
                .map(|r| r.counts)
                .unwrap_or_default();
            day_rows.push(Day {
                date: local_minute(t, offset_min)[..10].to_string(),
                requests: c.requests,
                blocks: c.blocks,
            });
            t += 86_400_000;
        }
        Ok(MonthlyReport {
            month: month.label(),
            since_ms: since,
            until_ms: until,
            since_local: local_minute(since, offset_min),
            until_local: local_minute(until, offset_min),
            zone: zone.to_string(),
            source: store.source(),
            total: total.total,
            sites: sites
                .rows
                .iter()
                .map(|r| SiteRow {
                    site: text(&r.key, 0),
                    counts: r.counts,
                })
                .collect(),
            site_categories: site_cats
                .rows
                .iter()
                .map(|r| {
                    let category = text(&r.key, 1);
                    let (ja, en) = category_labels(&category);
                    SiteCategoryRow {
                        site: text(&r.key, 0),
                        category,
                        label_ja: ja,
                        label_en: en,
                        requests: r.counts.requests,
                        blocks: r.counts.blocks,
                    }
                })
                .collect(),
            // A block with no category is no category's: left out of the ranking.
            top_categories: cats
                .rows
                .iter()
                .filter(|r| !text(&r.key, 0).is_empty())
                .take(TOP_CATEGORIES)
                .map(|r| labelled(&text(&r.key, 0), r.counts))
                .collect(),
            top_hosts: hosts
                .rows
                .iter()
                .map(|r| Ranked {
                    name: text(&r.key, 0),
                    label_ja: String::new(),
                    label_en: String::new(),
                    counts: r.counts,
                })
                .collect(),
            apps: {
                let mut a: Vec<Ranked> = apps
                    .rows
                    .iter()
                    .filter(|r| !text(&r.key, 0).is_empty())
                    .map(|r| Ranked {
                        name: text(&r.key, 0),
                        label_ja: String::new(),
                        label_en: String::new(),
                        counts: r.counts,
                    })
                    .collect();
                a.sort_by(|x, y| {
                    y.counts
                        .requests
                        .cmp(&x.counts.requests)
                        .then(x.name.cmp(&y.name))
                });
                a
            },
            days: day_rows,
            problems,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small report with text that must be escaped or neutralised.
    pub(crate) fn sample() -> MonthlyReport {
        let c = |requests, blocks| Counts {
            requests,
            blocks,
            ips_events: 1,
            threat_intel: 2,
            dlp_blocks: 3,
            devices: 4,
        };
        let ranked = |name: &str, counts| {
            let (ja, en) = category_labels(name);
            Ranked {
                name: name.into(),
                label_ja: ja,
                label_en: en,
                counts,
            }
        };
        MonthlyReport {
            month: "2026-11".into(),
            since_ms: 0,
            until_ms: 1,
            since_local: "2026-11-01 00:00".into(),
            until_local: "2026-12-01 00:00".into(),
            zone: "JST (Asia/Tokyo)".into(),
            source: Source {
                kind: "local".into(),
                gateway_wide: false,
                detail: "/logs".into(),
            },
            total: c(100, 10),
            sites: vec![
                SiteRow {
                    site: "<script>alert(1)</script>".into(),
                    counts: c(60, 5),
                },
                SiteRow {
                    site: "=cmd|' /C calc'!A0".into(),
                    counts: c(40, 5),
                },
            ],
            site_categories: vec![SiteCategoryRow {
                site: "北小".into(),
                category: "gambling".into(),
                label_ja: "ギャンブル".into(),
                label_en: "gambling".into(),
                requests: 5,
                blocks: 5,
            }],
            top_categories: vec![ranked("gambling", c(5, 5))],
            top_hosts: vec![ranked("+evil.test", c(5, 5))],
            apps: vec![ranked("m365", c(30, 0))],
            days: vec![
                Day {
                    date: "2026-11-01".into(),
                    requests: 60,
                    blocks: 6,
                },
                Day {
                    date: "2026-11-02".into(),
                    requests: 40,
                    blocks: 4,
                },
            ],
            problems: vec!["@note".into()],
        }
    }

    #[test]
    fn months_parse_strictly_and_bound_in_local_time() {
        let m = Month::parse("2026-11").unwrap();
        assert_eq!(
            m,
            Month {
                year: 2026,
                month: 11
            }
        );
        // JST: November starts at 2026-10-31T15:00Z.
        assert_eq!(
            m.start_ms(540),
            crate::logs::record::parse_rfc3339_ms("2026-10-31T15:00:00Z").unwrap()
        );
        assert_eq!(m.next().label(), "2026-12");
        assert_eq!(Month::parse("2026-12").unwrap().next().label(), "2027-01");
        assert_eq!(Month::parse("2026-01").unwrap().prev().label(), "2025-12");
        for bad in [
            "2026-13",
            "2026-00",
            "26-11",
            "2026/11",
            "2026-1",
            "",
            "1999-05",
            "２０２６-11",
            "2026-11; DROP TABLE",
        ] {
            assert!(Month::parse(bad).is_err(), "{bad}");
        }
        assert!(Month::parse("2026-13").unwrap_err().contains("01 to 12"));
        assert_eq!(
            Month::of(
                crate::logs::record::parse_rfc3339_ms("2026-10-31T15:00:00Z").unwrap(),
                540
            ),
            m
        );
    }
}
