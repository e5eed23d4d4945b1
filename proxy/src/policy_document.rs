//! The settings document (設定書): what the gateway configuration and the
//! policy in force say, generated from them so it can never go stale.
//! Sites, groups, policies and their rules in evaluation order, blocklist
//! sources with their sizes, CASB apps and tenants, firewall rules, fixed
//! egress addresses and inspection bypasses; as an Excel workbook (one sheet
//! per table) or one HTML page. Headings are Japanese with English beside.
//!
//! The policy is compiled first (an invalid policy gets no document), then
//! its TOML is read again for what the compiled form does not keep as
//! written (rule conditions, rule sets, firewall rules).

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use komugate_policy::Policy;
use rust_xlsxwriter::{Format, Workbook};
use toml::{Table as TomlTable, Value};

use crate::config::Config;
use crate::flow::block_page::escape;

/// A column heading: Japanese, then English.
pub type Heading = (&'static str, &'static str);

/// One table of the document (one sheet in xlsx, one section in HTML).
pub struct DocTable {
    /// Sheet name (Japanese, at most 31 characters).
    pub sheet: &'static str,
    pub title: Heading,
    /// A sentence under the title saying what the table is for.
    pub note: &'static str,
    pub columns: Vec<Heading>,
    pub rows: Vec<Vec<String>>,
}

/// The whole document.
pub struct SettingsDocument {
    pub tables: Vec<DocTable>,
}

/// Where the document's inputs come from (shown in the overview).
pub struct Sources<'a> {
    pub config: &'a Config,
    /// `None` for the embedded default configuration.
    pub config_file: Option<&'a Path>,
    pub policy: &'a Policy,
    pub policy_text: &'a str,
}

/// `xlsx` or `html`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DocumentFormat {
    Xlsx,
    Html,
}

impl DocumentFormat {
    /// The format an output file's extension asks for.
    pub fn from_extension(path: &Path) -> Option<DocumentFormat> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "xlsx" => Some(DocumentFormat::Xlsx),
            "html" | "htm" => Some(DocumentFormat::Html),
            _ => None,
        }
    }
}

