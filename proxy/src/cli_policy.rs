//! `komugate policy …` and `komugate categories …`: the administrators'
//! tools for the policy document and the blocklists.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::Subcommand;

use crate::cli::usage_error;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file; lists every error as file:line:column and exits non-zero.
    Check {
        file: PathBuf,
        /// Language of the messages: en or ja (diagnostics stay as written).
        #[arg(long, value_enum, default_value = "en")]
        lang: Lang,
    },
    /// Show how the policy decides a request: location, groups, categories, rule, action, egress.
    Explain {
        file: PathBuf,
        /// Device id (as in its certificate); omit for an anonymous in-site client.
        #[arg(long)]
        device: Option<String>,
        /// The user signed in on the device (OpenID Connect), as the logs
        /// name them; omit for a device where nobody is signed in.
        #[arg(long, requires = "device")]
        user: Option<String>,
        /// A group of the signed-in user (the token's group claim); repeat
        /// for several.
        #[arg(long = "user-group", requires = "user")]
        user_groups: Vec<String>,
        /// Client address the request comes from (decides the location).
        #[arg(long)]
        from: String,
        /// http://… or https://… URL (or host:port with --method CONNECT).
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "GET")]
        method: String,
        /// text or json.
        #[arg(long, value_enum, default_value = "text")]
        format: ExplainFormat,
        /// Same as `--format json` (the former spelling).
        #[arg(long, hide = true)]
        json: bool,
        /// Language of the text format: en or ja.
        #[arg(long, value_enum, default_value = "en")]
        lang: Lang,
    },
    /// Write the settings document (設定書) of the configuration and the
    /// policy in force: sites, groups, policies, rules in order, lists,
    /// cloud apps, firewall, fixed egress, inspection bypasses.
    Document {
        /// The policy file (default: the configuration's [policy] file).
        file: Option<PathBuf>,
        /// Gateway configuration (default: the embedded default).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory (overrides [data] dir; the [policy] file is relative to it).
        #[arg(long)]
        data: Option<PathBuf>,
        /// xlsx or html (default: from --out's extension).
        #[arg(long, value_enum)]
        format: Option<crate::policy_document::DocumentFormat>,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Show what changes from OLD to NEW: the line diff, and with
    /// --against-logs 7d which logged requests the change would newly block
    /// or allow (how many, from how many devices, to which hosts).
    Diff(crate::policy_edit::cli::DiffArgs),
    /// Convert a squidGuard.conf into a komugate policy (TOML on stdout or --out).
    ImportSquidguard {
        file: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `--lang` of `policy check` and `policy explain`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    En,
    Ja,
}

impl Lang {
    pub fn wording(self) -> &'static komugate_policy::Wording {
        match self {
            Lang::En => &komugate_policy::wording::EN,
            Lang::Ja => &komugate_policy::wording::JA,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExplainFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum CategoriesCommand {
    /// Print each URL's categories, one line per URL: `URL<TAB>cat1,cat2` (`-` for none).
    Lookup {
        /// A squidGuard/UT1 directory, a compiled snapshot, or one list file.
        #[arg(long)]
        lists: PathBuf,
        /// Format of a list file (default: detected once for the whole file).
        #[arg(long, value_enum, default_value_t = FormatArg::Auto)]
        format: FormatArg,
        /// Read URLs from standard input, one per line (bulk audits).
        #[arg(long)]
        stdin: bool,
        /// One JSON object per line: {"url": …, "categories": [...]}.
        #[arg(long)]
        json: bool,
        urls: Vec<String>,
    },
    /// Compile a squidGuard/UT1 directory (or one list file) into a snapshot file that loads fast.
    Compile {
        src: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Format of a list file (default: detected once for the whole file).
        #[arg(long, value_enum, default_value_t = FormatArg::Auto)]
        format: FormatArg,
    },
}

/// Runs a policy command; `check` and validation failures exit 1 with every error listed.
pub fn run_policy(cmd: PolicyCommand) -> Result<ExitCode> {
    match cmd {
        PolicyCommand::Check { file, lang } => match komugate_policy::check(&file) {
            Ok(summary) => {
                print!("{}", lang.wording().summary(&summary));
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!(
                    "{}",
                    (lang.wording().check_failed)(&file.display().to_string(), errors.0.len())
                );
                Ok(ExitCode::FAILURE)
            }
        },
        PolicyCommand::Explain {
            file,
            device,
            user,
            user_groups,
            from,
            url,
            method,
            format,
            json,
            lang,
        } => {
            let policy = load(&file)?;
            let user =
                user.and_then(|u| crate::explain::SignedIn::from_text(&u, &user_groups.join(",")));
            // Its only errors are about --from, --url and --method.
            let decision = crate::explain::explain_as(
                &policy,
                device.as_deref(),
                user.as_ref(),
                &from,
                &url,
                &method,
            )
            .map_err(|e| usage_error(format!("{e:#}")))?;
            if json || format == ExplainFormat::Json {
                println!("{}", serde_json::to_string_pretty(&decision)?);
            } else {
                print!("{}", lang.wording().explain(&decision));
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Document {
            file,
            config,
            data,
            format,
            out,
        } => write_document(file, config, data, format, out),
        PolicyCommand::Diff(args) => crate::policy_edit::cli::run(args),
        PolicyCommand::ImportSquidguard { file, out } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            match komugate_policy::import_squidguard(&text, &file) {
                Ok(toml) => {
                    match out {
                        Some(out) => {
                            // Often the running policy's own path: never leave it torn.
                            crate::atomic_file::write(&out, toml.as_bytes())?;
                            eprintln!(
                                "wrote {}; check it with `komugate policy check {}`",
                                out.display(),
                                out.display()
                            );
                        }
                        None => print!("{toml}"),
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

/// `komugate policy document`.
fn write_document(
    file: Option<PathBuf>,
    config_file: Option<PathBuf>,
    data: Option<PathBuf>,
    format: Option<crate::policy_document::DocumentFormat>,
    out: Option<PathBuf>,
) -> Result<ExitCode> {
    use crate::policy_document::{self as doc, DocumentFormat};
    use std::io::{IsTerminal, Write};
    let format = match (format, &out) {
        (Some(f), _) => f,
        (None, Some(p)) => DocumentFormat::from_extension(p).ok_or_else(|| {
            usage_error(format!(
                "cannot tell the format from {}: name it .xlsx or .html, or give --format xlsx|html",
                p.display()
            ))
        })?,
        (None, None) => {
            return Err(usage_error(
                "give --format xlsx|html (or --out FILE.xlsx / FILE.html)",
            ))
        }
    };
    if format == DocumentFormat::Xlsx && out.is_none() && std::io::stdout().is_terminal() {
        return Err(usage_error(
            "an xlsx workbook is binary: write it to a file with --out FILE.xlsx",
        ));
    }
    let mut config = match &config_file {
        Some(p) => crate::config::Config::load(p)?,
        None => crate::config::Config::embedded_default(),
    };
    if let Some(d) = data {
        config.data.dir = d;
    }
    let document = doc::generate(&config, config_file.as_deref(), file.as_deref())?;
    let bytes = match format {
        DocumentFormat::Xlsx => doc::to_xlsx(&document)?,
        DocumentFormat::Html => doc::to_html(&document).into_bytes(),
    };
    match &out {
        Some(p) => {
            crate::atomic_file::write(p, &bytes)
                .with_context(|| format!("cannot write {}", p.display()))?;
            eprintln!("wrote {}", p.display());
        }
        None => std::io::stdout().lock().write_all(&bytes)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn load(file: &Path) -> Result<komugate_policy::Policy> {
    komugate_policy::Policy::load(file)
        .map_err(|e| anyhow!("{}: the policy is not valid:\n{e}", file.display()))
}

/// `--format` of the `categories` commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    Auto,
    Squidguard,
    Hosts,
    Plain,
    Adblock,
}

/// Loads `path` as `format` (auto: directory → squidGuard tree, snapshot by
/// its magic, a file detected once as a whole).
fn load_lists(
    path: &Path,
    format: FormatArg,
) -> Result<(
    komugate_categories::Matcher,
    komugate_categories::ImportReport,
)> {
    use komugate_categories::{ListFormat, MatcherBuilder};
    let lf = match format {
        FormatArg::Auto => {
            return komugate_categories::load_path(path)
                .map_err(|e| anyhow!("{}: {e}", path.display()))
        }
        FormatArg::Squidguard => ListFormat::SquidGuardDir,
        FormatArg::Hosts => ListFormat::Hosts,
        FormatArg::Plain => ListFormat::Plain,
        FormatArg::Adblock => ListFormat::Adblock,
    };
    let category = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("list")
        .to_string();
    let mut b = MatcherBuilder::new();
    let report = b
        .add_list_file(&category, path, lf)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let m = b.build().map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok((m, report))
}

/// One lookup result line (TSV or JSON).
fn print_lookup(
    out: &mut impl std::io::Write,
    matcher: &komugate_categories::Matcher,
    url: &str,
    json: bool,
) -> std::io::Result<()> {
    let names = matcher.names(matcher.lookup_url(url));
    if json {
        let v = serde_json::json!({ "url": url, "categories": names });
        writeln!(out, "{v}")
    } else if names.is_empty() {
        writeln!(out, "{url}\t-")
    } else {
        writeln!(out, "{url}\t{}", names.join(","))
    }
}

pub fn run_categories(cmd: CategoriesCommand) -> Result<ExitCode> {
    match cmd {
        CategoriesCommand::Lookup {
            lists,
            format,
            stdin,
            json,
            urls,
        } => {
            use std::io::{BufRead, Write};
            if !stdin && urls.is_empty() {
                anyhow::bail!("no URL to look up: give URLs as arguments or use --stdin");
            }
            let (matcher, report) = load_lists(&lists, format)?;
            report_import(&lists, &report);
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
            for url in &urls {
                print_lookup(&mut out, &matcher, url, json)?;
            }
            if stdin {
                for line in std::io::stdin().lock().lines() {
                    let line = line.context("reading URLs from standard input")?;
                    let url = line.trim();
                    if !url.is_empty() {
                        print_lookup(&mut out, &matcher, url, json)?;
                    }
                }
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        CategoriesCommand::Compile { src, out, format } => {
            let (matcher, report) = load_lists(&src, format)?;
            report_import(&src, &report);
            let file = std::fs::File::create(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            matcher
                .write_snapshot(std::io::BufWriter::new(file))
                .map_err(|e| anyhow!("writing {}: {e}", out.display()))?;
            eprintln!(
                "{}: {} entries in {} categories, {} bytes in memory",
                out.display(),
                matcher.entry_count(),
                matcher.category_names().len(),
                matcher.heap_bytes()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Counts per list file, and invalid / skipped lines (count + the first few
/// with file:line), on stderr.
fn report_import(src: &Path, report: &komugate_categories::ImportReport) {
    for l in &report.lists {
        eprintln!(
            "{}: {} as {}: {} entries, {} skipped, {} invalid",
            l.path.display(),
            l.category,
            l.format,
            l.entries,
            l.skipped,
            l.invalid
        );
    }
    if report.invalid_lines + report.skipped_lines > 0 {
        eprintln!(
            "{}: {} invalid and {} skipped line(s) not imported; the rest imported:",
            src.display(),
            report.invalid_lines,
            report.skipped_lines
        );
        for e in &report.first_errors {
            eprintln!("  {e}");
        }
    }
}
