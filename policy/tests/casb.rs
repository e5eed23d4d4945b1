//! CASB in the policy: the built-in catalog (every entry's host patterns),
//! tenant-aware app instances, `app` / `app_category` / `app_tenant`
//! conditions, CASB-only rules, tenant-restriction headers, DLP patterns
//! and their validation errors.

use komugate_policy::{builtin_apps, Action, Location, Policy, Request, Scheme};
use std::net::IpAddr;
use std::path::Path;

fn policy(text: &str) -> Policy {
    Policy::from_str(text, Path::new("/nonexistent/casb.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn errors(text: &str) -> Vec<String> {
    match Policy::from_str(text, Path::new("/nonexistent/casb.toml")) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.0.iter().map(|d| d.to_string()).collect(),
    }
}

fn req<'a>(method: &'a str, host: &'a str, path: &'a str, offsite: bool) -> Request<'a> {
    Request {
        device: None,
        cert_groups: &[],
        client_ip: "10.0.0.1".parse::<IpAddr>().unwrap(),
        location: Some(if offsite {
            Location::Offsite
        } else {
            Location::Site("school".into())
        }),
        scheme: Scheme::Https,
        method,
        host,
        port: 443,
        path,
        time: std::time::SystemTime::now(),
    }
}

/// A host the pattern matches: `*.x` -> `a.x`, `.x` -> `x` and `a.x`.
fn samples(pattern: &str) -> Vec<String> {
    if let Some(rest) = pattern.strip_prefix("*.") {
        vec![format!("sample.{rest}")]
    } else if let Some(rest) = pattern.strip_prefix('.') {
        vec![rest.to_string(), format!("sample.{rest}")]
    } else {
        vec![pattern.to_string()]
    }
}

const BOARD: &str = r#"
[tenant]
microsoft = ["0d3a2b1c-aaaa-bbbb-cccc-123456789abc", "azumino-school.ed.jp"]
google = ["azumino-school.ed.jp"]
sharepoint = ["azumino"]
youtube_restrict = "Moderate"

[[site]]
name = "school"
cidrs = ["10.0.0.0/24"]

[[app]]
name = "c4th"
hosts = [".c4th.example"]
"#;

#[test]
fn every_catalog_entry_host_pattern_maps_to_its_app() {
    let apps = builtin_apps().expect("built-in catalog parses");
    assert!(apps.len() >= 20, "catalog has {} apps", apps.len());
    let p = policy(BOARD);
    let mut checked = 0;
    for app in &apps {
        assert!(!app.category.is_empty(), "{}", app.name);
        assert!(
            komugate_policy::casb::category_bit(&app.category).is_some(),
            "{}: {}",
            app.name,
            app.category
        );
        for c in &app.certifications {
            assert!(
                komugate_policy::casb::CERTIFICATIONS.contains(&c.as_str()),
                "{}: {c}",
                app.name
            );
        }
        for pat in &app.hosts {
            for host in samples(pat) {
                let d = p.evaluate(&req("GET", &host, "/", true));
                assert_eq!(
                    d.app.as_deref(),
                    Some(app.name.as_str()),
                    "{host} (pattern {pat} of {})",
                    app.name
                );
                assert_eq!(d.app_category.as_deref(), Some(app.category.as_str()));
                checked += 1;
            }
        }
    }
    assert!(checked > 60, "{checked}");
    // The requested apps are all there.
    for name in [
        "m365-login",
        "sharepoint",
        "outlook",
        "teams",
        "onedrive-consumer",
        "google-drive",
        "gmail",
        "dropbox",
        "box",
        "icloud",
        "gigafile",
        "firestorage",
        "github",
        "chatgpt",
        "c4th",
        "hyakumon",
    ] {
        assert!(
            apps.iter().any(|a| a.name == name),
            "{name} missing from the catalog"
        );
    }
    // Hosts that belong to no app.
    for host in [
        "example.com",
        "sharepoint.com.evil.example",
        "notdropbox.com",
        "www.google.com",
    ] {
        assert_eq!(p.evaluate(&req("GET", host, "/", true)).app, None, "{host}");
    }
    assert!(!komugate_policy::casb::catalog_version().is_empty());
}