/// Reads the configuration's policy file (or `policy_file`), compiles it and
/// builds the document.
pub fn generate(
    config: &Config,
    config_file: Option<&Path>,
    policy_file: Option<&Path>,
) -> Result<SettingsDocument> {
    let path = match policy_file {
        Some(p) => p.to_path_buf(),
        None => crate::stages::decide::policy_path(config).ok_or_else(|| {
            anyhow!(
                "no policy to document: the configuration{} has no [policy] file; give the policy file as an argument (komugate policy document examples/policy.toml --format html)",
                config_file.map(|p| format!(" {}", p.display())).unwrap_or_default()
            )
        })?,
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the policy file {}", path.display()))?;
    let policy = Policy::from_str(&text, &path)
        .map_err(|e| anyhow!("{}: the policy is not valid:\n{e}", path.display()))?;
    build(&Sources {
        config,
        config_file,
        policy: &policy,
        policy_text: &text,
    })
}

/// Builds the tables from a compiled policy and its text.
pub fn build(src: &Sources) -> Result<SettingsDocument> {
    let raw: TomlTable = src
        .policy_text
        .parse()
        .with_context(|| format!("{}: not TOML", src.policy.file().display()))?;
    Ok(SettingsDocument {
        tables: vec![
            overview(src, &raw),
            sites(src.policy),
            groups(&raw),
            policies(&raw),
            rules(&raw),
            category_sources(src.policy, &raw),
            list_files(src.policy),
            apps(src.policy),
            tenants(src.policy),
            firewall(&raw),
            egress(src.config, &raw),
            bypasses(src.config, &raw),
        ],
    })
}

// ------------------------------------------------------------ the tables

fn overview(src: &Sources, raw: &TomlTable) -> DocTable {
    let zone = &src.config.block_page.time_zone;
    let defaults = raw.get("defaults").and_then(Value::as_table);
    let contact = src.policy.contact();
    let contact = [&contact.name, &contact.phone, &contact.email, &contact.url]
        .into_iter()
        .flatten()
        .cloned()
        .collect::<Vec<_>>()
        .join(" / ");
    let rule_count = rule_tables(raw).len();
    let rows = vec![
        (
            "作成日時 generated",
            zone.format_ja(std::time::SystemTime::now()),
        ),
        (
            "ゲートウェイ設定 gateway configuration",
            src.config_file
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "組込みの既定設定 embedded default".into()),
        ),
        (
            "ポリシーファイル policy file",
            src.policy.file().display().to_string(),
        ),
        (
            "ポリシーの世代 policy generation",
            src.policy.generation_digest(),
        ),
        (
            "既定の動作 default action",
            action_label(
                defaults
                    .and_then(|d| d.get("action"))
                    .and_then(Value::as_str)
                    .unwrap_or("allow"),
            ),
        ),
        (
            "既定のメッセージ default message",
            defaults
                .and_then(|d| d.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        ),
        ("問い合わせ先 contact", contact),
        (
            "ルールの時刻の基準 rule time zone",
            raw.get("timezone")
                .and_then(Value::as_str)
                .unwrap_or("+09:00")
                .to_string(),
        ),
        ("表示の時刻 display time zone", zone.label()),
        ("拠点数 sites", src.policy.sites().len().to_string()),
        ("グループ数 groups", src.policy.groups().len().to_string()),
        ("ルール数 rules", rule_count.to_string()),
        (
            "台帳の端末数 devices in the registry",
            src.policy.device_count().to_string(),
        ),
        (
            "カテゴリ数 categories",
            src.policy.matcher().category_names().len().to_string(),
        ),
        (
            "クラウドアプリ数 cloud apps",
            src.policy.apps().len().to_string(),
        ),
    ];
    DocTable {
        sheet: "概要",
        title: ("概要", "Overview"),
        note: "この設定書は komugate policy document がゲートウェイ設定と適用中のポリシーから生成したものです。",
        columns: vec![("項目", "item"), ("値", "value")],
        rows: rows
            .into_iter()
            .map(|(k, v)| vec![k.to_string(), v])
            .collect(),
    }
}

fn sites(policy: &Policy) -> DocTable {
    use base64::Engine;
    let rows = policy
        .sites()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            vec![
                (i + 1).to_string(),
                s.name.clone(),
                s.cidrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                if s.assertion {
                    "あり yes".into()
                } else {
                    "なし no".into()
                },
                match &s.beacon_key {
                    Some(k) => base64::engine::general_purpose::STANDARD.encode(k),
                    None if s.assertion => {
                        "未設定 not set (証明は拒否されます assertions refused)".into()
                    }
                    None => String::new(),
                },
                s.pac_direct.join(", "),
            ]
        })
        .collect();
    DocTable {
        sheet: "拠点",
        title: ("拠点", "Sites"),
        note: "送信元アドレスが CIDR に含まれる最初の拠点、または拠点ビーコンの証明で拠点が決まります。どれでもなければ「校外」です。",
        columns: vec![
            ("順", "no."),
            ("拠点名", "name"),
            ("アドレス範囲", "CIDRs"),
            ("拠点証明", "site assertion"),
            ("ビーコン公開鍵", "beacon key"),
            ("PAC 直接接続", "PAC direct"),
        ],
        rows,
    }
}

fn groups(raw: &TomlTable) -> DocTable {
    let rows = array_of_tables(raw, "group")
        .iter()
        .map(|g| {
            vec![
                text(g.get("name")),
                text(g.get("aliases")),
                text(g.get("allow")),
                text(g.get("allow_files")),
                text(g.get("deny")),
                text(g.get("deny_files")),
            ]
        })
        .collect();
    DocTable {
        sheet: "グループ",
        title: ("グループ", "Groups"),
        note:
            "グループ名は端末台帳・端末証明書・ルールで使います。別名は台帳や証明書での別表記です。",
        columns: vec![
            ("グループ名", "name"),
            ("別名", "aliases"),
            ("許可リスト", "allow"),
            ("許可リストファイル", "allow_files"),
            ("拒否リスト", "deny"),
            ("拒否リストファイル", "deny_files"),
        ],
        rows,
    }
}

