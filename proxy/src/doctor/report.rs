//! The doctor's findings: one line per check, Japanese first with English
//! beside (board staff read it), as text for a terminal or JSON for a
//! CronJob's log and scripts.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works now, but needs attention (a certificate expiring soon, an old list).
    Warn,
    /// Broken: the deployment does not do what its configuration says.
    Fail,
    /// Not configured, so not checked (no ClickHouse, no echo URL).
    Skip,
}

impl Status {
    fn tag(self) -> &'static str {
        match self {
            Status::Ok => "OK  ",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Short area name ("config", "certificate", "lists", "clickhouse",
    /// "smtp", "webhook", "gateway", "egress").
    pub area: &'static str,
    /// What was checked, "日本語 / English".
    pub subject: String,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// How to fix it (for warnings and failures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn new(area: &'static str, subject: impl Into<String>, status: Status) -> Check {
        Check {
            area,
            subject: subject.into(),
            status,
            detail: String::new(),
            fix: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Check {
        self.detail = detail.into();
        self
    }

    pub fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn push(&mut self, check: Check) {
        self.checks.push(check);
    }

    pub fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// The checks of one area (tests and scripts).
    pub fn area<'a>(&'a self, area: &'a str) -> impl Iterator<Item = &'a Check> + 'a {
        self.checks.iter().filter(move |c| c.area == area)
    }

    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!("[{}] {}", c.status.tag(), c.subject));
            if !c.detail.is_empty() {
                out.push_str(&format!(": {}", c.detail));
            }
            out.push('\n');
            if let Some(fix) = &c.fix {
                out.push_str(&format!("       対処 / fix: {fix}\n"));
            }
        }
        let (fail, warn) = (self.count(Status::Fail), self.count(Status::Warn));
        out.push_str(&format!(
            "結果 / result: 失敗 {fail} 件、警告 {warn} 件 / {fail} failed, {warn} warnings\n"
        ));
        out
    }
}
