//! Parsing (toml_edit, keeping spans), validation (all errors collected) and
//! compilation of the policy document.
//!
//! [`compile`] reads the sections in dependency order, one submodule per
//! section (`document`, `tenant`, `sites`, `groups`, `egress`, `apps`, `casb`,
//! `categories`, `rules`, `policies`, `firewall`); `cx` holds the typed value
//! readers that report problems at their spans, `conditions` the rule
//! conditions shared by web and firewall rules, and `reachability` the
//! unreachable-rule check.
//!
//! Document outline (see `examples/policy.toml` for a commented example):
//!
//! ```toml
//! version = 1
//! timezone = "+09:00"                  # fixed offset for time windows
//! [contact]   name, phone, email, url  # shown on the block page
//! [defaults]  action = "allow"|"block", message, tunnel = "inspect"|"bypass"
//! [tenant]    microsoft = [guid, domain], google = [domain]
//! [registry]  path = "registry.csv"    # device_id,user,groups
//! [[site]]    name, cidrs = [..], assertion = true|false,
//!             beacon_key = "base64 Ed25519 public key", pac_direct = [..]
//! [pac]       direct = [host patterns, IPs, CIDRs], proxy = "HTTPS host:port"
//! [[group]]   name, aliases = [..], allow/deny = [entries], allow_files/deny_files = [paths]
//! [categories] allow, deny, allow_files, deny_files, expressions = bool
//! [[categories.source]] format = squidguard|hosts|plain|adblock|auto|domainlist|urllist,
//!                       path, only = [..] (squidguard), category (other formats),
//!                       url (downloaded into `path` by the gateway), refresh = "6h",
//!                       sha256 | sha256_url, max_bytes, max_invalid_ratio, max_shrink
//! [[egress]]  name, source = IP, hosts = [patterns]
//! [[app]]     name, hosts = [patterns], title, vendor, category, certifications,
//!             tenant_provider, tenant_hosts, own, upload_paths, download_paths,
//!             download_params, sync_paths, sync_user_agents (a built-in catalog
//!             app of the same name is overridden key by key)
//! [casb]      catalog = true|false, upload_threshold, inspect_max_bytes,
//!             over_cap = "allow"|"block", [[casb.dlp]] name, action,
//!             my_number = true | keywords = [..] | regex = ".."
//! [[rule]]    name, <conditions>, action, message, tunnel, egress, casb, firewall
//!             (conditions include app, app_category, app_tenant = "own"|"other";
//!             a rule with `casb` and no `action` only sets CASB controls;
//!             users, user_groups, signed_in = bool: the OpenID Connect user;
//!             posture = { disk_encryption, firewall, os_updated_within_days,
//!             os, min_os_version, min_client_version }: the device's report)
//! [[ruleset]] name, [[ruleset.rule]] ...
//! [[policy]]  name, groups = [..] (omit = everyone), rulesets = [..], default,
//!             allow/deny = [entries], allow_files/deny_files = [paths],
//!             block_categories = [..] (blocked before its rules),
//!             ignore_categories = [..] (its rules do not see them)
//! list entries (in every allow/deny): "example.com" or
//!             { entry = "example.com", until = "2026-03-31", note = "..",
//!               devices = [..], locations = [..] }
//!             (applies through `until`, in `timezone`; no reload needed;
//!             with `devices` / `locations`, a domain for those requesters only)
//! ```
//!
//! Evaluation order: deny lists (global, the user's groups', the user's
//! policy's) → allow lists (the same three) → the policy's
//! `block_categories` → the rules of the first `[[policy]]` whose groups
//! include one of the user's groups (or the top-level `[[rule]]`s when
//! there is no `[[policy]]`), first match wins → the policy's `default` or
//! `[defaults] action`.

mod apps;
mod casb;
mod categories;
mod conditions;
mod cx;
mod document;
mod egress;
mod firewall;
mod groups;
mod policies;
mod reachability;
mod rules;
mod sites;
mod subject;
mod tenant;

use std::path::{Path, PathBuf};

use toml_edit::{ImDocument, TableLike};

use crate::diag::{Diagnostic, PolicyErrors, Sink};
use crate::*;
use conditions::Names;
use cx::Cx;

pub use apps::builtin_apps;

/// What `check` reports for a valid policy.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub file: PathBuf,
    pub sites: usize,
    pub groups: usize,
    pub devices: usize,
    pub apps: usize,
    pub egress_pools: usize,
    pub rules: usize,
    pub policies: Vec<String>,
    pub categories: Vec<String>,
    pub list_entries: usize,
    pub import: ImportSummary,
    pub source_files: Vec<PathBuf>,
    pub digest: String,
    /// Problems that do not stop the policy from loading.
    pub warnings: Vec<Diagnostic>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::wording::EN.summary(self))
    }
}

/// Validates a policy file and everything it includes; `Err` lists every problem.
pub fn check(path: &Path) -> Result<Summary, PolicyErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        PolicyErrors(vec![Diagnostic::new(
            path,
            0,
            0,
            format!("cannot read policy file: {e}"),
        )])
    })?;
    compile(&text, path).map(|(_, s)| s)
}

const TOP_KEYS: &[&str] = &[
    "version",
    "timezone",
    "contact",
    "defaults",
    "tenant",
    "registry",
    "site",
    "pac",
    "group",
    "categories",
    "egress",
    "app",
    "rule",
    "ruleset",
    "policy",
    "casb",
    "firewall",
];