fn policies(raw: &TomlTable) -> DocTable {
    let rows = array_of_tables(raw, "policy")
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let groups = text(p.get("groups").or_else(|| p.get("group")));
            vec![
                (i + 1).to_string(),
                text(p.get("name")),
                if groups.is_empty() {
                    "全員 (ほかのポリシーに当たらない人) everyone else".into()
                } else {
                    groups
                },
                text(p.get("rulesets")),
                p.get("default")
                    .and_then(Value::as_str)
                    .map(action_label)
                    .unwrap_or_default(),
            ]
        })
        .collect();
    DocTable {
        sheet: "ポリシー",
        title: ("ポリシー", "Policies"),
        note: "利用者のグループを含む最初のポリシーが適用されます。ルールはルールセットを順に並べたものです。",
        columns: vec![
            ("順", "no."),
            ("ポリシー名", "name"),
            ("対象グループ", "groups"),
            ("ルールセット", "rulesets"),
            ("既定の動作", "default"),
        ],
        rows,
    }
}

/// One rule as written, with the rule set it belongs to.
struct RawRule<'a> {
    ruleset: Option<&'a str>,
    rule: &'a TomlTable,
}

/// Every rule in document order: top-level `[[rule]]`, then each rule set's.
fn rule_tables(raw: &TomlTable) -> Vec<RawRule<'_>> {
    let mut out: Vec<RawRule> = array_of_tables(raw, "rule")
        .into_iter()
        .map(|rule| RawRule {
            ruleset: None,
            rule,
        })
        .collect();
    for set in array_of_tables(raw, "ruleset") {
        let name = set.get("name").and_then(Value::as_str);
        for rule in array_of_tables(set, "rule") {
            out.push(RawRule {
                ruleset: name,
                rule,
            });
        }
    }
    out
}

/// Keys of a rule that are what it does, not when it matches.
const RULE_EFFECTS: &[&str] = &[
    "name", "action", "message", "tunnel", "egress", "casb", "firewall", "log", "when",
];

fn rules(raw: &TomlTable) -> DocTable {
    let all = rule_tables(raw);
    let row = |policy: &str, n: usize, r: &RawRule| {
        vec![
            policy.to_string(),
            n.to_string(),
            r.ruleset.unwrap_or("").to_string(),
            text(r.rule.get("name")),
            conditions(r.rule),
            r.rule
                .get("action")
                .and_then(Value::as_str)
                .map(action_label)
                .unwrap_or_else(|| "(判定しない does not decide)".into()),
            text(r.rule.get("message")),
            r.rule
                .get("tunnel")
                .and_then(Value::as_str)
                .map(tunnel_label)
                .unwrap_or_default(),
            text(r.rule.get("egress")),
            text(r.rule.get("casb")),
            text(r.rule.get("firewall")),
        ]
    };
    let mut rows = Vec::new();
    let policies = array_of_tables(raw, "policy");
    if policies.is_empty() {
        // A policy without [[policy]]: the top-level rules apply to everyone.
        for (i, r) in all.iter().filter(|r| r.ruleset.is_none()).enumerate() {
            rows.push(row("全員 everyone", i + 1, r));
        }
    }
    for p in policies {
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        let sets: Vec<&str> = p
            .get("rulesets")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut n = 0;
        for set in sets {
            for r in all.iter().filter(|r| r.ruleset == Some(set)) {
                n += 1;
                rows.push(row(name, n, r));
            }
        }
    }
    DocTable {
        sheet: "ルール",
        title: ("ルール (適用順)", "Rules in evaluation order"),
        note: "各ポリシーのルールを判定する順に並べています。上から順に調べ、最初に一致したルールで決まります (拒否リスト・許可リストはルールより先に判定します)。",
        columns: vec![
            ("ポリシー", "policy"),
            ("順", "no."),
            ("ルールセット", "ruleset"),
            ("ルール名", "rule"),
            ("条件", "conditions"),
            ("動作", "action"),
            ("メッセージ", "message"),
            ("TLS 検査", "tunnel"),
            ("送信元 IP", "egress"),
            ("CASB", "casb"),
            ("ファイアウォール", "firewall"),
        ],
        rows,
    }
}