#[test]
fn sharepoint_tenancy_is_tenant_aware() {
    let p = policy(BOARD);
    let own = |h: &str| p.evaluate(&req("GET", h, "/", true)).app_tenant;
    assert_eq!(own("azumino.sharepoint.com"), Some("own"));
    assert_eq!(own("azumino-my.sharepoint.com"), Some("own"));
    assert_eq!(own("other.sharepoint.com"), Some("other"));
    assert_eq!(own("other-my.sharepoint.com"), Some("other"));
    assert_eq!(own("azumino2.sharepoint.com"), Some("other"));
    // Tenant-restricted multi-tenant services count as the board's.
    assert_eq!(own("outlook.office.com"), Some("own"));
    assert_eq!(own("drive.google.com"), Some("own"));
    assert_eq!(own("www.dropbox.com"), Some("other"));
    assert_eq!(own("onedrive.live.com"), Some("other"));
    assert_eq!(own("www.c4th.example"), Some("own"));
    assert_eq!(own("example.com"), None);
    // Without a Google tenant, Drive is not the board's.
    let p2 = policy("[tenant]\nmicrosoft = [\"azumino-school.ed.jp\"]\n");
    assert_eq!(
        p2.evaluate(&req("GET", "drive.google.com", "/", true))
            .app_tenant,
        Some("other")
    );
}

#[test]
fn conditions_and_casb_only_rules() {
    let p = policy(&format!(
        r#"{BOARD}
[[rule]]
name = "tenant restriction"
casb = {{ tenant_restriction = true }}

[[rule]]
name = "no uploads outside the tenant"
when = {{ app_category = ["storage", "transfer", "ai"], app_tenant = "other" }}
casb = {{ upload = "block", dlp = true }}

[[rule]]
name = "off-site: no local files, no downloads"
when = {{ app_tenant = "own", app_category = "storage", location = "offsite" }}
casb = {{ upload = "block", download = "block" }}

[[rule]]
name = "DLP on mail"
app_category = "mail"
casb = {{ dlp = true }}

[[rule]]
name = "no AI at school"
app = "chatgpt"
location = "school"
action = "block"
"#
    ));
    let d = p.evaluate(&req("POST", "www.dropbox.com", "/2/files/upload", false));
    assert_eq!(d.action, Action::Allow);
    assert_eq!(d.rule, "default", "CASB-only rules do not decide");
    let h = d.casb.expect("casb");
    assert_eq!(h.tenant_restriction, Some(true));
    assert_eq!(h.upload, Some(Action::Block));
    assert_eq!(h.dlp, Some(true));
    assert_eq!(h.download, None);

    let d = p.evaluate(&req("GET", "azumino.sharepoint.com", "/", true));
    let h = d.casb.expect("casb");
    assert_eq!(
        (h.upload, h.download, h.dlp),
        (Some(Action::Block), Some(Action::Block), None)
    );
    let d = p.evaluate(&req("GET", "azumino.sharepoint.com", "/", false));
    let h = d.casb.expect("casb");
    assert_eq!((h.upload, h.download), (None, None));

    let d = p.evaluate(&req("POST", "outlook.office.com", "/owa/", true));
    assert_eq!(d.casb.unwrap().dlp, Some(true));

    let d = p.evaluate(&req("GET", "chatgpt.com", "/", false));
    assert_eq!(
        (d.action, d.rule.as_str()),
        (Action::Block, "no AI at school")
    );
    let d = p.evaluate(&req("GET", "chatgpt.com", "/", true));
    assert_eq!(d.action, Action::Allow);
    assert_eq!(d.casb.unwrap().upload, Some(Action::Block));
}

