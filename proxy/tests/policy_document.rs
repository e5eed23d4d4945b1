//! `komugate policy document`: the settings document generated from the
//! example board's policy, read back (xlsx with calamine, HTML as text) and
//! compared with the policy itself; bad arguments give clear errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use calamine::{open_workbook, Data, Reader, Xlsx};

fn komugate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_komugate"))
        .args(args)
        .output()
        .expect("run komugate")
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.toml")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The seed's schools, exactly as written there.
const SCHOOLS: [&str; 17] = [
    "豊科南小学校",
    "豊科北小学校",
    "豊科東小学校",
    "穂高南小学校",
    "穂高北小学校",
    "穂高西小学校",
    "三郷小学校",
    "堀金小学校",
    "明南小学校",
    "明北小学校",
    "豊科南中学校",
    "豊科北中学校",
    "穂高東中学校",
    "穂高西中学校",
    "三郷中学校",
    "堀金中学校",
    "明科中学校",
];

const GROUPS: [&str; 4] = ["教職員", "管理職", "事務局", "テレワーク"];

/// The rules of policy 全職員, in the order they are tried.
const EVERYONE_RULES: [&str; 9] = [
    "UT1 有害カテゴリ",
    "443 以外への CONNECT",
    "テナント制限・DLP",
    "テナント外へのアップロード禁止",
    "校外からのダウンロード・ファイルアップロード禁止",
    "クラウドサービスの検査",
    "C4th 夜間メンテナンス",
    "C4th 校外禁止",
    "百問繚乱 校外禁止",
];

const FIREWALL_RULES: [&str; 3] = [
    "校内サーバー (SSH/RDP) は教職員のみ",
    "メール送信 (submission)",
    "夜間の校外 RDP 禁止",
];

/// Rows of a sheet under its heading row (row 4), as text.
fn table(wb: &mut Xlsx<std::io::BufReader<std::fs::File>>, sheet: &str) -> Vec<Vec<String>> {
    let range = wb
        .worksheet_range(sheet)
        .unwrap_or_else(|e| panic!("sheet {sheet}: {e}"));
    range
        .rows()
        .skip(3)
        .map(|r| {
            r.iter()
                .map(|c| match c {
                    Data::Float(f) => format!("{f}"),
                    c => c.to_string(),
                })
                .collect()
        })
        .collect()
}

fn column(rows: &[Vec<String>], heading: &str) -> Vec<String> {
    let c = rows[0]
        .iter()
        .position(|h| h == heading)
        .unwrap_or_else(|| panic!("no column {heading:?} in {:?}", rows[0]));
    rows[1..].iter().map(|r| r[c].clone()).collect()
}

