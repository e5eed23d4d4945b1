//! Silent renewal of the user's ID token: before it expires, the client
//! asks the provider for a new one with the refresh token (the
//! `refresh_token` grant; Entra ID issues a refresh token with the
//! `offline_access` scope) and presents it on the link, so a signed-in
//! user is never interrupted. The provider keeps the sign-in's nonce in
//! renewed tokens, so the renewal stays bound to this device.
//!
//! Renewal stops (the session then ends at the token's `exp`) when the
//! provider refuses the refresh token (the user logged out, the grant was
//! revoked) or the gateway answers that the sign-in was ended
//! (`signed_out`: sign-out, back-channel logout): only a new sign-in
//! brings the user back.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use tokio_util::sync::CancellationToken;

use super::link::{Link, Presented};
use super::signin::{bound, provider_http, tokens_from, UserToken};
use crate::oidc::unix_now;

/// Wait between failed attempts (the provider or the link unreachable).
const RETRY: Duration = Duration::from_secs(5);

/// When to renew `t`: a third of its lifetime before it expires, between
/// one second and five minutes before.
pub fn renew_at(t: &UserToken) -> u64 {
    let life = t.expires_at.saturating_sub(t.issued_at);
    t.expires_at.saturating_sub((life / 3).clamp(1, 300))
}

/// Renews the link's user token whenever it is due, until `shutdown`.
pub async fn run(link: Arc<Link>, shutdown: CancellationToken) {
    loop {
        let due = link
            .user_token()
            .filter(|t| t.renewal.is_some())
            .map(|t| renew_at(&t));
        let wait = match due {
            Some(at) => Duration::from_secs(at.saturating_sub(unix_now())),
            // Nothing to renew: wait for a sign-in.
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            // A new token (sign-in, renewal, sign-out): look again.
            _ = link.token_changed.notified() => continue,
            _ = tokio::time::sleep(wait) => {}
        }
        let Some(held) = link.user_token().filter(|_| due.is_some()) else {
            continue;
        };
        if renew_at(&held) > unix_now() {
            continue;
        }
        match renew_once(&link, &held).await {
            Ok(()) => {}
            Err(e) if unix_now() >= held.expires_at => {
                tracing::warn!("the user's sign-in expired without renewal ({e:#}): sign in again");
                link.drop_renewal(&held);
            }
            Err(e) => {
                tracing::warn!("renewing the user's sign-in: {e:#}; trying again");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}

/// One renewal of `held`: a new ID token from the provider, presented on
/// the link. Errors are worth retrying; a refusal that ends the sign-in
/// is handled here.
async fn renew_once(link: &Link, held: &UserToken) -> Result<()> {
    let r = held
        .renewal
        .as_ref()
        .ok_or_else(|| anyhow!("no refresh token"))?;
    let http = provider_http(link.config())?;
    let reply = http
        .post_form(
            &r.token_endpoint,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &r.refresh_token),
                ("client_id", &r.client_id),
            ],
            None,
        )
        .await
        .map_err(|e| anyhow!("the provider's token endpoint: {e}"))?;
    if reply.status.is_client_error() {
        // invalid_grant and the like: the provider ended the sign-in.
        let e = tokens_from(reply.status, &reply.body, &r.token_endpoint)
            .err()
            .unwrap_or_else(|| anyhow!("refused"));
        tracing::warn!("the provider refused to renew the user's sign-in ({e:#}): sign in again");
        link.drop_renewal(held);
        return Ok(());
    }
    let mut tokens = tokens_from(reply.status, &reply.body, &r.token_endpoint)?;
    // A provider that does not rotate refresh tokens answers without one.
    tokens
        .refresh_token
        .get_or_insert_with(|| r.refresh_token.clone());
    let fresh = bound(
        tokens,
        &r.nonce,
        held.binding_salt.clone(),
        (r.token_endpoint.as_str(), r.client_id.as_str()),
    );
    match link.present(fresh).await? {
        Presented::Accepted(_) => {
            tracing::info!("the user's sign-in was renewed");
            Ok(())
        }
        // present() forgot the token: the gateway ended the sign-in.
        Presented::Ended(m) => {
            tracing::warn!("the gateway ended the user's sign-in: {m}");
            Ok(())
        }
        Presented::Refused { reason, message } => Err(anyhow!(
            "the gateway refused the renewed token ({reason}): {message}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_a_third_of_the_lifetime_before_expiry() {
        let t = |iat, exp| UserToken {
            issued_at: iat,
            expires_at: exp,
            ..Default::default()
        };
        // Entra ID's hour: five minutes before.
        assert_eq!(renew_at(&t(1000, 4600)), 4300);
        // Short tokens: a third before, at least a second.
        assert_eq!(renew_at(&t(1000, 1009)), 1006);
        assert_eq!(renew_at(&t(1000, 1002)), 1001);
        assert_eq!(renew_at(&t(0, 0)), 0);
    }
}
