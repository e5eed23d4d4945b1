//! What the category lists gave, said out loud: `serve` logs the counts of
//! every list file (entries, skipped rules, invalid lines) and the first
//! problems with file:line at start and on every reload, and exports them
//! as `komugate_category_list_lines{category,file,kind}`.

use komugate_policy::ImportSummary;
use prometheus::{IntGaugeVec, Opts, Registry};

pub struct ListImportMetrics {
    lines: IntGaugeVec,
}

impl ListImportMetrics {
    pub fn new() -> Self {
        ListImportMetrics {
            lines: IntGaugeVec::new(
                Opts::new(
                    "komugate_category_list_lines",
                    "Lines of each category list file in force, by what became of them (kind = entries, skipped, invalid)",
                ),
                &["category", "file", "kind"],
            )
            .expect("metric"),
        }
    }

    pub fn register(&self, registry: &Registry) {
        registry
            .register(Box::new(self.lines.clone()))
            .expect("metric names are unique");
    }

    /// Logs and exports the import counts of the policy now in force.
    pub fn publish(&self, summary: &ImportSummary, generation: u64) {
        self.lines.reset();
        for src in &summary.sources {
            for l in &src.lists {
                let file = l.path.display().to_string();
                for (kind, n) in [
                    ("entries", l.entries),
                    ("skipped", l.skipped),
                    ("invalid", l.invalid),
                ] {
                    self.lines
                        .with_label_values(&[&l.category, &file, kind])
                        .set(n as i64);
                }
                tracing::info!(
                    generation,
                    category = %l.category,
                    file = %file,
                    format = %l.format,
                    entries = l.entries,
                    skipped = l.skipped,
                    invalid = l.invalid,
                    "category list imported"
                );
            }
            if src.invalid_lines + src.skipped_lines > 0 {
                tracing::warn!(
                    generation,
                    source = %src.path.display(),
                    invalid = src.invalid_lines,
                    skipped = src.skipped_lines,
                    "category list lines not imported (first ones):\n  {}",
                    src.first_errors.join("\n  ")
                );
            }
        }
    }
}

impl Default for ListImportMetrics {
    fn default() -> Self {
        Self::new()
    }
}