#[test]
fn xlsx_settings_document_matches_the_example_policy() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("設定書.xlsx");
    let o = komugate(&[
        "policy",
        "document",
        example().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut wb: Xlsx<_> = open_workbook(&out).unwrap();
    let names = wb.sheet_names();
    for sheet in [
        "概要",
        "拠点",
        "グループ",
        "ポリシー",
        "ルール",
        "カテゴリ・リスト",
        "リストファイル",
        "クラウドアプリ",
        "テナント・DLP",
        "ファイアウォール",
        "固定送信元IP",
        "検査除外",
    ] {
        assert!(names.iter().any(|n| n == sheet), "{sheet} in {names:?}");
    }

    let sites = table(&mut wb, "拠点");
    assert_eq!(
        sites[0][1], "拠点名 name",
        "Japanese heading, English beside"
    );
    let site_names = column(&sites, "拠点名 name");
    assert_eq!(&site_names[..17], &SCHOOLS, "the 17 schools in order");
    assert_eq!(site_names[17], "院内学級");
    assert_eq!(site_names[18], "教育委員会事務局");
    let cidrs = column(&sites, "アドレス範囲 CIDRs");
    assert_eq!(cidrs[8], "203.0.113.64/29", "明南小学校");
    assert_eq!(cidrs[18], "198.51.100.16/28");
    let assertion = column(&sites, "拠点証明 site assertion");
    assert_eq!(assertion[17], "あり yes");
    assert!(column(&sites, "ビーコン公開鍵 beacon key")[17].contains("未設定"));

    let groups = table(&mut wb, "グループ");
    assert_eq!(column(&groups, "グループ名 name"), GROUPS);
    assert_eq!(column(&groups, "別名 aliases")[0], "teachers");
    assert_eq!(column(&groups, "拒否リスト deny")[2], "games.example");

    let policies = table(&mut wb, "ポリシー");
    assert_eq!(
        column(&policies, "ポリシー名 name"),
        ["テレワーク承認者", "全職員"]
    );
    assert!(column(&policies, "対象グループ groups")[1].contains("全員"));

    let rules = table(&mut wb, "ルール");
    let of = |policy: &str| -> Vec<Vec<String>> {
        rules[1..]
            .iter()
            .filter(|r| r[0] == policy)
            .cloned()
            .collect()
    };
    let everyone = of("全職員");
    let names: Vec<&str> = everyone.iter().map(|r| r[3].as_str()).collect();
    assert_eq!(names, EVERYONE_RULES, "each rule in evaluation order");
    let numbers: Vec<&str> = everyone.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(numbers, ["1", "2", "3", "4", "5", "6", "7", "8", "9"]);
    assert!(
        everyone[0][4].contains("ギャンブル (gambling)"),
        "categories by their Japanese label: {}",
        everyone[0][4]
    );
    assert_eq!(everyone[0][5], "ブロック block");
    assert!(
        everyone[7][4].contains("校外 (offsite)"),
        "{}",
        everyone[7][4]
    );
    assert_eq!(
        everyone[6][6],
        "C4th は毎日 2:00〜4:00 メンテナンス中です。"
    );
    assert_eq!(everyone[5][7], "検査する inspect");
    let telework: Vec<String> = of("テレワーク承認者")
        .iter()
        .map(|r| r[3].clone())
        .collect();
    assert_eq!(telework.len(), 10);
    assert_eq!(
        telework[2], "百問繚乱 テレワーク",
        "its rule set comes second"
    );

    let sources = table(&mut wb, "カテゴリ・リスト");
    let ut1 = sources[1..]
        .iter()
        .find(|r| r[1].ends_with("lists/ut1"))
        .expect("the UT1 source");
    assert_eq!(ut1[2], "squidguard");
    for label in [
        "アダルト",
        "ギャンブル (gambling)",
        "フィッシング詐欺 (phishing)",
    ] {
        assert!(ut1[3].contains(label), "{label} in {}", ut1[3]);
    }
    // Sizes: what the policy engine loads from the same files.
    let policy = komugate_policy::Policy::load(&example()).unwrap();
    let report = policy
        .import_report()
        .sources
        .iter()
        .find(|s| s.path.ends_with("lists/ut1"))
        .unwrap();
    assert_eq!(
        ut1[5],
        (report.domains + report.urls + report.expressions).to_string()
    );
    assert!(report.domains > 0);
    let files = table(&mut wb, "リストファイル");
    assert_eq!(
        files.len() - 1,
        policy
            .import_report()
            .sources
            .iter()
            .map(|s| s.lists.len())
            .sum::<usize>()
    );

    let apps = table(&mut wb, "クラウドアプリ");
    let app_names = column(&apps, "アプリ app");
    assert!(app_names.iter().any(|a| a == "c4th"));
    assert!(app_names.iter().any(|a| a == "hyakumon"));
    assert_eq!(app_names.len(), policy.apps().len());
    let tenants = table(&mut wb, "テナント・DLP");
    assert!(tenants[1..]
        .iter()
        .any(|r| r[0] == "Microsoft 365" && r[1].contains("azumino-school.ed.jp")));
    assert!(tenants[1..]
        .iter()
        .any(|r| r[0] == "DLP: my-number" && r[1] == "ブロック block"));

    let fw = table(&mut wb, "ファイアウォール");
    assert_eq!(fw[1][3], "拒否 deny", "default for non-web ports");
    let fw_names: Vec<&str> = fw[2..].iter().map(|r| r[1].as_str()).collect();
    assert_eq!(fw_names, FIREWALL_RULES);
    assert!(fw[2][2].contains("10.0.0.0/8") && fw[2][2].contains("教職員"));
    assert_eq!(fw[3][4], "記録しない no");

    let egress = table(&mut wb, "固定送信元IP");
    assert!(egress[1..]
        .iter()
        .any(|r| r[1] == "city-fixed-ip" && r[2] == "198.51.100.7" && r[3].contains("c4th")));
    let bypass = table(&mut wb, "検査除外");
    assert!(bypass[1..]
        .iter()
        .any(|r| r[0] == ".windowsupdate.com" && r[1].contains("組込み")));

    let overview = table(&mut wb, "概要");
    let value = |item: &str| {
        overview[1..]
            .iter()
            .find(|r| r[0].starts_with(item))
            .map(|r| r[1].clone())
            .unwrap_or_else(|| panic!("{item} in {overview:?}"))
    };
    assert_eq!(value("拠点数"), "19");
    assert_eq!(value("ルール数"), "10");
    assert_eq!(value("ポリシーの世代"), policy.generation_digest());
    assert!(value("作成日時").ends_with(" JST"), "{}", value("作成日時"));
}

#[test]
fn html_settings_document_matches_the_example_policy() {
    let o = komugate(&[
        "policy",
        "document",
        example().to_str().unwrap(),
        "--format",
        "html",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let html = String::from_utf8(o.stdout).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<html lang=\"ja\">"));
    assert!(html.contains("<h2>拠点 <small>Sites</small></h2>"));
    for school in SCHOOLS {
        assert!(html.contains(&format!("<td>{school}</td>")), "{school}");
    }
    for group in GROUPS {
        assert!(html.contains(&format!("<td>{group}</td>")), "{group}");
    }
    // Rules of 全職員 appear in evaluation order (the 全職員 rows come
    // after the テレワーク承認者 rows).
    let everyone = html
        .find("<tr><td>全職員</td><td>1</td>")
        .expect("policy 全職員's first rule");
    let mut at = everyone;
    for rule in EVERYONE_RULES {
        let i = html[at..]
            .find(&format!("<td>{}</td>", rule.replace('&', "&amp;")))
            .unwrap_or_else(|| panic!("{rule} after position {at}"));
        at += i;
    }
    let mut at = 0;
    for rule in FIREWALL_RULES {
        at += html[at..]
            .find(&format!("<td>{rule}</td>"))
            .unwrap_or_else(|| panic!("firewall rule {rule}"));
    }
    assert!(html.contains("<td>198.51.100.7</td>"));
    assert!(!html.contains("<script"), "a static document");
}

#[test]
fn the_configured_policy_is_documented_without_a_file_argument() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    let default = komugate(&["config", "default"]);
    let text = String::from_utf8(default.stdout).unwrap().replacen(
        "file = \"\"",
        &format!("file = {:?}", example().to_str().unwrap()),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let o = komugate(&[
        "policy",
        "document",
        "--config",
        config.to_str().unwrap(),
        "--format",
        "html",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let html = String::from_utf8(o.stdout).unwrap();
    assert!(html.contains("<td>明北小学校</td>"));
    assert!(
        html.contains(config.to_str().unwrap()),
        "names the configuration"
    );
    // The configuration's [[egress.fixed]] binding is listed beside the policy's pools.
    assert!(html.contains("[[egress.fixed]]"));
}

#[test]
fn bad_arguments_get_clear_errors() {
    let ex = example();
    let ex = ex.to_str().unwrap();
    let o = komugate(&["policy", "document", ex, "--format", "pdf"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("possible values: xlsx, html"),
        "{}",
        stderr(&o)
    );

    let o = komugate(&["policy", "document", ex, "--out", "settings.pdf"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("name it .xlsx or .html, or give --format xlsx|html"),
        "{}",
        stderr(&o)
    );

    let o = komugate(&["policy", "document", ex]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("give --format xlsx|html"),
        "{}",
        stderr(&o)
    );

    let o = komugate(&[
        "policy",
        "document",
        "/nonexistent/policy.toml",
        "--format",
        "html",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot read the policy file /nonexistent/policy.toml"),
        "{}",
        stderr(&o)
    );

    // The embedded default has no policy file.
    let o = komugate(&["policy", "document", "--format", "html"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("has no [policy] file"),
        "{}",
        stderr(&o)
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "version = 1\n[[site]]\nname = \"x\"\ncidrs = [\"not-a-cidr\"]\n",
    )
    .unwrap();
    let o = komugate(&[
        "policy",
        "document",
        bad.to_str().unwrap(),
        "--format",
        "html",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("the policy is not valid"),
        "{}",
        stderr(&o)
    );
    assert!(o.stdout.is_empty(), "no document for an invalid policy");
}