fn category_sources(policy: &Policy, raw: &TomlTable) -> DocTable {
    let mut rows = Vec::new();
    let cats = raw.get("categories").and_then(Value::as_table);
    for (key, label) in [
        ("allow", "許可リスト (全体) board-wide allow"),
        (
            "allow_files",
            "許可リストファイル (全体) board-wide allow files",
        ),
        ("deny", "拒否リスト (全体) board-wide deny"),
        (
            "deny_files",
            "拒否リストファイル (全体) board-wide deny files",
        ),
    ] {
        let v = cats.and_then(|c| c.get(key));
        rows.push(vec![
            label.to_string(),
            text(v),
            String::new(),
            String::new(),
            String::new(),
            v.and_then(Value::as_array)
                .map(|a| a.len().to_string())
                .unwrap_or_else(|| "0".into()),
        ]);
    }
    let remote = policy.remote_sources();
    for s in &policy.import_report().sources {
        let url = remote
            .iter()
            .find(|r| r.path == s.path)
            .map(|r| r.url.clone())
            .unwrap_or_default();
        rows.push(vec![
            "カテゴリの取得元 category source".into(),
            s.path.display().to_string(),
            s.format.clone(),
            category_labels(&s.categories),
            url,
            (s.domains + s.urls + s.expressions).to_string(),
        ]);
    }
    DocTable {
        sheet: "カテゴリ・リスト",
        title: ("カテゴリとリスト", "Categories and lists"),
        note: "件数はこの設定書を作成したときに読み込んだ項目 (ドメイン・URL・式) の数です。",
        columns: vec![
            ("種類", "kind"),
            ("取得元・内容", "source / entries"),
            ("形式", "format"),
            ("カテゴリ", "categories"),
            ("ダウンロード元", "download URL"),
            ("件数", "entries"),
        ],
        rows,
    }
}

fn list_files(policy: &Policy) -> DocTable {
    let rows = policy
        .import_report()
        .sources
        .iter()
        .flat_map(|s| s.lists.iter())
        .map(|l| {
            vec![
                l.path.display().to_string(),
                category_labels(std::slice::from_ref(&l.category)),
                l.format.clone(),
                l.entries.to_string(),
                l.skipped.to_string(),
                l.invalid.to_string(),
            ]
        })
        .collect();
    DocTable {
        sheet: "リストファイル",
        title: ("リストファイル", "List files"),
        note: "カテゴリの取得元を構成するファイルごとの件数です。",
        columns: vec![
            ("ファイル", "file"),
            ("カテゴリ", "category"),
            ("形式", "format"),
            ("件数", "entries"),
            ("対象外の行", "skipped"),
            ("不正な行", "invalid"),
        ],
        rows,
    }
}

fn apps(policy: &Policy) -> DocTable {
    let rows = policy
        .apps()
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                a.title.clone(),
                a.vendor.clone(),
                a.category.clone(),
                a.hosts.join(", "),
                a.tenant_provider.clone().unwrap_or_default(),
                if a.builtin {
                    "組込みカタログ built-in catalog".into()
                } else {
                    "ポリシー policy".into()
                },
            ]
        })
        .collect();
    DocTable {
        sheet: "クラウドアプリ",
        title: ("クラウドアプリ (CASB)", "Cloud apps (CASB)"),
        note: "ルールの app・app_category で使うサービスの定義です。",
        columns: vec![
            ("アプリ", "app"),
            ("名称", "title"),
            ("提供者", "vendor"),
            ("分類", "category"),
            ("ホスト", "hosts"),
            ("テナント", "tenant provider"),
            ("定義元", "defined in"),
        ],
        rows,
    }
}

fn tenants(policy: &Policy) -> DocTable {
    let t = policy.tenants();
    let mut rows: Vec<Vec<String>> = [
        ("Microsoft 365", &t.microsoft),
        ("Google Workspace", &t.google),
        ("SharePoint", &t.sharepoint),
    ]
    .into_iter()
    .map(|(k, v)| vec![k.to_string(), v.join(", ")])
    .collect();
    for p in &policy.casb().dlp.patterns {
        rows.push(vec![
            format!("DLP: {}", p.name),
            action_label(&format!("{:?}", p.action).to_ascii_lowercase()),
        ]);
    }
    DocTable {
        sheet: "テナント・DLP",
        title: ("自組織のテナントと DLP", "Own tenants and DLP"),
        note: "テナント制限は、ここにあるテナント以外へのログインを止めます。DLP はアップロードの内容を調べます。",
        columns: vec![("項目", "item"), ("値", "value")],
        rows,
    }
}

