//! Console sign-in through an OpenID provider: the `[admin.oidc]` settings
//! turned into a [`CodeFlow`](crate::oidc::flow::CodeFlow), and who the
//! verified ID token says the person is: a name for pages and the audit
//! log, and a role from the groups (the highest mapped one).

use std::collections::BTreeMap;
use std::time::Duration;

use super::accounts::Role;
use crate::config::{Config, OidcConfig};
use crate::oidc::flow::{CodeFlow, FlowSettings};
use crate::oidc::http::HttpClient;
use crate::oidc::verify::{claim_str, claim_strings, Claims};

pub struct OidcSignIn {
    /// `Err`: why sign-in cannot work (an unreadable secret or CA file),
    /// shown when someone tries.
    pub flow: Result<CodeFlow, String>,
    /// The button's label (`Entra ID`).
    pub label: String,
    groups_claim: String,
    name_claims: Vec<String>,
    roles: BTreeMap<String, Role>,
}

/// Who an ID token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub name: String,
    pub subject: String,
    pub groups: Vec<String>,
    /// The role and the group that gave it; `None`: no mapped group.
    pub role: Option<(Role, String)>,
}

impl OidcSignIn {
    pub fn new(config: &Config, o: &OidcConfig) -> OidcSignIn {
        let flow = build_flow(config, o);
        if let Err(e) = &flow {
            tracing::error!("console: OpenID Connect sign-in will not work: {e}");
        }
        OidcSignIn {
            flow,
            label: o.label.clone(),
            groups_claim: o.groups_claim.clone(),
            name_claims: o.name_claims.clone(),
            roles: o
                .roles
                .iter()
                .filter_map(|(g, r)| Role::parse(r).ok().map(|r| (g.clone(), r)))
                .collect(),
        }
    }

    pub fn person(&self, claims: &Claims) -> Person {
        let clean =
            |s: &str| -> String { s.chars().filter(|c| !c.is_control()).take(128).collect() };
        let subject = clean(claim_str(claims, "sub").unwrap_or_default());
        let name = self
            .name_claims
            .iter()
            .filter_map(|c| claim_str(claims, c))
            .map(clean)
            .find(|n| !n.trim().is_empty())
            .unwrap_or_else(|| subject.clone());
        let groups: Vec<String> = claim_strings(claims, &self.groups_claim)
            .iter()
            .map(|g| clean(g))
            .collect();
        let role = groups
            .iter()
            .filter_map(|g| self.roles.get(g).map(|r| (*r, g.clone())))
            .max_by_key(|(r, _)| *r);
        Person {
            name,
            subject,
            groups,
            role,
        }
    }
}

fn build_flow(config: &Config, o: &OidcConfig) -> Result<CodeFlow, String> {
    let secret_path = config.data_path(&o.client_secret_file);
    let secret = std::fs::read_to_string(&secret_path)
        .map_err(|e| {
            format!(
                "[admin.oidc] client_secret_file {}: {e} (put the client secret issued by the provider in it, one line, readable by komugate only)",
                secret_path.display()
            )
        })?
        .trim()
        .to_string();
    if secret.is_empty() {
        return Err(format!(
            "[admin.oidc] client_secret_file {} is empty",
            secret_path.display()
        ));
    }
    let ca = match &o.ca_file {
        Some(p) => {
            let p = config.data_path(p);
            Some(
                std::fs::read(&p)
                    .map_err(|e| format!("[admin.oidc] ca_file {}: {e}", p.display()))?,
            )
        }
        None => None,
    };
    let http = HttpClient::new(ca.as_deref(), Duration::from_secs(10))
        .map_err(|e| format!("[admin.oidc] ca_file: {e}"))?;
    Ok(CodeFlow::new(FlowSettings {
        issuer: o.issuer.clone(),
        client_id: o.client_id.clone(),
        client_secret: secret,
        redirect_uri: o.redirect_uri.clone(),
        scopes: o.scopes.clone(),
        skew: Duration::from_secs(o.clock_skew_secs),
        jwks_min_refetch: Duration::from_secs(o.jwks_min_refetch_secs),
        http,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_mapped_group_gives_the_role_and_the_first_name_claim_names() {
        let text = format!(
            "{}{}",
            crate::config::DEFAULT_CONFIG,
            r#"
[admin.oidc]
issuer = "https://login.example.jp/t/v2.0"
client_id = "c"
client_secret_file = "/nonexistent/secret"
redirect_uri = "https://gw.example.jp:9443/console/oidc/callback"
name_claims = ["preferred_username", "email"]
roles = { "komugate-viewers" = "viewer", "komugate-admins" = "admin" }
"#
        );
        let config = Config::parse(&text, "test.toml").unwrap();
        let o = config.admin.oidc.clone().unwrap();
        let s = OidcSignIn::new(&config, &o);
        assert!(s
            .flow
            .as_ref()
            .err()
            .unwrap()
            .contains("client_secret_file /nonexistent/secret"));
        let claims = |v: serde_json::Value| v.as_object().unwrap().clone();
        let p = s.person(&claims(serde_json::json!({
            "sub": "s1", "preferred_username": "hanako@board.example.jp",
            "groups": ["komugate-viewers", "other", "komugate-admins"],
        })));
        assert_eq!(p.name, "hanako@board.example.jp");
        assert_eq!(p.role, Some((Role::Admin, "komugate-admins".into())));
        let p = s.person(&claims(
            serde_json::json!({"sub": "s2\n", "groups": "other"}),
        ));
        assert_eq!((p.name.as_str(), p.role), ("s2", None));
        for bad in [
            ("issuer = \"http://idp.example.jp\"", "plain http"),
            ("roles = { g = \"root\" }", "use viewer, operator or admin"),
            (
                "redirect_uri = \"https://gw/elsewhere\"",
                "/console/oidc/callback",
            ),
        ] {
            let text = format!(
                "[admin.oidc]\nissuer = \"https://idp.example.jp\"\nclient_id = \"c\"\nclient_secret_file = \"s\"\nredirect_uri = \"https://gw/console/oidc/callback\"\nroles = {{ g = \"admin\" }}\n{}\n",
                bad.0
            );
            // A later key of the same name is a TOML error; replace instead.
            let key = bad.0.split(' ').next().unwrap();
            let text: String = text
                .lines()
                .filter(|l| !l.starts_with(&format!("{key} =")) || *l == bad.0)
                .map(|l| format!("{l}\n"))
                .collect();
            let text = format!("{}{text}", crate::config::DEFAULT_CONFIG);
            let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
            assert!(e.contains(bad.1), "{e}");
        }
    }
}
