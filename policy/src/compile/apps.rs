//! `[[app]]`: cloud apps for rules and CASB, the built-in catalog's apps
//! first overridden key by key by the policy's.

use std::collections::HashMap;

use toml_edit::TableLike;

use super::cx::{host_list, Cx};
use crate::diag::suggest;
use crate::pattern::HostPattern;
use crate::{App, Tenants};

/// The apps (policy apps in document order, then the remaining catalog
/// apps), their names → index, and the parsed catalog when it is used.
pub(super) struct Apps {
    pub apps: Vec<App>,
    pub index: HashMap<String, usize>,
    pub catalog: Option<crate::casb::CatalogFile>,
}

/// `casb`: the `[casb]` table, for its `catalog` switch.
pub(super) fn section(
    cx: &mut Cx<'_>,
    root: &dyn TableLike,
    casb: Option<&dyn TableLike>,
    tenants: &Tenants,
) -> Apps {
    let use_catalog = match casb {
        Some(ct) => cx.bool(ct, "catalog", "[casb]").unwrap_or(true),
        None => true,
    };
    let mut catalog_apps: Vec<App> = Vec::new();
    let mut catalog = None;
    if use_catalog {
        match crate::casb::parse_catalog(crate::casb::BUILTIN_CATALOG).and_then(|c| {
            let apps = c
                .app
                .iter()
                .map(catalog_app)
                .collect::<Result<Vec<_>, _>>()?;
            Ok((c, apps))
        }) {
            Ok((c, a)) => {
                catalog_apps = a;
                catalog = Some(c);
            }
            Err(e) => cx.err(&None, e),
        }
    }

    // Policy apps first (document order), then the remaining catalog apps.
    let mut apps: Vec<App> = Vec::new();
    let mut app_index = HashMap::new();
    for (t, tsp) in cx.tables(root, "app", "app") {
        let Some((name, nsp)) = cx.req_str(t, "name", "[[app]]", &tsp) else {
            continue;
        };
        let what = format!("app `{name}`");
        cx.keys(t, &what, APP_KEYS);
        let base = catalog_apps
            .iter()
            .position(|a| a.name == name)
            .map(|i| catalog_apps.remove(i));
        let from_catalog = base.is_some();
        let mut app = base.unwrap_or_else(|| App {
            name: name.clone(),
            ..Default::default()
        });
        if t.contains_key("hosts") {
            let (hosts, patterns) = host_list(cx, t, &what);
            app.hosts = hosts;
            app.patterns = patterns;
        } else if !from_catalog {
            cx.err(&tsp, format!("{what} has no `hosts`"));
        }
        override_app(cx, t, &what, &mut app);
        if !from_catalog && app.category.is_empty() {
            app.category = "other".into();
        }
        if app_index.contains_key(&name) {
            cx.err(&nsp, format!("duplicate app `{name}`"));
            continue;
        }
        app_index.insert(name.clone(), apps.len());
        apps.push(app);
    }
    for app in catalog_apps {
        app_index.insert(app.name.clone(), apps.len());
        apps.push(app);
    }
    for app in &mut apps {
        app.own_patterns = app
            .tenant_hosts
            .iter()
            .flat_map(|t| {
                tenants
                    .sharepoint
                    .iter()
                    .map(move |n| t.replace("{tenant}", n))
            })
            .filter_map(|h| HostPattern::parse(&h).ok())
            .collect();
    }
    Apps {
        apps,
        index: app_index,
        catalog,
    }
}

const APP_KEYS: &[&str] = &[
    "name",
    "hosts",
    "description",
    "title",
    "vendor",
    "category",
    "certifications",
    "tenant_provider",
    "tenant_hosts",
    "own",
    "upload_paths",
    "download_paths",
    "download_params",
    "sync_paths",
    "sync_user_agents",
];

