//! `komugate admin user add|passwd|role|remove|list`: the console's local
//! accounts. Each change is an audit-log entry; the running gateway sees it
//! on the next request.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use super::accounts::{self, Account, Role};
use crate::cli::usage_error;
use crate::logs::audit::{cli_actor, AuditEvent, AuditLog};

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Console accounts: add, passwd, role, remove, list.
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add an account; prints a generated password once (or reads one with --password-stdin).
    Add {
        name: String,
        /// viewer (look), operator (day-to-day changes) or admin (everything).
        #[arg(long)]
        role: String,
        #[command(flatten)]
        common: UserArgs,
    },
    /// Set a new password (generated and printed, or --password-stdin); ends the account's sessions.
    Passwd {
        name: String,
        #[command(flatten)]
        common: UserArgs,
    },
    /// Change an account's role; ends its sessions.
    Role {
        name: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: String,
        #[command(flatten)]
        common: UserArgs,
    },
    /// Remove an account; ends its sessions.
    Remove {
        name: String,
        #[command(flatten)]
        common: UserArgs,
    },
    /// List the accounts (name, role, last change).
    List {
        #[command(flatten)]
        common: UserArgs,
    },
}

#[derive(Args, Clone, Default)]
pub struct UserArgs {
    /// Gateway configuration (the accounts file is its [admin] users_file).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory (overrides [data] dir).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Read the password from the first line of standard input instead of generating one.
    #[arg(long)]
    pub password_stdin: bool,
}

impl UserArgs {
    fn config(&self) -> Result<crate::config::Config> {
        let mut config = match &self.config {
            Some(p) => crate::config::Config::load(p)?,
            None => crate::config::Config::embedded_default(),
        };
        if let Some(d) = &self.data {
            config.data.dir = d.clone();
        }
        Ok(config)
    }

    /// The new password, and whether to print it (generated).
    fn password(&self) -> Result<(String, bool)> {
        if !self.password_stdin {
            return Ok((accounts::generate_password(), true));
        }
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let password = line.trim_end_matches(['\r', '\n']).to_string();
        accounts::validate_password(&password).map_err(usage_error)?;
        Ok((password, false))
    }
}

pub fn run_admin(cmd: AdminCommand) -> Result<()> {
    let AdminCommand::User(cmd) = cmd;
    let common = match &cmd {
        UserCommand::Add { common, .. }
        | UserCommand::Passwd { common, .. }
        | UserCommand::Role { common, .. }
        | UserCommand::Remove { common, .. }
        | UserCommand::List { common } => common.clone(),
    };
    let config = common.config()?;
    let path = super::users_file(&config);
    let mut file = accounts::load(&path).map_err(anyhow::Error::msg)?;
    let audit_path = config.data_path(&config.log.audit_log);
    let record = |action: &str, account: &str, role: Option<Role>| -> Result<()> {
        if config.log.audit_log.as_os_str().is_empty() {
            return Ok(());
        }
        AuditLog::open(&audit_path)
            .and_then(|a| {
                a.append(AuditEvent::AccountChange {
                    actor: cli_actor(),
                    action: action.into(),
                    account: account.into(),
                    role: role.map(|r| r.as_str().to_string()),
                })
            })
            .map(|_| ())
            .map_err(anyhow::Error::msg)
    };
    let now = crate::logs::record::format_rfc3339_ms(crate::logs::record::now_ms());
    match cmd {
        UserCommand::Add { name, role, .. } => {
            accounts::validate_name(&name).map_err(usage_error)?;
            let role = Role::parse(&role).map_err(usage_error)?;
            if file.find(&name).is_some() {
                bail!(
                    "account {name:?} already exists in {}; use `komugate admin user passwd {name}` for a new password",
                    path.display()
                );
            }
            let (password, show) = common.password()?;
            let hash = accounts::hash_password(&password).map_err(anyhow::Error::msg)?;
            file.accounts.push(Account {
                name: name.clone(),
                role,
                hash,
                changed: now,
            });
            record("add", &name, Some(role))?;
            accounts::save(&path, &file).map_err(anyhow::Error::msg)?;
            println!(
                "account {name} ({}) added to {}",
                role.as_str(),
                path.display()
            );
            if show {
                println!("password (shown once): {password}");
            }
        }
        UserCommand::Passwd { name, .. } => {
            let Some(i) = file.accounts.iter().position(|a| a.name == name) else {
                bail!(
                    "no account {name:?} in {}; `komugate admin user list` shows them",
                    path.display()
                );
            };
            let (password, show) = common.password()?;
            file.accounts[i].hash =
                accounts::hash_password(&password).map_err(anyhow::Error::msg)?;
            file.accounts[i].changed = now;
            record("passwd", &name, None)?;
            accounts::save(&path, &file).map_err(anyhow::Error::msg)?;
            println!("new password set for {name}; its console sessions are ended");
            if show {
                println!("password (shown once): {password}");
            }
        }
        UserCommand::Role { name, role, .. } => {
            let role = Role::parse(&role).map_err(usage_error)?;
            let Some(i) = file.accounts.iter().position(|a| a.name == name) else {
                bail!(
                    "no account {name:?} in {}; `komugate admin user list` shows them",
                    path.display()
                );
            };
            file.accounts[i].role = role;
            file.accounts[i].changed = now;
            record("role", &name, Some(role))?;
            accounts::save(&path, &file).map_err(anyhow::Error::msg)?;
            println!(
                "{name} is now {}; its console sessions are ended",
                role.as_str()
            );
        }
        UserCommand::Remove { name, .. } => {
            let before = file.accounts.len();
            file.accounts.retain(|a| a.name != name);
            if file.accounts.len() == before {
                bail!(
                    "no account {name:?} in {}; `komugate admin user list` shows them",
                    path.display()
                );
            }
            record("remove", &name, None)?;
            accounts::save(&path, &file).map_err(anyhow::Error::msg)?;
            println!("account {name} removed; its console sessions are ended");
        }
        UserCommand::List { .. } => {
            if file.accounts.is_empty() {
                println!("no console accounts in {}", path.display());
            }
            for a in &file.accounts {
                println!(
                    "{:<24} {:<9} changed {}",
                    a.name,
                    a.role.as_str(),
                    a.changed
                );
            }
        }
    }
    Ok(())
}

/// The embedded demo's console account: created with a generated password
/// on first start (returned, to print once); `None` when it exists already.
pub fn ensure_demo_account(config: &crate::config::Config) -> Result<Option<(String, String)>> {
    let name = config.data.demo_console_user.trim();
    if name.is_empty() {
        return Ok(None);
    }
    let path = super::users_file(config);
    let mut file = accounts::load(&path).map_err(anyhow::Error::msg)?;
    if file.find(name).is_some() {
        return Ok(None);
    }
    let password = accounts::generate_password();
    file.accounts.push(Account {
        name: name.to_string(),
        role: Role::Admin,
        hash: accounts::hash_password(&password).map_err(anyhow::Error::msg)?,
        changed: crate::logs::record::format_rfc3339_ms(crate::logs::record::now_ms()),
    });
    if !config.log.audit_log.as_os_str().is_empty() {
        AuditLog::open(&config.data_path(&config.log.audit_log))
            .and_then(|a| {
                a.append(AuditEvent::AccountChange {
                    actor: "komugate serve ([data] demo_console_user on first start)".into(),
                    action: "add".into(),
                    account: name.to_string(),
                    role: Some("admin".into()),
                })
            })
            .map_err(anyhow::Error::msg)?;
    }
    accounts::save(&path, &file).map_err(anyhow::Error::msg)?;
    Ok(Some((name.to_string(), password)))
}