fn firewall(raw: &TomlTable) -> DocTable {
    let mut rows = Vec::new();
    match raw.get("firewall").and_then(Value::as_table) {
        None => rows.push(vec![
            String::new(),
            "(ファイアウォールなし no [firewall] section)".into(),
            String::new(),
            String::new(),
            String::new(),
        ]),
        Some(fw) => {
            rows.push(vec![
                String::new(),
                "既定 default".into(),
                format!(
                    "Web ポート web_ports: {}",
                    fw.get("web_ports")
                        .map(|v| text(Some(v)))
                        .unwrap_or_else(|| "80, 443, 8080, 8443".into())
                ),
                action_label(fw.get("default").and_then(Value::as_str).unwrap_or("deny")),
                yes_no(fw.get("log").and_then(Value::as_bool).unwrap_or(true)),
            ]);
            for (i, r) in array_of_tables(fw, "rule").iter().enumerate() {
                rows.push(vec![
                    (i + 1).to_string(),
                    text(r.get("name")),
                    conditions(r),
                    action_label(r.get("action").and_then(Value::as_str).unwrap_or("")),
                    r.get("log")
                        .and_then(Value::as_bool)
                        .map(yes_no)
                        .unwrap_or_else(|| "既定 default".into()),
                ]);
            }
        }
    }
    DocTable {
        sheet: "ファイアウォール",
        title: ("ファイアウォール (Web 以外の通信)", "Firewall (non-web traffic)"),
        note: "Web 以外の通信 (SSH・RDP・メール送信など) のルールです。上から順に調べ、最初に一致したルールで決まります。",
        columns: vec![
            ("順", "no."),
            ("ルール名", "rule"),
            ("条件", "conditions"),
            ("動作", "action"),
            ("ログ", "log"),
        ],
        rows,
    }
}

fn egress(config: &Config, raw: &TomlTable) -> DocTable {
    let mut rows: Vec<Vec<String>> = array_of_tables(raw, "egress")
        .iter()
        .map(|e| {
            vec![
                "ポリシー [[egress]] policy".into(),
                text(e.get("name")),
                text(e.get("source")),
                text(e.get("hosts")),
            ]
        })
        .collect();
    for f in &config.egress.fixed {
        rows.push(vec![
            "ゲートウェイ設定 [[egress.fixed]] configuration".into(),
            f.name.clone(),
            f.source.to_string(),
            f.hosts.join(", "),
        ]);
    }
    DocTable {
        sheet: "固定送信元IP",
        title: ("固定送信元 IP", "Fixed egress addresses"),
        note: "接続元 IP で利用を制限しているサービス (C4th など) へは、ここにある送信元アドレスから接続します。",
        columns: vec![
            ("設定元", "defined in"),
            ("名前", "name"),
            ("送信元アドレス", "source address"),
            ("宛先ホスト", "hosts"),
        ],
        rows,
    }
}

fn bypasses(config: &Config, raw: &TomlTable) -> DocTable {
    let mut rows: Vec<Vec<String>> = config
        .inspect
        .bypass_hosts
        .iter()
        .map(|h| vec![h.clone(), "ゲートウェイ設定 [inspect] bypass_hosts".into()])
        .collect();
    if config.inspect.builtin_bypass {
        rows.extend(crate::stages::decide::BUILTIN_BYPASS.iter().map(|h| {
            vec![
                h.to_string(),
                "組込み (証明書ピンニング・OS 更新) built-in".into(),
            ]
        }));
    }
    for r in rule_tables(raw) {
        if r.rule.get("tunnel").and_then(Value::as_str) == Some("bypass") {
            rows.push(vec![
                conditions(r.rule),
                format!("ルール rule「{}」", text(r.rule.get("name"))),
            ]);
        }
    }
    DocTable {
        sheet: "検査除外",
        title: ("TLS 検査の対象外", "Inspection bypasses"),
        note: "これらのホストへの HTTPS 通信は、ルールにかかわらず TLS 検査をしません (アプリが壊れるため)。",
        columns: vec![("ホスト", "host"), ("設定元", "defined in")],
        rows,
    }
}