/// A catalog entry as an [`App`] (host patterns parsed).
fn catalog_app(a: &crate::casb::CatalogApp) -> Result<App, String> {
    let bad = |e: String| format!("built-in app catalog, app `{}`: {e}", a.name);
    let patterns = a
        .hosts
        .iter()
        .map(|h| HostPattern::parse(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    for t in &a.tenant_hosts {
        crate::casb::check_tenant_host(t).map_err(bad)?;
    }
    for p in a
        .upload_paths
        .iter()
        .chain(&a.download_paths)
        .chain(&a.sync_paths)
    {
        crate::casb::check_path_pattern(p).map_err(bad)?;
    }
    for p in &a.download_params {
        crate::casb::check_param(p).map_err(bad)?;
    }
    Ok(App {
        name: a.name.clone(),
        hosts: a.hosts.clone(),
        patterns,
        title: a.title.clone(),
        vendor: a.vendor.clone(),
        category: a.category.clone(),
        certifications: a.certifications.clone(),
        tenant_provider: a.tenant_provider.clone(),
        tenant_hosts: a.tenant_hosts.clone(),
        own_patterns: Vec::new(),
        own: a.own,
        upload_paths: a.upload_paths.clone(),
        download_paths: a.download_paths.clone(),
        download_params: a.download_params.clone(),
        sync_paths: a.sync_paths.clone(),
        sync_user_agents: a.sync_user_agents.clone(),
        builtin: true,
    })
}

/// The built-in catalog's apps (for reports without a policy).
pub fn builtin_apps() -> Result<Vec<App>, String> {
    let c = crate::casb::parse_catalog(crate::casb::BUILTIN_CATALOG)?;
    c.app.iter().map(catalog_app).collect()
}

/// Applies the keys of a policy `[[app]]` (other than name/hosts) to `app`.
fn override_app(cx: &mut Cx<'_>, t: &dyn TableLike, what: &str, app: &mut App) {
    if let Some((v, _)) = cx.str(t, "title", what) {
        app.title = v;
    }
    if let Some((v, _)) = cx.str(t, "vendor", what) {
        app.vendor = v;
    }
    if let Some((v, sp)) = cx.str(t, "category", what) {
        if crate::casb::category_bit(&v).is_some() {
            app.category = v;
        } else {
            cx.err(
                &sp,
                format!(
                    "unknown app category `{v}` (one of {}){}",
                    crate::casb::APP_CATEGORIES.join(", "),
                    suggest(&v, crate::casb::APP_CATEGORIES.iter().copied())
                ),
            );
        }
    }
    if let Some(v) = cx.strs(t, "certifications", what) {
        app.certifications.clear();
        for (c, sp) in v {
            if crate::casb::CERTIFICATIONS.contains(&c.as_str()) {
                app.certifications.push(c);
            } else {
                cx.err(
                    &sp,
                    format!(
                        "unknown certification `{c}` (one of {}){}",
                        crate::casb::CERTIFICATIONS.join(", "),
                        suggest(&c, crate::casb::CERTIFICATIONS.iter().copied())
                    ),
                );
            }
        }
    }
    if let Some((v, sp)) = cx.str(t, "tenant_provider", what) {
        match v.as_str() {
            "microsoft" | "google" => app.tenant_provider = Some(v),
            "" | "none" => app.tenant_provider = None,
            _ => cx.err(
                &sp,
                format!(
                    "invalid tenant_provider `{v}` (use \"microsoft\", \"google\" or \"none\")"
                ),
            ),
        }
    }
    if let Some(b) = cx.bool(t, "own", what) {
        app.own = b;
    }
    if let Some(v) = cx.strs(t, "tenant_hosts", what) {
        app.tenant_hosts.clear();
        for (h, sp) in v {
            match crate::casb::check_tenant_host(&h) {
                Ok(()) => app.tenant_hosts.push(h.to_ascii_lowercase()),
                Err(e) => cx.err(&sp, e),
            }
        }
    }
    for (key, out) in [
        ("upload_paths", &mut app.upload_paths),
        ("download_paths", &mut app.download_paths),
        ("sync_paths", &mut app.sync_paths),
    ] {
        if let Some(v) = cx.strs(t, key, what) {
            out.clear();
            for (p, sp) in v {
                match crate::casb::check_path_pattern(&p) {
                    Ok(()) => out.push(p),
                    Err(e) => cx.err(&sp, e),
                }
            }
        }
    }
    if let Some(v) = cx.strs(t, "download_params", what) {
        app.download_params.clear();
        for (p, sp) in v {
            match crate::casb::check_param(&p) {
                Ok(()) => app.download_params.push(p),
                Err(e) => cx.err(&sp, e),
            }
        }
    }
    if let Some(v) = cx.strs(t, "sync_user_agents", what) {
        app.sync_user_agents = v.into_iter().map(|(s, _)| s).collect();
    }
}
