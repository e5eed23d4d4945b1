//! Labels people read for category ids: Japanese first, English beside.
//!
//! The table is `categories/labels.tsv` (UT1's directory names and
//! komugate's app categories), compiled in. An id without a row is shown
//! as itself: a list from another publisher still displays, only untranslated.

/// The label data file, one `id<TAB>ja<TAB>en` row per category.
const LABELS_TSV: &str = include_str!("../labels.tsv");

/// A category's names for display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CategoryLabel<'a> {
    pub id: &'a str,
    pub ja: &'a str,
    pub en: &'a str,
}

/// Rows of the table (comments and blank lines skipped).
fn rows() -> impl Iterator<Item = CategoryLabel<'static>> {
    LABELS_TSV
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some(CategoryLabel {
                id: f.next()?,
                ja: f.next()?,
                en: f.next()?,
            })
        })
}

/// The label of `id`, if the table has one. Ids are matched case-insensitively
/// (list directories are sometimes upper-cased by hand).
pub fn category_label(id: &str) -> Option<CategoryLabel<'static>> {
    rows().find(|r| r.id.eq_ignore_ascii_case(id))
}

/// Japanese label of `id`, or `id` itself when the table has none.
pub fn category_label_ja(id: &str) -> &str {
    match category_label(id) {
        Some(l) => l.ja,
        None => id,
    }
}

/// Every labelled category id, in table order.
pub fn labelled_categories() -> impl Iterator<Item = CategoryLabel<'static>> {
    rows()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_has_three_non_empty_fields_and_a_unique_id() {
        let mut seen = std::collections::HashSet::new();
        for (n, line) in LABELS_TSV.lines().enumerate() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 3, "labels.tsv:{}: want id<TAB>ja<TAB>en", n + 1);
            assert!(
                f.iter().all(|x| !x.trim().is_empty()),
                "labels.tsv:{}",
                n + 1
            );
            assert!(
                seen.insert(f[0]),
                "labels.tsv:{}: duplicate id {}",
                n + 1,
                f[0]
            );
        }
    }

    #[test]
    fn known_and_unknown_ids() {
        assert_eq!(category_label_ja("gambling"), "ギャンブル");
        assert_eq!(category_label_ja("PHISHING"), "フィッシング詐欺");
        assert_eq!(category_label("malware").unwrap().en, "Malware");
        assert_eq!(category_label_ja("not-a-category"), "not-a-category");
    }

    /// Every category of the UT1 lists the project ships or tests with has a
    /// Japanese label, so the block page never shows a bare UT1 id for them.
    #[test]
    fn every_shipped_ut1_category_is_labelled() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dirs = [
            root.join("examples/lists/ut1"),
            root.join("../shared/blocklists/ut1"),
        ];
        let mut checked = 0;
        for dir in dirs.iter().filter(|d| d.is_dir()) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                if entry.file_type().unwrap().is_dir() {
                    let id = entry.file_name().to_string_lossy().into_owned();
                    assert!(
                        category_label(&id).is_some(),
                        "no label for UT1 category {id}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 4, "found no UT1 category directories to check");
    }
}