pub(crate) fn compile(text: &str, file: &Path) -> Result<(Policy, Summary), PolicyErrors> {
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut cx = Cx {
        s: Sink::new(file, text),
        base,
        files: vec![file.to_path_buf()],
        tz_offset: 9 * 3600,
    };
    let doc = match ImDocument::parse(text) {
        Ok(d) => d,
        Err(e) => {
            let msg = e.message().trim().to_string();
            cx.err(&e.span(), format!("TOML syntax error: {msg}"));
            return Err(PolicyErrors(cx.s.diags));
        }
    };
    let root: &dyn TableLike = doc.as_table();
    cx.keys(root, "the policy document", TOP_KEYS);

    // Sections in dependency order: rules resolve names of groups, sites,
    // apps, egress pools and categories; policies name rulesets.
    let header = document::header(&mut cx, root);
    cx.tz_offset = header.tz_offset;
    let tenants = tenant::section(&mut cx, root);
    let sites = sites::section(&mut cx, root);
    let pac = sites::pac(&mut cx, root);
    let groups = groups::section(&mut cx, root, &sites);
    let registry = groups::registry(&mut cx, root, &groups);
    let (egress, egress_index) = egress::section(&mut cx, root);
    // [casb] (its catalog switch is needed before [[app]])
    let casb_table = cx.table(root, "casb");
    let apps = apps::section(
        &mut cx,
        root,
        casb_table.as_ref().map(|(t, _)| *t),
        &tenants,
    );
    let casb_settings = casb::section(&mut cx, casb_table, apps.catalog.as_ref(), &tenants);
    let Some(cats) = categories::section(&mut cx, root, &groups, &sites) else {
        return Err(PolicyErrors(cx.s.diags));
    };

    let mut cat_sorted: Vec<&String> = cats.declared.iter().collect();
    cat_sorted.sort();
    let names = Names {
        groups: &groups.index,
        group_names: groups.index.keys().map(|s| s.as_str()).collect(),
        sites: &sites.index,
        site_names: sites.sites.iter().map(|s| s.name.as_str()).collect(),
        app_names: apps.apps.iter().map(|s| s.name.as_str()).collect(),
        apps: apps.index,
        egress_names: egress.iter().map(|s| s.name.as_str()).collect(),
        egress: egress_index,
        categories: &cats.declared,
        category_names: cat_sorted.iter().map(|s| s.as_str()).collect(),
        matcher: &cats.matcher,
    };
    let rules = rules::section(&mut cx, root, &names);
    let policies = policies::section(&mut cx, root, &names, &rules, &cats.policy_lists);
    reachability::report_unreachable(
        &mut cx,
        &rules.rules,
        &rules.spans,
        &policies.policies,
        policies.explicit,
    );
    let firewall = firewall::section(&mut cx, root, &names);
    if let Some(fw) = &firewall {
        firewall::report_web_rules_left_to_firewall(&mut cx, &rules.rules, &rules.spans, fw);
    }
    drop(names);

    if !cx.s.diags.is_empty() {
        let mut d = cx.s.diags;
        d.sort_by(|a, b| {
            (a.file == *file)
                .cmp(&(b.file == *file))
                .reverse()
                .then(a.file.cmp(&b.file))
                .then(a.line.cmp(&b.line))
                .then(a.column.cmp(&b.column))
        });
        return Err(PolicyErrors(d));
    }

    // Digest over the policy and every file read.
    let mut h = Fnv::new();
    h.write(text.as_bytes());
    let mut files = cx.files;
    files.dedup();
    for f in &files[1..] {
        h.write(f.to_string_lossy().as_bytes());
        if let Ok(b) = std::fs::read(f) {
            h.write(&b);
        }
    }
    let digest = h.hex();
    let mut categories: Vec<String> = cats.declared.into_iter().collect();
    categories.sort();
    let summary = Summary {
        file: file.to_path_buf(),
        sites: sites.sites.len(),
        groups: groups.groups.len(),
        devices: registry.devices.len(),
        apps: apps.apps.len(),
        egress_pools: egress.len(),
        rules: rules.rules.len(),
        policies: if policies.explicit {
            policies.policies.iter().map(|p| p.name.clone()).collect()
        } else {
            vec![]
        },
        categories,
        list_entries: cats.matcher.entry_count(),
        import: cats.import.clone(),
        source_files: files.clone(),
        digest: digest.clone(),
        warnings: {
            let mut w = cx.s.warnings;
            w.sort_by_key(|d| (d.line, d.column));
            w
        },
    };
    let has_casb_rules = rules.rules.iter().any(|r| r.casb.is_some());
    let scoped_lists = [&cats.allow_global, &cats.deny_global]
        .into_iter()
        .chain(cats.group_lists.iter().flat_map(|(_, a, d)| [a, d]))
        .chain(policies.policies.iter().flat_map(|p| [&p.allow, &p.deny]))
        .any(|l| !l.scoped.is_empty());
    let policy = Policy {
        file: file.to_path_buf(),
        tz_offset: header.tz_offset,
        default_action: header.default_action,
        default_message: header.default_message,
        default_tunnel: header.default_tunnel,
        contact: header.contact,
        tenants,
        sites: sites.sites,
        pac,
        site_index: sites.index,
        site_nets: sites.nets,
        groups: groups.groups,
        group_index: groups.index,
        registry,
        apps: apps.apps,
        egress,
        rules: rules.rules,
        policies: policies.policies,
        matcher: cats.matcher,
        visible: cats.visible,
        allow_global: cats.allow_global,
        deny_global: cats.deny_global,
        group_lists: cats.group_lists,
        scoped_lists,
        source_files: files,
        digest,
        import: cats.import,
        remote_sources: cats.remote_sources,
        has_casb_rules,
        casb: casb_settings,
        firewall,
        time_profile: Default::default(),
    };
    let policy = Policy {
        time_profile: crate::dependence::TimeProfile::of(&policy),
        ..policy
    };
    Ok((policy, summary))
}