#[test]
fn tenant_restriction_headers_from_the_catalog() {
    let p = policy(BOARD);
    let hs = |host: &str| -> Vec<(String, String)> {
        p.casb()
            .tenant_restrictions_for(host)
            .flat_map(|t| t.headers.clone())
            .collect()
    };
    let login = hs("login.microsoftonline.com");
    assert!(login.contains(&(
        "Restrict-Access-To-Tenants".into(),
        "0d3a2b1c-aaaa-bbbb-cccc-123456789abc,azumino-school.ed.jp".into()
    )));
    assert!(login.contains(&(
        "Restrict-Access-Context".into(),
        "0d3a2b1c-aaaa-bbbb-cccc-123456789abc".into()
    )));
    // No tenant restrictions v2 configured: that header is not added.
    assert!(!login
        .iter()
        .any(|(n, _)| n == "sec-Restrict-Tenant-Access-Policy"));
    assert_eq!(hs("login.microsoft.com"), login);
    assert_eq!(hs("login.windows.net"), login);
    assert_eq!(
        hs("login.live.com"),
        vec![(
            "sec-Restrict-Tenant-Access-Policy".into(),
            "restrict-msa".into()
        )]
    );
    assert_eq!(
        hs("accounts.google.com"),
        vec![(
            "X-GoogApps-Allowed-Domains".into(),
            "azumino-school.ed.jp".into()
        )]
    );
    assert_eq!(
        hs("www.youtube.com"),
        vec![("YouTube-Restrict".into(), "Moderate".into())]
    );
    assert!(hs("example.com").is_empty());
    // Every header name of the entry is listed for removal, set or not.
    let names: Vec<String> = p
        .casb()
        .tenant_restrictions_for("login.microsoftonline.com")
        .flat_map(|t| t.header_names.clone())
        .collect();
    assert!(names.contains(&"sec-Restrict-Tenant-Access-Policy".to_string()));

    let v2 = policy(
        "[tenant]\nmicrosoft = [\"azumino-school.ed.jp\"]\ntenant_restrictions_v2 = \"0d3a2b1c-aaaa-bbbb-cccc-123456789abc:11111111-2222-3333-4444-555555555555\"\n",
    );
    let login: Vec<(String, String)> = v2
        .casb()
        .tenant_restrictions_for("login.microsoftonline.com")
        .flat_map(|t| t.headers.clone())
        .collect();
    assert!(login.contains(&(
        "sec-Restrict-Tenant-Access-Policy".into(),
        "0d3a2b1c-aaaa-bbbb-cccc-123456789abc:11111111-2222-3333-4444-555555555555".into()
    )));
    // No GUID in `microsoft` and no microsoft_context: no context header.
    assert!(!login.iter().any(|(n, _)| n == "Restrict-Access-Context"));
}

#[test]
fn policy_apps_override_and_extend_the_catalog() {
    let p = policy(
        r#"
[[app]]
name = "dropbox"
hosts = ["dropbox.test"]
certifications = ["ISMAP"]

[[app]]
name = "board-drive"
hosts = ["files.board.example"]
category = "storage"
own = true
upload_paths = ["/put/*"]
"#,
    );
    assert_eq!(
        p.evaluate(&req("GET", "dropbox.test", "/", true))
            .app
            .as_deref(),
        Some("dropbox")
    );
    assert_eq!(
        p.evaluate(&req("GET", "www.dropbox.com", "/", true)).app,
        None,
        "hosts replaced"
    );
    let a = p.app("dropbox").unwrap();
    assert_eq!(a.certifications, vec!["ISMAP"]);
    assert_eq!(a.category, "storage", "kept from the catalog");
    assert!(a.is_upload_path("/2/files/upload"));
    let b = p.app("board-drive").unwrap();
    assert!(b.is_upload_path("/put/x"));
    let d = p.evaluate(&req("PUT", "files.board.example", "/put/x", true));
    assert_eq!(
        (d.app_category.as_deref(), d.app_tenant),
        (Some("storage"), Some("own"))
    );
    // The catalog can be turned off.
    let p = policy("[casb]\ncatalog = false\n");
    assert!(p.apps().is_empty());
    assert_eq!(
        p.evaluate(&req("GET", "www.dropbox.com", "/", true)).app,
        None
    );
}