// ------------------------------------------------------------ wording

fn array_of_tables<'a>(t: &'a TomlTable, key: &str) -> Vec<&'a TomlTable> {
    t.get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_table).collect())
        .unwrap_or_default()
}

/// A value as a person reads it: strings bare, arrays joined by `, `,
/// inline tables as `key = value`.
fn text(v: Option<&Value>) -> String {
    match v {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| text(Some(v)))
            .collect::<Vec<_>>()
            .join(", "),
        Some(Value::Table(t)) => t
            .iter()
            .map(|(k, v)| format!("{k} = {}", text(Some(v))))
            .collect::<Vec<_>>()
            .join(", "),
        Some(v) => v.to_string(),
    }
}

/// Labels of rule condition keys, by their singular and plural spellings.
const CONDITION_LABELS: &[(&[&str], &str)] = &[
    (&["group", "groups"], "グループ"),
    (&["device", "devices"], "端末"),
    (&["location", "locations"], "場所"),
    (&["category", "categories"], "カテゴリ"),
    (&["app_category", "app_categories"], "アプリ分類"),
    (&["app_tenant"], "テナント"),
    (&["app", "apps"], "アプリ"),
    (&["host", "hosts"], "ホスト"),
    (&["port", "ports"], "ポート"),
    (&["scheme", "schemes"], "方式"),
    (&["method", "methods"], "メソッド"),
    (&["path", "paths"], "パス"),
    (&["time"], "時間帯"),
    (&["days"], "曜日"),
    (&["cidr", "cidrs"], "宛先アドレス"),
    (&["protocol"], "プロトコル"),
];

/// `グループ (groups): 教職員; 場所 (location): いずれかの拠点 (any-site)`;
/// conditions written directly in the rule and under `when` alike.
fn conditions(rule: &TomlTable) -> String {
    let when = rule.get("when").and_then(Value::as_table);
    let items: Vec<String> = rule
        .iter()
        .filter(|(k, _)| !RULE_EFFECTS.contains(&k.as_str()))
        .chain(when.into_iter().flat_map(|w| w.iter()))
        .map(|(k, v)| {
            let label = CONDITION_LABELS
                .iter()
                .find(|(keys, _)| keys.contains(&k.as_str()))
                .map(|(keys, l)| (keys[0], *l));
            let value = match label.map(|(key, _)| key) {
                Some("category") => category_labels(&strings(v)),
                Some("location") => strings(v)
                    .iter()
                    .map(|l| location_label(l))
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => text(Some(v)),
            };
            match label {
                Some((_, l)) => format!("{l} ({k}): {value}"),
                None => format!("{k}: {value}"),
            }
        })
        .collect();
    if items.is_empty() {
        "すべて (条件なし) any".into()
    } else {
        items.join("; ")
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().map(|v| text(Some(v))).collect(),
        v => vec![text(Some(v))],
    }
}

