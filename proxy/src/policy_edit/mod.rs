//! Safe policy changes: edit the policy document the way an administrator
//! would by hand, check it, show what it changes, apply it without a lost
//! update, keep every version. Used by the console's policy pages and
//! `komugate policy diff`; anything that changes the policy file on
//! someone's behalf (an approved unblock request …) goes through here.
//!
//! - [`ops`]: the edits ([`Edit`]) as toml_edit operations that keep
//!   comments and layout
//! - [`validate`]: the `policy check` compile of the edited text, problems
//!   in Japanese tied to form fields
//! - [`textdiff`]: the line diff shown before applying and audited after
//! - [`dryrun`]: both policies over the last days' access logs
//! - [`store`]: versions next to the file, apply with conflict detection
//! - [`cli`]: `komugate policy diff OLD NEW --against-logs 7d`
//!
//! The steps, for a caller:
//!
//! ```text
//! let store = PolicyStore::for_policy(file);
//! let change = prepare(&store, Some(&token_from_the_form), &[edit])?;  // edit + diff + validate
//! let report = dryrun::dry_run(&running_policy, &change.policy, log_dir, &opts)?;
//! let applied = store.apply(&change.base, &change.new_text, &meta)?;    // Conflict if the file moved on
//! gateway.reload(...)                                                   // then audit
//! ```

pub mod cli;
pub mod dryrun;
pub mod ops;
pub mod store;
pub mod textdiff;
pub mod validate;

pub use dryrun::{dry_run, DryRunOptions, DryRunReport};
pub use ops::{Edit, EditError, ListKind, ListScope};
pub use store::{ApplyError, ChangeMeta, PolicyStore, VersionInfo};
pub use textdiff::TextDiff;
pub use validate::Problem;

use komugate_policy::Policy;
use toml_edit::DocumentMut;

/// A change ready to dry-run and apply: the edited text, valid.
pub struct Prepared {
    /// Version token of the text the change was made on.
    pub base: String,
    pub old_text: String,
    pub new_text: String,
    pub diff: TextDiff,
    /// The edited policy, compiled.
    pub policy: Policy,
    /// What the change does, in one line (English, for the audit log).
    pub summary: String,
    /// The same in Japanese (the console's pages, the version list).
    pub summary_ja: String,
}

/// Why a change cannot be prepared.
#[derive(Debug)]
pub enum PrepareError {
    /// The file is no longer the version the form was built on.
    Conflict {
        base: String,
        current: String,
    },
    /// An edit does not apply (see the field).
    Edit(EditError),
    /// The edited policy does not validate.
    Invalid {
        diff: TextDiff,
        problems: Vec<Problem>,
    },
    /// The edit leaves the file as it is.
    NoChange,
    Io(String),
}

impl std::fmt::Display for PrepareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrepareError::Conflict { base, current } => {
                write!(
                    f,
                    "{}",
                    ApplyError::Conflict {
                        base: base.clone(),
                        current: current.clone()
                    }
                )
            }
            PrepareError::Edit(e) => write!(f, "{e}"),
            PrepareError::Invalid { problems, .. } => {
                let lines: Vec<&str> = problems.iter().map(|p| p.en.as_str()).collect();
                write!(
                    f,
                    "the changed policy does not validate:\n{}",
                    lines.join("\n")
                )
            }
            PrepareError::NoChange => f.write_str("the change leaves the policy as it is"),
            PrepareError::Io(e) => f.write_str(e),
        }
    }
}

/// Applies `edits` to the current file (which must still be version
/// `base` when given), and validates the result.
pub fn prepare(
    store: &PolicyStore,
    base: Option<&str>,
    edits: &[Edit],
) -> Result<Prepared, PrepareError> {
    let (old_text, token) = current(store, base)?;
    let mut doc: DocumentMut = old_text.parse().map_err(|e: toml_edit::TomlError| {
        PrepareError::Io(format!(
            "{} cannot be edited: it is not valid TOML ({})",
            store.file().display(),
            e.message().trim()
        ))
    })?;
    for e in edits {
        e.apply(&mut doc).map_err(PrepareError::Edit)?;
    }
    let summary = edits
        .iter()
        .map(Edit::summary)
        .collect::<Vec<_>>()
        .join("; ");
    let summary_ja = edits
        .iter()
        .map(Edit::summary_ja)
        .collect::<Vec<_>>()
        .join("、");
    finish(store, token, old_text, doc.to_string(), summary, summary_ja)
}

/// Prepares replacing the current file (version `base`) with `new_text`
/// (restoring a kept version).
pub fn prepare_text(
    store: &PolicyStore,
    base: Option<&str>,
    new_text: String,
    summary: String,
    summary_ja: String,
) -> Result<Prepared, PrepareError> {
    let (old_text, token) = current(store, base)?;
    finish(store, token, old_text, new_text, summary, summary_ja)
}

fn current(store: &PolicyStore, base: Option<&str>) -> Result<(String, String), PrepareError> {
    let (text, token) = store
        .current()
        .map_err(|e| PrepareError::Io(e.to_string()))?;
    match base {
        Some(b) if b != token => Err(PrepareError::Conflict {
            base: b.to_string(),
            current: token,
        }),
        _ => Ok((text, token)),
    }
}

fn finish(
    store: &PolicyStore,
    base: String,
    old_text: String,
    new_text: String,
    summary: String,
    summary_ja: String,
) -> Result<Prepared, PrepareError> {
    if new_text == old_text {
        return Err(PrepareError::NoChange);
    }
    let diff = textdiff::diff(&old_text, &new_text);
    match validate::validate(&new_text, store.file(), &diff.changed_new_lines()) {
        Ok(policy) => Ok(Prepared {
            base,
            old_text,
            new_text,
            diff,
            policy,
            summary,
            summary_ja,
        }),
        Err(problems) => Err(PrepareError::Invalid { diff, problems }),
    }
}