#[test]
fn sharepoint_endpoints() {
    let p = policy(BOARD);
    let sp = p.app("sharepoint").unwrap();
    assert!(sp.is_download("/sites/x/_layouts/15/download.aspx", "UniqueId=abc"));
    assert!(sp.is_download("/sites/x/Shared Documents/a.docx", "download=1"));
    assert!(!sp.is_download("/sites/x/_layouts/15/Doc.aspx", "sourcedoc=abc&action=edit"));
    assert!(sp.is_upload_path(
        "/sites/x/_api/web/GetFolderByServerRelativeUrl('/d')/Files/add(url='a.docx')"
    ));
    assert!(sp.is_sync("/x", "Microsoft SkyDriveSync 23.0 ship; Windows NT 10.0"));
    assert!(!sp.is_sync("/sites/x", "Mozilla/5.0"));
}

#[test]
fn dlp_patterns_compile_and_scan() {
    let p = policy(
        r#"
[casb]
upload_threshold = 1000
inspect_max_bytes = 4096
over_cap = "block"

[[casb.dlp]]
name = "マイナンバー"
my_number = true
action = "block"

[[casb.dlp]]
name = "指導要録・成績"
keywords = ["指導要録", "成績一覧"]
action = "block"

[[casb.dlp]]
name = "student-id"
regex = 'S\d{7}'
action = "allow"
"#,
    );
    let c = p.casb();
    assert_eq!(
        (c.upload_threshold, c.inspect_max_bytes, c.over_cap),
        (1000, 4096, Action::Block)
    );
    let mut f = Vec::new();
    c.dlp.scan("令和6年度 成績一覧 S1234567", &mut f);
    let names: Vec<&str> = f.iter().map(|i| c.dlp.patterns[*i].name.as_str()).collect();
    assert_eq!(names, vec!["指導要録・成績", "student-id"]);
    f.clear();
    c.dlp.scan("番号 123456789018", &mut f);
    assert_eq!(f, vec![0]);
    f.clear();
    c.dlp.scan("番号 123456789017", &mut f);
    assert!(f.is_empty());
}

#[test]
fn casb_validation_errors_have_positions() {
    let e = errors(
        r#"[tenant]
sharepoint = ["bad name"]
youtube_restrict = "strict"
tenant_restrictions_v2 = "x:y"

[casb]
upload_threshold = 10000
inspect_max_bytes = 2048
over_cap = "maybe"

[[casb.dlp]]
name = "re"
regex = "(unclosed"
action = "block"

[[casb.dlp]]
name = "two"
my_number = true
keywords = ["x"]
action = "block"

[[app]]
name = "x"
hosts = ["x.example"]
category = "storag"
tenant_hosts = ["x.example"]
upload_paths = ["upload"]

[[rule]]
name = "r"
app_category = "mial"
app_tenant = "mine"
action = "allow"
"#,
    );
    let want = [
        "/nonexistent/casb.toml:2:15: invalid sharepoint tenant name `bad name`",
        "/nonexistent/casb.toml:3:20: invalid youtube_restrict `strict`",
        "/nonexistent/casb.toml:4:26: invalid tenant_restrictions_v2 `x:y`",
        "/nonexistent/casb.toml:25:12: unknown app category `storag`",
        "/nonexistent/casb.toml:26:17: tenant host `x.example` must contain `{tenant}`",
        "/nonexistent/casb.toml:27:17: invalid path pattern `upload`",
        "/nonexistent/casb.toml:7:20: upload_threshold (10000) must not exceed inspect_max_bytes (2048)",
        "/nonexistent/casb.toml:9:12: invalid over_cap `maybe`",
        "/nonexistent/casb.toml:16:1: DLP pattern `two` needs exactly one of",
        "/nonexistent/casb.toml:13:9: invalid regex",
        "/nonexistent/casb.toml:31:16: unknown app category `mial`",
        "/nonexistent/casb.toml:32:14: invalid app_tenant `mine`",
    ];
    for w in want {
        assert!(
            e.iter().any(|x| x.starts_with(w)),
            "missing {w:?} in\n{}",
            e.join("\n")
        );
    }
}