/// `ギャンブル (gambling), board-list`.
fn category_labels(ids: &[String]) -> String {
    ids.iter()
        .map(|id| match komugate_categories::category_label(id) {
            Some(l) => format!("{} ({id})", l.ja),
            None => id.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn location_label(l: &str) -> String {
    match l {
        "any-site" => "いずれかの拠点 (any-site)".into(),
        "offsite" => "校外 (offsite)".into(),
        l => l.to_string(),
    }
}

fn action_label(a: &str) -> String {
    match a {
        "allow" => "許可 allow".into(),
        "block" => "ブロック block".into(),
        "deny" => "拒否 deny".into(),
        a => a.to_string(),
    }
}

fn tunnel_label(t: &str) -> String {
    match t {
        "inspect" => "検査する inspect".into(),
        "bypass" => "検査しない bypass".into(),
        t => t.to_string(),
    }
}

fn yes_no(b: bool) -> String {
    if b {
        "記録する yes".into()
    } else {
        "記録しない no".into()
    }
}

// ------------------------------------------------------------ output

/// The workbook: one sheet per table, header row bold, frozen and filtered.
pub fn to_xlsx(doc: &SettingsDocument) -> Result<Vec<u8>> {
    let mut wb = Workbook::new();
    let header = Format::new().set_bold().set_background_color("#DDEBF7");
    let wrap = Format::new()
        .set_text_wrap()
        .set_align(rust_xlsxwriter::FormatAlign::Top);
    let title = Format::new().set_bold().set_font_size(14);
    for t in &doc.tables {
        let ws = wb.add_worksheet();
        ws.set_name(t.sheet)?;
        ws.write_string_with_format(0, 0, format!("{} {}", t.title.0, t.title.1), &title)?;
        ws.write_string(1, 0, t.note)?;
        const HEAD: u32 = 3;
        for (c, (ja, en)) in t.columns.iter().enumerate() {
            let c = c as u16;
            ws.write_string_with_format(HEAD, c, format!("{ja} {en}"), &header)?;
            let widest = t
                .rows
                .iter()
                .filter_map(|r| r.get(c as usize))
                .map(|s| display_width(s))
                .chain([display_width(ja) + en.len() + 1])
                .max()
                .unwrap_or(8);
            ws.set_column_width(c, (widest as f64 + 2.0).clamp(6.0, 60.0))?;
        }
        for (r, row) in t.rows.iter().enumerate() {
            for (c, cell) in row.iter().enumerate() {
                let (r, c) = (HEAD + 1 + r as u32, c as u16);
                match cell.parse::<u64>() {
                    // Counts and order numbers as numbers (sortable); long
                    // digit strings (ids) stay text.
                    Ok(n) if (cell.len() < 12 && !cell.starts_with('0')) || cell == "0" => {
                        ws.write_number(r, c, n as f64)?;
                    }
                    _ if cell.is_empty() => {}
                    _ => {
                        ws.write_string_with_format(r, c, cell, &wrap)?;
                    }
                }
            }
        }
        ws.set_freeze_panes(HEAD + 1, 0)?;
        if !t.rows.is_empty() {
            ws.autofilter(
                HEAD,
                0,
                HEAD + t.rows.len() as u32,
                (t.columns.len() - 1) as u16,
            )?;
        }
    }
    Ok(wb.save_to_buffer()?)
}

/// Width in half-width cells (CJK counts two).
fn display_width(s: &str) -> usize {
    s.chars().map(|c| if c.is_ascii() { 1 } else { 2 }).sum()
}

/// One self-contained HTML page (no external resources) with a table of contents.
pub fn to_html(doc: &SettingsDocument) -> String {
    let mut h = String::from(
        "<!DOCTYPE html>\n<html lang=\"ja\">\n<head>\n<meta charset=\"utf-8\">\n<title>設定書 Settings document — komugate</title>\n<style>\nbody{font-family:\"Noto Sans CJK JP\",\"Hiragino Sans\",\"Yu Gothic\",sans-serif;margin:2em;color:#222}\ntable{border-collapse:collapse;margin:0.5em 0 2em;font-size:0.9em}\nth,td{border:1px solid #999;padding:0.3em 0.5em;vertical-align:top;text-align:left}\nth{background:#ddebf7}\nth small,h2 small{font-weight:normal;color:#555}\n.note{color:#444}\n</style>\n</head>\n<body>\n<h1>設定書 <small>Settings document</small></h1>\n<nav><ol>\n",
    );
    for (i, t) in doc.tables.iter().enumerate() {
        h += &format!(
            "<li><a href=\"#t{i}\">{} <small>{}</small></a></li>\n",
            escape(t.title.0),
            escape(t.title.1)
        );
    }
    h += "</ol></nav>\n";
    for (i, t) in doc.tables.iter().enumerate() {
        h += &format!(
            "<section id=\"t{i}\">\n<h2>{} <small>{}</small></h2>\n<p class=\"note\">{}</p>\n<table>\n<thead><tr>",
            escape(t.title.0),
            escape(t.title.1),
            escape(t.note)
        );
        for (ja, en) in &t.columns {
            h += &format!("<th>{}<br><small>{}</small></th>", escape(ja), escape(en));
        }
        h += "</tr></thead>\n<tbody>\n";
        for row in &t.rows {
            h += "<tr>";
            for cell in row {
                h += &format!("<td>{}</td>", escape(cell));
            }
            h += "</tr>\n";
        }
        h += "</tbody>\n</table>\n</section>\n";
    }
    h += "</body>\n</html>\n";
    h
}
